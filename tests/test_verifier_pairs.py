"""verifier.build_pairs: every pair type, the preferences, the cap, and prompts without a pair."""

from __future__ import annotations

import pytest

from veripo.data.rollouts import PreferencePair, Rollout
from verifier import PairStats, Verdict, VerifierConfig, build_pairs, check_rollout
from verifier.pairs import NO_ACCURATE, NO_CHOSEN, NO_QUESTION, NO_REJECTED

REC = {"problem": "Which way does the red circle move?", "data_type": "video", "path": "/clips/p1.mp4",
       "problem_type": "multiple choice", "options": ["A. left", "B. right", "C. up", "D. down"],
       "solution": "<answer>B</answer>"}
SHORT = "The circle starts at the left edge and ends at the right edge, so it moves right."
LONG = SHORT + " Frame two shows it in the middle and frame four near the right border, which confirms it."
REFLECT = "The circle moves left. Wait, I made a mistake: the last frame shows it at the right edge, so right."
WRONG = "The circle starts at the right edge and ends at the left edge, so it moves left."


class Group:
    """Rollouts of one prompt with their verdicts; `build()` checks them and builds pairs."""

    def __init__(self, pid: str = "p1", record: dict | None = REC):
        self.pid, self.record = pid, record
        self.rollouts: list[Rollout] = []
        self.verdicts: dict[str, str] = {}

    def add(self, reasoning: str, answer: str, verdict: str = "consistent", finish: str = "stop",
            response: str | None = None, **kw) -> str:
        i = len(self.rollouts)
        rid = f"{self.pid}-g{i}"
        text = response if response is not None else f"<think>{reasoning}</think><answer>{answer}</answer>"
        self.rollouts.append(Rollout(rollout_id=rid, problem_id=self.pid, response=text, finish_reason=finish,
                                     token_ids=(i, i + 1), sample_index=i, record=self.record, **kw))
        self.verdicts[rid] = verdict
        return rid


def build(*groups: Group, config: VerifierConfig | None = None, **kw) -> tuple[list[PreferencePair], PairStats]:
    cfg = config or VerifierConfig()
    rollouts = [r for g in groups for r in g.rollouts]
    verdicts = {k: v for g in groups for k, v in g.verdicts.items()}
    checks = {r.rollout_id: check_rollout(r, config=cfg) for r in rollouts}
    stats = PairStats()
    pairs = build_pairs(rollouts, checks, verdicts, cfg, stats=stats, **kw)
    return pairs, stats


def kinds(pairs):
    return [(p.type, p.chosen_id, p.rejected_id) for p in pairs]


def test_penalty_pair_accurate_consistent_vs_inaccurate():
    g = Group()
    good = g.add(SHORT, "B")
    bad = g.add(WRONG, "A")
    pairs, stats = build(g)
    assert kinds(pairs) == [("penalty", good, bad)]
    assert stats.pairs_by_type == {"penalty": 1} and stats.prompts_with_pair == 1


@pytest.mark.parametrize("kind", ["repetitive", "truncated", "too_long"])
def test_penalty_rejects_accurate_but_repetitive_truncated_or_runaway(kind):
    g = Group()
    good = g.add(SHORT, "B")
    if kind == "repetitive":
        bad = g.add("it moves right " * 30, "B")
    elif kind == "truncated":
        bad = g.add(SHORT, "B", finish="length")
    else:
        bad = g.add(LONG, "B")
    cfg = VerifierConfig(max_reasoning_tokens=20) if kind == "too_long" else VerifierConfig()
    pairs, _ = build(g, config=cfg)
    assert kinds(pairs) == [("penalty", good, bad)]
    assert pairs[0].rejected_checks[kind] is True and pairs[0].chosen_checks[kind] is False


def test_consistency_pairs_only_when_some_accurate_are_inconsistent():
    g = Group()
    g.add(SHORT, "B")
    lucky = g.add(WRONG, "B", verdict="inconsistent")  # right answer, reasoning says left
    long = g.add(LONG, "B")
    pairs, stats = build(g)
    assert kinds(pairs) == [("consistency", long, lucky)]  # the longest consistent chosen
    assert pairs[0].chosen_verdict == "consistent" and pairs[0].rejected_verdict == "inconsistent"
    assert stats.accurate_inconsistency_rate == pytest.approx(1 / 3)
    # all accurate and all consistent: nothing to reject
    g2 = Group("p2")
    g2.add(SHORT, "B")
    g2.add(LONG, "B")
    pairs, stats = build(g2)
    assert pairs == [] and stats.prompts_without_pair == {NO_REJECTED: 1}
    assert stats.no_pair[0]["problem_id"] == "p2" and stats.no_pair[0]["reason"] == NO_REJECTED


