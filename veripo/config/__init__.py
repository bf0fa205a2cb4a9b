"""Every config section of a run, each a typed frozen dataclass, and the one converter.

    from veripo.config import RunConfig
    cfg = RunConfig.from_dict(plain_recipe_dict)     # ConfigError naming the key and the fix

- `convert`: `from_dict` (the one converter), `to_dict`, `ConfigError` (the one error type), `choice`
  and `registry_choices` (allowed values read from a `veripo.registry.Registry`);
- `run`: `RunConfig` and the run-level sections (model, data, sft, grpo, verify, eval, prune,
  checkpoint, ray, logging), the stage-list rules and `stage_plan`;
- `train`: `TrainConfig`, `LoraConfig` (the policy engine); `rollout`: `RolloutConfig`;
  `preference`: `PreferenceConfig`; `verifier`: `VerifierConfig` (``verify.config``);
  `video`: `VideoConfig` (``data.video``).

Importing this package, and validating a recipe, imports no torch: the names of registries that live
next to torch code are declared in `veripo.config.names` (see there for the pattern a new registry follows).
"""

from veripo.config.convert import ConfigError, allowed_values, choice, from_dict, registry_choices, to_dict
from veripo.config.preference import PreferenceConfig
from veripo.config.rollout import RolloutConfig
from veripo.config.run import (
    STAGES,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    GRPOConfig,
    LoggingConfig,
    ModelConfig,
    PruneConfig,
    RayConfig,
    RunConfig,
    SFTConfig,
    SynthConfig,
    VerifyConfig,
    check_stages,
    stage_plan,
)
from veripo.config.train import LoraConfig, TrainConfig
from veripo.config.verifier import VERIFIER_PAIR_TYPES, VerifierConfig
from veripo.config.video import VIDEO_R1, VideoConfig

__all__ = [
    "STAGES", "VERIFIER_PAIR_TYPES", "VIDEO_R1", "CheckpointConfig", "ConfigError", "DataConfig", "EvalConfig", "GRPOConfig",
    "LoggingConfig", "LoraConfig", "ModelConfig", "PreferenceConfig", "PruneConfig", "RayConfig", "RolloutConfig",
    "RunConfig", "SFTConfig", "SynthConfig", "TrainConfig", "VerifierConfig", "VerifyConfig", "VideoConfig",
    "allowed_values", "check_stages", "choice", "from_dict", "registry_choices", "stage_plan", "to_dict",
]
