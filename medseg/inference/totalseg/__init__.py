"""TotalSegmentator's weights folder as a medseg model kind (``--model WEIGHTS --task total``).

- :mod:`.table`: the tasks (``tasks.json``: dataset ids, trainers, spacing, step size, class
  maps per part and per task), copied from TotalSegmentator's own tables by :mod:`.make_tasks`;
- :mod:`.grid`: TotalSegmentator's canonical orientation and resampling, reproduced;
- :mod:`.task`: the kind (``describe``, ``model_files``, ``load``) and :class:`.task.TaskPredictor`,
  which runs each part model (an nnU-Net v2 folder) once and merges their labels as
  TotalSegmentator does.

Nothing here imports TotalSegmentator or reaches the network: the weights must be in place
(``~/.totalsegmentator/nnunet/results/Dataset291_…/…``).
"""

from medseg.inference.totalseg.table import TaskSpec, load_tasks, task_names
from medseg.inference.totalseg.task import TaskPrediction, TaskPredictor

__all__ = ["TaskSpec", "TaskPredictor", "TaskPrediction", "load_tasks", "task_names"]
