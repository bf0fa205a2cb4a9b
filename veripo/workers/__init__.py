"""Workers: plain classes (tests build them directly) and the Ray launch that wraps them.

The loop calls `launch_workers(cfg, model_path)` and gets handles with the same methods whether they
run as Ray actors or in process; `ray.remote(Cls)` is applied here, at launch, never on the class.
"""

from veripo.workers.plain import RewardScorer, RolloutWorker, TrainerWorker
from veripo.workers.group import RolloutGroup, TrainerGroup, launch_workers

__all__ = ["RewardScorer", "RolloutGroup", "RolloutWorker", "TrainerGroup", "TrainerWorker", "launch_workers"]
