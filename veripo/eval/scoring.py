"""Benchmark scoring as the published scripts score: VerIPO's ``calculate_score.py`` and Video-R1's
``eval_bench.py`` (rules re-implemented here from their description; see docs/evaluation.md).

VerIPO (`score_verIPO`), per record, by the ground truth:

* an uppercase letter (multiple choice): the text inside the first ``<answer>...</answer>`` (empty
  without one) is lowercased; correct iff it CONTAINS the ground-truth letter and none of the other
  letters a..j anywhere (so ``$B$`` and ``(B)`` count, ``B. the blue ball`` does not: "e", "h", "b", "a"
  are letters too);
* otherwise, on VSI-Bench (`mra=True`): the mean relative accuracy of the answer's first
  space-separated token (trailing '.' and '$' removed) over thresholds 0.50, 0.55, ..., 0.95,
  passing when ``|pred - gt| / gt <= 1 - threshold``; an empty or unparsable answer, or gt == 0, scores 0;
* otherwise (numbers, math): ``math_verify.verify(parse(output), parse("$gt$"))`` with the whole model
  output parsed by the string, LaTeX and expression extractors (in that order), and the ground truth
  ``['24/7', '3.429', '3.43']`` read as ``24/7``.

The benchmark score is the sum over records divided by ALL records (a record that fails to parse
counts 0).

Video-R1 (`score_video_r1`), per record, by ``problem_type``: the prediction is the first
``<answer>`` span (the whole output without one), the ground truth the ``<answer>`` span of
``solution`` (a bare solution is taken as it is: veripo's records allow both forms). Multiple choice:
exact string match; numerical: both or neither have '.' or ',', then equal after rounding to 2
decimals; regression: MRA in float32 with ``|pred - gt| / (|gt| + 1e-8) < 1 - threshold``; OCR:
``1 - WER`` clipped to [0, 1] (word edit distance / reference words); free-form: the mean of
ROUGE-1/2/L F-measures (stemmed). Video-R1's evaluation script gives OCR and free-form 0; its reward
function scores them as here, which is what `score_video_r1` does (``ocr_free_form="reward"``; pass
``"eval"`` for the script's zeros).
"""

from __future__ import annotations

import functools
import re
from typing import Any

# ---- VerIPO ------------------------------------------------------------------------------------
_VERIPO_LETTERS = "abcdefghij"
_FIRST_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_VERIPO_FRACTION_GT = ("['24/7', '3.429', '3.43]", "['24/7', '3.429', '3.43']")


def first_answer_span(output: str) -> str:
    """The text of the first ``<answer>...</answer>`` pair, stripped; '' without one."""
    m = _FIRST_ANSWER.search(output)
    return m.group(1).strip() if m else ""


def is_choice_answer(ground_truth: str) -> bool:
    """VerIPO's test for a multiple-choice ground truth: letters only, all uppercase."""
    return ground_truth.isalpha() and ground_truth.isupper()


def _veripo_choice(output: str, gt: str) -> float:
    answer = first_answer_span(output).replace("</answer>", "").replace("<answer>", "").strip().lower()
    want = gt.lower()
    if want not in answer:
        return 0.0
    others = [c for c in _VERIPO_LETTERS if c != want]
    return 1.0 if all(c not in answer for c in others) else 0.0


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def veripo_mra(pred: float, target: float) -> float:
    """VerIPO's mean relative accuracy: thresholds ``linspace(0.5, 0.95, 10)``, pass when
    ``|pred - target| / target <= 1 - threshold`` (float64; target 0 raises ZeroDivisionError)."""
    import numpy as np

    start, end, interval = 0.5, 0.95, 0.05
    points = np.linspace(start, end, int((end - start) / interval + 2))
    dist = abs(pred - target) / target  # a Python float: ZeroDivisionError on 0, as the script
    return float((dist <= 1 - points).mean())


def _veripo_mra_answer(output: str, gt: str) -> float:
    answer = first_answer_span(output)
    if answer == "":
        return 0.0
    answer = answer.replace("</answer>", "").replace("<answer>", "").strip().strip("$")
    first = answer.split(" ")[0].rstrip(".").strip()
    pred, target = _to_float(first), _to_float(gt.strip("$").strip())
    if pred is None or target is None:
        return 0.0
    try:
        return veripo_mra(pred, target)
    except ZeroDivisionError:
        return 0.0


@functools.lru_cache(maxsize=1)
def _math_verify():
    try:
        import math_verify
    except ImportError as e:  # a dependency of veripo (pyproject); only a broken install lacks it
        raise ImportError("math-verify is not installed. Fix: pip install \"math-verify[antlr4_9_3]\"") from e
    return math_verify


