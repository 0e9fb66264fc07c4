"""nnU-Net v2 trained-model folders as medseg models.

A folder ``<Trainer>__<Plans>__<configuration>/`` with ``dataset.json``, ``plans.json`` and
``fold_K/checkpoint_final.pth`` (or ``checkpoint_best.pth``) runs with nnU-Net's own
preprocessing and export, reproduced here without nnU-Net's code or its pickles:

- :mod:`~medseg.inference.nnunet.config`: ``plans.json`` + ``dataset.json`` read as data (the old
  plans format of TotalSegmentator's weights included), the network built from an allow-list of
  classes and ops, checkpoints loaded with ``weights_only=True`` and an allow-list of numpy types;
- :mod:`~medseg.inference.nnunet.preprocess`: transpose, crop to non-zero, normalisation per
  channel, resampling (separate-z for anisotropic spacing) — nnU-Net's default preprocessor;
- :mod:`~medseg.inference.nnunet.predictor`: nnU-Net's sliding-window placement and Gaussian,
  logits averaged over mirrorings and folds, and the export (logits resampled back, softmax or
  sigmoid regions, the crop box, the inverse transpose) streamed slab by slab, so memory stays
  bounded by the window depth however many classes there are;
- :mod:`~medseg.inference.nnunet.folder`: the model-kind contract of :mod:`medseg.inference.kinds`.
"""