def test_reflection_pair_and_round_robin_across_types():
    g = Group()
    refl = g.add(REFLECT, "B")
    plain_long = g.add(LONG, "B")
    w1 = g.add(WRONG, "A")
    w2 = g.add(WRONG, "A")
    pairs, stats = build(g)
    # priority consistency (none), reflection, penalty; the penalty pair uses the least-used chosen
    assert kinds(pairs) == [("reflection", refl, w1), ("penalty", plain_long, w2)]
    assert stats.pairs_by_type == {"reflection": 1, "penalty": 1} and stats.reflective == 1
    assert pairs[0].chosen_checks["reflection"] is True
    assert pairs[0].chosen_checks["reflection_markers"] == ["i made a mistake", "wait"]


def test_no_accurate_rollout_gives_no_pair_with_reason():
    g = Group()
    g.add(WRONG, "A")
    g.add(WRONG, "C", verdict="inconsistent")
    pairs, stats = build(g)
    assert pairs == []
    assert stats.prompts_without_pair == {NO_ACCURATE: 1}
    assert stats.no_pair == [{"problem_id": "p1", "reason": NO_ACCURATE, "detail": "0 of 2 rollouts accurate"}]


def test_unknown_or_inconsistent_accurate_rollouts_are_never_chosen():
    g = Group()
    g.add(SHORT, "B", verdict="unknown")
    g.add(LONG, "B", verdict="inconsistent")
    g.add(WRONG, "A")
    pairs, stats = build(g)
    assert pairs == []
    assert stats.no_pair[0]["reason"] == NO_CHOSEN
    assert stats.no_pair[0]["detail"] == "accurate rollouts: 1 inconsistent, 1 verdict unknown"


def test_chosen_must_be_well_formed_unless_configured():
    g = Group()
    ok = g.add("", "", response=f"<think>{SHORT}<answer>B</answer>")  # no </think>
    bad = g.add(WRONG, "A")
    assert build(g)[0] == []
    assert build(g)[1].no_pair[0]["detail"] == "accurate rollouts: 1 missing think/answer"
    assert kinds(build(g, config=VerifierConfig(chosen_requires_format=False))[0]) == [("penalty", ok, bad)]


def test_too_short_reasoning_is_not_chosen():
    g = Group()
    g.add("right.", "B")
    g.add(WRONG, "A")
    pairs, stats = build(g)
    assert pairs == [] and stats.no_pair[0]["detail"] == "accurate rollouts: 1 reasoning too short"


def test_most_confident_wrong_is_rejected_first():
    g = Group()
    good = g.add(SHORT, "B")
    g.add(WRONG, "C")
    a1 = g.add(WRONG, "A")
    a2 = g.add(WRONG, "a")  # same answer as a1 after normalisation
    pairs, _ = build(g, config=VerifierConfig(max_pairs_per_prompt=1))
    assert kinds(pairs) == [("penalty", good, a1)]
    pairs, _ = build(g, config=VerifierConfig(max_pairs_per_prompt=3))
    assert [p.rejected_id for p in pairs] == [a1, a2, "p1-g1"]
    # with log-probs on every rollout they decide instead
    g2 = Group()
    g2.add(SHORT, "B", mean_logprob=-0.2)
    lone = g2.add(WRONG, "C", mean_logprob=-0.1)
    g2.add(WRONG, "A", mean_logprob=-0.9)
    g2.add(WRONG, "A", mean_logprob=-0.8)
    pairs, _ = build(g2, config=VerifierConfig(max_pairs_per_prompt=1))
    assert pairs[0].rejected_id == lone


def test_cap_per_prompt_and_distinct_rejected():
    g = Group()
    g.add(SHORT, "B")
    for _ in range(5):
        g.add(WRONG, "A")
    assert len(build(g)[0]) == 2
    pairs, _ = build(g, config=VerifierConfig(max_pairs_per_prompt=10))
    assert len(pairs) == 5 and len({p.rejected_id for p in pairs}) == 5
    assert len({p.pair_id for p in pairs}) == 5


