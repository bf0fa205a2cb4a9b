"""Rule-based rewards (docs/algorithms.md section 2): parsing, accuracy by type, format, length, registry."""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import pytest

import veripo.rewards as R
from veripo.rewards import (
    RewardFunction,
    RewardOutput,
    accuracy_reward,
    compute_rewards,
    compute_score,
    extract_answer,
    extract_choice,
    format_reward,
    get_reward,
    length_bonus,
    mean_relative_accuracy,
    parse_number,
    register_reward,
)
from veripo.rewards import parsing, registry, rules

GOOD = "<think>The ball moves right.</think><answer>B</answer>"


# ---- extract_answer -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, want",
    [
        ("<think>x</think><answer> B </answer>", "B"),
        ("<answer>A</answer> wait <answer>C</answer>", "C"),  # last wins
        ("<answer>x <answer>D</answer>", "D"),  # nearest opening tag before the last closing one
        ("<answer>\n12 cm\n</answer>\n", "12 cm"),
        ("<answer>B", None),  # both tags required
        ("B</answer>", None),
        ("no tags at all", None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


# ---- extract_choice -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["(B)", "B.", "B) text", "$B$", "The answer is B", "b", "B. right", "[B]", "\\boxed{B}",
     "**B**", "Option B", "answer: b", "b) right", "I think the answer is B", "B is correct",
     "The answer is B. B moves right.", "A red ball moves right, so the answer is B"],
)
def test_extract_choice_finds_b(text):
    assert extract_choice(text) == "B"


@pytest.mark.parametrize(
    "text, want",
    [
        ("Answer: (C) the blue one", "C"),
        ("The answer is A", "A"),
        ("The answer is A because it moves left", "A"),
        ("A. left", "A"),
        ("A is correct", "A"),
        ("(a)", "A"),
        ("The correct option is (D).", "D"),
        ("I'm sure it's C", "C"),  # contraction "I'm" is no letter
        ("(I)", "I"),  # a marked I is an option
    ],
)
def test_extract_choice_other_letters(text, want):
    assert extract_choice(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "A or B",  # two different letters
        "The answer is B. Option C is wrong",
        "(A) and (C)",
        "a red ball moves",  # lowercase words are not letters
        "A red ball moves",  # article
        "the answer is a red ball",
        "I think so",  # pronoun
        "U.S. flag",  # abbreviation
        "e.g. the ball",
        "",
        "none of them",
    ],
)
def test_extract_choice_none(text):
    assert extract_choice(text) is None


# ---- parse_number -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, want",
    [("12", 12.0), ("12 cm", 12.0), ("1,234", 1234.0), ("1,234,567.5 m", 1234567.5), ("-3.5", -3.5),
     ("\u22124", -4.0), ("3.0", 3.0), (".5", 0.5), ("about 7 cars", 7.0), ("50%", 50.0),
     ("1e3", 1000.0), ("3,5", 3.0)],  # "3,5" is no thousands group: first number wins
)
def test_parse_number(text, want):
    assert parse_number(text) == want


def test_parse_number_none():
    assert parse_number("twelve") is None


# ---- accuracy: multiple choice ------------------------------------------------------------------
def test_accuracy_multiple_choice():
    assert accuracy_reward(GOOD, "<answer>B</answer>", "multiple choice") == 1.0
    assert accuracy_reward(GOOD, "B", "multiple choice") == 1.0  # bare solution
    assert accuracy_reward(GOOD, "C", "multiple choice") == 0.0
    assert accuracy_reward("<answer>A or B</answer>", "B", "multiple choice") == 0.0  # two letters
    marked = accuracy_reward("<answer>(B) right</answer>", "<answer>B. right</answer>", "multiple choice")
    assert marked == 1.0


def test_accuracy_last_answer_wins():
    assert accuracy_reward("<answer>A</answer><answer>B</answer>", "B", "multiple choice") == 1.0
    assert accuracy_reward("<answer>B</answer><answer>A</answer>", "B", "multiple choice") == 0.0


