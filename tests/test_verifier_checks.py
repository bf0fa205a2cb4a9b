"""verifier.checks and the verifier's config (veripo.config.VerifierConfig): parsing, accuracy, length, repetition, truncation, reflection."""

from __future__ import annotations

import pytest

from veripo.data.records import Record
from veripo.data.rollouts import Rollout
from verifier import ConfigError, VerifierConfig, check_rollout, parse_response, repetition_ratio
from verifier.checks import count_tokens, max_sentence_repeats, reflection_markers_found

MC = {"problem_id": "p1", "problem": "Which way does the red circle move?", "data_type": "text",
      "problem_type": "multiple choice", "options": ["A. left", "B. right", "C. up", "D. down"],
      "solution": "<answer>B</answer>"}
REASONING = "The circle starts at the left edge and ends at the right edge, so it moves right."


def ro(response: str, finish_reason: str = "stop", record: dict | None = MC, **kw) -> Rollout:
    return Rollout(rollout_id=kw.pop("rollout_id", "r0"), problem_id="p1", response=response,
                   finish_reason=finish_reason, record=record, **kw)


def resp(reasoning: str, answer: str) -> str:
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


def test_complete_accurate_rollout():
    c = check_rollout(ro(resp(REASONING, "B")))
    assert c.accurate and c.accuracy == 1.0
    assert c.has_think and c.has_answer and c.well_formed and c.missing is None
    assert c.reasoning_tokens == len(REASONING.split()) == 17
    assert not c.repetitive and c.repetition == 0.0 and not c.truncated
    assert not c.too_short and not c.too_long and c.within_length
    assert not c.reflection and c.answer == "B"


def test_wrong_answer_is_inaccurate():
    c = check_rollout(ro(resp(REASONING, "A")))
    assert not c.accurate and c.accuracy == 0.0 and c.well_formed


def test_record_argument_wins_and_can_be_a_Record():
    rec = Record.from_dict({**MC, "solution": "A"})
    assert check_rollout(ro(resp(REASONING, "A")), rec).accurate
    assert not check_rollout(ro(resp(REASONING, "A")), None).accurate  # embedded record says B


def test_accuracy_falls_back_to_reward_components_then_errors():
    r = ro(resp(REASONING, "A"), record=None, reward_components={"accuracy": 1.0})
    assert check_rollout(r).accurate
    with pytest.raises(ValueError, match="no record to check against.*--data"):
        check_rollout(ro(resp(REASONING, "A"), record=None))


def test_graded_accuracy_uses_the_threshold():
    rec = {"problem": "How far?", "problem_type": "regression", "solution": "10"}
    r = ro(resp(REASONING, "14"), record=rec)  # relative error 0.4 passes theta 0.50 and 0.55: MRA 0.2
    assert check_rollout(r).accuracy == pytest.approx(0.2)
    assert not check_rollout(r).accurate
    assert check_rollout(r, config=VerifierConfig(accuracy_threshold=0.2)).accurate


@pytest.mark.parametrize("text,has_think,has_answer,missing", [
    ("<think>a b c</think><answer>B</answer>", True, True, None),
    ("<think>a b c<answer>B</answer>", False, True, "missing </think>"),
    ("a b c</think><answer>B</answer>", False, True, "missing <think>"),
    ("<think>a b c</think><answer>B", True, False, "missing </answer>"),
    ("<think>a b c</think> B", True, False, "missing <answer>, </answer>"),
    ("<think></think><answer>B</answer>", False, True, "missing reasoning text (empty <think>)"),
    ("<think>a b</think><answer> </answer>", True, False, "missing answer text (empty <answer>)"),
    ("just text", False, False, "missing <answer>, </answer>, <think>, </think>"),
])
def test_parse_says_what_is_missing(text, has_think, has_answer, missing):
    c = check_rollout(ro(text))
    assert (c.has_think, c.has_answer, c.missing) == (has_think, has_answer, missing)


def test_parse_recovers_reasoning_and_answer_without_tags():
    p = parse_response("<think>step one step two<answer>B")
    assert p.reasoning == "step one step two" and p.answer == "B"
    p = parse_response("plain reasoning, then <answer>C</answer>")
    assert p.reasoning == "plain reasoning, then" and p.answer == "C"


def test_truncated_means_finish_reason_length():
    assert check_rollout(ro(resp(REASONING, "B"), finish_reason="length")).truncated
    assert not check_rollout(ro(resp(REASONING, "B"), finish_reason="stop")).truncated


def test_length_bounds_whitespace_words_by_default():
    cfg = VerifierConfig(min_reasoning_tokens=5, max_reasoning_tokens=20)
    assert check_rollout(ro(resp("too short here", "B")), config=cfg).too_short
    long = " ".join(f"w{i}" for i in range(21))
    c = check_rollout(ro(resp(long, "B")), config=cfg)
    assert c.too_long and not c.too_short and c.reasoning_tokens == 21 and not c.within_length
    assert check_rollout(ro(resp(" ".join(f"w{i}" for i in range(20)), "B")), config=cfg).within_length


def test_length_uses_the_tokenizer_when_given():
    class CharTokenizer:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return list(range(len(text)))

    c = check_rollout(ro(resp("abc de", "B")), tokenizer=CharTokenizer())
    assert c.reasoning_tokens == 6
    assert count_tokens("abc de") == 2


