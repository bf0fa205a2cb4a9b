"""The rule-based checks of one rollout (docs/algorithms.md section 3, checks 1-3): parse, accuracy,
length, repetition, truncation, and the reflection flag used by reflection pairs.

The consistency check (4) needs a judge LLM and lives in `verifier.judge`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol

from veripo.data.records import Record
from veripo.data.rollouts import Rollout
from veripo.rewards import accuracy_reward

from veripo.config import VerifierConfig

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Parsed:
    """A response split into reasoning and answer, tolerant of missing tags.

    `reasoning`: inside <think>...</think>; with only one of the two tags, the text on its side of it
    up to <answer>; with no think tag at all, the text before <answer> (or the whole response when
    there is no <answer> either). `answer`: inside the last <answer>...</answer>; with no closing tag
    (a truncated rollout), the text after the last <answer>; None when there is no <answer>.
    `missing` lists what is absent or empty, e.g. ``["</answer>"]``.
    """

    reasoning: str
    answer: str | None
    has_think: bool
    has_answer: bool
    missing: tuple[str, ...]


def parse_response(text: str) -> Parsed:
    missing: list[str] = []
    a_close = text.rfind(ANSWER_CLOSE)
    a_open = text.rfind(ANSWER_OPEN, 0, a_close) if a_close >= 0 else text.rfind(ANSWER_OPEN)
    if a_open >= 0 and a_close > a_open:
        answer: str | None = text[a_open + len(ANSWER_OPEN):a_close].strip()
    elif a_open >= 0:
        answer = text[a_open + len(ANSWER_OPEN):].strip()
        missing.append(ANSWER_CLOSE)
    else:
        answer = None
        missing.append(ANSWER_OPEN if a_close < 0 else ANSWER_OPEN + " (found only " + ANSWER_CLOSE + ")")
        if a_close < 0:
            missing.append(ANSWER_CLOSE)
    has_answer = a_open >= 0 and a_close > a_open and bool(answer)
    if answer is not None and not answer and ANSWER_CLOSE not in missing:
        missing.append("answer text (empty <answer>)")

    head = text[:a_open] if a_open >= 0 else text
    t_open, t_close = head.find(THINK_OPEN), head.rfind(THINK_CLOSE)
    if t_open >= 0 and t_close > t_open:
        reasoning = head[t_open + len(THINK_OPEN):t_close]
    elif t_open >= 0:
        reasoning = head[t_open + len(THINK_OPEN):]
        missing.append(THINK_CLOSE)
    elif t_close >= 0:
        reasoning = head[:t_close]
        missing.append(THINK_OPEN)
    else:
        reasoning = head
        missing.extend([THINK_OPEN, THINK_CLOSE])
    reasoning = reasoning.strip()
    has_think = t_open >= 0 and t_close > t_open and bool(reasoning)
    if t_open >= 0 and t_close > t_open and not reasoning:
        missing.append("reasoning text (empty <think>)")
    return Parsed(reasoning, answer, has_think, has_answer, tuple(missing))


# ---- repetition ---------------------------------------------------------------------------------
_WORD_STRIP = ".,;:!?\"'()[]{}*`"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def _words(text: str) -> list[str]:
    return [w for w in (t.strip(_WORD_STRIP).lower() for t in text.split()) if w]


def repetition_ratio(text: str, ngram_min: int = 4, ngram_max: int = 8) -> float:
    """Fraction of repeated word n-grams, averaged over n in [ngram_min, ngram_max].

    Words are lower-cased with surrounding punctuation removed. For each n with at least one n-gram,
    the ratio is ``1 - distinct / total`` (the share of n-gram positions that repeat an earlier
    n-gram); sizes longer than the text are left out, and a text shorter than `ngram_min` words scores
    0.0. Ordinary prose scores near 0, a loop of one phrase approaches 1.

    >>> repetition_ratio("the cat sat on the mat and looked at the dog")
    0.0
    >>> round(repetition_ratio("one two three four " * 5), 2)
    0.73
    """
    words = _words(text)
    ratios = []
    for n in range(ngram_min, ngram_max + 1):
        total = len(words) - n + 1
        if total <= 0:
            break
        distinct = len({tuple(words[i:i + n]) for i in range(total)})
        ratios.append(1.0 - distinct / total)
    return sum(ratios) / len(ratios) if ratios else 0.0


def max_sentence_repeats(text: str, min_words: int = 3) -> int:
    """How often the most frequent sentence or line (of at least `min_words` words, compared
    case- and punctuation-insensitively) occurs; 0 when there is none."""
    counts = Counter()
    for piece in _SENTENCE_SPLIT.split(text):
        words = _words(piece)
        if len(words) >= min_words:
            counts[" ".join(words)] += 1
    return max(counts.values(), default=0)


# ---- reflection ---------------------------------------------------------------------------------
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for m in markers:
        esc = re.escape(m)
        left = r"\b" if m[0].isalnum() else ""
        right = r"\b" if m[-1].isalnum() else ""
        parts.append(left + esc + right)
    return re.compile("|".join(parts), re.IGNORECASE)


_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def reflection_markers_found(text: str, markers: tuple[str, ...]) -> list[str]:
    """The reflection markers (lower-cased) present in `text`, matched case-insensitively on word
    boundaries ("wait" matches "Wait," but not "awaited")."""
    if not markers:
        return []
    pat = _PATTERNS.get(markers)
    if pat is None:
        pat = _PATTERNS[markers] = _marker_pattern(markers)
    return sorted({m.group(0).lower() for m in pat.finditer(text)})


# ---- the checks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checks:
    """Results of the rule checks of one rollout.

    `accuracy` is the rule reward in [0, 1] and `accurate` is ``accuracy >= accuracy_threshold``;
    `reasoning_tokens` counts the <think> text (tokenizer tokens, or whitespace words without one);
    `repetition` is `repetition_ratio` of the reasoning and `repetitive` the verdict of both repetition
    rules; `truncated` means finish reason "length"; `missing` says which parts were not found
    (None when the response is complete); `reflection` is True when the reasoning contains a
    reflection marker (listed in `reflection_markers`).
    """

    accurate: bool
    accuracy: float
    has_think: bool
    has_answer: bool
    reasoning_tokens: int
    repetition: float
    repetitive: bool
    truncated: bool
    too_short: bool
    too_long: bool
    reflection: bool
    sentence_repeats: int = 0
    answer: str | None = None
    missing: str | None = None
    reflection_markers: tuple[str, ...] = ()

    @property
    def well_formed(self) -> bool:
        return self.has_think and self.has_answer

    @property
    def within_length(self) -> bool:
        return not (self.too_short or self.too_long)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reflection_markers"] = list(self.reflection_markers)
        return d


def count_tokens(text: str, tokenizer: Tokenizer | None = None) -> int:
    """Tokens of `text` with the tokenizer (no special tokens), or whitespace-separated words."""
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer.encode(text, add_special_tokens=False))


def _ground_truth(rollout: Rollout, record: Record | Mapping[str, Any] | None) -> tuple[str, str] | None:
    if record is None:
        record = rollout.record
    if record is None:
        return None
    if isinstance(record, Record):
        return record.solution, record.problem_type
    sol, ptype = record.get("solution"), record.get("problem_type")
    if sol is None or ptype is None:
        return None
    return str(sol), str(ptype)


def check_rollout(rollout: Rollout, record: Record | Mapping[str, Any] | None = None,
                  config: VerifierConfig | None = None, tokenizer: Tokenizer | None = None) -> Checks:
    """Run the rule checks on one rollout.

    The ground truth comes from `record` (a `Record` or a Video-R1 dict), else the rollout's embedded
    record; accuracy is `veripo.rewards.accuracy_reward`. Without any record the rollout's own
    ``reward_components["accuracy"]`` is used; with neither, ValueError naming the rollout.
    """
    cfg = config or VerifierConfig()
    parsed = parse_response(rollout.response)
    truth = _ground_truth(rollout, record)
    if truth is not None:
        accuracy = float(accuracy_reward(rollout.response, truth[0], truth[1]))
    elif "accuracy" in rollout.reward_components:
        accuracy = float(rollout.reward_components["accuracy"])
    else:
        raise ValueError(f"rollout {rollout.rollout_id!r} (problem {rollout.problem_id!r}): no record to check "
                         "against and no reward_components['accuracy']. Fix: embed \"record\" in the rollout "
                         "or pass the records file (--data)")
    tokens = count_tokens(parsed.reasoning, tokenizer)
    ratio = repetition_ratio(parsed.reasoning, cfg.ngram_min, cfg.ngram_max)
    repeats = max_sentence_repeats(parsed.reasoning, cfg.min_repeat_words)
    markers = reflection_markers_found(parsed.reasoning, cfg.reflection_markers)
    return Checks(
        accurate=accuracy >= cfg.accuracy_threshold,
        accuracy=accuracy,
        has_think=parsed.has_think,
        has_answer=parsed.has_answer,
        reasoning_tokens=tokens,
        repetition=ratio,
        repetitive=ratio > cfg.repetition_threshold or repeats >= cfg.max_line_repeats,
        truncated=rollout.finish_reason == "length",
        too_short=tokens < cfg.min_reasoning_tokens,
        too_long=tokens > cfg.max_reasoning_tokens,
        reflection=bool(markers),
        sentence_repeats=repeats,
        answer=parsed.answer,
        missing=("missing " + ", ".join(parsed.missing)) if parsed.missing else None,
        reflection_markers=tuple(markers),
    )
