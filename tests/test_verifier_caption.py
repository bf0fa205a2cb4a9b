"""verifier.caption_judge: LLaVA-Hound score parsing, batched scoring, best-vs-worst caption pairs."""

from __future__ import annotations

import pytest

from veripo.data.rollouts import Rollout
from verifier import CaptionJudge, CaptionStats, ScriptedJudge, VerifierConfig, caption_pairs, parse_score, score_captions
from verifier.caption_judge import BELOW_MARGIN, NO_CAPTION, SINGLE
from verifier.judge import JudgeError

REC = {"problem": "What does the red circle do?", "problem_type": "free-form", "data_type": "video",
       "path": "/clips/c1.mp4", "solution": "<answer>It moves from left to right.</answer>",
       "caption": "A red circle slides from the left edge to the right edge on a white background."}


@pytest.mark.parametrize("reply,expected", [
    ("The answer is relevant and accurate.\nScore: 4", (4.0, "score")),
    ("Score: 2.5", (2.5, "score")),
    ("score = 5", (5.0, "score")),
    ("**Score:** 3", (3.0, "score")),
    ("Score: 1 at first, but on reflection Score: 4", (4.0, "score")),
    ("Score: 9", (5.0, "score")),
    ("Score: 0", (1.0, "score")),
    (" 4", (4.0, "majority")),  # e.g. a backend without the "Score:" prefill
    ("I'd say 3 out of 5; a 3 fits, maybe 2", (3.0, "majority")),
    ("2 or 4", (4.0, "majority")),  # tie: the number written last
    ("In 2024 it was 100% wrong", (1.0, "default")),
    ("no numbers here", (1.0, "default")),
    ("", (1.0, "default")),
])
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


def ro(i: int, answer: str, pid: str = "c1", record: dict | None = REC) -> Rollout:
    return Rollout(rollout_id=f"{pid}-{i}", problem_id=pid, sample_index=i, token_ids=(i,), record=record,
                   response=f"<think>looking at the frames</think><answer>{answer}</answer>")


def scripted_scores(table: dict[str, str]) -> ScriptedJudge:
    def script(messages):
        user = next(m["content"] for m in messages if m["role"] == "user")
        prediction = user.split("Predicted answer:")[1].split("\n\n")[0].strip()
        return table[prediction]

    return ScriptedJudge(script)


def test_scoring_is_one_batched_call_and_pairs_best_against_worst(tmp_path):
    rs = [ro(0, "It moves right."), ro(1, "It jumps."), ro(2, "It slides left to right."), ro(3, "It is blue.")]
    backend = scripted_scores({"It moves right.": " 4", "It jumps.": " 2", "It slides left to right.": " 5",
                               "It is blue.": " 1\nThe color is wrong."})
    judge = CaptionJudge(backend, cache=tmp_path / "cache.jsonl")
    result = score_captions(rs, judge)
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 4
    sent = backend.calls[0][0]
    assert sent[-1] == {"role": "assistant", "content": "Score:"}
    assert REC["caption"] in sent[1]["content"] and "It moves from left to right." in sent[1]["content"]
    assert result.scores == {"c1-0": 4.0, "c1-1": 2.0, "c1-2": 5.0, "c1-3": 1.0}
    assert len(result.pairs) == 1
    p = result.pairs[0]
    assert (p.type, p.chosen_id, p.rejected_id, p.chosen_score, p.rejected_score) == ("caption", "c1-2", "c1-3", 5.0, 1.0)
    assert p.video_path == "/clips/c1.mp4" and p.chosen == rs[2].response and p.rejected_token_ids == (3,)
    assert p.prompt == REC["problem"] and p.config_hash == VerifierConfig().config_hash()
    assert result.stats.parsed_by == {"score": 4} and result.stats.mean_score == pytest.approx(3.0)
    # a rerun scores from the cache without calling the backend
    again = scripted_scores({})
    result2 = score_captions(rs, CaptionJudge(again, cache=tmp_path / "cache.jsonl"))
    assert again.calls == [] and result2.scores == result.scores and result2.stats.parsed_by == {"cached": 4}


def test_margin_and_reasons_for_no_pair():
    rs = [ro(0, "a", "c1"), ro(1, "b", "c1"),               # 4 vs 3: below the default margin 2
          ro(0, "c", "c2", record={**REC, "caption": None}), ro(1, "d", "c2", record={**REC, "caption": None}),
          ro(0, "e", "c3")]                                 # a single sample
    scores = {"c1-0": 4.0, "c1-1": 3.0, "c3-0": 5.0}
    stats = CaptionStats()
    assert caption_pairs(rs, scores, stats=stats) == []
    assert stats.prompts_without_pair == {BELOW_MARGIN: 1, NO_CAPTION: 1, SINGLE: 1}
    pairs = caption_pairs(rs, scores, config=VerifierConfig(caption_margin=1))
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("c1-0", "c1-1")]


def test_ties_pick_the_earliest_best_and_the_latest_worst():
    rs = [ro(i, str(i)) for i in range(4)]
    pairs = caption_pairs(rs, {"c1-0": 5.0, "c1-1": 5.0, "c1-2": 1.0, "c1-3": 1.0})
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("c1-0", "c1-3")]


def test_default_score_when_unreadable_and_not_cached(tmp_path):
    rs = [ro(0, "x"), ro(1, "y")]
    backend = ScriptedJudge(["I cannot tell.", "Score: 4"])
    result = score_captions(rs, CaptionJudge(backend, cache=tmp_path / "c.jsonl"))
    assert result.scores == {"c1-0": 1.0, "c1-1": 4.0} and result.stats.parsed_by == {"default": 1, "score": 1}
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 1  # only the readable score is cached


def test_a_judge_answering_only_garbage_fails_with_its_last_reply(tmp_path):
    rs = [ro(0, "x"), ro(1, "y")]
    with pytest.raises(JudgeError, match="none of its 2 replies could be read as a score.*I cannot tell"):
        score_captions(rs, CaptionJudge(ScriptedJudge("I cannot tell."), cache=tmp_path / "c.jsonl"))
    assert not (tmp_path / "c.jsonl").exists() or (tmp_path / "c.jsonl").read_text() == ""