def test_accuracy_fallback_without_tags():
    # Video-R1 fallback: no <answer> span -> text after </think>, else the whole response
    assert accuracy_reward("The answer is B", "B", "multiple choice") == 1.0
    assert accuracy_reward("<think>maybe B</think> C", "B", "multiple choice") == 0.0
    assert accuracy_reward("<think>maybe B</think>", "B", "multiple choice") == 0.0  # nothing after


def test_accuracy_bad_ground_truth_and_type():
    with pytest.raises(ValueError, match="ground truth"):
        accuracy_reward(GOOD, "A or B", "multiple choice")
    with pytest.raises(ValueError, match="ground truth"):
        accuracy_reward(GOOD, "unknown", "numerical")
    with pytest.raises(ValueError) as err:
        accuracy_reward(GOOD, "B", "essay")
    for name in ("multiple choice", "numerical", "regression", "OCR", "free-form"):
        assert repr(name) in str(err.value)
    assert accuracy_reward(GOOD, "B", "Multiple Choice") == 1.0  # case-insensitive


# ---- accuracy: numerical ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pred, gt, want",
    [
        ("12 cm", "12", 1.0), ("1,234", "1234", 1.0), ("-3.5", "-3.50", 1.0), ("3.0", "3", 1.0),
        ("3.14159", "3.14", 1.0), ("3.146", "3.14", 0.0), ("3", "-3", 0.0), ("2.004", "2", 1.0),
        ("no idea", "3", 0.0), ("about 1,000 people", "<answer>1000</answer>", 1.0),
    ],
)
def test_accuracy_numerical(pred, gt, want):
    assert accuracy_reward(f"<answer>{pred}</answer>", gt, "numerical") == want


@pytest.mark.parametrize(
    "pred, gt, want",
    [
        ("\\frac{24}{7}", "24/7", 1.0), ("3.4285714", "24/7", 1.0), ("3.43", "24/7", 0.0),
        ("\\frac{1}{2}", "0.5", 1.0), ("1/2", "0.5", 1.0), ("2/3", "0.5", 0.0), ("$\\sqrt{4}$", "2", 1.0),
        ("24", "24/7", 0.0), ("no idea", "\\frac{1}{2}", 0.0),
    ],
)
def test_accuracy_numerical_math_answers_by_math_verify(pred, gt, want):
    """Math ground truths, and math predictions the rounding rule rejects, go through math-verify (the
    first-number rule alone would read "24/7" as 24 and "\\frac{1}{2}" as 1)."""
    assert accuracy_reward(f"<answer>{pred}</answer>", gt, "numerical") == want


# ---- mean relative accuracy ---------------------------------------------------------------------
# thresholds 1 - theta = 0.50, 0.45, ..., 0.05; the score is (#thresholds strictly above rel) / 10
@pytest.mark.parametrize(
    "pred, gt, want",
    [
        (100, 100, 1.0),
        (104.99, 100, 1.0),  # rel 0.0499 < 0.05
        (105, 100, 0.9),  # rel exactly 0.05: not < 0.05
        (95, 100, 0.9),
        (0.9, 1, 0.8),  # rel exactly 0.1 (binary 1 - 0.9 = 0.0999...98 would give 0.9)
        (1.1, 1, 0.8),  # binary 1.1 - 1 = 0.1000...09, same answer
        (75, 100, 0.5),  # rel 0.25: 0.50, 0.45, 0.40, 0.35, 0.30
        (149, 100, 0.1),  # rel 0.49: only 0.50
        (150, 100, 0.0),  # rel exactly 0.5
        (151, 100, 0.0),  # rel 0.51
        (-95, -100, 0.9),  # |gt| in the denominator
        (0, 0, 1.0),  # gt == 0: exact match only
        (0.001, 0, 0.0),
        (float("nan"), 1, 0.0),
    ],
)
def test_mean_relative_accuracy(pred, gt, want):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(want, abs=1e-12)


def test_accuracy_regression_parses_units():
    assert accuracy_reward("<answer>1.05 m</answer>", "1", "regression") == pytest.approx(0.9)
    assert accuracy_reward("<answer>far</answer>", "1", "regression") == 0.0