def test_pair_types_config_restricts_and_orders():
    g = Group()
    g.add(LONG, "B")
    lucky = g.add(WRONG, "B", verdict="inconsistent")
    wrong = g.add(WRONG, "A")
    assert [p.type for p in build(g)[0]] == ["consistency", "penalty"]
    only_penalty = build(g, config=VerifierConfig(pair_types=("penalty",)))[0]
    assert [(p.type, p.rejected_id) for p in only_penalty] == [("penalty", wrong)]
    first_penalty = build(g, config=VerifierConfig(pair_types=("penalty", "consistency")))[0]
    assert [(p.type, p.rejected_id) for p in first_penalty] == [("penalty", wrong), ("consistency", lucky)]


def test_no_judge_means_skipped_verdicts_and_chosen_allowed():
    g = Group()
    good = g.add(SHORT, "B")
    bad = g.add(WRONG, "A")
    rollouts = g.rollouts
    checks = [check_rollout(r) for r in rollouts]  # a sequence aligned with the rollouts works too
    stats = PairStats()
    pairs = build_pairs(rollouts, checks, None, VerifierConfig(), stats=stats)
    assert kinds(pairs) == [("penalty", good, bad)] and pairs[0].chosen_verdict == "skipped"
    assert stats.inconsistency_rate is None and stats.verdicts == {"skipped": 2}
    with pytest.raises(ValueError, match="1 checks for 2 rollouts"):
        build_pairs(rollouts, checks[:1], None)
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        build_pairs(rollouts, checks, ["maybe", "consistent"])
    pairs = build_pairs(rollouts, checks, [Verdict("consistent"), Verdict("inconsistent")])
    assert pairs[0].chosen_verdict == "consistent"


def test_pair_records_everything_the_preference_stage_needs():
    g = Group()
    good = g.add(SHORT, "B")
    g.add(WRONG, "A")
    cfg = VerifierConfig()
    pairs, _ = build(g, config=cfg, judge_id="scripted-fake")
    p = pairs[0]
    assert p.prompt == REC["problem"] + "\nOptions:\nA. left\nB. right\nC. up\nD. down"
    assert p.chosen == g.rollouts[0].response and p.rejected == g.rollouts[1].response
    assert p.chosen_token_ids == (0, 1) and p.rejected_token_ids == (1, 2)
    assert p.chosen_checks["accurate"] is True and p.rejected_checks["accurate"] is False
    assert p.config_hash == cfg.config_hash() and p.judge == "scripted-fake"
    assert p.video_path == "/clips/p1.mp4" and p.record["solution"] == "<answer>B</answer>"
    assert p.pair_id == f"p1/penalty/{good}/p1-g1"
    assert PreferencePair.from_dict(p.to_dict()) == p


def test_records_mapping_supplies_the_prompt_and_missing_question_is_a_reason():
    g = Group(record=None)
    g.add(SHORT, "B", reward_components={"accuracy": 1.0})
    g.add(WRONG, "A", reward_components={"accuracy": 0.0})
    pairs, stats = build(g)
    assert pairs == [] and stats.prompts_without_pair == {NO_QUESTION: 1}
    pairs, _ = build(g, records={"p1": {**REC, "problem": "Other wording?", "data_type": "text"}})
    assert pairs[0].prompt.startswith("Other wording?") and pairs[0].video_path is None


def test_statistics_over_several_prompts():
    g1 = Group("p1")
    g1.add(SHORT, "B")
    g1.add(WRONG, "B", verdict="inconsistent")
    g1.add(WRONG, "A", verdict="consistent")
    g1.add(WRONG, "A", verdict="unknown")
    g2 = Group("p2")
    g2.add(WRONG, "A", verdict="inconsistent")
    g2.add(WRONG, "C")
    pairs, st = build(g1, g2)
    assert st.rollouts == 6 and st.prompts == 2 and st.prompts_with_pair == 1 and st.pairs == 2
    assert st.pairs_by_type == {"consistency": 1, "penalty": 1}
    assert st.prompts_without_pair == {NO_ACCURATE: 1}
    assert st.verdicts == {"consistent": 3, "inconsistent": 2, "unknown": 1}
    assert st.inconsistency_rate == pytest.approx(2 / 5)
    assert st.accurate_inconsistency_rate == pytest.approx(1 / 2)
    assert st.accurate == 2
    rows = dict(st.rows())
    assert rows["inconsistency rate"] == "40.0%" and rows["  consistency"] == "1"
