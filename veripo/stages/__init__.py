"""The stages an iteration runs, each one module with the same shape (`veripo.stages.base.Stage`):
``run(ctx, out, start_step) -> outputs`` over one `StageContext`.

`STAGES` is the name -> stage table the loop reads; ``veripo.config.STAGES`` (the names a recipe may
list) must match it (a test checks). To add a stage, write a class with ``name``, ``trains`` and ``run``
in its own module and add it here (docs/architecture.md walks through an example).
"""

from veripo.stages.base import Progress, Stage, StageContext
from veripo.stages.eval import EvalStage
from veripo.stages.grpo import GRPOStage
from veripo.stages.preference import PreferenceStage
from veripo.stages.sft import SFTStage
from veripo.stages.verify import VerifyStage

STAGES: dict[str, type] = {s.name: s for s in (SFTStage, GRPOStage, VerifyStage, PreferenceStage, EvalStage)}


def stage_for(stage_id_name: str) -> Stage:
    """The stage that runs a plan entry: ``grpo`` -> `GRPOStage`, ``eval_grpo`` -> `EvalStage`."""
    kind = "eval" if stage_id_name.startswith("eval_") else stage_id_name
    return STAGES[kind]()


__all__ = ["STAGES", "EvalStage", "GRPOStage", "PreferenceStage", "Progress", "SFTStage", "Stage", "StageContext",
           "VerifyStage", "stage_for"]
