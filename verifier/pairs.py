"""Contrastive pairs from one round of checked and judged rollouts (docs/algorithms.md section 3).

Per prompt (rollouts grouped by ``problem_id``):

- a rollout is an eligible CHOSEN when it is accurate, its verdict is ``consistent`` (or ``skipped``:
  no judge ran), it is not repetitive, not truncated, its reasoning is within the length bounds and
  (with ``chosen_requires_format``) it has both <think> and <answer>. ``unknown`` is never chosen;
- ``consistency``: chosen vs an accurate rollout judged ``inconsistent``;
- ``reflection``: a chosen whose reasoning has a reflection marker vs an inaccurate rollout;
- ``penalty``: chosen vs a rollout that is inaccurate, repetitive, truncated or runaway (too long).

Preference: chosen candidates longest reasoning first (then accuracy, reward, sample index);
rejected candidates most confident first, where confidence is the rollout's ``mean_logprob`` when
known, else the share of its group giving the same answer (a wrong answer the model keeps repeating
is a confident one). Pairs are taken round-robin over ``config.pair_types`` (one per type per round,
in that priority order) until ``max_pairs_per_prompt``; a rejected rollout is used once per prompt
and a chosen one is reused only when fewer chosen than rejected exist (least-used first).
A prompt without a pair is counted with its reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from veripo.data.rollouts import PreferencePair, Rollout, same_sides

from verifier.checks import Checks
from veripo.config import VerifierConfig
from verifier.judge import CONSISTENT, INCONSISTENT, SKIPPED, UNKNOWN, Verdict

NO_ACCURATE = "no accurate rollout"
NO_CHOSEN = "no eligible chosen"
NO_REJECTED = "no rejected candidate"
NO_QUESTION = "no question text"
IDENTICAL = "chosen and rejected identical"


@dataclass
class PairStats:
    """What a verifier round produced and why prompts got no pair.

    `inconsistency_rate` = inconsistent / (consistent + inconsistent) over the judged rollouts
    (``unknown`` and ``skipped`` are left out; None when nothing was judged);
    `accurate_inconsistency_rate` is the same over accurate rollouts only (right answer, reasoning
    that does not support it). `no_pair` holds one ``{"problem_id", "reason", "detail"}`` per prompt
    without a pair, `prompts_without_pair` their count by reason.
    """

    rollouts: int = 0
    prompts: int = 0
    prompts_with_pair: int = 0
    pairs: int = 0
    pairs_by_type: dict[str, int] = field(default_factory=dict)
    prompts_without_pair: dict[str, int] = field(default_factory=dict)
    no_pair: list[dict[str, str]] = field(default_factory=list)
    accurate: int = 0
    repetitive: int = 0
    truncated: int = 0
    reflective: int = 0
    malformed: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    inconsistency_rate: float | None = None
    accurate_inconsistency_rate: float | None = None
    skipped_lines: int = 0
    identical_dropped: int = 0  # candidate pairs whose two sides had the same text

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def rows(self) -> list[tuple[str, str]]:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        n = max(self.rollouts, 1)
        rows = [("rollouts", str(self.rollouts)), ("prompts", str(self.prompts)),
                ("prompts with a pair", str(self.prompts_with_pair)), ("pairs", str(self.pairs))]
        rows += [(f"  {t}", str(c)) for t, c in sorted(self.pairs_by_type.items())]
        rows += [("prompts without a pair", str(sum(self.prompts_without_pair.values())))]
        rows += [(f"  {r}", str(c)) for r, c in sorted(self.prompts_without_pair.items())]
        rows += [("accurate", f"{self.accurate} ({100 * self.accurate / n:.1f}%)"),
                 ("repetitive", str(self.repetitive)), ("truncated", str(self.truncated)),
                 ("reflective", str(self.reflective)), ("missing think/answer", str(self.malformed))]
        rows += [(f"verdict {v}", str(c)) for v, c in sorted(self.verdicts.items())]
        rows += [("inconsistency rate", pct(self.inconsistency_rate)),
                 ("  among accurate", pct(self.accurate_inconsistency_rate))]
        if self.identical_dropped:
            rows.append(("identical pairs dropped", str(self.identical_dropped)))
        if self.skipped_lines:
            rows.append(("bad lines skipped", str(self.skipped_lines)))
        return rows


def format_table(rows: Sequence[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    vwidth = max((len(v) for _, v in rows), default=0)
    line = "+" + "-" * (width + 2) + "+" + "-" * (vwidth + 2) + "+"
    body = [f"| {k.ljust(width)} | {v.rjust(vwidth)} |" for k, v in rows]
    return "\n".join([line, *body, line])


# ---- candidates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cand:
    rollout: Rollout
    checks: Checks
    verdict: str
    confidence: float

    @property
    def id(self) -> str:
        return self.rollout.rollout_id


def why_not_chosen(checks: Checks, verdict: str, config: VerifierConfig) -> str | None:
    """The first reason a rollout cannot be chosen, or None when it can."""
    if not checks.accurate:
        return "inaccurate"
    if verdict == INCONSISTENT:
        return "inconsistent"
    if verdict not in (CONSISTENT, SKIPPED):
        return "verdict unknown"
    if checks.repetitive:
        return "repetitive"
    if checks.truncated:
        return "truncated"
    if checks.too_short:
        return "reasoning too short"
    if checks.too_long:
        return "reasoning too long"
    if config.chosen_requires_format and not checks.well_formed:
        return "missing think/answer"
    return None


def _chosen_key(c: _Cand) -> tuple:
    return (-c.checks.reasoning_tokens, -c.checks.accuracy, -c.rollout.reward, c.rollout.sample_index, c.id)


def _rejected_key(c: _Cand) -> tuple:
    return (-c.confidence, c.rollout.sample_index, c.id)


_REJECTED_RULES: dict[str, Callable[[_Cand], bool]] = {
    "consistency": lambda c: c.checks.accurate and c.verdict == INCONSISTENT,
    "reflection": lambda c: not c.checks.accurate,
    "penalty": lambda c: (not c.checks.accurate) or c.checks.repetitive or c.checks.truncated or c.checks.too_long,
}


def _confidences(group: Sequence[tuple[Rollout, Checks]]) -> list[float]:
    """Mean token log-probs when every rollout of the group has one (one scale for the whole group);
    otherwise the share of the group giving the same normalised answer (0 for no answer)."""
    if all(r.mean_logprob is not None for r, _ in group):
        return [float(r.mean_logprob) for r, _ in group]  # type: ignore[arg-type]
    answers = [" ".join(ch.answer.lower().split()) if ch.answer else None for _, ch in group]
    counts = Counter(a for a in answers if a)
    return [counts[a] / len(group) if a else 0.0 for a in answers]


def pairs_for_prompt(cands: Sequence[_Cand], config: VerifierConfig) -> tuple[list[tuple[str, _Cand, _Cand]], str | None, str]:
    """The (type, chosen, rejected) triples of one prompt, or none with (reason, detail)."""
    if not any(c.checks.accurate for c in cands):
        return [], NO_ACCURATE, f"0 of {len(cands)} rollouts accurate"
    good = sorted((c for c in cands if why_not_chosen(c.checks, c.verdict, config) is None), key=_chosen_key)
    if not good:
        why = Counter(why_not_chosen(c.checks, c.verdict, config) for c in cands if c.checks.accurate)
        return [], NO_CHOSEN, "accurate rollouts: " + ", ".join(f"{n} {r}" for r, n in sorted(why.items()))
    chosen_for = {"consistency": good, "penalty": good, "reflection": [c for c in good if c.checks.reflection]}
    rejected_for = {t: sorted((c for c in cands if rule(c)), key=_rejected_key) for t, rule in _REJECTED_RULES.items()}
    order = {c.id: i for i, c in enumerate(good)}
    uses: Counter[str] = Counter()
    used_rejected: set[str] = set()
    out: list[tuple[str, _Cand, _Cand]] = []

    def next_pair(ptype: str) -> tuple[_Cand, _Cand] | None:
        for r in rejected_for[ptype]:
            if r.id in used_rejected:
                continue
            options = [c for c in chosen_for[ptype] if c.id != r.id]
            if options:
                return min(options, key=lambda c: (uses[c.id], order[c.id])), r
        return None

    while len(out) < config.max_pairs_per_prompt:
        progressed = False
        for ptype in config.pair_types:
            if len(out) >= config.max_pairs_per_prompt:
                break
            found = next_pair(ptype)
            if found is None:
                continue
            chosen, rejected = found
            uses[chosen.id] += 1
            used_rejected.add(rejected.id)
            out.append((ptype, chosen, rejected))
            progressed = True
        if not progressed:
            break
    if not out:
        return [], NO_REJECTED, (f"{len(good)} eligible chosen, no rollout qualifies as rejected for "
                                 f"{', '.join(config.pair_types)}")
    return out, None, ""


# ---- inputs and the main entry ------------------------------------------------------------------
def _as_map(values: Mapping[str, Any] | Sequence[Any] | None, rollouts: Sequence[Rollout], what: str) -> dict[str, Any]:
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return dict(values)
    values = list(values)
    if len(values) != len(rollouts):
        raise ValueError(f"build_pairs: {len(values)} {what} for {len(rollouts)} rollouts; pass one per rollout "
                         "or a mapping rollout_id -> value")
    return {r.rollout_id: v for r, v in zip(rollouts, values)}


def _verdict_str(v: Any) -> str:
    if v is None:
        return SKIPPED
    if isinstance(v, Verdict):
        return v.verdict
    if v not in (CONSISTENT, INCONSISTENT, UNKNOWN, SKIPPED):
        raise ValueError(f"unknown verdict {v!r}; known: consistent, inconsistent, unknown, skipped")
    return v


def question_of(record: Mapping[str, Any] | None) -> str | None:
    """The question text of a Video-R1 record dict, with the options on their own lines."""
    if not record or not isinstance(record.get("problem"), str) or not record["problem"].strip():
        return None
    text = record["problem"].strip()
    options = record.get("options") or []
    if options:
        text += "\nOptions:\n" + "\n".join(str(o) for o in options)
    return text


def build_pairs(rollouts: Sequence[Rollout], checks: Mapping[str, Checks] | Sequence[Checks],
                verdicts: Mapping[str, Any] | Sequence[Any] | None, config: VerifierConfig | None = None, *,
                records: Mapping[str, Mapping[str, Any]] | None = None, stats: PairStats | None = None,
                judge_id: str | None = None) -> list[PreferencePair]:
    """Contrastive pairs for every prompt of a round (see the module docstring for the rules).

    `checks` and `verdicts` are mappings ``rollout_id -> value`` or sequences aligned with `rollouts`;
    a verdict is a string (consistent, inconsistent, unknown, skipped), a `Verdict`, or missing
    (= skipped: no judge). `records` maps ``problem_id`` to the Video-R1 record dict (default: each
    rollout's embedded record); it gives the pair's prompt and video path. `stats`, when given, is
    filled in. Pairs come out grouped by prompt in first-seen order.
    """
    config = config or VerifierConfig()
    check_map = _as_map(checks, rollouts, "checks")
    verdict_map = _as_map(verdicts, rollouts, "verdicts")
    missing = [r.rollout_id for r in rollouts if r.rollout_id not in check_map]
    if missing:
        raise ValueError(f"build_pairs: no checks for rollout(s) {', '.join(missing[:5])}")
    st = stats if stats is not None else PairStats()
    groups: dict[str, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.problem_id, []).append(r)

    _fill_rollout_stats(st, rollouts, check_map, {k: _verdict_str(v) for k, v in verdict_map.items()})
    chash = config.config_hash()
    pairs: list[PreferencePair] = []
    for pid, group in groups.items():
        st.prompts += 1
        rec = (records or {}).get(pid) or next((r.record for r in group if r.record), None)
        question = question_of(rec)
        checked = [(r, check_map[r.rollout_id]) for r in group]
        conf = _confidences(checked)
        cands = [_Cand(r, ch, _verdict_str(verdict_map.get(r.rollout_id)), cf) for (r, ch), cf in zip(checked, conf)]
        triples, reason, detail = pairs_for_prompt(cands, config)
        same = [t for t in triples if same_sides(t[1].rollout.response, t[2].rollout.response,
                                                 t[1].rollout.token_ids, t[2].rollout.token_ids)]
        if same:  # two samples with the same text (a pair file reader rejects such a pair): counted, not kept
            st.identical_dropped += len(same)
            triples = [t for t in triples if t not in same]
            if not triples and reason is None:
                reason, detail = IDENTICAL, "the only candidate pair(s) had the same text on both sides"
        if reason is None and not question:
            triples, reason, detail = [], NO_QUESTION, "no record with a \"problem\" for this problem_id"
        if reason is not None:
            st.prompts_without_pair[reason] = st.prompts_without_pair.get(reason, 0) + 1
            st.no_pair.append({"problem_id": pid, "reason": reason, "detail": detail})
            continue
        st.prompts_with_pair += 1
        for ptype, c, r in triples:
            pairs.append(_make_pair(pid, ptype, question, c, r, rec, chash, judge_id))
            st.pairs_by_type[ptype] = st.pairs_by_type.get(ptype, 0) + 1
            st.pairs += 1
    return pairs


def _make_pair(pid: str, ptype: str, question: str, c: _Cand, r: _Cand, rec: Mapping[str, Any] | None,
               chash: str, judge_id: str | None) -> PreferencePair:
    video = rec.get("path") if rec and rec.get("data_type", "video") in ("video", "image") else None
    return PreferencePair(
        pair_id=f"{pid}/{ptype}/{c.id}/{r.id}", problem_id=pid, type=ptype, prompt=question,
        chosen=c.rollout.response, rejected=r.rollout.response, chosen_id=c.id, rejected_id=r.id,
        chosen_token_ids=c.rollout.token_ids, rejected_token_ids=r.rollout.token_ids,
        chosen_checks=c.checks.to_dict(), rejected_checks=r.checks.to_dict(),
        chosen_verdict=c.verdict, rejected_verdict=r.verdict, config_hash=chash, judge=judge_id,
        video_path=video if isinstance(video, str) else None,
        record=dict(rec) if rec else None,
    )


def _fill_rollout_stats(st: PairStats, rollouts: Sequence[Rollout], checks: Mapping[str, Checks],
                        verdicts: Mapping[str, str]) -> None:
    st.rollouts += len(rollouts)
    counts: Counter[str] = Counter()
    acc_counts: Counter[str] = Counter()
    for r in rollouts:
        ch = checks[r.rollout_id]
        v = verdicts.get(r.rollout_id, SKIPPED)
        counts[v] += 1
        if ch.accurate:
            acc_counts[v] += 1
        st.accurate += ch.accurate
        st.repetitive += ch.repetitive
        st.truncated += ch.truncated
        st.reflective += ch.reflection
        st.malformed += not ch.well_formed
    for v, n in counts.items():
        st.verdicts[v] = st.verdicts.get(v, 0) + n

    def rate(c: Counter[str]) -> float | None:
        judged = c[CONSISTENT] + c[INCONSISTENT]
        return c[INCONSISTENT] / judged if judged else None

    st.inconsistency_rate = rate(Counter(st.verdicts))
    st.accurate_inconsistency_rate = rate(acc_counts)
