"""Post-processing of segmentations: dense 3D CRF, CRF-as-RNN, connected components, classical baselines.

- :func:`dense_crf` / :class:`CRFConfig`: fully connected CRF (mean field, spatial + bilateral
  kernels in mm, bilateral grid, CPU and CUDA); :func:`grid_crf`: 6/26-neighbour CRF.
- :class:`CRFasRNN`, :func:`wrap_with_crf_rnn`: the same mean field as a trainable layer.
- :func:`clean_labels` / :class:`ComponentsConfig`: largest component, small blobs, holes.
- :func:`split_and_merge`, :func:`threshold_segmentation`, :func:`otsu_segmentation`: no training.

``CRFasRNN`` and ``wrap_with_crf_rnn`` import torch; they load on first use.
"""

from medseg.postprocess.classical import otsu_segmentation, regions_to_labels, split_and_merge, threshold_segmentation
from medseg.postprocess.components import ComponentsConfig, clean_labels, component_sizes_mm3
from medseg.postprocess.crf import CRFConfig, dense_crf, estimate_noise_sigma, grid_crf

__all__ = [
    "CRFConfig",
    "dense_crf",
    "grid_crf",
    "estimate_noise_sigma",
    "CRFasRNN",
    "wrap_with_crf_rnn",
    "ComponentsConfig",
    "clean_labels",
    "component_sizes_mm3",
    "split_and_merge",
    "threshold_segmentation",
    "otsu_segmentation",
    "regions_to_labels",
]


def __getattr__(name: str):
    if name in ("CRFasRNN", "wrap_with_crf_rnn"):
        from medseg.postprocess import crf_rnn

        return getattr(crf_rnn, name)
    raise AttributeError(f"module 'medseg.postprocess' has no attribute {name!r}")
