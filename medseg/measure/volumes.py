"""Per-structure volumes (mL), intensity statistics (image units, e.g. HU), centroids and boxes (mm).

One pass over the label map serves every label: the map is read in slabs along its last axis and
each slab feeds a handful of ``np.bincount`` calls over a compact label index (label × axis
position histograms give voxel counts, centroids and bounding boxes; label × intensity
histograms give mean/std/min/max/median exactly for integer images). Float images are sorted
once (voxels inside the requested labels only) for medians. Nothing is done per label over the
whole volume, so the cost barely grows with the number of labels (see ``benchmarks/volumes``).

The report is the volume report of DESIGN.md::

    {"segmentation": str, "image": str | None, "spacing_mm": [sx, sy, sz], "shape": [I, J, K],
     "voxel_volume_ml": float, "orientation": "RAS",
     "structures": {name: {"label", "voxels", "volume_ml", "intensity_mean", "intensity_std",
                           "intensity_min", "intensity_max", "intensity_median", "centroid_mm",
                           "bbox_mm", "bbox_voxels", "touches_border"[, "volume_ml_soft"]}}}

Intensity statistics are ``None`` (JSON ``null``) for an empty structure or without an image;
``intensity_std`` is the population standard deviation (``ddof=0``, numpy's default).
``centroid_mm`` is the world (RAS+, mm) position of the mean voxel centre; ``bbox_mm`` is
``[[x_min, y_min, z_min], [x_max, y_max, z_max]]`` over the voxel centres of the structure's
index box, in world mm; ``bbox_voxels`` is ``[[i0, j0, k0], [i1, j1, k1]]`` (inclusive).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.atomic import atomic_write_text
from medseg.io.volume import Volume

__all__ = ["compute_volumes", "write_volume_report", "volume_report_rows", "VOLUME_CSV_COLUMNS",
           "json_ready", "csv_text", "find_volume_inputs", "present_labels"]

# Voxels per slab (bounded temporary memory: a few int64 arrays of this size).
_SLAB_VOXELS = 1 << 21
# Largest (labels × intensity range) histogram used for integer images before falling back to sorting.
_MAX_HIST_BINS = 1 << 25

VOLUME_CSV_COLUMNS = (
    "structure", "label", "voxels", "volume_ml", "volume_ml_soft", "intensity_mean", "intensity_std",
    "intensity_min", "intensity_max", "intensity_median", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm", "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm",
    "touches_border",
)


def _check_labels(labels: dict[int, str]) -> dict[int, str]:
    out: dict[int, str] = {}
    seen: dict[str, int] = {}
    for key, name in labels.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"labels keys must be integer label ids, not {type(key).__name__} {key!r}")
        key = int(key)
        if key < 0:
            raise ValueError(f"labels: negative label id {key}")
        name = str(name)
        if name in seen:
            raise ValueError(f"labels: the name {name!r} is used by both label {seen[name]} and label {key}; "
                             "structure names must be unique")
        seen[name] = key
        out[key] = name
    return out


# Largest label value mapped through a dense lookup table (larger ids are looked up by bisection).
_MAX_LUT = 1 << 22


class _Compact:
    """Maps raw label values to compact indices: requested ids → 0..L-1, everything else → L."""

    def __init__(self, seg: np.ndarray, ids: list[int]):
        self.n = len(ids)
        top = int(seg.max()) if seg.size else 0
        size = max(top, max(ids, default=0)) + 1
        if size <= _MAX_LUT:
            self.lut = np.full(size, self.n, dtype=np.intp)
            self.lut[np.asarray(ids, dtype=np.intp)] = np.arange(self.n, dtype=np.intp)
        else:  # e.g. uint32 instance ids: no 16 GiB table
            self.lut = None
            self.order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
            self.sorted_ids = np.asarray(ids, dtype=np.int64)[self.order]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if self.lut is not None:
            return np.take(self.lut, values)
        if not self.n:
            return np.zeros(values.shape, dtype=np.intp)
        pos = np.searchsorted(self.sorted_ids, values)
        pos_c = np.minimum(pos, self.n - 1)
        hit = self.sorted_ids[pos_c] == values
        return np.where(hit, self.order[pos_c], self.n).astype(np.intp)


def present_labels(arr: np.ndarray) -> list[int]:
    """The distinct values of an integer label map, ascending (slab-wise bincount for 8/16-bit maps)."""
    arr = np.asarray(arr)
    if not arr.size:
        return []
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2 and arr.ndim == 3:
        seen = np.zeros(1 << (8 * arr.dtype.itemsize), dtype=bool)
        for k0, k1 in _slabs(arr.shape):
            seen |= np.bincount(arr[:, :, k0:k1].ravel(order="K"), minlength=seen.size) > 0
        return [int(v) for v in np.flatnonzero(seen)]
    return [int(v) for v in np.unique(arr)]


def _slabs(shape: tuple[int, int, int]):
    per_slice = max(1, shape[0] * shape[1])
    step = max(1, _SLAB_VOXELS // per_slice)
    for k0 in range(0, shape[2], step):
        yield k0, min(shape[2], k0 + step)


def _hist_median(hist: np.ndarray, counts: np.ndarray, offset: int) -> np.ndarray:
    """Median per row of a value histogram ``hist (L, R)`` (value = column + offset); numpy's rule."""
    out = np.full(hist.shape[0], np.nan)
    cum = np.cumsum(hist, axis=1)
    for row in np.flatnonzero(counts):
        n = int(counts[row])
        lo = int(np.searchsorted(cum[row], (n - 1) // 2, side="right"))
        hi = int(np.searchsorted(cum[row], n // 2, side="right"))
        out[row] = (lo + hi) / 2.0 + offset
    return out


def _intensity_stats(lab_slabs, img: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Mean/std/min/max/median of ``img`` per compact label 0..n-1 (NaN where empty)."""
    stats = {k: np.full(n, np.nan) for k in ("mean", "std", "min", "max", "median")}
    if img.dtype.kind in "iub" and img.size:
        vmin, vmax = int(img.min()), int(img.max())
        rng = vmax - vmin + 1
        if (n + 1) * rng <= _MAX_HIST_BINS:
            hist = np.zeros((n + 1) * rng, dtype=np.int64)
            for (k0, k1), lab in lab_slabs():
                vals = img[:, :, k0:k1].reshape(-1, order="F").astype(np.intp)
                vals -= vmin
                vals += lab * rng
                hist += np.bincount(vals, minlength=(n + 1) * rng)
            hist = hist.reshape(n + 1, rng)[:n]
            counts = hist.sum(axis=1)
            values = np.arange(rng, dtype=np.float64) + vmin
            has = counts > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (hist @ values) / counts
                # Centred second moment (accurate): sum_r h[l, r] (v_r - mean_l)^2 / n_l.
                var = np.einsum("lr,lr->l", hist, (values[None, :] - np.nan_to_num(mean)[:, None]) ** 2) / counts
            stats["mean"] = np.where(has, mean, np.nan)
            stats["std"] = np.where(has, np.sqrt(np.maximum(var, 0.0)), np.nan)
            nz = hist > 0
            first = np.argmax(nz, axis=1)
            last = rng - 1 - np.argmax(nz[:, ::-1], axis=1)
            stats["min"] = np.where(has, first + vmin, np.nan).astype(np.float64)
            stats["max"] = np.where(has, last + vmin, np.nan).astype(np.float64)
            stats["median"] = _hist_median(hist, counts, vmin)
            return stats
    # Sorting path (float images, or integer images with a huge value range): one sort of the
    # voxels inside the requested labels, grouped by label.
    labs, vals = [], []
    for (k0, k1), lab in lab_slabs():
        keep = lab < n
        labs.append(lab[keep])
        vals.append(img[:, :, k0:k1].reshape(-1, order="F")[keep].astype(np.float64))
    lab = np.concatenate(labs) if labs else np.zeros(0, np.intp)
    val = np.concatenate(vals) if vals else np.zeros(0)
    order = np.argsort(val, kind="stable")
    lab = lab[order]
    val = val[order]
    order = np.argsort(lab, kind="stable")
    lab = lab[order]
    val = val[order]
    counts = np.bincount(lab, minlength=n)[:n]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.bincount(lab, weights=val, minlength=n)[:n]
    has = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
        dev = (val - np.nan_to_num(mean)[lab]) ** 2 if val.size else val
        var = np.bincount(lab, weights=dev, minlength=n)[:n] / counts
    stats["mean"] = np.where(has, mean, np.nan)
    stats["std"] = np.where(has, np.sqrt(var), np.nan)
    for row in np.flatnonzero(has):
        s, c = int(starts[row]), int(counts[row])
        stats["min"][row] = val[s]
        stats["max"][row] = val[s + c - 1]
        stats["median"][row] = (val[s + (c - 1) // 2] + val[s + c // 2]) / 2.0
    return stats


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def compute_volumes(seg: Volume, image: Volume | None = None, labels: dict[int, str] | None = None,
                    probabilities: np.ndarray | None = None) -> dict[str, Any]:
    """Volume report of a label map (DESIGN.md "Volume report"), all labels in one pass.

    Args:
        seg: integer label map ``(I, J, K)``; volumes use its own affine (voxel volume in mL from
            the determinant).
        image: optional image on the same grid ``(I, J, K)`` (HU for CT) for intensity statistics.
        labels: label id → structure name (0 background is not a structure unless listed). Every
            listed label appears in the report (zero voxels where absent). Default: the ids present
            in ``seg`` other than 0, named by their id (``"1"``, ``"2"``, …).
        probabilities: optional soft probabilities ``(C, I, J, K)`` (channel c for label c) on the
            same grid; adds ``volume_ml_soft`` = sum of channel ``label`` × voxel volume (mL), or
            ``None`` for labels without a channel.

    Returns:
        The report dict; numbers unrounded, NaN written as ``None``.

    Raises:
        ValueError: an image or probability array not on the label map's grid, a non-integer map.
    """
    arr = np.asarray(seg.array)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"seg must be an integer label map, not dtype {arr.dtype} ({seg.source})")
    if arr.size and arr.min() < 0:
        raise ValueError(f"seg holds negative label values ({seg.source})")
    if image is not None and not seg.same_grid(image):
        raise ValueError(f"image {image.source} (shape {image.shape}) is not on the segmentation's grid "
                         f"{seg.source} (shape {seg.shape}); resample one onto the other first")
    if labels is None:
        labels = {v: str(v) for v in present_labels(arr) if v != 0}
    labels = _check_labels(labels)
    ids = list(labels)
    shape = seg.shape
    compact = _Compact(arr, ids)
    n = compact.n

    def lab_slabs():
        for k0, k1 in _slabs(shape):
            yield (k0, k1), compact(arr[:, :, k0:k1].reshape(-1, order="F"))

    # Label × position histograms along each axis (Fortran order inside a slab: i fastest).
    I, J, K = shape
    hist_i = np.zeros((n + 1) * I, dtype=np.int64)
    hist_j = np.zeros((n + 1) * J, dtype=np.int64)
    hist_k = np.zeros((n + 1, K), dtype=np.int64)
    for (k0, k1), lab in lab_slabs():
        c = k1 - k0
        ii = np.tile(np.arange(I, dtype=np.intp), J * c)
        hist_i += np.bincount(lab * I + ii, minlength=(n + 1) * I)
        jj = np.tile(np.repeat(np.arange(J, dtype=np.intp), I), c)
        hist_j += np.bincount(lab * J + jj, minlength=(n + 1) * J)
        kk = np.repeat(np.arange(c, dtype=np.intp), I * J)
        hist_k[:, k0:k1] += np.bincount(lab * c + kk, minlength=(n + 1) * c).reshape(n + 1, c)
    hists = [hist_i.reshape(n + 1, I)[:n], hist_j.reshape(n + 1, J)[:n], hist_k[:n]]
    counts = hists[0].sum(axis=1)

    stats = _intensity_stats(lab_slabs, np.asarray(image.array), n) if image is not None else None

    soft: list[float | None] | None = None
    if probabilities is not None:
        probs = np.asarray(probabilities)
        if probs.ndim != 4 or tuple(probs.shape[1:]) != shape:
            raise ValueError(f"probabilities must be (C, I, J, K) = (C, {I}, {J}, {K}) on the segmentation's grid, "
                             f"not {tuple(probs.shape)}")
        soft = [float(np.sum(probs[i], dtype=np.float64)) * seg.voxel_volume_ml if i < probs.shape[0] else None
                for i in ids]

    affine = seg.affine
    structures: dict[str, dict[str, Any]] = {}
    for row, (label, name) in enumerate(labels.items()):
        nvox = int(counts[row])
        rec: dict[str, Any] = {"label": label, "voxels": nvox, "volume_ml": nvox * seg.voxel_volume_ml}
        if soft is not None:
            rec["volume_ml_soft"] = soft[row]
        for key in ("mean", "std", "min", "max", "median"):
            rec[f"intensity_{key}"] = _nan_to_none(float(stats[key][row])) if stats is not None else None
        if nvox:
            lo, hi, mean_idx = [], [], []
            for axis, h in enumerate(hists):
                nz = np.flatnonzero(h[row])
                lo.append(int(nz[0]))
                hi.append(int(nz[-1]))
                mean_idx.append(float(h[row] @ np.arange(h.shape[1], dtype=np.float64)) / nvox)
            centroid = affine @ np.array(mean_idx + [1.0])
            corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
            world = (affine @ corners.T)[:3]
            rec["centroid_mm"] = [float(v) for v in centroid[:3]]
            rec["bbox_mm"] = [[float(v) for v in world.min(axis=1)], [float(v) for v in world.max(axis=1)]]
            rec["bbox_voxels"] = [lo, hi]
            rec["touches_border"] = bool(any(lo[a] == 0 or hi[a] == shape[a] - 1 for a in range(3)))
        else:
            rec["centroid_mm"] = None
            rec["bbox_mm"] = None
            rec["bbox_voxels"] = None
            rec["touches_border"] = False
        structures[name] = rec
    return {
        "segmentation": seg.source,
        "image": image.source if image is not None else None,
        "spacing_mm": [float(s) for s in seg.spacing],
        "shape": list(shape),
        "orientation": seg.orientation,
        "voxel_volume_ml": seg.voxel_volume_ml,
        "structures": structures,
    }


def json_ready(obj: Any) -> Any:
    """A copy of ``obj`` with numpy scalars/arrays as Python values and NaN/inf floats as ``None``."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def volume_report_rows(report: dict[str, Any], study: str | None = None) -> list[dict[str, Any]]:
    """One flat row per structure (the CSV columns :data:`VOLUME_CSV_COLUMNS`, ``study`` first if given)."""
    rows = []
    for name, rec in report["structures"].items():
        row: dict[str, Any] = {} if study is None else {"study": study}
        row.update({"structure": name, "label": rec["label"], "voxels": rec["voxels"], "volume_ml": rec["volume_ml"],
                    "volume_ml_soft": rec.get("volume_ml_soft")})
        for key in ("mean", "std", "min", "max", "median"):
            row[f"intensity_{key}"] = rec.get(f"intensity_{key}")
        cen = rec.get("centroid_mm") or [None] * 3
        box = rec.get("bbox_mm") or [[None] * 3, [None] * 3]
        for axis, v in zip("xyz", cen):
            row[f"centroid_{axis}_mm"] = v
        for axis, v in zip("xyz", box[0]):
            row[f"bbox_min_{axis}_mm"] = v
        for axis, v in zip("xyz", box[1]):
            row[f"bbox_max_{axis}_mm"] = v
        row["touches_border"] = rec.get("touches_border")
        rows.append(row)
    return rows


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # a name from a file must not become a spreadsheet formula
    return value


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """CSV text of ``rows`` (floats at full precision, ``None`` as an empty cell)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_cell(v) for k, v in row.items()})
    return buf.getvalue()


def write_volume_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as JSON (``.json``), CSV (``.csv``, one row per structure) or HTML (``.html``).

    The file is written whole or not at all (temporary name, then rename). JSON numbers are
    unrounded; NaN/inf become ``null``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n"
    elif suffix == ".csv":
        text = csv_text(volume_report_rows(report), VOLUME_CSV_COLUMNS)
    elif suffix in (".html", ".htm"):
        from medseg.report.volumes import render_volume_report

        text = render_volume_report(report)
    else:
        raise ValueError(f"{path}: unknown report format {path.suffix!r} (use .json, .csv or .html)")
    return atomic_write_text(path, text)


def find_volume_inputs(source: str | Path, images: str | Path | None = None, *, split: str | None = None
                       ) -> list[tuple[str, Path, Path | None]]:
    """The ``(case, segmentation, image or None)`` triples of a manifest CSV or a folder of label maps.

    A manifest (DESIGN.md) gives the segmentation in its ``label`` column and the image as the
    first ``image`` path (rows without a label are skipped; ``split`` keeps one split). A folder
    gives every label map in it, with the image of the same file name (or nnU-Net's ``_0000``)
    from ``images`` when that folder is given.

    Raises:
        InputError: a missing source, a manifest error, a folder without label maps.
    """
    from medseg.errors import InputError
    from medseg.measure.evaluate import _find_image, _image_files, case_name

    source = Path(source)
    if not source.exists():
        raise InputError(source, "does not exist")
    if source.is_file() and source.suffix.lower() == ".csv":
        from medseg.manifest import read_manifest

        rows = read_manifest(source)
        out = [(r.case_id, r.label, r.images[0]) for r in rows if r.label is not None and (split is None or r.split == split)]
        if not out:
            raise InputError(source, "no manifest row has a label (segmentation)" + (f" in split {split!r}" if split else ""))
        return out
    if source.is_file():
        img = Path(images) if images is not None else None
        if img is not None and img.is_dir():
            img = _find_image(img, case_name(source))
        return [(case_name(source), source, img)]
    files = _image_files(source)
    if not files:
        raise InputError(source, "no label maps (.nii.gz, .nii, .nrrd, .mha) in this folder")
    return [(case_name(p), p, _find_image(Path(images), case_name(p)) if images is not None else None) for p in files.values()]
