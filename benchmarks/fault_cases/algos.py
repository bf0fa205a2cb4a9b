"""GRPO-variant config faults (issue 14): a wrong estimator, loss or correction name, or a value no run
could use, fails at once naming the key, before any model loads."""

from __future__ import annotations

from pathlib import Path

from faults import Outcome, case, classify, run_cli


def _cli(tmp: Path, *overrides: str) -> list[str]:
    return ["-m", "veripo.run", "stages=[grpo]", *overrides, f"output_dir={tmp}/run"]


@case("algos", "unknown policy loss", config_error=True)
def unknown_policy_loss(tmp: Path) -> Outcome:
    return classify(run_cli(_cli(tmp, "grpo.policy_loss=gpso"), tmp), ["grpo.policy_loss", "gspo"])


@case("algos", "unknown advantage estimator", config_error=True)
def unknown_estimator(tmp: Path) -> Outcome:
    return classify(run_cli(_cli(tmp, "grpo.adv_estimator=reinforce++"), tmp), ["grpo.adv_estimator", "reinforce_pp"])


@case("algos", "unknown rollout correction", config_error=True)
def unknown_correction(tmp: Path) -> Outcome:
    return classify(run_cli(_cli(tmp, "grpo.rollout_correction=is"), tmp), ["grpo.rollout_correction", "tis"])


@case("algos", "rollout correction threshold <= 1", config_error=True)
def correction_threshold(tmp: Path) -> Outcome:
    return classify(run_cli(_cli(tmp, "grpo.rollout_correction=tis", "grpo.rollout_correction_c=1.0"), tmp),
                    ["grpo.rollout_correction_c"])


@case("algos", "overlong buffer longer than max_tokens", config_error=True)
def overlong_buffer(tmp: Path) -> Outcome:
    return classify(run_cli(_cli(tmp, "grpo.max_tokens=8", "+preset=dapo"), tmp), ["grpo.overlong_buffer"])


@case("algos", "clip_low >= 1 outside CISPO", config_error=True)
def clip_low_without_cispo(tmp: Path) -> Outcome:
    return classify(run_cli(_cli(tmp, "grpo.clip_low=1.0"), tmp), ["clip_low", "cispo"])
