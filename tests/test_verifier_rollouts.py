"""veripo.data.rollouts: the Rollout / PreferencePair records and their JSONL files."""

from __future__ import annotations

import json

import pytest

from veripo.data.records import LoadReport, RecordError
from veripo.data.rollouts import (
    PreferencePair,
    Rollout,
    RolloutError,
    append_rollouts,
    read_pairs,
    read_rollouts,
    write_pairs,
    write_rollouts,
)


def make_rollout(i: int = 0, **kw) -> Rollout:
    base = dict(rollout_id=f"r{i}", problem_id="p1", response="<think>x y z</think><answer>B</answer>",
                token_ids=(5, 6, 7), finish_reason="stop", reward=1.5,
                reward_components={"accuracy": 1.0, "format": 0.5}, advantage=0.25, step=3, iteration=1,
                sample_index=i, record={"problem": "Q?", "problem_type": "multiple choice",
                                        "solution": "B", "options": ["A. a", "B. b"]})
    base.update(kw)
    return Rollout(**base)


def make_pair(i: int = 0, **kw) -> PreferencePair:
    base = dict(pair_id=f"pair{i}", problem_id="p1", type="consistency", prompt="Q?", chosen="good",
                rejected="bad", chosen_id="r0", rejected_id="r1", chosen_token_ids=[1, 2], rejected_token_ids=[3],
                chosen_checks={"accurate": True}, rejected_checks={"accurate": True},
                chosen_verdict="consistent", rejected_verdict="inconsistent", config_hash="abc",
                judge="scripted-fake", video_path="/v/1.mp4")
    base.update(kw)
    return PreferencePair(**base)


def test_rollout_round_trip_keeps_every_field_and_unknown_keys():
    r = make_rollout(2, mean_logprob=-0.5, extra={"policy_version": 7})
    d = r.to_dict()
    assert d["token_ids"] == [5, 6, 7] and d["policy_version"] == 7
    back = Rollout.from_dict(json.loads(json.dumps(d)))
    assert back == r
    assert back.extra == {"policy_version": 7}
    assert back.truncated is False and make_rollout(finish_reason="length").truncated is True


def test_rollout_defaults_for_optional_fields():
    r = Rollout.from_dict({"rollout_id": 3, "problem_id": 7, "response": "hi"})
    assert (r.rollout_id, r.problem_id, r.token_ids, r.finish_reason, r.advantage, r.record) == (
        "3", "7", (), "stop", None, None)
    assert "record" not in r.to_dict() and "mean_logprob" not in r.to_dict()


@pytest.mark.parametrize("field,value,needle", [
    ("finish_reason", "abort", "finish_reason"),
    ("token_ids", [1, "2"], "token_ids"),
    ("token_ids", [-1], "token_ids"),
    ("reward", "high", "reward"),
    ("reward", float("nan"), "reward"),
    ("step", -1, "step"),
    ("step", True, "step"),
    ("reward_components", {"accuracy": "x"}, "reward_components.accuracy"),
    ("record", [1], "record"),
    ("response", None, "response"),
    ("rollout_id", "", "rollout_id"),
])
def test_rollout_from_dict_names_the_bad_field(field, value, needle):
    d = make_rollout().to_dict()
    d[field] = value
    with pytest.raises(RolloutError) as err:
        Rollout.from_dict(d, where="f.jsonl:4")
    assert err.value.field == needle
    assert str(err.value).startswith(f"f.jsonl:4:{needle}:")
    assert "Fix:" in str(err.value)


def test_pair_round_trip_and_type_check():
    p = make_pair(record={"problem": "Q?"}, extra={"note": 1})
    back = PreferencePair.from_dict(json.loads(p.to_json()))
    assert back == p and back.chosen_token_ids == (1, 2) and back.extra == {"note": 1}
    with pytest.raises(RolloutError, match="type"):
        make_pair(type="bogus")
    d = p.to_dict()
    d["type"] = "bogus"
    with pytest.raises(RolloutError) as err:
        PreferencePair.from_dict(d, where="p.jsonl:9")
    assert str(err.value).startswith("p.jsonl:9:type:")


def test_write_then_read_rollouts_is_atomic_and_identical(tmp_path):
    path = tmp_path / "sub" / "rollouts.jsonl"
    rs = [make_rollout(i) for i in range(3)]
    write_rollouts(path, rs)
    assert read_rollouts(path) == rs
    assert [p.name for p in path.parent.iterdir()] == ["rollouts.jsonl"]  # no temp file left behind
    write_rollouts(path, rs[:1])  # replaces, never appends
    assert len(read_rollouts(path)) == 1


def test_atomic_write_keeps_the_old_file_when_serialising_fails(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, [make_pair(0)])

    class Boom:
        def to_dict(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_pairs(path, [make_pair(1), Boom()])
    assert [p.pair_id for p in read_pairs(path)] == ["pair0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_append_rollouts_grows_the_file(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    append_rollouts(path, [make_rollout(0)])
    append_rollouts(path, [make_rollout(1), make_rollout(2)])
    assert [r.rollout_id for r in read_rollouts(path)] == ["r0", "r1", "r2"]


def test_bad_line_stops_with_file_and_line_or_is_skipped_and_counted(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    lines = [make_rollout(0).to_json(), "", '{"rollout_id": "r9", "problem_id": "p1"', make_rollout(1).to_json(),
             json.dumps({"rollout_id": "r5", "problem_id": "p1"})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as err:
        read_rollouts(path)
    assert f"{path}:3:<json>" in str(err.value)
    report = LoadReport()
    got = read_rollouts(path, skip_bad=True, report=report)
    assert [r.rollout_id for r in got] == ["r0", "r1"]
    assert report.skipped == 2
    assert f"{path}:3:" in report.errors[0] and f"{path}:5:response" in report.errors[1]


def test_duplicate_rollout_id_names_both_lines(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    path.write_text(make_rollout(0).to_json() + "\n" + make_rollout(0).to_json() + "\n")
    with pytest.raises(RolloutError, match=r"rollouts.jsonl:2:rollout_id: duplicate id 'r0' \(first at .*:1\)"):
        read_rollouts(path)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_rollouts(tmp_path / "nope.jsonl")
