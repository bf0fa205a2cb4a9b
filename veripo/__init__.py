"""veripo: train video LLMs with the VerIPO loop (GRPO -> rollout-aware verifier -> preference optimisation)."""

from veripo import compat as _compat

_compat.install()

__version__ = "0.1.0"