def test_repetition_ratio_values():
    assert repetition_ratio("") == 0.0
    assert repetition_ratio("only three words") == 0.0
    assert repetition_ratio(REASONING) == 0.0
    loop = "the circle moves to the right " * 10
    assert repetition_ratio(loop) > 0.8
    # punctuation and case do not hide a repeat
    assert repetition_ratio("One two three four. one two THREE four!") == pytest.approx(
        repetition_ratio("one two three four one two three four"))
    # n-gram sizes: a period-4 loop of 8 words repeats one 4-gram of five and no 8-gram
    assert repetition_ratio("a b c d a b c d", 4, 4) == pytest.approx(1 - 4 / 5)
    assert repetition_ratio("a b c d a b c d", 8, 8) == 0.0


def test_repetitive_by_ngram_ratio_or_by_repeated_sentence():
    looping = REASONING + " " + "I keep checking the frames again. " * 4
    c = check_rollout(ro(resp(looping, "B")))
    assert c.repetitive and c.repetition > 0.3
    # each sentence 3 times, the n-gram ratio stays under a high threshold: the sentence rule fires
    text = "\n".join(["The circle moves right.", "Frame one is dark.", "The circle moves right.",
                      "Frame two is bright.", "The circle moves right."])
    cfg = VerifierConfig(repetition_threshold=0.99)
    c = check_rollout(ro(resp(text, "B")), config=cfg)
    assert c.sentence_repeats == 3 and c.repetitive and c.repetition < 0.99
    assert not check_rollout(ro(resp(text, "B")), config=VerifierConfig(repetition_threshold=0.99,
                                                                        max_line_repeats=4)).repetitive
    assert max_sentence_repeats("Yes. Yes. Yes.", min_words=3) == 0  # short sentences do not count


def test_reflection_markers():
    text = "The circle moves left. Wait, I made a mistake: frame 3 shows it on the right, so it moves right."
    c = check_rollout(ro(resp(text, "B")))
    assert c.reflection and c.reflection_markers == ("i made a mistake", "wait")
    assert not check_rollout(ro(resp("We awaited the result; it moves right, to the right edge.", "B"))).reflection
    cfg = VerifierConfig(reflection_markers=("hmm",))
    assert not check_rollout(ro(resp(text, "B")), config=cfg).reflection
    assert reflection_markers_found("Hmm, HMM.", ("hmm",)) == ["hmm"]
    # markers in the answer do not count: only the reasoning is read
    assert not check_rollout(ro(resp(REASONING, "B, wait"))).reflection


def test_checks_to_dict_is_json_ready():
    import json

    d = check_rollout(ro(resp(REASONING, "B"))).to_dict()
    assert json.loads(json.dumps(d))["accurate"] is True
    assert set(d) >= {"accurate", "has_think", "has_answer", "reasoning_tokens", "repetition", "truncated"}


# ---- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,field", [
    ({"min_reasoning_tokens": -1}, "min_reasoning_tokens"),
    ({"max_reasoning_tokens": 3, "min_reasoning_tokens": 5}, "max_reasoning_tokens"),
    ({"ngram_min": 5, "ngram_max": 4}, "ngram_max"),
    ({"repetition_threshold": 0.0}, "repetition_threshold"),
    ({"accuracy_threshold": 1.5}, "accuracy_threshold"),
    ({"max_pairs_per_prompt": 0}, "max_pairs_per_prompt"),
    ({"pair_types": ("penalty", "bogus")}, "pair_types"),
    ({"pair_types": ()}, "pair_types"),
    ({"judge_scope": "some"}, "judge_scope"),
    ({"caption_margin": -1}, "caption_margin"),
    ({"reflection_markers": ("",)}, "reflection_markers"),
    ({"max_line_repeats": "3"}, "max_line_repeats"),
    ({"chosen_requires_format": "yes"}, "chosen_requires_format"),
])
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        VerifierConfig(**kw)
    assert err.value.field == field and repr(field) in str(err.value)


def test_config_overrides_hash_and_round_trip():
    base = VerifierConfig()
    cfg = base.with_overrides(["max_pairs_per_prompt=3", "pair_types=penalty,consistency",
                               "chosen_requires_format=false", "repetition_threshold=0.5",
                               'reflection_markers=["Hmm", "oops"]'])
    assert cfg.max_pairs_per_prompt == 3 and cfg.pair_types == ("penalty", "consistency")
    assert cfg.chosen_requires_format is False and cfg.repetition_threshold == 0.5
    assert cfg.reflection_markers == ("hmm", "oops")
    assert cfg.config_hash() != base.config_hash() and len(cfg.config_hash()) == 16
    assert VerifierConfig.from_dict(cfg.to_dict()) == cfg
    assert VerifierConfig.from_dict(cfg.to_dict()).config_hash() == cfg.config_hash()
    with pytest.raises(ConfigError, match="'max_pairs': unknown field; known fields: .*max_pairs_per_prompt"):
        base.with_overrides(["max_pairs=3"])
    with pytest.raises(ConfigError, match="max_pairs_per_prompt.*expected an integer"):
        base.with_overrides(["max_pairs_per_prompt=two"])
    with pytest.raises(ConfigError, match="key=value"):
        base.with_overrides(["max_pairs_per_prompt"])
