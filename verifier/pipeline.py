"""One verifier round from rollouts to pairs: records -> checks -> judge -> pairs (`verify`), and the
caption-proxy round (`score_captions`). Used by the CLI and by veripo's loop alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from veripo.data.records import Record
from veripo.data.rollouts import PreferencePair, Rollout

from verifier.caption_judge import CaptionJudge, CaptionStats, caption_items, caption_pairs
from verifier.checks import Checks, Tokenizer, check_rollout, parse_response
from veripo.config import VerifierConfig
from verifier.judge import SKIPPED, UNKNOWN, ConsistencyJudge, JudgeError, JudgeItem, Verdict
from verifier.pairs import PairStats, build_pairs, question_of


def resolve_records(rollouts: Sequence[Rollout],
                    records: Mapping[str, Record | Mapping[str, Any]] | Iterable[Record] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``problem_id -> record dict`` for the rollouts' prompts: from `records` (a records file's
    content) when it has the id, else the rollout's embedded record."""
    given: dict[str, Any] = {}
    if isinstance(records, Mapping):
        given = dict(records)
    elif records is not None:
        given = {r.problem_id: r for r in records}
    out: dict[str, dict[str, Any]] = {}
    for ro in rollouts:
        pid = ro.problem_id
        if pid in out:
            continue
        rec = given.get(pid)
        if rec is not None:
            out[pid] = rec.to_dict() if isinstance(rec, Record) else dict(rec)
        elif ro.record is not None:
            out[pid] = dict(ro.record)
    return out


def last_round(rollouts: Sequence[Rollout]) -> list[Rollout]:
    """The rollouts of the latest (iteration, step) in the list."""
    if not rollouts:
        return []
    last = max((r.iteration, r.step) for r in rollouts)
    return [r for r in rollouts if (r.iteration, r.step) == last]


@dataclass
class VerifyResult:
    pairs: list[PreferencePair]
    checks: dict[str, Checks]
    verdicts: dict[str, Verdict]
    stats: PairStats
    config: VerifierConfig
    judge_id: str | None = None

    def meta(self) -> dict[str, Any]:
        """What the pair file's sidecar records: the config, its hash, the judge and the statistics."""
        return {"kind": "pairs", "config": self.config.to_dict(), "config_hash": self.config.config_hash(),
                "judge": self.judge_id, "stats": self.stats.to_dict()}


def judge_rollouts(rollouts: Sequence[Rollout], checks: Mapping[str, Checks], records: Mapping[str, Mapping[str, Any]],
                   judge: ConsistencyJudge | None, config: VerifierConfig) -> dict[str, Verdict]:
    """Verdicts for every rollout: all judged in one batched round (`judge.judge`), except those out
    of ``config.judge_scope`` or without a question text, which are ``skipped`` (as is everything
    when there is no judge)."""
    verdicts = {r.rollout_id: Verdict(SKIPPED) for r in rollouts}
    if judge is None:
        return verdicts
    targets: list[Rollout] = []
    items: list[JudgeItem] = []
    for r in rollouts:
        question = question_of(records.get(r.problem_id))
        if question is None or (config.judge_scope == "accurate" and not checks[r.rollout_id].accurate):
            continue
        parsed = parse_response(r.response)
        targets.append(r)
        items.append(JudgeItem(question, parsed.reasoning, parsed.answer or "", r.response))
    judged = judge.judge(items)
    for r, v in zip(targets, judged):
        verdicts[r.rollout_id] = v
    if judged and all(v.verdict == UNKNOWN for v in judged):
        raise unreadable_judge(judge.judge_id, len(judged), judged[-1].reply, "a verdict",
                               "answers \"Verdict: consistent\" or \"Verdict: inconsistent\"")
    return verdicts


def unreadable_judge(judge_id: str | None, n: int, last_reply: str, what: str, form: str) -> JudgeError:
    """A judge none of whose `n` replies could be read: the run would make pairs from nothing (every rollout
    ``unknown``), so it stops, showing the last reply. A few unreadable replies among good ones are
    counted (``verdict unknown``) and reported instead."""
    return JudgeError(f"judge {judge_id}: none of its {n} replies could be read as {what}; its last reply was "
                      f"{last_reply[:300]!r}. Fix: use a judge model that follows the prompt template (it "
                      f"{form}), raise the judge's max_tokens (verify.judge_max_tokens / --judge-max-tokens), or "
                      "check that base_url serves the model you named")


def verify(rollouts: Sequence[Rollout], *, records: Mapping[str, Any] | Iterable[Record] | None = None,
           judge: ConsistencyJudge | None = None, config: VerifierConfig | None = None,
           tokenizer: Tokenizer | None = None, progress: bool = False, stats: PairStats | None = None) -> VerifyResult:
    """Checks, consistency verdicts and pairs for one round of rollouts (see `verifier.pairs`)."""
    from tqdm import tqdm

    cfg = config or VerifierConfig()
    st = stats if stats is not None else PairStats()
    recs = resolve_records(rollouts, records)
    checks = {r.rollout_id: check_rollout(r, recs.get(r.problem_id), cfg, tokenizer)
              for r in tqdm(rollouts, desc="checks", unit="rollout", disable=not progress)}
    verdicts = judge_rollouts(rollouts, checks, recs, judge, cfg)
    judge_id = judge.judge_id if judge is not None else None
    pairs = build_pairs(rollouts, checks, verdicts, cfg, records=recs, stats=st, judge_id=judge_id)
    return VerifyResult(pairs, checks, verdicts, st, cfg, judge_id)


@dataclass
class CaptionResult:
    pairs: list[PreferencePair]
    scores: dict[str, float]
    stats: CaptionStats
    config: VerifierConfig
    judge_id: str | None = None
    how: dict[str, str] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return {"kind": "caption", "config": self.config.to_dict(), "config_hash": self.config.config_hash(),
                "judge": self.judge_id, "stats": self.stats.to_dict()}


def score_captions(rollouts: Sequence[Rollout], judge: CaptionJudge, *,
                   records: Mapping[str, Any] | Iterable[Record] | None = None,
                   config: VerifierConfig | None = None, stats: CaptionStats | None = None) -> CaptionResult:
    """Score every rollout whose record has a caption (one batched call) and build caption pairs."""
    cfg = config or VerifierConfig()
    st = stats if stats is not None else CaptionStats()
    recs = resolve_records(rollouts, records)
    items = caption_items(rollouts, recs)
    ids = list(items)
    results = judge.score([items[i] for i in ids])
    if results and all(s.how == "default" for s in results):
        raise unreadable_judge(judge.judge_id, len(results), results[-1].reply, "a score", "answers \"Score: N\"")
    scores = {i: s.score for i, s in zip(ids, results)}
    for s in results:
        st.parsed_by[s.how] = st.parsed_by.get(s.how, 0) + 1
    st.mean_score = sum(scores.values()) / len(scores) if scores else None
    pairs = caption_pairs(rollouts, scores, recs, cfg, st, judge.judge_id)
    return CaptionResult(pairs, scores, st, cfg, judge.judge_id, {i: s.how for i, s in zip(ids, results)})
