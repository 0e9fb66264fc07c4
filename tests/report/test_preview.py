"""QC previews: outline pixels of each label's colour lie on that label, in radiological view."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medseg.phantoms import PHANTOM_LABELS, make_phantom
from medseg.report.preview import MIN_PIXELS, label_colours, preview_labels, preview_png


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_outline_pixels_lie_on_their_label():
    study = make_phantom(0, shape=(60, 56, 40))
    rgb = _decode(preview_png(study.image, study.label, PHANTOM_LABELS))
    under = preview_labels(study.label)
    assert rgb.shape[:2] == under.shape
    colours = label_colours(PHANTOM_LABELS)
    assert len(set(colours.values())) == len(colours)
    drawn = 0
    for label, colour in colours.items():
        pixels = np.all(rgb == colour, axis=-1)
        assert np.all(under[pixels] == label), label
        if (under == label).any():  # a label in the planes is outlined, and only at its edge
            assert pixels.any(), label
            assert pixels.sum() < (under == label).sum()
            drawn += 1
    assert drawn >= 3
    # without labels the same planes carry no colour: every pixel is grey
    empty = _decode(preview_png(study.image, study.label.with_array(np.zeros_like(study.label.array)), PHANTOM_LABELS))
    assert np.all((empty[..., 0] == empty[..., 1]) & (empty[..., 1] == empty[..., 2]) | np.all(empty == 32, axis=-1))


def test_radiological_view_whatever_the_grid():
    """The liver lies on the patient's right: the left of the axial panel, on an RAS and an LPS grid."""
    for orientation in ("RAS", "LPS"):
        study = make_phantom(0, shape=(60, 56, 40), orientation=orientation)
        under = preview_labels(study.label)
        step = min(3.0, 60 * 3.0 / MIN_PIXELS)  # 3 mm voxels; the largest extent is 60 voxels
        axial = under[:, : round(60 * 3.0 / step)]  # the first panel: the patient's x across
        cols = np.nonzero(axial == 1)[1]
        assert cols.size and cols.mean() < axial.shape[1] / 2, orientation


def test_lesion_planes_are_added():
    study = make_phantom(0, shape=(60, 56, 40))
    base = _decode(preview_png(study.image, study.label, PHANTOM_LABELS))
    more = _decode(preview_png(study.image, study.label, PHANTOM_LABELS, lesions_voxel=[(30, 28, 5), (30, 28, 35)]))
    assert more.shape[0] == base.shape[0] and more.shape[1] > base.shape[1]
