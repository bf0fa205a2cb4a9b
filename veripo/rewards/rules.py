"""Rule-based rewards (docs/algorithms.md section 2): format, accuracy by problem type, length bonus.

Every reward here is a pure function returning an UNWEIGHTED score in [0, 1]; weights live in the
registry (`veripo.rewards.registry`) and in the recipe config.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction

from veripo.rewards.parsing import (
    answer_text,
    extract_choice,
    parse_number,
    strip_answer_tags,
)

# ---- format -------------------------------------------------------------------------------------
FORMAT_PATTERN = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def format_reward(response: str) -> float:
    """1.0 iff the whole response is ``<think>...</think><answer>...</answer>`` (whitespace allowed
    around and between the blocks), else 0.0.

    This is exactly the spec's regex, so it also accepts extra tags INSIDE the blocks (e.g. a repeated
    ``<answer>``); `extract_answer` then reads the last one.
    """
    return 1.0 if FORMAT_PATTERN.match(response) else 0.0


# ---- regression: mean relative accuracy ---------------------------------------------------------
# theta = k / 20 for k = 10..19, i.e. 0.50, 0.55, ..., 0.95; a prediction passes theta when
# |pred - gt| / |gt| < 1 - theta = (20 - k) / 20.
_MRA_STEPS = range(10, 20)


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """Mean over theta in {0.50, 0.55, ..., 0.95} of ``1[|pred - gt| / |gt| < 1 - theta]``.

    The comparison is exact: both numbers are read as the shortest decimal that round-trips their float
    (``0.9`` means 9/10, what the text said) and compared in rational arithmetic, so a relative error of
    exactly 0.05 or 0.1 is never "< 0.05" / "< 0.1", whatever binary rounding would have done.
    ``gt == 0`` (relative error undefined): 1.0 for an exact ``pred == 0``, else 0.0.
    Non-finite inputs score 0.0.

    >>> mean_relative_accuracy(100, 100), mean_relative_accuracy(105, 100), mean_relative_accuracy(0.9, 1)
    (1.0, 0.9, 0.8)
    """
    if not (math.isfinite(pred) and math.isfinite(gt)):
        return 0.0
    p, g = Fraction(repr(float(pred))), Fraction(repr(float(gt)))
    if g == 0:
        return 1.0 if p == 0 else 0.0
    rel = abs(p - g) / abs(g)
    passed = sum(1 for k in _MRA_STEPS if rel < Fraction(20 - k, 20))
    return passed / len(_MRA_STEPS)


# ---- accuracy by problem type -------------------------------------------------------------------
def _multiple_choice(pred: str, gt: str) -> float:
    want = extract_choice(gt)
    if want is None:
        raise ValueError(f"multiple-choice ground truth names no single option letter: {gt!r}")
    return 1.0 if extract_choice(pred) == want else 0.0


def _gt_number(gt: str) -> float:
    value = parse_number(gt)
    if value is None:
        raise ValueError(f"numeric ground truth has no number: {gt!r}")
    return value


# a math expression rather than one plain number: LaTeX, a fraction, a power, a root, pi
_MATH = re.compile(r"\\|/|\^|sqrt|\bpi\b|\u03c0")


def math_verify_equal(pred: str, gt: str) -> bool:
    """`math_verify.verify` of an answer against a ground truth, both read as LaTeX or plain expressions
    (``\\frac{24}{7}``, ``24/7``, ``3.43``). The library's signal-based timeouts only work in the main
    thread, so elsewhere they are off."""
    import threading

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    main = threading.current_thread() is threading.main_thread()
    limit = 5 if main else None
    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    def read(text: str):
        text = text.strip()
        found = parse(text if "$" in text else f"${text}$", extraction_config=config, parsing_timeout=limit)
        return found or parse(text, extraction_config=config, parsing_timeout=limit)

    gold, answer = read(gt), read(pred)
    if not gold or not answer:
        return False
    return bool(verify(gold, answer, timeout_seconds=limit))


def _numerical(pred: str, gt: str) -> float:
    """Plain numbers: equal after rounding to 2 decimals (units and thousands separators allowed). A math
    ground truth (``24/7``, ``\\frac{1}{2}``), or a math prediction that the plain rule rejects, is
    compared by `math_verify_equal`."""
    if _MATH.search(gt):
        return 1.0 if math_verify_equal(pred, gt) else 0.0
    want, got = _gt_number(gt), parse_number(pred)
    if got is not None and round(got, 2) == round(want, 2):
        return 1.0
    if _MATH.search(pred):
        return 1.0 if math_verify_equal(pred, gt) else 0.0
    return 0.0


def _regression(pred: str, gt: str) -> float:
    want, got = _gt_number(gt), parse_number(pred)
    return 0.0 if got is None else mean_relative_accuracy(got, want)


def _ocr(pred: str, gt: str) -> float:
    """1 - WER(reference=gt, hypothesis=pred), clipped to [0, 1]; case-sensitive, whitespace-collapsed."""
    import jiwer  # optional heavy dependency, imported on first use

    ref, hyp = " ".join(gt.split()), " ".join(pred.split())
    if not ref:
        return 1.0 if not hyp else 0.0
    if not hyp:
        return 0.0
    return min(1.0, max(0.0, 1.0 - jiwer.wer(ref, hyp)))


@functools.lru_cache(maxsize=1)
def _rouge():
    """(tokenizer, scorer) sharing one stemming tokenizer; built on first use."""
    from rouge_score import rouge_scorer, tokenizers  # optional heavy dependency

    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=True)
    return tokenizer, rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)


def _free_form(pred: str, gt: str) -> float:
    """Mean of ROUGE-1/2/L F-measures (rouge_score, Porter stemming).

    Identical texts after ROUGE's own tokenization score 1.0: plain ROUGE-2 is 0 for a one-word answer
    (no bigrams), which would cap a correct one-word answer at 2/3.
    """
    tokenizer, scorer = _rouge()
    tokens = tokenizer.tokenize(pred)
    if tokens == tokenizer.tokenize(gt):
        return 1.0 if tokens else 0.0
    scores = scorer.score(gt, pred)  # (target, prediction)
    return sum(s.fmeasure for s in scores.values()) / len(scores)


ACCURACY_BY_TYPE: dict[str, Callable[[str, str], float]] = {
    "multiple choice": _multiple_choice,
    "numerical": _numerical,
    "regression": _regression,
    "OCR": _ocr,
    "free-form": _free_form,
}
_TYPE_BY_FOLDED = {name.casefold(): name for name in ACCURACY_BY_TYPE}


def canonical_problem_type(problem_type: str) -> str:
    """The registered spelling of a problem type (case-insensitive); ValueError listing the known ones."""
    name = _TYPE_BY_FOLDED.get(problem_type.strip().casefold())
    if name is None:
        known = ", ".join(repr(t) for t in ACCURACY_BY_TYPE)
        raise ValueError(f"unknown problem_type {problem_type!r}; known types: {known}")
    return name


def accuracy_reward(response: str, solution: str, problem_type: str) -> float:
    """Accuracy of one rollout against its ground truth, in [0, 1] (Video-R1 conventions).

    The prediction is the ``<answer>`` span; without one it falls back (as Video-R1 does) to the text
    after the last ``</think>``, or the whole response when there is no ``</think>``: the format reward
    is what punishes missing tags. An unparsable prediction scores 0.0. `solution` may be bare or
    wrapped in ``<answer>`` tags; an unparsable ground truth (multiple choice, numerical, regression)
    raises ValueError because it is a data bug, not a bad rollout.
    """
    scorer = ACCURACY_BY_TYPE[canonical_problem_type(problem_type)]
    return scorer(answer_text(response), strip_answer_tags(solution))


# ---- length bonus (group level) -----------------------------------------------------------------
def length_bonus(
    reasoning_token_counts: Sequence[int],
    correct_flags: Sequence[bool],
    w: float = 0.2,
    l_min: int = 320,
    l_max: int = 512,
) -> list[float]:
    """Per-rollout bonus for one group of G rollouts of the same prompt: ``w`` for each correct rollout
    whose reasoning has ``l_min <= tokens <= l_max`` (both ends inclusive), 0.0 otherwise, and 0.0 for
    everyone unless MORE than one rollout in the group is correct (Video-R1).

    `reasoning_token_counts[i]` is the token count of rollout i's ``<think>`` text (the caller owns the
    tokenizer); `correct_flags[i]` is whether rollout i is correct (the caller picks the threshold for
    graded accuracies). Both have length G.

    >>> length_bonus([400, 100, 400], [True, True, False])
    [0.2, 0.0, 0.0]
    """
    if len(reasoning_token_counts) != len(correct_flags):
        raise ValueError(
            f"length_bonus: {len(reasoning_token_counts)} token counts vs {len(correct_flags)} flags"
        )
    if sum(bool(c) for c in correct_flags) <= 1:
        return [0.0] * len(correct_flags)
    return [
        w if ok and l_min <= n <= l_max else 0.0
        for n, ok in zip(reasoning_token_counts, correct_flags)
    ]
