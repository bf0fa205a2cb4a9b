"""Section ``preference``: the preference stage (DPO family, RRPO, LeanPO, SimPO)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from veripo.config.convert import ConfigError, choice, registry_choices, registry_names
from veripo.config.names import SMOOTHED_PREFERENCE_LOSSES


def _loss_spec(name: str):
    """The registered `veripo.algos.PreferenceLoss` (imports the torch losses: for `hparams`, at run time)."""
    from veripo.algos.preference import PREFERENCE_LOSSES

    if name not in PREFERENCE_LOSSES:
        _fail("loss", f"must be one of {', '.join(PREFERENCE_LOSSES.names())}", name)
    return PREFERENCE_LOSSES.get(name)


def _uses_label_smoothing(name: str) -> bool:
    """Whether loss `name` reads label_smoothing, without importing torch: the live registry when the
    losses are already imported (a plugin loss counts), else `veripo.config.names`."""
    mod = sys.modules.get("veripo.algos.preference")
    if mod is not None and name in mod.PREFERENCE_LOSSES:
        return mod.PREFERENCE_LOSSES.get(name).uses_label_smoothing
    return name in SMOOTHED_PREFERENCE_LOSSES


def _fail(name: str, rule: str, value: Any) -> None:
    raise ConfigError(f"preference.{name} {rule}, got {value!r}", f"preference.{name}")


@dataclass(frozen=True)
class PreferenceConfig:
    """The preference stage (recipe section ``preference``).

    beta / label_smoothing: None takes the loss's default (beta 0.1 for the DPO family and RRPO, 2.0
    for LeanPO and SimPO; smoothing 0.0, LeanPO 0.1). label_smoothing is used by robust, cdpo and
    leanpo; gamma (the reward margin) by leanpo and simpo; alpha (token-wise KL) and min_match
    (phrase alignment) by rrpo; ipo normalises log-ratios by response token counts. sft_weight adds
    ``sft_weight * NLL(y+)`` (token mean). batch_size is pairs per optimizer step; steps (when set)
    overrides epochs. pairs: a pair file (the verifier's, or LLaVA-Hound-style external JSONL); null
    means the verifier's output in the loop. max_response_tokens truncates each response.
    """

    loss: str = choice("sigmoid", registry_choices("veripo.algos", "PREFERENCE_LOSSES"))
    beta: float | None = None
    label_smoothing: float | None = None
    gamma: float = 0.5
    alpha: float = 0.01
    min_match: int = 1
    sft_weight: float = 0.0
    lr: float = 1e-6
    warmup_steps: int = 0
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 8
    pairs: str | None = None
    max_pairs: int | None = None
    max_response_tokens: int | None = None
    shuffle: bool = True

    def __post_init__(self) -> None:
        known = registry_names("veripo.algos", "PREFERENCE_LOSSES")
        if self.loss not in known:
            _fail("loss", f"must be one of {', '.join(known)}", self.loss)
        if self.beta is not None and not (isinstance(self.beta, (int, float)) and self.beta > 0):
            _fail("beta", "must be > 0 (or null for the loss's default)", self.beta)
        eps = self.label_smoothing
        if eps is not None:
            if not _uses_label_smoothing(self.loss) and eps != 0:
                users = ", ".join(SMOOTHED_PREFERENCE_LOSSES)
                _fail("label_smoothing", f"is used by {users} only (loss={self.loss}); set it to null", eps)
            high_ok = eps <= 0.5 if self.loss == "cdpo" else eps < 0.5
            if not (0 <= eps and high_ok):
                _fail("label_smoothing", "must be in [0, 0.5) ([0, 0.5] for cdpo)", eps)
        if not math.isfinite(self.gamma):
            _fail("gamma", "must be a finite number", self.gamma)
        if not self.alpha >= 0:
            _fail("alpha", "must be >= 0", self.alpha)
        if not isinstance(self.min_match, int) or self.min_match < 1:
            _fail("min_match", "must be an integer >= 1", self.min_match)
        if not self.sft_weight >= 0:
            _fail("sft_weight", "must be >= 0", self.sft_weight)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _fail("lr", "must be a finite number > 0", self.lr)
        for name in ("warmup_steps", "epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                _fail(name, "must be an integer >= 0", getattr(self, name))
        for name in ("steps", "max_pairs", "max_response_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                _fail(name, "must be null or an integer >= 1", v)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            _fail("batch_size", "must be an integer >= 1 (pairs per step)", self.batch_size)

    def hparams(self):
        """The loss's `veripo.algos.PreferenceHParams`, with its defaults where this section says null."""
        from veripo.algos.preference import PreferenceHParams  # see _loss_spec

        spec = _loss_spec(self.loss)
        eps = spec.default_label_smoothing if self.label_smoothing is None else self.label_smoothing
        return PreferenceHParams(beta=self.beta if self.beta is not None else spec.default_beta,
                                 label_smoothing=float(eps), gamma=float(self.gamma), alpha=float(self.alpha),
                                 sft_weight=float(self.sft_weight))

    def total_steps(self, n_pairs: int) -> int:
        return self.steps if self.steps is not None else self.epochs * math.ceil(n_pairs / self.batch_size)
