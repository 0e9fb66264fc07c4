"""Deterministic synthetic CT studies with known organ and tumour volumes.

Anatomy is defined in world space (mm, RAS+) and sampled on any voxel grid, so the same
phantom can be written isotropic or anisotropic, axis-aligned or oblique, RAS or LPS/IPL...,
and its structures keep their place in the world. Voxel values are HU (int16): air −1000,
fat −90, soft tissue 40, liver 100, spleen 115, kidneys 170, hypodense tumours 50 (a
portal-venous contrast phase), a bony spine
400 (unlabelled distractor); plus a smooth inhomogeneity field and Gaussian noise.

Labels (:data:`PHANTOM_LABELS`): 1 liver, 2 spleen, 3 kidney_right, 4 kidney_left, 5 tumour
(tumours are spheres inside the liver; the liver label excludes them).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.io.volume import Volume

__all__ = ["PHANTOM_LABELS", "PhantomStudy", "make_phantom", "phantom_affine", "write_phantom_archive"]

PHANTOM_LABELS: dict[int, str] = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "tumour"}

# name: (label, HU, centre mm, radii mm): portal-venous-phase contrast CT (enhanced liver, spleen and
# kidneys well above the 40 HU soft tissue; hypodense tumours)
_ORGANS = [
    ("liver", 1, 100.0, (35.0, 5.0, 10.0), (38.0, 30.0, 30.0)),
    ("spleen", 2, 115.0, (-45.0, -10.0, 15.0), (16.0, 13.0, 22.0)),
    ("kidney_right", 3, 170.0, (30.0, -35.0, -15.0), (12.0, 10.0, 20.0)),
    ("kidney_left", 4, 170.0, (-30.0, -35.0, -18.0), (12.0, 10.0, 20.0)),
]
_BODY_RADII = (90.0, 70.0)
_TUMOUR_HU = 50.0

_AXIS_VECTORS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


@dataclass
class PhantomStudy:
    """One synthetic study.

    Attributes:
        case_id: identifier.
        image: CT-like :class:`Volume` (int16 HU).
        label: ground truth :class:`Volume` (uint8, ids of :data:`PHANTOM_LABELS`), same grid.
        volumes_ml: exact voxel volume of each structure in this label map (count × voxel mL).
        analytic_ml: continuous volume of each structure (tumours: 4/3·π·r³; organs: ellipsoid
            volume before deformation, approximate).
        tumours: list of ``{"centre_mm": [x, y, z], "radius_mm": r}``.
    """

    case_id: str
    image: Volume
    label: Volume
    volumes_ml: dict[str, float]
    analytic_ml: dict[str, float]
    tumours: list[dict] = field(default_factory=list)


def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], orientation: str = "RAS",
                   rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """A voxel→world affine whose grid is centred on the world origin.

    Args:
        shape: voxels along each array axis.
        spacing: mm along each array axis.
        orientation: where each array axis points (``"RAS"``, ``"LPS"``, ``"IPL"``…).
        rotation_deg: extra rotation about x, y, z (an oblique acquisition).
    """
    orientation = orientation.upper()
    directions = np.array([_AXIS_VECTORS[c] for c in orientation], dtype=np.float64).T
    if abs(np.linalg.det(directions)) != 1:
        raise ValueError(f"orientation {orientation!r} must name three different axes")
    m = _rotation(rotation_deg) @ directions @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = m
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    affine[:3, 3] = -m @ centre
    return affine


def _deform(p: np.ndarray, rng_params: np.ndarray) -> np.ndarray:
    """Smooth radial deformation factor (~±8%) for a deformed ellipsoid."""
    a, b, c, ph = rng_params
    return 1.0 + 0.08 * np.sin(a * p[..., 0] + ph) * np.cos(b * p[..., 1]) + 0.05 * np.sin(c * p[..., 2] + 2 * ph)


def _place_tumours(rng: np.random.Generator, n: int, radius_mm: tuple[float, float]) -> list[dict]:
    name, _, _, centre, radii = _ORGANS[0]
    centre = np.asarray(centre)
    radii = np.asarray(radii)
    tumours: list[dict] = []
    tries = 0
    while len(tumours) < n and tries < 10000:
        tries += 1
        r = float(rng.uniform(*radius_mm))
        u = rng.uniform(-1, 1, size=3)
        if np.linalg.norm(u) > 1:
            continue
        # keep the sphere inside the (shrunk) liver ellipsoid and apart from the others
        c = centre + u * np.maximum(radii * 0.85 - r - 2.0, 1.0)
        if np.sum(((c - centre) / (radii * 0.88 - r)) ** 2) > 1:
            continue
        if any(np.linalg.norm(c - np.asarray(t["centre_mm"])) < r + t["radius_mm"] + 4.0 for t in tumours):
            continue
        tumours.append({"centre_mm": [float(v) for v in c], "radius_mm": r})
    return tumours


def make_phantom(seed: int = 0, *, shape: tuple[int, int, int] = (72, 64, 48),
                 spacing: tuple[float, float, float] = (3.0, 3.0, 3.0), orientation: str = "RAS",
                 rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0), n_tumours: int = 3,
                 tumour_radius_mm: tuple[float, float] = (5.0, 9.0), noise_hu: float = 10.0,
                 case_id: str | None = None) -> PhantomStudy:
    """Make one CT-like phantom study (deterministic for a given ``seed`` and arguments).

    The anatomy (organ shapes, tumour positions) depends only on ``seed``; the grid arguments
    choose how it is sampled. Returns a :class:`PhantomStudy`; memory is about 3 bytes per
    voxel plus one float32 slab at a time (sampling goes slice by slice along the last axis).
    """
    rng = np.random.default_rng(seed)
    deform = [rng.uniform(0.03, 0.08, size=4) for _ in _ORGANS]
    shifts = [rng.normal(0, 3.0, size=3) for _ in _ORGANS]
    tumours = _place_tumours(rng, n_tumours, tumour_radius_mm)
    field_k = rng.uniform(0.01, 0.03, size=(3, 3))
    field_ph = rng.uniform(0, 2 * np.pi, size=3)
    noise_rng = np.random.default_rng(seed + 7919)

    affine = phantom_affine(shape, spacing, orientation, rotation_deg)
    image = np.empty(shape, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k in range(shape[2]):
        vox = np.stack([ii, jj, np.full_like(ii, k)], axis=-1).astype(np.float64)
        p = vox @ affine[:3, :3].T + affine[:3, 3]
        hu = np.full(ii.shape, -1000.0)
        lab = np.zeros(ii.shape, dtype=np.uint8)
        body = (p[..., 0] / _BODY_RADII[0]) ** 2 + (p[..., 1] / _BODY_RADII[1]) ** 2
        hu[body <= 1.0] = -90.0  # subcutaneous fat
        inner = (p[..., 0] / (_BODY_RADII[0] - 8)) ** 2 + (p[..., 1] / (_BODY_RADII[1] - 8)) ** 2
        hu[inner <= 1.0] = 40.0
        spine = (p[..., 0] / 10.0) ** 2 + ((p[..., 1] + 50.0) / 10.0) ** 2
        hu[spine <= 1.0] = 400.0
        for (name, lid, value, centre, radii), d, s in zip(_ORGANS, deform, shifts):
            q = (p - (np.asarray(centre) + s)) / np.asarray(radii)
            inside = np.sum(q**2, axis=-1) <= _deform(q * 40.0, d) ** 2
            hu[inside] = value
            lab[inside] = lid
        for t in tumours:
            inside = np.sum((p - np.asarray(t["centre_mm"]) - shifts[0]) ** 2, axis=-1) <= t["radius_mm"] ** 2
            inside &= lab == 1
            hu[inside] = _TUMOUR_HU
            lab[inside] = 5
        body_mask = hu > -1000
        inhom = sum(np.cos(p @ field_k[a] + field_ph[a]) for a in range(3)) * (10.0 / 3)
        hu = np.where(body_mask, hu + inhom, hu)
        image[..., k] = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
        label[..., k] = lab
    if noise_hu > 0:
        from scipy.ndimage import gaussian_filter

        smooth = gaussian_filter(image.astype(np.float32), sigma=0.6)
        smooth += noise_rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
        image = np.clip(np.round(smooth), -1024, 3071).astype(np.int16)
    for t in tumours:  # record centres in world coordinates including the liver's shift
        t["centre_mm"] = [float(v) for v in np.asarray(t["centre_mm"]) + shifts[0]]
    vox_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.bincount(label.ravel(), minlength=6)
    volumes = {name: float(counts[lid] * vox_ml) for lid, name in PHANTOM_LABELS.items()}
    analytic = {name: float(4 / 3 * np.pi * np.prod(radii) / 1000.0) for name, _, _, _, radii in _ORGANS}
    analytic["tumour"] = float(sum(4 / 3 * np.pi * t["radius_mm"] ** 3 for t in tumours) / 1000.0)
    case_id = case_id or f"phantom_{seed:03d}"
    img_vol = Volume(array=image, affine=affine, source=None, meta={"phantom_seed": seed})
    lab_vol = Volume(array=label, affine=affine.copy(), source=None, meta={"phantom_seed": seed})
    return PhantomStudy(case_id=case_id, image=img_vol, label=lab_vol, volumes_ml=volumes,
                        analytic_ml=analytic, tumours=tumours)


_GRID_VARIANTS = [
    dict(),
    dict(orientation="LPS", rotation_deg=(12.0, -8.0, 15.0)),
    dict(spacing=(2.5, 2.5, 5.0), shape=(86, 76, 30)),
    dict(orientation="LAS", rotation_deg=(0.0, 10.0, -6.0), spacing=(3.0, 3.0, 4.0), shape=(72, 64, 36)),
]


def write_phantom_archive(out_dir: str | Path, n_cases: int = 4, *, seed: int = 0, splits: dict[str, int] | None = None,
                          variants: bool = True, **phantom_kwargs) -> Path:
    """Write ``n_cases`` phantom studies plus a manifest; return the manifest path.

    Layout::

        out_dir/images/<case>.nii.gz    CT-like image (int16 HU)
        out_dir/labels/<case>.nii.gz    ground truth (uint8)
        out_dir/labels.json             PHANTOM_LABELS
        out_dir/phantom_volumes.json    per case: volumes_ml, analytic_ml, tumours
        out_dir/manifest.csv            case_id,image,label,split (relative paths)

    ``variants``: cycle through grids that are isotropic, oblique LPS, anisotropic and oblique
    LAS (so the archive exercises geometry handling). ``splits``: e.g. ``{"train": 3, "val": 1}``
    assigned in case order; the rest are ``test``.
    """
    from medseg.io import write_volume
    from medseg.plans import write_labels

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    order = []
    for name, count in (splits or {}).items():
        order += [name] * count
    records = {}
    rows = []
    for i in range(n_cases):
        kwargs = dict(_GRID_VARIANTS[i % len(_GRID_VARIANTS)]) if variants else {}
        kwargs.update(phantom_kwargs)
        study = make_phantom(seed + i, case_id=f"phantom_{seed + i:03d}", **kwargs)
        write_volume(study.image, out / "images" / f"{study.case_id}.nii.gz")
        write_volume(study.label, out / "labels" / f"{study.case_id}.nii.gz")
        records[study.case_id] = {"volumes_ml": study.volumes_ml, "analytic_ml": study.analytic_ml,
                                  "tumours": study.tumours, "orientation": study.image.orientation,
                                  "spacing_mm": list(study.image.spacing)}
        split = order[i] if i < len(order) else "test"
        rows.append({"case_id": study.case_id, "image": f"images/{study.case_id}.nii.gz",
                     "label": f"labels/{study.case_id}.nii.gz", "split": split, "modality": "CT"})
    write_labels(PHANTOM_LABELS, out / "labels.json")
    (out / "phantom_volumes.json").write_text(json.dumps(records, indent=2))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "label", "split", "modality"])
        w.writeheader()
        w.writerows(rows)
    return manifest