# ---- OCR and free-form --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pred, gt, want",
    [
        ("hello world foo bar", "hello world foo bar", 1.0),
        ("hello world foo baz", "hello world foo bar", 0.75),  # 1 substitution / 4 words
        ("hello  world\nfoo bar", "hello world foo bar", 1.0),  # whitespace collapsed
        ("hello world", "hello world foo bar", 0.5),  # 2 deletions / 4 words
        ("a b c d e f g h", "x y", 0.0),  # WER 4.0, clipped to 0
        ("", "hello", 0.0),
        ("Hello", "hello", 0.0),  # case-sensitive
    ],
)
def test_accuracy_ocr(pred, gt, want):
    assert accuracy_reward(f"<answer>{pred}</answer>", gt, "OCR") == pytest.approx(want)


def test_accuracy_free_form():
    gt = "the red ball rolls to the left"
    assert accuracy_reward(f"<answer>{gt}</answer>", gt, "free-form") == pytest.approx(1.0)
    assert accuracy_reward("<answer>blue cube jumps upward</answer>", gt, "free-form") == 0.0
    assert accuracy_reward("<answer>Cats</answer>", "cat", "free-form") == 1.0  # one word, stemmed
    partial = accuracy_reward("<answer>the red ball rolls right</answer>", gt, "free-form")
    assert 0.3 < partial < 0.9
    # rouge1 F: 4 common unigrams, |pred| 5, |gt| 7 -> 2*4/12; rouge2 F: 3 common bigrams of 4 and 6 -> 6/10;
    # rougeL F: LCS 4 -> 2*4/12. Mean = (2/3 + 0.6 + 2/3) / 3.
    assert partial == pytest.approx((2 / 3 + 0.6 + 2 / 3) / 3)


# ---- format -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, want",
    [
        (GOOD, 1.0),
        ("  \n<think>\nline one\nline two\n</think>\n\n<answer> B </answer>\n", 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("<answer>B</answer>", 0.0),  # missing think
        (GOOD + " trailing text", 0.0),  # text after answer
        ("Sure! " + GOOD, 0.0),  # text before think
        ("<think>x</think> so <answer>B</answer>", 0.0),  # text between the blocks
        ("<answer>B</answer><think>x</think>", 0.0),  # wrong order
        ("<think>x</think><answer>B", 0.0),  # unclosed answer
        ("<think>x<answer>B</answer>", 0.0),  # unclosed think
        # the spec's regex is lazy but unanchored inside the blocks: nested / repeated tags still match
        ("<think>a<think>b</think></think><answer>B</answer>", 1.0),
        ("<think>x</think><answer>A</answer><answer>B</answer>", 1.0),
    ],
)
def test_format_reward(text, want):
    assert format_reward(text) == want


# ---- length bonus -------------------------------------------------------------------------------
def test_length_bonus():
    counts = [320, 512, 319, 513, 400]
    assert length_bonus(counts, [True] * 5) == [0.2, 0.2, 0.0, 0.0, 0.2]  # inclusive ends
    assert length_bonus(counts, [True, False, False, False, True]) == [0.2, 0.0, 0.0, 0.0, 0.2]
    assert length_bonus(counts, [False, False, False, False, True]) == [0.0] * 5  # one correct only
    assert length_bonus([400, 400], [True, True], w=0.5, l_min=100, l_max=300) == [0.0, 0.0]
    assert length_bonus([200, 200], [True, True], w=0.5, l_min=100, l_max=300) == [0.5, 0.5]
    assert R.length_reward is length_bonus
    with pytest.raises(ValueError):
        length_bonus([1, 2], [True])


# ---- registry -----------------------------------------------------------------------------------
def _rec(solution="<answer>B</answer>", problem_type="multiple choice"):
    return SimpleNamespace(solution=solution, problem_type=problem_type)


