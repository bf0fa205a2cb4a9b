"""Rewards by name: `REWARDS`, the registry of per-sample reward functions, and the weighted sum over them.

A reward function maps ``(response, record) -> float`` (unweighted); `record` is anything with
``.solution`` and ``.problem_type`` (e.g. `veripo.data.records.Record`). `RewardFunction` sums the
weighted components and keeps each raw component by name so it can be logged as ``reward/<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from veripo.registry import Registry, UnknownNameError
from veripo.rewards.rules import accuracy_reward, format_reward


class RecordLike(Protocol):
    solution: str
    problem_type: str


RewardFn = Callable[[str, RecordLike], float]
DEFAULT_WEIGHTS: Mapping[str, float] = {"accuracy": 1.0, "format": 0.5}

REWARDS: Registry[RewardFn] = Registry("reward")

UnknownRewardError = UnknownNameError  # the old name: an unknown reward is a KeyError and a ValueError


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register ``fn(response, record) -> float`` under `name` (names are unique)."""
    return REWARDS.register(name)


def get_reward(name: str) -> RewardFn:
    """The reward registered under `name`; `UnknownNameError` (a KeyError and a ValueError listing the
    registered rewards) otherwise."""
    return REWARDS.get(name)


def registered_rewards() -> list[str]:
    return REWARDS.names()


@register_reward("accuracy")
def _accuracy(response: str, record: RecordLike) -> float:
    return accuracy_reward(response, record.solution, record.problem_type)


@register_reward("format")
def _format(response: str, record: RecordLike) -> float:
    return format_reward(response)


@dataclass(frozen=True)
class RewardOutput:
    """One sample's reward: `total` = sum of weight * component; `components` holds the RAW
    (unweighted) score of each named reward, plus any bonus added with `with_component`."""

    total: float
    components: dict[str, float] = field(default_factory=dict)

    def with_component(self, name: str, value: float) -> "RewardOutput":
        """A copy with an already-weighted term (e.g. a group-level length bonus) added to the total."""
        if name in self.components:
            raise ValueError(f"component {name!r} is already present")
        return RewardOutput(self.total + value, {**self.components, name: value})

    def log_dict(self, prefix: str = "reward/") -> dict[str, float]:
        """``{"reward/total": ..., "reward/<name>": ...}`` for a metrics logger."""
        return {f"{prefix}total": self.total, **{prefix + k: v for k, v in self.components.items()}}


class RewardFunction:
    """Weighted sum of registered rewards; names are checked at construction, so a typo in a recipe
    fails at start-up with the registered names."""

    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self._fns = {name: get_reward(name) for name in self.weights}

    def __call__(self, response: str, record: RecordLike) -> RewardOutput:
        components = {name: float(fn(response, record)) for name, fn in self._fns.items()}
        total = sum(self.weights[name] * value for name, value in components.items())
        return RewardOutput(total, components)

    def __repr__(self) -> str:
        return f"RewardFunction({self.weights})"


def compute_rewards(
    response: str, record_like: Any, weights: Mapping[str, float] | None = None
) -> RewardOutput:
    """One sample's `RewardOutput` under `weights` (default: accuracy 1.0, format 0.5)."""
    return RewardFunction(weights)(response, record_like)
