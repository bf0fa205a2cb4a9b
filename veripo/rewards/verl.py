"""verl-compatible scoring entry point (``custom_reward_function.path`` / ``.name = compute_score``)."""

from __future__ import annotations

import re
from typing import Any

from veripo.rewards.parsing import strip_answer_tags
from veripo.rewards.registry import DEFAULT_WEIGHTS
from veripo.rewards.rules import accuracy_reward, format_reward

_SINGLE_LETTER = re.compile(r"\s*[(\[]?\s*[A-Za-z]\s*[)\]]?\s*\.?\s*")
_PLAIN_NUMBER = re.compile(r"\s*[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?\s*")


def infer_problem_type(ground_truth: str) -> str:
    """Guess a problem type from a bare or tagged ground truth: one option letter -> "multiple choice",
    a plain number -> "numerical", anything else -> "free-form"."""
    gt = strip_answer_tags(ground_truth)
    if _SINGLE_LETTER.fullmatch(gt):
        return "multiple choice"
    if any(ch.isdigit() for ch in gt) and _PLAIN_NUMBER.fullmatch(gt):
        return "numerical"
    return "free-form"


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None
) -> float:
    """verl reward hook: ``accuracy + format_weight * format`` for one decoded response, as a float.

    `problem_type` is ``extra_info["problem_type"]`` when given, else inferred from the ground truth
    (`infer_problem_type`). ``extra_info["format_weight"]`` overrides the default 0.5. `data_source` is
    accepted for verl's signature and ignored: dispatch is by problem type, never by data source.
    """
    info = extra_info or {}
    problem_type = info.get("problem_type") or infer_problem_type(ground_truth)
    format_weight = float(info.get("format_weight", DEFAULT_WEIGHTS["format"]))
    accuracy = accuracy_reward(solution_str, ground_truth, problem_type)
    return accuracy + format_weight * format_reward(solution_str)
