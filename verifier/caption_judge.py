"""Caption-proxy judge (LLaVA-Hound-DPO; docs/algorithms.md section 3, last paragraph).

A text LLM scores each sampled answer 1..5 from the video's detailed caption, the question and the
reference answer (relevance, accuracy, clarity, completeness); its reply ends with ``Score: N``.
Parsing: the last ``Score: N`` (N may be a decimal, clamped to [1, 5]); otherwise the most frequent
number in [1, 5] in the reply (a tie goes to the one written last); otherwise 1. Pairs: per prompt,
the best- against the worst-scored sample when their scores differ by at least
``config.caption_margin`` (default 2).

The prediction shown to the judge is the rollout's <answer> text (the whole response when it has
none); the pair carries the full responses.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from veripo.config import VerifierConfig
from veripo.data.rollouts import PreferencePair, Rollout
from veripo.rewards import strip_answer_tags
from verifier.checks import parse_response
from verifier.judge import JudgeBackend, VerdictCache, ask_with_retry, cache_key
from verifier.pairs import question_of
from verifier.templates import PromptTemplate

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d.])")
SCORE_MIN, SCORE_MAX = 1.0, 5.0


def parse_score(reply: str | None) -> tuple[float, str]:
    """``(score, how)`` with how in ``score`` (a ``Score: N`` line), ``majority`` (most frequent
    number in [1, 5]) or ``default`` (nothing readable: 1).

    >>> parse_score("Clear and correct. Score: 4"), parse_score("I'd give 3, maybe 3 or 2")
    ((4.0, 'score'), (3.0, 'majority'))
    >>> parse_score("no idea")
    (1.0, 'default')
    """
    text = reply or ""
    found = _SCORE.findall(text)
    if found:
        return min(SCORE_MAX, max(SCORE_MIN, float(found[-1]))), "score"
    nums = [float(n) for n in _NUMBER.findall(text)]
    nums = [n for n in nums if SCORE_MIN <= n <= SCORE_MAX]
    if nums:
        counts = Counter(nums)
        top = max(counts.values())
        last = max(i for i, n in enumerate(nums) if counts[n] == top)
        return nums[last], "majority"
    return SCORE_MIN, "default"


@dataclass(frozen=True)
class CaptionItem:
    caption: str
    question: str
    reference: str
    prediction: str


@dataclass(frozen=True)
class Score:
    score: float
    how: str
    reply: str = ""


class CaptionJudge:
    """Score many answers in one batched backend call; scores cached like verdicts (the key hashes
    caption + question + reference, the prediction, the template text and the judge id)."""

    PLACEHOLDERS = {"caption", "question", "reference", "prediction"}

    def __init__(self, backend: JudgeBackend, template: str | os.PathLike = "caption_score",
                 cache: VerdictCache | str | os.PathLike | None = None):
        self.backend = backend
        self.template = PromptTemplate.load(template)
        self.template.require(self.PLACEHOLDERS)
        self.cache = cache if isinstance(cache, VerdictCache) or cache is None else VerdictCache(cache)

    @property
    def judge_id(self) -> str:
        return self.backend.judge_id

    def key(self, it: CaptionItem) -> str:
        return cache_key("\n".join([it.caption, it.question, it.reference]), it.prediction,
                         self.template.text, self.judge_id)

    def score(self, items: Sequence[CaptionItem]) -> list[Score]:
        keys = [self.key(it) for it in items]
        out: list[Score | None] = [None] * len(items)
        todo = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if self.cache is not None else None
            if isinstance(hit, list) and len(hit) == 2:
                out[i] = Score(float(hit[0]), "cached")
            else:
                todo.append(i)
        if todo:
            reqs = [self.template.render({"caption": items[i].caption, "question": items[i].question,
                                          "reference": items[i].reference, "prediction": items[i].prediction})
                    for i in todo]
            answers = ask_with_retry(self.backend, reqs, parse_score, retry_text=None)
            fresh = []
            for i, ans in zip(todo, answers):
                value, how = ans.value  # type: ignore[misc]
                out[i] = Score(value, how, ans.reply)
                if how != "default":
                    fresh.append((keys[i], [value, how]))
            if self.cache is not None:
                self.cache.put_many(fresh, self.judge_id)
        return out  # type: ignore[return-value]


@dataclass
class CaptionStats:
    rollouts: int = 0
    prompts: int = 0
    pairs: int = 0
    prompts_without_pair: dict[str, int] = field(default_factory=dict)
    no_pair: list[dict[str, str]] = field(default_factory=list)
    parsed_by: dict[str, int] = field(default_factory=dict)
    mean_score: float | None = None
    skipped_lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def rows(self) -> list[tuple[str, str]]:
        rows = [("rollouts", str(self.rollouts)), ("prompts", str(self.prompts)), ("caption pairs", str(self.pairs)),
                ("prompts without a pair", str(sum(self.prompts_without_pair.values())))]
        rows += [(f"  {r}", str(c)) for r, c in sorted(self.prompts_without_pair.items())]
        rows += [(f"scores read by {h}", str(c)) for h, c in sorted(self.parsed_by.items())]
        rows.append(("mean score", "n/a" if self.mean_score is None else f"{self.mean_score:.2f}"))
        if self.skipped_lines:
            rows.append(("bad lines skipped", str(self.skipped_lines)))
        return rows


NO_CAPTION = "no caption"
BELOW_MARGIN = "score spread below margin"
SINGLE = "fewer than two samples"


def caption_items(rollouts: Sequence[Rollout], records: Mapping[str, Mapping[str, Any]]) -> dict[str, CaptionItem]:
    """One `CaptionItem` per rollout whose record has a caption, a question and a solution."""
    items = {}
    for r in rollouts:
        rec = records.get(r.problem_id) or r.record
        question = question_of(rec)
        if not rec or not rec.get("caption") or not question or rec.get("solution") is None:
            continue
        parsed = parse_response(r.response)
        prediction = parsed.answer if parsed.answer else r.response.strip()
        items[r.rollout_id] = CaptionItem(str(rec["caption"]), question, strip_answer_tags(str(rec["solution"])),
                                          prediction)
    return items


def caption_pairs(rollouts: Sequence[Rollout], scores: Mapping[str, float],
                  records: Mapping[str, Mapping[str, Any]] | None = None, config: VerifierConfig | None = None,
                  stats: CaptionStats | None = None, judge_id: str | None = None) -> list[PreferencePair]:
    """Best- vs worst-scored sample per prompt when the scores differ by >= ``config.caption_margin``.
    Ties: the best is the earliest sample among the top scores, the worst the latest among the lowest.
    Rollouts without a score (no caption) are left out; their prompts are counted under "no caption"."""
    config = config or VerifierConfig()
    st = stats if stats is not None else CaptionStats()
    records = records or {}
    chash = config.config_hash()
    groups: dict[str, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.problem_id, []).append(r)
    st.rollouts += len(rollouts)
    pairs = []
    for pid, group in groups.items():
        st.prompts += 1
        scored = sorted((r for r in group if r.rollout_id in scores), key=lambda r: (r.sample_index, r.rollout_id))
        reason = None
        if not scored:
            reason, detail = NO_CAPTION, "no record with a caption for this problem_id"
        elif len(scored) < 2:
            reason, detail = SINGLE, f"{len(scored)} scored sample"
        else:
            best = max(scored, key=lambda r: (scores[r.rollout_id], -scored.index(r)))
            worst = min(scored, key=lambda r: (scores[r.rollout_id], -scored.index(r)))
            spread = scores[best.rollout_id] - scores[worst.rollout_id]
            if spread < config.caption_margin:
                reason, detail = BELOW_MARGIN, f"best {scores[best.rollout_id]:g} - worst {scores[worst.rollout_id]:g} < {config.caption_margin:g}"
        if reason is not None:
            st.prompts_without_pair[reason] = st.prompts_without_pair.get(reason, 0) + 1
            st.no_pair.append({"problem_id": pid, "reason": reason, "detail": detail})
            continue
        rec = records.get(pid) or next((r.record for r in group if r.record), None) or {}
        video = rec.get("path") if rec.get("data_type", "video") in ("video", "image") else None
        pairs.append(PreferencePair(
            pair_id=f"{pid}/caption/{best.rollout_id}/{worst.rollout_id}", problem_id=pid, type="caption",
            prompt=question_of(rec) or pid, chosen=best.response, rejected=worst.response,
            chosen_id=best.rollout_id, rejected_id=worst.rollout_id, chosen_token_ids=best.token_ids,
            rejected_token_ids=worst.token_ids, chosen_score=scores[best.rollout_id],
            rejected_score=scores[worst.rollout_id], config_hash=chash, judge=judge_id,
            video_path=video if isinstance(video, str) else None, record=dict(rec) or None,
        ))
        st.pairs += 1
    return pairs