def math_equal(output: str, ground_truth: str) -> bool:
    """VerIPO's math check: `math_verify.verify` of the whole `output` against ``$ground_truth$``."""
    mv = _math_verify()
    gold = mv.parse(f"${ground_truth}$")
    answer = mv.parse(output, extraction_config=[mv.StringExtractionConfig(), mv.LatexExtractionConfig(),
                                                 mv.ExprExtractionConfig()])
    # argument order as the published script (prediction first); verify is symmetric for numbers
    return bool(mv.verify(answer, gold))


def score_verIPO(output: str, ground_truth: Any, mra: bool = False) -> float:
    """One record's score by VerIPO's rules (module docstring); `mra`: the benchmark is VSI-Bench."""
    gt = str(ground_truth)
    if is_choice_answer(gt):
        return _veripo_choice(output, gt)
    if mra:
        return _veripo_mra_answer(output, gt)
    if gt in _VERIPO_FRACTION_GT:
        gt = "24/7"
    return 1.0 if math_equal(output, gt) else 0.0


def veripo_prediction(output: str) -> str:
    """What VerIPO stores as ``extracted_answer``: the first ``<answer>`` span ('' without one)."""
    return first_answer_span(output)


# ---- Video-R1 ----------------------------------------------------------------------------------
_R1_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def r1_answer(text: str) -> str:
    m = _R1_ANSWER.search(text)
    return m.group(1).strip() if m else ""


def _r1_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def r1_mra(pred: float, target: float) -> float:
    """Video-R1's MRA, in float32 as its script computes it (torch)."""
    import torch

    p, t = torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    rel = torch.abs(p - t) / (torch.abs(t) + 1e-8)
    thresholds = torch.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=torch.float32)
    return float((rel < (1 - thresholds)).float().mean().item())


def _word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.split(), hypothesis.split()
    prev = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        cur = [i] + [0] * len(hyp)
        for j in range(1, len(hyp) + 1):
            cur[j] = prev[j - 1] if ref[i - 1] == hyp[j - 1] else 1 + min(prev[j], cur[j - 1], prev[j - 1])
        prev = cur
    return prev[len(hyp)] / max(1, len(ref))


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


R1_TYPES = ("multiple choice", "numerical", "regression", "OCR", "free-form")


def score_video_r1(output: str, solution: str, problem_type: str, ocr_free_form: str = "reward") -> float:
    """One record's score by Video-R1's rules (module docstring). Unknown types score 0, as there."""
    pred = r1_answer(output) or output
    gt = r1_answer(solution) if "<answer>" in solution else solution.strip()
    try:
        if problem_type == "multiple choice":
            return 1.0 if pred.strip() == gt.strip() else 0.0
        if problem_type == "numerical":
            if (("." in gt) or ("," in gt)) != (("." in pred) or ("," in pred)):
                return 0.0
            g, p = _r1_number(gt), _r1_number(pred)
            if g is None or p is None:
                return 0.0
            return 1.0 if round(g, 2) == round(p, 2) else 0.0
        if problem_type == "regression":
            g, p = _r1_number(gt), _r1_number(pred)
            return 0.0 if g is None or p is None else r1_mra(p, g)
        if ocr_free_form != "reward":
            return 0.0
        if problem_type == "OCR":
            return max(0.0, min(1.0, 1.0 - _word_error_rate(gt, pred)))
        if problem_type == "free-form":
            scores = _rouge_scorer().score(gt, pred)
            return max(0.0, min(1.0, sum(s.fmeasure for s in scores.values()) / 3))
    except (ValueError, OverflowError):
        return 0.0
    return 0.0


# ---- dispatch ----------------------------------------------------------------------------------
SCORERS = ("verIPO", "video_r1", "veripo")


def score_output(scorer: str, output: str, ground_truth: str, problem_type: str | None = None,
                 mra: bool = False) -> float:
    """Score one output by `scorer`: "verIPO" (`score_verIPO`), "video_r1" (`score_video_r1`, needs
    `problem_type`) or "veripo" (the training reward `veripo.rewards.accuracy_reward`)."""
    if scorer == "verIPO":
        return score_verIPO(output, ground_truth, mra=mra)
    if scorer == "video_r1":
        return score_video_r1(output, str(ground_truth), problem_type or "multiple choice")
    if scorer == "veripo":
        from veripo.rewards import accuracy_reward

        try:
            return float(accuracy_reward(output, str(ground_truth), problem_type or "multiple choice"))
        except ValueError:
            return 0.0
    raise ValueError(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")