def test_compute_rewards_default_weights():
    out = compute_rewards(GOOD, _rec())
    assert isinstance(out, RewardOutput)
    assert out.components == {"accuracy": 1.0, "format": 1.0}
    assert out.total == pytest.approx(1.5)
    wrong = compute_rewards("<answer>C</answer>", _rec())
    assert wrong.components == {"accuracy": 0.0, "format": 0.0} and wrong.total == 0.0
    unformatted = compute_rewards("The answer is B", _rec())
    assert unformatted.total == pytest.approx(1.0)


def test_compute_rewards_custom_weights_and_logging():
    out = compute_rewards(GOOD, _rec(), weights={"accuracy": 2.0, "format": 0.25})
    assert out.total == pytest.approx(2.25)
    bonus = out.with_component("length", 0.2)
    assert bonus.total == pytest.approx(2.45) and out.total == pytest.approx(2.25)
    assert bonus.log_dict() == {"reward/total": pytest.approx(2.45), "reward/accuracy": 1.0,
                                "reward/format": 1.0, "reward/length": 0.2}
    with pytest.raises(ValueError):
        bonus.with_component("length", 0.1)


def test_compute_rewards_with_record():
    from veripo.data.records import Record

    rec = Record(problem_id="7", problem="Which way?", data_type="video", problem_type="numerical",
                 solution="<answer>1,234</answer>")
    assert compute_rewards("<think>count</think><answer>1234 cars</answer>", rec).total == pytest.approx(1.5)


def test_get_reward_unknown_lists_names():
    assert get_reward("accuracy")(GOOD, _rec()) == 1.0
    assert get_reward("format")(GOOD, _rec()) == 1.0
    with pytest.raises(KeyError) as err:
        get_reward("acuracy")
    assert isinstance(err.value, ValueError)
    assert "'acuracy'" in str(err.value) and "accuracy" in str(err.value) and "format" in str(err.value)
    with pytest.raises(KeyError, match="unknown reward 'fromat'; known: accuracy, format"):
        RewardFunction({"accuracy": 1.0, "fromat": 0.5})  # a typo fails at construction


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry.REWARDS, "_items", dict(registry.REWARDS.items()))


def test_register_reward(scratch_registry):
    @register_reward("short")
    def short(response, record):
        return 1.0 if len(response) < 10 else 0.0

    assert get_reward("short") is short
    assert "short" in R.registered_rewards()
    out = RewardFunction({"format": 0.5, "short": 3.0})("<answer>B</answer>", _rec())
    assert out.components == {"format": 0.0, "short": 0.0}
    assert RewardFunction({"short": 3.0})("hi", _rec()).total == 3.0
    with pytest.raises(ValueError, match="already registered"):
        register_reward("short")(lambda response, record: 0.0)


# ---- verl wrapper -------------------------------------------------------------------------------
def test_compute_score():
    assert compute_score("any", GOOD, "<answer>B</answer>", {"problem_type": "multiple choice"}) == 1.5
    assert compute_score("any", GOOD, "B") == 1.5  # inferred multiple choice
    assert compute_score("any", "<answer>B</answer>", "B") == 1.0  # no format bonus
    assert compute_score("any", GOOD, "C", {"format_weight": 0.1}) == pytest.approx(0.1)
    num = "<think>x</think><answer>3.14159</answer>"
    assert compute_score("any", num, "<answer>3.14</answer>") == 1.5  # inferred numerical
    assert compute_score("any", num, "3.1", {"problem_type": "regression"}) == pytest.approx(1.0 + 0.5)
    text = "<think>x</think><answer>the red ball</answer>"
    assert compute_score("any", text, "the red ball") == pytest.approx(1.5)  # inferred free-form


@pytest.mark.parametrize(
    "gt, want",
    [("B", "multiple choice"), ("<answer>(c)</answer>", "multiple choice"), ("3.5", "numerical"),
     ("-1,200", "numerical"), ("12 cm", "free-form"), ("a cat", "free-form"), ("A cat", "free-form")],
)
def test_infer_problem_type(gt, want):
    assert R.infer_problem_type(gt) == want


# ---- docstring examples -------------------------------------------------------------------------
@pytest.mark.parametrize("module", [parsing, rules, registry])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and (module is registry or result.attempted > 0)
