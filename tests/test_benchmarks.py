"""Public benchmarks (`veripo.eval.benchmarks`, `templates`, `scoring`, `shards`, `bench`): both file
layouts, the papers' prompts, the published scoring rules on the cases that matter, shards + merge =
one process, resume after a torn line, missing videos, ``score`` / ``merge`` commands, and the tiny
Qwen2.5-VL answering a fixture benchmark end to end on vLLM (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from veripo.eval.bench import (format_bench_table, interval95, merge_dirs, run_benchmark, score_predictions,
                               split_missing)
from veripo.eval.benchmarks import BenchmarkError, load_benchmark, resolve_benchmark_file
from veripo.eval.scoring import score_verIPO, score_video_r1
from veripo.eval.shards import parse_shard, select
from veripo.eval.templates import VERIPO_DROP, user_text
from veripo.run_dir import SAMPLES

FIX = Path(__file__).parent / "fixtures" / "bench"
ROOT = Path(__file__).resolve().parents[1]


# ---- loaders ----------------------------------------------------------------------------------
def test_verIPO_layout_kinds_categories_and_extra_fields():
    items, spec = load_benchmark(FIX / "vsi_bench.json")
    assert spec.name == "vsi_bench" and spec.mra
    assert [it.kind for it in items] == ["regression", "regression", "multiple choice", "regression",
                                         "multiple choice"]
    assert items[0].category == "object_counting" and items[0].extra["scene_name"] == "fx0"
    assert items[2].options == ["A. left", "B. right", "C. up", "D. down"] and items[2].answer == "B"
    mme, spec = load_benchmark(FIX / "video_mme.json")
    assert [it.category for it in mme] == ["short", "medium", "long"] and not spec.mra


def test_video_r1_layout():
    items, spec = load_benchmark(FIX / "eval_videommmu.json")
    assert spec.name == "videommmu" and items[0].layout == "video_r1"
    assert [it.kind for it in items] == ["multiple choice", "numerical", "regression", "OCR", "free-form"]
    assert items[0].video == "clips/00000.mp4" and items[0].answer == "B" and items[0].qid == "1"


def test_bad_benchmark_files_name_file_record_and_fix(tmp_path):
    def write(obj) -> Path:
        p = tmp_path / "bench.json"
        p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
        return p

    with pytest.raises(BenchmarkError, match=r"bench.json: record 0 has keys .*neither VerIPO's"):
        load_benchmark(write([{"foo": 1}]))
    with pytest.raises(BenchmarkError, match=r"record 1 \(q1\): 'answer' is missing"):
        load_benchmark(write([{"question_id": "q0", "question": "x", "answer": "A", "video_path": "a.mp4"},
                              {"question_id": "q1", "question": "x", "answer": "", "video_path": "a.mp4"}]))
    repeated, _ = load_benchmark(write([{"question_id": "q", "question": "x", "answer": "A"}] * 3))
    assert [it.qid for it in repeated] == ["q", "q#1", "q#2"] and repeated[2].extra["source_question_id"] == "q"
    with pytest.raises(BenchmarkError, match="not JSON"):
        load_benchmark(write("[{\"question_id\": "))
    with pytest.raises(BenchmarkError, match="unknown problem_type 'essay'"):
        load_benchmark(write([{"problem_type": "essay", "problem": "x", "solution": "y"}]))
    with pytest.raises(BenchmarkError, match="--bench-dir"):
        resolve_benchmark_file("tomato", tmp_path)
    assert resolve_benchmark_file("vsi_bench", FIX) == FIX / "vsi_bench.json"
    assert resolve_benchmark_file("videommmu", FIX) == FIX / "eval_videommmu.json"


# ---- prompts ----------------------------------------------------------------------------------
def test_templates():
    items, _ = load_benchmark(FIX / "vsi_bench.json")
    mc = user_text(items[2], "verIPO")
    assert VERIPO_DROP not in mc and "so the answer is B." in mc and mc.endswith("D. down")
    num = user_text(items[0], "verIPO")
    assert "so the answer is $2$" in num and num.endswith("the answer must be a number.")
    r1, _ = load_benchmark(FIX / "eval_videommmu.json")
    text = user_text(r1[0], "video_r1")
    assert "move? Options:\nA. left\nB. right\n\nPlease think" in text
    assert text.endswith("Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
                         "<answer> </answer> tags.")
    assert user_text(r1[3], "video_r1").endswith("provide your text answer within the <answer> </answer> tags.")
    assert user_text(r1[0], "default").startswith("Question: Which way")
    assert user_text(r1[0], "video_r1", caption=True).startswith("Video description:\nFrame 1: a circle")
    items[0].extra.pop("caption")
    with pytest.raises(BenchmarkError, match="no 'caption' field.*--use-video"):
        user_text(items[0], "verIPO", caption=True)


# ---- scoring: VerIPO's rules ------------------------------------------------------------------
@pytest.mark.parametrize("output, want", [
    ("<think>so B</think><answer> $B$ </answer>", 1.0),
    ("<answer>(B)</answer>", 1.0),
    ("<answer>b</answer>", 1.0),
    ("<answer>A or B</answer>", 0.0),  # several letters
    ("<answer>B, C</answer>", 0.0),
    ("<answer>B. right</answer>", 0.0),  # "h" is an option letter too: the published rule counts it
    ("<answer>$C$</answer>", 0.0),
    ("", 0.0),  # empty answer
    ("<answer></answer>", 0.0),
    ("<think>the answer is B</think> B", 0.0),  # missing <answer> tag
    ("<answer>B</answer><answer>C</answer>", 1.0),  # the FIRST answer span
])
def test_verIPO_multiple_choice(output, want):
    assert score_verIPO(output, "B") == want


@pytest.mark.parametrize("output, gt, want", [
    ("<answer>12 cm</answer>", "12", 1.0),  # number with units: the first token
    ("<answer>$12$ cm</answer>", "12", 0.0),  # only the ends lose '$': "12$" is no number
    ("<answer>12.</answer>", "12", 1.0),
    ("<answer>13</answer>", "10", 0.5),  # rel 0.3 <= 1 - theta for theta 0.50..0.70
    ("<answer>10.5</answer>", "10", 1.0),  # rel 0.05 <= 1 - 0.95 (0.05000000000000004): passes
    ("<answer>about 12</answer>", "12", 0.0),
    ("12", "12", 0.0),  # missing <answer> tag
    ("<answer>3</answer>", "0", 0.0),  # gt 0: the script's division fails, scored 0
])
def test_verIPO_vsi_mra(output, gt, want):
    assert score_verIPO(output, gt, mra=True) == pytest.approx(want)


@pytest.mark.parametrize("output, gt, want", [
    ("<answer> $3.43$ </answer>", "['24/7', '3.429', '3.43']", 0.0),  # gt read as 24/7; 3.43 != 24/7
    ("<answer> $\\frac{24}{7}$ </answer>", "['24/7', '3.429', '3.43']", 1.0),
    ("<answer> $3.43$ </answer>", "3.43", 1.0),
    ("<answer>12 cm</answer>", "12", 0.0),  # math-verify finds no expression in "12 cm"
    ("<answer> $12$ cm</answer>", "12", 1.0),
    ("The answer is $\\frac{1}{2}$", "0.5", 1.0),  # no tag needed: the whole output is parsed
    ("", "7", 0.0),
])
def test_verIPO_math(output, gt, want):
    assert score_verIPO(output, gt) == want


def test_video_r1_rules():
    assert score_video_r1("<answer> B </answer>", "<answer>B</answer>", "multiple choice") == 1.0
    assert score_video_r1("<answer>(B)</answer>", "<answer>B</answer>", "multiple choice") == 0.0  # exact match
    assert score_video_r1("B", "<answer>B</answer>", "multiple choice") == 1.0  # no tag: the whole output
    assert score_video_r1("<answer>3</answer>", "<answer>3.0</answer>", "numerical") == 0.0  # decimal mismatch
    assert score_video_r1("<answer>1,000</answer>", "<answer>1000.0</answer>", "numerical") == 1.0
    assert score_video_r1("<answer>12 cm</answer>", "<answer>12</answer>", "numerical") == 0.0
    # regression in float32 as the script: rel 0.05 passes "< 1 - 0.95" (0.0500000119)
    assert score_video_r1("<answer>105</answer>", "<answer>100</answer>", "regression") == 1.0
    assert score_video_r1("<answer>130</answer>", "<answer>100</answer>", "regression") == pytest.approx(0.4)
    assert score_video_r1("<answer>STOP HERE</answer>", "<answer>STOP HERE NOW</answer>", "OCR") == \
        pytest.approx(2 / 3)
    assert score_video_r1("<answer>STOP HERE</answer>", "<answer>STOP HERE NOW</answer>", "OCR",
                          ocr_free_form="eval") == 0.0
    same = score_video_r1("<answer>The red circle moves right</answer>",
                          "<answer>the red circle moves right</answer>", "free-form")
    part = score_video_r1("<answer>the red circle moves right</answer>",
                          "<answer>the red circle moves to the right</answer>", "free-form")
    assert same == pytest.approx(1.0) and 0.5 < part < 1.0


def test_interval95():
    lo, hi = interval95([1.0] * 7 + [0.0] * 3)
    assert lo == pytest.approx(0.3968, abs=1e-3) and hi == pytest.approx(0.8922, abs=1e-3)  # Wilson
    lo, hi = interval95([0.5, 0.7, 0.9])
    assert lo < 0.7 < hi and interval95([]) is None


# ---- running: scripted generate ---------------------------------------------------------------
@dataclass
class _Req:
    request_id: str


@dataclass
class _Out:
    text: str
    finish_reason: str = "stop"
    token_ids: tuple = (1, 2)


ANSWERS = {"vsi_fx_0": "<think>three</think><answer>3</answer>", "vsi_fx_1": "<answer>2.4</answer>",
           "vsi_fx_2": "<answer>$B$</answer>", "vsi_fx_3": "<answer>4</answer>", "vsi_fx_4": "<answer>B</answer>"}


class Scripted:
    def __init__(self, fail_after: int | None = None):
        self.seen: list[str] = []
        self.fail_after = fail_after

    def __call__(self, requests, sampling):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.seen += [r.request_id for r in requests]
        return [_Out(ANSWERS[r.request_id]) for r in requests]


def _run(items, spec, out, gen=None, **kw):
    kw.setdefault("run_meta", {"benchmark": spec.name, "template": "verIPO", "scorer": "verIPO"})
    return run_benchmark(items, spec, gen or Scripted(), lambda it: _Req(it.qid), out, scorer="verIPO",
                         sampling=None, progress=False, **kw)


def test_run_scores_and_summarises(tmp_path):
    items, spec = load_benchmark(FIX / "vsi_bench.json")
    s = _run(items, spec, tmp_path / "one", batch_size=2)
    # 3 -> 1.0; 2.4 vs 2.5 (rel 0.04) -> 1.0; $B$ -> 1; 4 vs 2 (rel 1.0) -> 0; B vs A -> 0
    assert s["n"] == 5 and s["accuracy"] == pytest.approx(3 / 5)
    assert s["by_category"]["object_counting"] == {"n": 2, "accuracy": 0.5, "ci95": interval95([1.0, 0.0])}
    assert s["by_type"]["multiple choice"]["accuracy"] == 0.5
    assert s["missing_videos"] == 0 and "object_rel_direction (n=1)" in format_bench_table(s)
    res = json.loads((tmp_path / "one" / "results.json").read_text())
    assert res["summary"]["accuracy"] == s["accuracy"] and res["meta"]["template"] == "verIPO"
    # `score` re-scores veripo's own samples.jsonl to the same figures (scorer and MRA read from the rows)
    again, _ = score_predictions(tmp_path / "one" / SAMPLES)
    assert again["accuracy"] == s["accuracy"] and again["by_category"] == s["by_category"]


def test_shards_and_merge_equal_one_process(tmp_path):
    items, spec = load_benchmark(FIX / "vsi_bench.json")
    one = _run(items, spec, tmp_path / "one")
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(BenchmarkError, match="--shard"):
            parse_shard(bad)
    parts = [tmp_path / f"s{i}" for i in range(3)]
    for i, d in enumerate(parts):
        _run(select(items, shard=(i, 3)), spec, d)
    assert sorted(sum((select(items, shard=(i, 3)) for i in range(3)), []), key=lambda it: it.index) == items
    merged = merge_dirs(parts, tmp_path / "merged")
    for key in ("n", "accuracy", "ci95", "by_category", "by_type"):
        assert merged[key] == one[key], key
    rows = [json.loads(x) for x in (tmp_path / "merged" / SAMPLES).read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [it.qid for it in items]
    # shards of another run (another template) do not merge
    other = tmp_path / "other"
    _run(select(items, shard=(0, 3)), spec, other, run_meta={"benchmark": spec.name, "template": "video_r1"})
    with pytest.raises(BenchmarkError, match="differ in template"):
        merge_dirs([parts[1], other], tmp_path / "bad")


def test_resume_after_torn_line_and_limit(tmp_path):
    items, spec = load_benchmark(FIX / "vsi_bench.json")
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(items, spec, out, gen=Scripted(fail_after=2), batch_size=2)
    samples = out / SAMPLES
    assert len(samples.read_text().splitlines()) == 2
    with open(samples, "a") as f:
        f.write('{"index": 2, "question_id": "vsi_fx_2", "mod')  # a crash mid-write
    gen = Scripted()
    s = _run(items, spec, out, gen=gen, batch_size=2)
    assert gen.seen == ["vsi_fx_2", "vsi_fx_3", "vsi_fx_4"]  # answered ones skipped, torn one redone
    assert s["resumed"] == 2 and s["generated"] == 3 and s["accuracy"] == pytest.approx(3 / 5)
    assert len(samples.read_text().splitlines()) == 5
    with pytest.raises(BenchmarkError, match="another run \\(template"):
        _run(items, spec, out, run_meta={"benchmark": spec.name, "template": "video_r1", "scorer": "verIPO"})
    assert [it.qid for it in select(items, limit=2)] == ["vsi_fx_0", "vsi_fx_1"]


def test_missing_videos(tmp_path):
    items, spec = load_benchmark(FIX / "vsi_bench.json")
    (tmp_path / "clips").mkdir()
    for i in (0, 2, 4):
        (tmp_path / "clips" / f"0000{i}.mp4").write_bytes(b"x")
    with pytest.raises(BenchmarkError, match=r"video not found: .*clips/00001.mp4 \(2 of 5 missing\).*--skip-missing"):
        split_missing(items, tmp_path, skip_missing=False)
    present, missing = split_missing(items, tmp_path, skip_missing=True)
    assert [it.qid for it in present] == ["vsi_fx_0", "vsi_fx_2", "vsi_fx_4"]
    s = _run(present, spec, tmp_path / "out", missing=missing)
    assert s["n"] == 3 and s["total"] == 5 and s["missing_videos"] == 2
    assert s["missing"] == [str(tmp_path / "clips" / "00001.mp4"), str(tmp_path / "clips" / "00003.mp4")]
    assert "missing videos" in format_bench_table(s) and "2 (listed in results.json)" in format_bench_table(s)


# ---- score / merge commands -------------------------------------------------------------------
def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "veripo.eval", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_score_predictions_layouts(tmp_path):
    pred = tmp_path / "vsi_bench_pred.json"  # "vsi_bench" in the path: MRA, as VerIPO's script decides
    pred.write_text(json.dumps([
        {"question": {"question_id": "a", "question_type": "counting"}, "ground_truth": "4",
         "model_output": "<answer>$5$</answer>"},
        {"question": {"question_id": "b"}, "ground_truth": "B", "model_output": "<answer>(B)</answer>"},
        {"question": {"question_id": "c"}, "ground_truth": "C", "model_output": "<answer>B</answer>"}]))
    s, rows = score_predictions(pred)
    assert [r["score"] for r in rows] == [pytest.approx(0.6), 1.0, 0.0] and s["scorer"] == "verIPO"
    plain = tmp_path / "mmvu_pred.json"  # elsewhere numbers go through math-verify: 5 != 4
    plain.write_text(pred.read_text())
    assert [r["score"] for r in score_predictions(plain)[1]] == [0.0, 1.0, 0.0]
    assert [r["score"] for r in score_predictions(plain, rules="vsi_bench")[1]][0] == pytest.approx(0.6)
    r1 = tmp_path / "eval_x_output.json"
    r1.write_text(json.dumps({"results": [
        {"problem_type": "numerical", "solution": "<answer>2.5</answer>", "output": "<answer>2.50</answer>"}]}))
    assert score_predictions(r1)[1][0]["score"] == 1.0 and score_predictions(r1)[0]["scorer"] == "video_r1"
    veripo_rows = tmp_path / "samples.jsonl"
    veripo_rows.write_text(json.dumps({"problem_id": "p", "problem_type": "multiple choice", "answer": "B",
                                       "response": "<answer>B. right</answer>"}) + "\n")
    assert score_predictions(veripo_rows)[1][0]["score"] == 1.0  # veripo's own reward reads "B. right" as B
    assert score_predictions(veripo_rows, scorer="verIPO")[1][0]["score"] == 0.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"x": 1}]))
    with pytest.raises(BenchmarkError, match="bad.json: record 0 .*not a predictions record"):
        score_predictions(bad)


def test_cli_score_merge_and_bad_input(tmp_path):
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([{"ground_truth": "A", "model_output": "<answer>A</answer>"},
                                {"ground_truth": "B", "model_output": "<answer>A</answer>"}]))
    p = _cli("score", str(pred), "--out", str(tmp_path / "scored.json"))
    assert p.returncode == 0, p.stderr
    assert "50.0%" in p.stdout and json.loads((tmp_path / "scored.json").read_text())["summary"]["n"] == 2
    p = _cli("--model", "smollm2-135m-instruct", "--benchmark", "tomato", "--bench-dir", str(tmp_path))
    assert p.returncode == 2 and "tomato.json" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--model", "smollm2-135m-instruct", "--benchmark", str(FIX / "vsi_bench.json"), "--video-root",
             str(tmp_path), "--no-progress")
    assert p.returncode == 2 and "video not found" in p.stderr and "--skip-missing" in p.stderr
    p = _cli("--model", "smollm2-135m-instruct", "--benchmark", str(FIX / "vsi_bench.json"), "--shard", "2/2")
    assert p.returncode == 2 and "--shard '2/2'" in p.stderr
    p = _cli("merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert p.returncode == 2 and "no run.json" in p.stderr


# ---- real engine ------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_vlm_answers_a_fixture_benchmark_end_to_end(tmp_path, synth_dir, tiny_vlm_dir):
    """The tiny random Qwen2.5-VL on vLLM (CPU) sees each clip (2 fps, at most 2 frames) and answers the
    first three records of the Video-R1-layout fixture (--limit 3); each is answered, scored by Video-R1's
    rules and summarised."""
    out = tmp_path / "out"
    p = _cli("--model", tiny_vlm_dir, "--benchmark", str(FIX / "eval_videommmu.json"), "--video-root", synth_dir,
             "--use-video", "--max-frames", "2", "--limit", "3", "--max-pixels", str(16 * 28 * 28), "--max-tokens", "8",
             "--temperature", "0", "--out", str(out), "--no-progress", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["n"] == 3 and res["summary"]["scorer"] == "video_r1"
    assert res["meta"]["max_frames"] == 2 and res["meta"]["template"] == "video_r1" and res["meta"]["limit"] == 3
    rows = [json.loads(x) for x in (out / SAMPLES).read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["1", "2", "3"]
    assert [r["problem_type"] for r in rows] == ["multiple choice", "numerical", "regression"]
    assert all(0 < r["tokens"] <= 8 and 0.0 <= r["score"] <= 1.0 for r in rows)
    assert "videommmu (video_r1 scoring)" in p.stdout
