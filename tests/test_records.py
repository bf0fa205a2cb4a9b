"""The Video-R1 record schema: valid files load; every kind of bad line names file:line:field and a fix."""

import json

import pytest

from veripo.data import LoadReport, Record, RecordError, build_messages, build_prompt, load_records, write_records
from veripo.data.prompts import PromptStyle

GOOD = {"problem_id": 1, "problem": "Which way does the red circle move?", "data_type": "video",
        "problem_type": "multiple choice", "options": ["A. left", "B. right"], "solution": "<answer>B</answer>",
        "path": "clips/1.mp4", "data_source": "unit", "caption": "frame 0: red circle (10, 10)."}


def write_lines(tmp_path, lines):
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_valid_file_loads_and_resolves_paths(tmp_path):
    p = write_lines(tmp_path, [json.dumps(GOOD), "", json.dumps({**GOOD, "problem_id": "x2", "extra_key": 3})])
    recs = load_records(p)
    assert [r.problem_id for r in recs] == ["1", "x2"]
    assert recs[0].path == str(tmp_path / "clips" / "1.mp4")
    assert recs[0].options == ("A. left", "B. right")
    assert recs[0].answer == "B"
    assert recs[1].extra == {"extra_key": 3}
    assert Record.from_dict(json.loads(recs[1].to_json()), base_dir=None).extra == {"extra_key": 3}


@pytest.mark.parametrize("mutate, field, fix_word", [
    (lambda d: d.pop("problem"), "problem", "add"),
    (lambda d: d.update(problem_type="yes/no"), "problem_type", "multiple choice"),
    (lambda d: d.update(data_type="audio"), "data_type", "video"),
    (lambda d: d.update(options="A. left"), "options", "list"),
    (lambda d: d.update(options=["A. only"]), "options", "two options"),
    (lambda d: d.pop("path"), "path", "data_type"),
    (lambda d: d.update(solution=""), "solution", "ground-truth"),
    (lambda d: d.update(problem_id=True), "problem_id", "unique"),
    (lambda d: d.update(caption=["x"]), "caption", "string"),
])
def test_bad_field_names_file_line_field_and_fix(tmp_path, mutate, field, fix_word):
    bad = dict(GOOD, problem_id=2)
    mutate(bad)
    p = write_lines(tmp_path, [json.dumps(GOOD), json.dumps(bad)])
    with pytest.raises(RecordError) as exc:
        load_records(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}:2:{field}:"), msg
    assert "Fix:" in msg and fix_word in msg


def test_broken_json_and_duplicates(tmp_path):
    p = write_lines(tmp_path, [json.dumps(GOOD), '{"problem_id": 2, "problem": ', json.dumps(GOOD)])
    with pytest.raises(RecordError, match=rf"{p}:2:<json>: invalid JSON"):
        load_records(p)
    report = LoadReport()
    recs = load_records(p, skip_bad=True, report=report)
    assert len(recs) == 1 and report.skipped == 2
    assert any("duplicate id '1'" in e and ":3:problem_id" in e for e in report.errors)


def test_check_media_and_missing_file(tmp_path):
    p = write_lines(tmp_path, [json.dumps(GOOD)])
    with pytest.raises(RecordError, match="media file not found"):
        load_records(p, check_media=True)
    with pytest.raises(FileNotFoundError, match="veripo.data.synth"):
        load_records(tmp_path / "nope.jsonl")


def test_json_list_file_and_roundtrip(tmp_path):
    p = tmp_path / "data.json"
    p.write_text(json.dumps([GOOD, {**GOOD, "problem_id": 2, "data_type": "text", "path": None}]))
    recs = load_records(p)
    assert recs[1].data_type == "text" and recs[1].path is None
    out = tmp_path / "out" / "copy.jsonl"
    write_records(out, recs)
    assert load_records(out) == recs


def test_prompt_lists_options_instruction_and_type_suffix():
    rec = Record.from_dict(GOOD)
    text = build_prompt(rec, PromptStyle(use_caption=True))
    assert text.index("Video description:") < text.index("Question:") < text.index("A. left") < text.index("<think>")
    assert "letter of the correct option" in text
    num = Record.from_dict({**GOOD, "problem_type": "numerical", "options": [], "solution": "3"})
    assert "only the number" in build_prompt(num) and "Options" not in build_prompt(num)
    msgs = build_messages(rec, video_options={"fps": 2.0})
    assert msgs[0]["content"][0] == {"type": "video", "video": "clips/1.mp4", "fps": 2.0}
    assert isinstance(build_messages(rec, PromptStyle(use_caption=True, use_video=False))[0]["content"], str)
    with pytest.raises(ValueError, match="no caption"):
        build_prompt(Record.from_dict({**GOOD, "caption": None}), PromptStyle(use_caption=True))
