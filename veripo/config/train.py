"""Section ``train``: the policy engine (`veripo.train.PolicyEngine`); a bad value fails at construction,
naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from veripo.config.convert import ConfigError, from_dict

LR_SCHEDULES = ("constant", "cosine", "linear")
DTYPES = ("float32", "bfloat16")
STRATEGIES = ("single", "fsdp2")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _fail(cls: type, name: str, rule: str, value: Any) -> None:
    raise ConfigError(f"{cls.__name__}.{name} {rule}, got {value!r}", name)  # from_dict: key train.NAME


def _one_of(cls: type, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(cls, name, f"must be one of {', '.join(allowed)}", value)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (via peft) on the named Linear sub-modules; the base weights stay frozen."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    last_layers: int | None = None  # adapters only in the top N decoder layers (None: all). On a CPU this
    # cuts the backward pass to those layers: the frozen layers below need no gradient at all.

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            _fail(type(self), "rank", "must be an integer >= 1", self.rank)
        if not self.alpha > 0:
            _fail(type(self), "alpha", "must be > 0", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            _fail(type(self), "dropout", "must be in [0, 1)", self.dropout)
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            _fail(type(self), "target_modules", "must be a non-empty list of module names", self.target_modules)
        object.__setattr__(self, "target_modules", targets)
        if self.last_layers is not None and (not isinstance(self.last_layers, int) or self.last_layers < 1):
            _fail(type(self), "last_layers", "must be an integer >= 1 or None (all layers)", self.last_layers)


@dataclass(frozen=True)
class TrainConfig:
    """How the policy engine optimises.

    Master weights and optimizer state are always float32; ``dtype`` is the compute dtype (bfloat16:
    autocast in a single process, FSDP2's mixed-precision policy with float32 gradient reduction).
    The LR rises linearly over ``warmup_steps`` (step s uses ``lr * (s + 1) / warmup_steps``), then
    stays (``constant``) or decays to ``lr * min_lr_ratio`` at ``total_steps`` (``cosine``, ``linear``).
    AdamW decays only parameters with two or more dimensions (not biases and norms).
    """

    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0          # max global grad norm; None: no clipping (the norm is still reported)
    micro_batch_size: int = 1              # sequences per forward/backward on one rank
    gradient_checkpointing: bool = False
    dtype: str = "float32"                 # compute dtype
    strategy: str = "single"
    lora: LoraConfig | None = None
    seed: int = 0
    device: str = "auto"                   # auto: the rank's GPU when CUDA is available, else CPU
    attn_implementation: str | None = None  # passed to from_pretrained (e.g. "flash_attention_2" on GPU)
    logprob_chunk_size: int | None = None  # tokens per chunk in token_logprobs (None: the library's default)

    def __post_init__(self) -> None:
        cls = type(self)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            _fail(cls, "lr", "must be a finite number > 0", self.lr)
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            _fail(cls, "betas", "must be two numbers in [0, 1)", self.betas)
        object.__setattr__(self, "betas", betas)
        if not self.eps > 0:
            _fail(cls, "eps", "must be > 0", self.eps)
        if not self.weight_decay >= 0:
            _fail(cls, "weight_decay", "must be >= 0", self.weight_decay)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            _fail(cls, "warmup_steps", "must be an integer >= 0", self.warmup_steps)
        _one_of(cls, "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_schedule != "constant" and (self.total_steps is None or self.total_steps <= self.warmup_steps):
            _fail(cls, "total_steps", f"must be > warmup_steps ({self.warmup_steps}) for lr_schedule="
                  f"{self.lr_schedule}", self.total_steps)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            _fail(cls, "min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)
        if self.grad_clip is not None and not self.grad_clip > 0:
            _fail(cls, "grad_clip", "must be > 0 or None (no clipping)", self.grad_clip)
        if not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1:
            _fail(cls, "micro_batch_size", "must be an integer >= 1", self.micro_batch_size)
        _one_of(cls, "dtype", self.dtype, DTYPES)
        _one_of(cls, "strategy", self.strategy, STRATEGIES)
        _one_of(cls, "device", self.device, DEVICES)
        if isinstance(self.lora, Mapping):
            object.__setattr__(self, "lora", LoraConfig(**self.lora))
        elif self.lora is not None and not isinstance(self.lora, LoraConfig):
            _fail(cls, "lora", "must be None, a LoraConfig or a mapping of its fields", self.lora)
        if not isinstance(self.seed, int) or self.seed < 0:
            _fail(cls, "seed", "must be an integer >= 0", self.seed)
        if self.total_steps is not None and (not isinstance(self.total_steps, int) or self.total_steps < 1):
            _fail(cls, "total_steps", "must be an integer >= 1 or None", self.total_steps)
        if self.logprob_chunk_size is not None and self.logprob_chunk_size < 1:
            _fail(cls, "logprob_chunk_size", "must be >= 1 or None", self.logprob_chunk_size)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], prefix: str = "train") -> "TrainConfig":
        """`veripo.config.from_dict` for this section (an unknown key names the closest known ones)."""
        return from_dict(cls, dict(values), prefix)
