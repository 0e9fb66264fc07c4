"""MONAI bundles as a medseg model kind (``--model BUNDLE_DIR``): the bundle's configs read as
data (never evaluated), its network and weights loaded safely, MONAI's inference reproduced.

- :mod:`medseg.inference.bundle.config`: the configs → :class:`BundleSpec` (allow-lists, ``$`` refused).
- :mod:`medseg.inference.bundle.predictor`: :class:`BundlePredictor` (MONAI's preprocessing,
  sliding window and ``Invertd`` with medseg's streamed machinery).
- :mod:`medseg.inference.bundle.folder`: the model-kind contract (:mod:`medseg.inference.kinds`).
"""

from medseg.inference.bundle.config import BundleSpec, read_bundle
from medseg.inference.bundle.predictor import BundlePredictor

__all__ = ["BundleSpec", "BundlePredictor", "read_bundle"]
