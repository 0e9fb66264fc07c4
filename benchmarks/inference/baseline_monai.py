"""The script a MONAI user writes for one study (the baseline of run.py).

load → channel first → orientation → spacing → intensity window → MONAI sliding_window_inference
(Gaussian) → Invertd back to the input grid → argmax → save with nibabel.

Usage: python baseline_monai.py INPUT.nii.gz MODEL_DIR OUTPUT.nii.gz [--overlap F] [--sw-batch N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("model_dir")
    ap.add_argument("output")
    ap.add_argument("--overlap", type=float, default=None)
    ap.add_argument("--sw-batch", type=int, default=2)
    args = ap.parse_args()

    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    torch.set_num_threads(2)
    plans = json.loads((Path(args.model_dir) / "plans.json").read_text())
    spec, pre_cfg, inf = plans["model"], plans["preprocess"], plans["inference"]
    # the same network object as ours (the registry wraps MONAI's UNet); everything around it is MONAI's
    from medseg.models import create_model

    net = create_model(spec["name"], spec["spatial_dims"], spec["in_channels"], spec["out_channels"], **spec["options"])
    net.load_state_dict(torch.load(Path(args.model_dir) / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    lo, hi = pre_cfg["intensity"][0]["window"]
    pre = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes=pre_cfg["orientation"]),
        Spacingd(keys="image", pixdim=pre_cfg["target_spacing"], mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
    ])
    data = pre({"image": args.input})
    overlap = inf["overlap"] if args.overlap is None else args.overlap
    with torch.inference_mode():
        pred = sliding_window_inference(data["image"][None], tuple(inf["patch_size"]), args.sw_batch, net,
                                        overlap=overlap, mode="gaussian")
    data["pred"] = pred[0]
    post = Compose([
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
    ])
    out = post(data)
    seg = np.asarray(out["pred"][0]).astype(np.uint8)
    affine = np.asarray(data["image"].meta["original_affine"])
    nib.save(nib.Nifti1Image(seg, affine), args.output)


if __name__ == "__main__":
    main()
