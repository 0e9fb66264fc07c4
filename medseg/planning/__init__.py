"""Dataset fingerprint → training config: nnU-Net's experiment planning, with medseg's departures.

- :mod:`medseg.planning.fingerprint`: :func:`read_dataset` (manifest CSV or MSD / nnU-Net
  ``dataset.json``) and :func:`compute_fingerprint` (spacing, shape, orientation per case;
  foreground intensity statistics per channel; voxels, volumes and components per class).
- :mod:`medseg.planning.plan`: :func:`plan_training` (the decisions, each with its reason) and
  :func:`plan_dataset` (what ``medseg plan DATASET -o CONFIG.yaml`` runs: fingerprint, plan,
  ``CONFIG.yaml`` + ``CONFIG.fingerprint.json``).
"""

from medseg.planning.fingerprint import (
    CaseFingerprint,
    ChannelStats,
    ClassCount,
    Dataset,
    Fingerprint,
    compute_fingerprint,
    read_dataset,
    write_fingerprint,
)
from medseg.planning.plan import PlanBudget, PlanOutputs, TrainingPlan, plan_dataset, plan_training

__all__ = ["Dataset", "Fingerprint", "CaseFingerprint", "ChannelStats", "ClassCount", "read_dataset",
           "compute_fingerprint", "write_fingerprint", "PlanBudget", "PlanOutputs", "TrainingPlan", "plan_training",
           "plan_dataset"]
