"""The policy engine: one FSDP2 (or single-process) trainer that takes a loss callable.

GRPO, SFT and every preference loss share it: `PolicyEngine.train_step(batch, loss_fn)` with a
`PolicyBatch`, `logprobs` for old and reference log-probs, `named_parameters_for_sync` for vLLM,
`save_checkpoint`/`load_checkpoint` and `export_hf`. `veripo.train.engine` documents the loss contract.
"""

from veripo.train.batch import PolicyBatch
from veripo.config import LoraConfig, TrainConfig
from veripo.train.dist import (destroy_process_group, free_port, init_process_group, init_process_group_from_env,
                               run_on_local_ranks)
from veripo.train.engine import LossFn, PolicyEngine, StepContext

__all__ = [
    "LoraConfig", "LossFn", "PolicyBatch", "PolicyEngine", "StepContext", "TrainConfig", "destroy_process_group",
    "free_port", "init_process_group", "init_process_group_from_env", "run_on_local_ranks",
]
