"""Inference: a model directory loaded once, sliding windows on GPU or CPU, results on the input's grid.

>>> from medseg.inference import Predictor, segment_file             # doctest: +SKIP
>>> from medseg.io import read_volume
>>> predictor = Predictor.from_model_dir("runs/phantom/model", device="auto")
>>> prediction = predictor.predict(read_volume("ct.nii.gz"), keep_probabilities=True)
>>> prediction.labels            # uint8 Volume: the input's shape and affine
>>> prediction.probabilities()   # (X, Y, Z, C) float16, computed when asked for
>>> segment_file("ct.nii.gz", predictor, "seg.nii.gz", volumes_path="volumes.json")
>>> segment_file(["flair.nii.gz", "t1c.nii.gz"], predictor, "seg.nii.gz",   # one file per channel
...              options=StudyOptions.for_model(predictor.info, crf=True, tta=True))

Pipeline per study: the model's own preprocessing (orientation, spacing, intensity) →
Gaussian-blended sliding windows, streamed in slabs along the last axis (the accumulator never
holds the whole study's class scores) → per-class trilinear resampling back to the input grid,
slab by slab, with the argmax taken at once → the inverse orientation. Then the study pipeline
(:mod:`medseg.inference.pipeline`): CRF → components (with the model folder's post-processing
chosen by cross-validation) → volumes, the same for ``medseg segment``, ``medseg batch`` and the
flows. A medseg model folder with folds (``fold_*/``) runs as one ensemble (softmax averaged).

Device, autocast and CPU threads follow :mod:`medseg.runtime` (the predictor holds a
:class:`~medseg.runtime.Runtime` and activates it around its work).
"""

from medseg.inference.pipeline import (
    DEFAULT_COMPONENTS,
    StudyOptions,
    StudyOutput,
    cached_predictor,
    run_study,
    write_study_outputs,
)
from medseg.inference.predictor import Prediction, Predictor
from medseg.inference.segment import segment_file

__all__ = ["Predictor", "Prediction", "segment_file", "StudyOptions", "StudyOutput", "run_study",
           "write_study_outputs", "cached_predictor", "DEFAULT_COMPONENTS"]
