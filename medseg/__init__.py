"""medseg: 3D medical image segmentation, from scan archives to organ volumes and lesion recall.

The package follows the pipeline: ``io`` → ``preprocess`` → ``models``/``training`` →
``inference`` → ``postprocess`` → ``measure`` → ``report``. Importing ``medseg`` is light:
heavy libraries (torch, monai, prefect) are imported by the modules that need them.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
