"""Benchmark: one-pass volume report vs the per-label-mask loop, on a 512×512×500 label map.

Run from the repository root::

    python benchmarks/volumes/run.py [--shape 512 512 500] [--out benchmarks/volumes/results.json]

The label map is the real TotalSegmentator segmentation of ../shared/data/ct_abdomen
(``example_ct_sm_seg``, 40 structures present) resampled by nearest neighbour to the target shape,
plus a ball for each of the other 77 of its 117 labels, so every label is present; the image is the
matching CT (int16 HU) resampled the same way. (Synthetic blobs are used when the data is absent.)

Three implementations run side by side in one process, each measured for wall time, CPU time
(``time.process_time``: less sensitive than wall time to other jobs on a shared machine) and peak
temporary memory (``tracemalloc``, which sees numpy's allocations; the inputs themselves are not
counted):

- ``medseg_one_pass``: :func:`medseg.measure.volumes.compute_volumes` (voxels, mL, mean/std/min/
  max/median, centroid, bounding box, border contact for every label).
- ``per_label_loop_full``: the loop tools of the field use, ``for l in labels: mask = seg == l``,
  computing the same numbers (``img[mask]`` statistics, ``np.nonzero(mask)`` centroid and box).
- ``per_label_loop_volume_mean``: the same loop computing only the volume and mean intensity
  (what TotalSegmentator's ``--statistics`` writes): less work than ours, still one pass per label.

The outputs of the full loop and of medseg are compared (they must agree) before timings are written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from medseg.io import Volume  # noqa: E402
from medseg.measure.volumes import compute_volumes  # noqa: E402


def make_data(shape: tuple[int, int, int], seed: int = 0):
    data = ROOT.parent / "shared" / "data" / "ct_abdomen"
    rng = np.random.default_rng(seed)
    if (data / "example_ct_sm_seg.nii.gz").exists():
        from medseg.io import read_label, read_volume
        from medseg.plans import read_labels

        seg0 = read_label(data / "example_ct_sm_seg.nii.gz").array
        img0 = read_volume(data / "example_ct_sm.nii.gz").array
        labels = read_labels(data / "labels.json")
        source = "ct_abdomen/example_ct_sm (nearest-neighbour resampled) + balls for absent labels"
    else:
        seg0 = rng.integers(0, 40, (64, 64, 32)).astype(np.uint8)
        img0 = rng.normal(0, 200, (64, 64, 32)).astype(np.int16)
        labels = {i: f"label_{i}" for i in range(1, 118)}
        source = "synthetic"
    idx = [np.minimum((np.arange(n) * seg0.shape[a] / n).astype(np.intp), seg0.shape[a] - 1) for a, n in enumerate(shape)]
    seg = np.asfortranarray(seg0[np.ix_(*idx)])
    img = np.asfortranarray(img0[np.ix_(*idx)])
    present = set(np.unique(seg).tolist())
    absent = [l for l in labels if l not in present]
    for i, l in enumerate(absent):  # a small ball of every absent label somewhere in the volume
        c = [int(rng.integers(20, n - 20)) for n in shape]
        r = int(rng.integers(4, 12))
        sl = tuple(slice(ci - r, ci + r + 1) for ci in c)
        g = np.indices((2 * r + 1,) * 3) - r
        ball = (g ** 2).sum(axis=0) <= r * r
        seg[sl][ball] = l
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    return Volume(seg, affine, "seg"), Volume(img, affine, "img"), labels, source


def per_label_loop_full(seg: Volume, img: Volume, labels: dict[int, str]) -> dict:
    s, im, aff = seg.array, img.array, seg.affine
    out = {}
    for label, name in labels.items():
        mask = s == label
        n = int(np.count_nonzero(mask))
        rec = {"voxels": n, "volume_ml": n * seg.voxel_volume_ml}
        if n:
            vals = im[mask].astype(np.float64)
            idx = np.nonzero(mask)
            rec.update(intensity_mean=float(vals.mean()), intensity_std=float(vals.std()), intensity_min=float(vals.min()),
                       intensity_max=float(vals.max()), intensity_median=float(np.median(vals)),
                       centroid_mm=(aff @ np.array([i.mean() for i in idx] + [1.0]))[:3].tolist(),
                       bbox_voxels=[[int(i.min()) for i in idx], [int(i.max()) for i in idx]])
        out[name] = rec
    return out


def per_label_loop_volume_mean(seg: Volume, img: Volume, labels: dict[int, str]) -> dict:
    s, im = seg.array, img.array
    out = {}
    for label, name in labels.items():
        mask = s == label
        n = int(np.count_nonzero(mask))
        out[name] = {"volume_ml": n * seg.voxel_volume_ml, "intensity_mean": float(im[mask].mean()) if n else 0.0}
    return out


def measure(fn, *args):
    tracemalloc.start()
    t, c = time.perf_counter(), time.process_time()
    result = fn(*args)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, (seconds, cpu), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 500])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = ap.parse_args()
    shape = tuple(args.shape)
    seg, img, labels, source = make_data(shape)
    n_present = int((np.bincount(seg.array.ravel(order="F"), minlength=256)[list(labels)] > 0).sum())
    print(f"label map {shape}, {len(labels)} labels ({n_present} present), {source}", flush=True)
    ours, t_ours, m_ours = measure(compute_volumes, seg, img, labels)
    print(f"medseg one pass: {t_ours[0]:.2f} s wall, {t_ours[1]:.2f} s CPU, peak {m_ours / 2**20:.0f} MiB", flush=True)
    full, t_full, m_full = measure(per_label_loop_full, seg, img, labels)
    print(f"per-label loop (same outputs): {t_full[0]:.2f} s wall, {t_full[1]:.2f} s CPU, peak {m_full / 2**20:.0f} MiB",
          flush=True)
    light, t_light, m_light = measure(per_label_loop_volume_mean, seg, img, labels)
    print(f"per-label loop (volume + mean only): {t_light[0]:.2f} s wall, {t_light[1]:.2f} s CPU, "
          f"peak {m_light / 2**20:.0f} MiB", flush=True)
    # The numbers must agree before the timings mean anything.
    for name, ref in full.items():
        rec = ours["structures"][name]
        assert rec["voxels"] == ref["voxels"], name
        if ref["voxels"]:
            for key in ("intensity_mean", "intensity_std", "intensity_min", "intensity_max", "intensity_median"):
                assert abs(rec[key] - ref[key]) <= 1e-6 * max(1.0, abs(ref[key])), (name, key, rec[key], ref[key])
            assert np.allclose(rec["centroid_mm"], ref["centroid_mm"], atol=1e-6), name
            assert rec["bbox_voxels"] == ref["bbox_voxels"], name
    results = {
        "shape": list(shape), "voxels": int(np.prod(shape)), "labels": len(labels), "labels_present": n_present,
        "data": source,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "note": "2-core machine shared with other jobs: absolute times are noisy, ratios from this one run count"},
        "medseg_one_pass": {"wall_s": t_ours[0], "cpu_s": t_ours[1], "peak_temp_mib": m_ours / 2**20},
        "per_label_loop_full": {"wall_s": t_full[0], "cpu_s": t_full[1], "peak_temp_mib": m_full / 2**20},
        "per_label_loop_volume_mean": {"wall_s": t_light[0], "cpu_s": t_light[1], "peak_temp_mib": m_light / 2**20},
        "cpu_ratio_full_loop_over_ours": t_full[1] / t_ours[1],
        "cpu_ratio_volume_mean_loop_over_ours": t_light[1] / t_ours[1],
        "wall_ratio_full_loop_over_ours": t_full[0] / t_ours[0],
        "wall_ratio_volume_mean_loop_over_ours": t_light[0] / t_ours[0],
        "outputs_agree": True,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
