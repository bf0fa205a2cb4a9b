"""veripo.registry: the one name -> object Registry, and every family of named things built on it."""

from __future__ import annotations

import importlib

import pytest

from veripo.registry import Registry, UnknownNameError

# (module, variable, kind in messages): every registry a config or command line names things from
REGISTRIES = [
    ("veripo.algos", "ADV_ESTIMATORS", "advantage estimator"),
    ("veripo.algos", "POLICY_LOSSES", "policy loss"),
    ("veripo.algos", "KL_ESTIMATORS", "KL estimator"),
    ("veripo.algos", "AGG_MODES", "loss aggregation mode"),
    ("veripo.algos", "PREFERENCE_LOSSES", "preference loss"),
    ("veripo.algos", "DPO_KINDS", "DPO loss kind"),
    ("veripo.rewards", "REWARDS", "reward"),
    ("verifier", "JUDGES", "judge backend"),
    ("verifier.judge", "JUDGES", "judge backend"),
    ("veripo.data.synth", "FAMILIES", "question family"),
    ("veripo.data.synth", "PROCESSES", "chain-of-thought writer"),
]


def _registry(module: str, name: str) -> Registry:
    return getattr(importlib.import_module(module), name)


def test_registration_order_is_kept_and_names_are_sorted():
    reg: Registry[int] = Registry("thing")
    for name, value in [("c", 3), ("a", 1), ("b", 2)]:
        reg.register(name)(value)
    assert reg.ordered_names() == ["c", "a", "b"]
    assert reg.items() == [("c", 3), ("a", 1), ("b", 2)]
    assert reg.names() == ["a", "b", "c"] and list(reg) == ["a", "b", "c"]
    assert len(reg) == 3 and "a" in reg and "d" not in reg and 1 not in reg
    reg.register("a")(1)  # the same object again (a module reload): no change, order kept
    assert reg.ordered_names() == ["c", "a", "b"]


def test_unknown_name_is_key_and_value_error_listing_names():
    reg: Registry[int] = Registry("thing")
    reg.register("y")(1)
    reg.register("x")(2)
    with pytest.raises(UnknownNameError, match=r"^unknown thing 'z'; known: x, y$") as e:
        reg.get("z")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    with pytest.raises(UnknownNameError, match="unknown thing"):
        reg.get(["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("")


def test_one_registry_type_everywhere():
    import veripo.algos
    import veripo.rewards

    assert veripo.algos.Registry is Registry and veripo.algos.UnknownNameError is UnknownNameError
    assert veripo.rewards.UnknownRewardError is UnknownNameError


@pytest.mark.parametrize("module, name, kind", REGISTRIES, ids=[f"{m}.{n}" for m, n, _ in REGISTRIES])
def test_every_registry_is_a_registry_and_lists_known_names(module, name, kind):
    reg = _registry(module, name)
    assert isinstance(reg, Registry) and reg.kind == kind
    names = reg.names()
    assert names and names == sorted(names) and set(reg.ordered_names()) == set(names)
    for n in names:
        assert reg.get(n) is not None
    with pytest.raises(UnknownNameError) as e:
        reg.get("no-such-name")
    assert str(e.value) == f"unknown {kind} 'no-such-name'; known: {', '.join(names)}"


def test_registered_names():
    """The names configs may use; a change here is a change to what recipes accept."""
    import veripo.algos as A
    from veripo.data import synth
    from veripo.rewards import REWARDS
    from verifier.judge import JUDGES

    assert A.ADV_ESTIMATORS.names() == ["drgrpo", "grpo", "reinforce_pp", "rloo"]
    assert A.KL_ESTIMATORS.names() == ["abs", "k1", "k2", "k3"]
    assert A.AGG_MODES.names() == ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
                                   "token-mean"]
    assert A.POLICY_LOSSES.names() == ["cispo", "gspo", "gspo_token", "ppo_clip", "vanilla"]
    assert A.ROLLOUT_CORRECTIONS.names() == ["mis", "monitor", "tis"]
    assert A.PREFERENCE_LOSSES.names() == ["cdpo", "hinge", "ipo", "leanpo", "robust", "rrpo", "sigmoid", "simpo"]
    assert {"accuracy", "format"} <= set(REWARDS.names())
    assert JUDGES.ordered_names() == ["vllm", "openai", "none"]
    # clips draw a family by index in this order: reordering it changes every generated data set
    assert synth.FAMILIES.ordered_names() == ["direction", "distance", "order", "count"]
    assert set(synth.PROCESSES.names()) == set(synth.FAMILIES.names())


def test_reward_wrappers_use_the_registry():
    from veripo.rewards import REWARDS, get_reward, registered_rewards

    assert get_reward("accuracy") is REWARDS.get("accuracy")
    assert registered_rewards() == REWARDS.names()
