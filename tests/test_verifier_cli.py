"""``python -m verifier`` as a user runs it (subprocesses): bad lines, --skip-bad, --data, overrides,
the OpenAI-compatible judge against a local stand-in server, and the caption ``score`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from veripo.data.rollouts import Rollout, read_pairs, write_rollouts

ROOT = Path(__file__).resolve().parents[1]
REC = {"problem_id": "p1", "problem": "Which way does the red circle move?", "data_type": "text",
       "problem_type": "multiple choice", "options": ["A. left", "B. right"], "solution": "<answer>B</answer>",
       "caption": "A red circle slides from the left edge to the right edge."}
RIGHT = "The circle starts on the left and ends on the right side of the frame, so it moves right."
LEFT = "The circle starts on the right and ends on the left side of the frame, so it moves left."


def rollouts(embed: bool = True) -> list[Rollout]:
    rec = {k: v for k, v in REC.items() if k != "problem_id"} if embed else None
    spec = [(RIGHT, "B"), (LEFT, "B"), (LEFT, "A"), (RIGHT, "A")]
    return [Rollout(rollout_id=f"r{i}", problem_id="p1", sample_index=i, record=rec,
                    response=f"<think>{t}</think><answer>{a}</answer>") for i, (t, a) in enumerate(spec)]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "verifier", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture()
def broken_file(tmp_path) -> Path:
    path = tmp_path / "rollouts.jsonl"
    write_rollouts(path, rollouts())
    lines = path.read_text().splitlines()
    lines.insert(2, '{"rollout_id": "r9", "problem_id": "p1", "response": ')  # line 3 is cut short
    path.write_text("\n".join(lines) + "\n")
    return path


def test_broken_line_stops_the_run_naming_file_and_line(broken_file, tmp_path):
    out = tmp_path / "pairs.jsonl"
    proc = run_cli("pairs", "--rollouts", str(broken_file), "--out", str(out), "--judge", "none", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert f"{broken_file}:3:<json>: invalid JSON" in proc.stderr
    assert "Fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_skip_bad_skips_counts_and_finishes(broken_file, tmp_path):
    out = tmp_path / "pairs.jsonl"
    proc = run_cli("pairs", "--rollouts", str(broken_file), "--out", str(out), "--judge", "none", "--skip-bad",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"skipped: {broken_file}:3:<json>" in proc.stderr
    assert "| bad lines skipped" in proc.stdout and "| rollouts" in proc.stdout
    pairs = read_pairs(out)
    # no judge: verdicts are "skipped", so no consistency pair and both accurate rollouts may be chosen
    assert [(p.type, p.chosen_id, p.rejected_id) for p in pairs] == [("penalty", "r0", "r2"), ("penalty", "r1", "r3")]
    meta = json.loads((tmp_path / "pairs.meta.json").read_text())
    assert meta["stats"]["skipped_lines"] == 1 and meta["stats"]["pairs"] == 2 and meta["judge"] is None
    assert meta["config"]["max_pairs_per_prompt"] == 2 and meta["config_hash"] == pairs[0].config_hash


def test_data_file_config_overrides_and_bad_override(tmp_path):
    rpath, dpath, out = tmp_path / "r.jsonl", tmp_path / "d.jsonl", tmp_path / "p.jsonl"
    write_rollouts(rpath, rollouts(embed=False))
    dpath.write_text(json.dumps(REC) + "\n")
    proc = run_cli("pairs", "--rollouts", str(rpath), "--data", str(dpath), "--out", str(out), "--judge", "none",
                   "--no-progress", "--config", "max_pairs_per_prompt=1", "pair_types=penalty")
    assert proc.returncode == 0, proc.stderr
    assert [p.rejected_id for p in read_pairs(out)] == ["r2"]
    proc = run_cli("pairs", "--rollouts", str(rpath), "--out", str(out), "--judge", "none", "--no-progress")
    assert proc.returncode == 2 and "no record to check against" in proc.stderr and "--data" in proc.stderr
    proc = run_cli("pairs", "--rollouts", str(rpath), "--data", str(dpath), "--out", str(out), "--judge", "none",
                   "--config", "max_pairs=1")
    assert proc.returncode == 2 and "'max_pairs': unknown field" in proc.stderr


class _Judge(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls += 1
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if "Predicted answer:" in user:
            content = "Score: 5" if "Predicted answer:\nB" in user else "Score: 1"
        else:  # consistency: "moves left" reasoning with answer B is inconsistent
            reasoning = user.split("Student's reasoning:")[1].split("Student's final answer:")[0]
            answer = user.split("Student's final answer:")[1].split("\n\n")[0].strip()
            content = "Verdict: " + ("consistent" if ("moves left" in reasoning) == (answer == "A") else "inconsistent")
        data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.calls = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_openai_judge_through_the_cli_with_cache_and_no_key_in_outputs(judge_server, tmp_path):
    rpath, out = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    write_rollouts(rpath, rollouts())
    secret = "sk-cli-SECRET-987654321"
    url = f"http://127.0.0.1:{judge_server.server_port}/v1"
    args = ("pairs", "--rollouts", str(rpath), "--out", str(out), "--judge", "openai", "--base-url", url,
            "--judge-model", "stand-in", "--api-key-env", "VERIFIER_TEST_KEY")
    proc = run_cli(*args, env={"VERIFIER_TEST_KEY": secret})
    assert proc.returncode == 0, proc.stderr
    assert judge_server.calls == 4
    pairs = read_pairs(out)
    assert [(p.type, p.chosen_id, p.rejected_id) for p in pairs] == [("consistency", "r0", "r1"),
                                                                     ("penalty", "r0", "r2")]
    assert "| inconsistency rate" in proc.stdout and "50.0%" in proc.stdout  # r1 and r3
    written = [out, tmp_path / "p.meta.json", tmp_path / "p.judge_cache.jsonl"]
    for f in written:
        assert f.exists() and secret not in f.read_text(), f
    assert secret not in proc.stdout + proc.stderr
    # a rerun judges nothing: every verdict comes from the cache
    proc = run_cli(*args, env={"VERIFIER_TEST_KEY": secret})
    assert proc.returncode == 0 and judge_server.calls == 4
    assert [p.pair_id for p in read_pairs(out)] == [p.pair_id for p in pairs]


def test_score_command_writes_caption_pairs_and_scores(judge_server, tmp_path):
    rpath, out, scores = tmp_path / "r.jsonl", tmp_path / "c.jsonl", tmp_path / "s.jsonl"
    write_rollouts(rpath, rollouts())
    url = f"http://127.0.0.1:{judge_server.server_port}/v1"
    proc = run_cli("score", "--rollouts", str(rpath), "--out", str(out), "--judge", "openai", "--base-url", url,
                   "--judge-model", "stand-in", "--scores-out", str(scores), "--no-cache")
    assert proc.returncode == 0, proc.stderr
    pairs = read_pairs(out)
    assert [(p.type, p.chosen_id, p.rejected_id, p.chosen_score, p.rejected_score) for p in pairs] == [
        ("caption", "r0", "r3", 5.0, 1.0)]
    lines = [json.loads(s) for s in scores.read_text().splitlines()]
    assert [(x["rollout_id"], x["score"]) for x in lines] == [("r0", 5.0), ("r1", 5.0), ("r2", 1.0), ("r3", 1.0)]
    assert not (tmp_path / "c.judge_cache.jsonl").exists()


def test_unreachable_judge_is_exit_3(tmp_path):
    rpath = tmp_path / "r.jsonl"
    write_rollouts(rpath, rollouts())
    with ThreadingHTTPServer(("127.0.0.1", 0), _Judge) as s:
        port = s.server_port  # bound then closed: nothing listens there any more
    proc = run_cli("pairs", "--rollouts", str(rpath), "--out", str(tmp_path / "p.jsonl"), "--judge", "openai",
                   "--base-url", f"http://127.0.0.1:{port}/v1", "--judge-model", "m", "--no-progress")
    assert proc.returncode == 3 and "unreachable" in proc.stderr


def test_tokenizer_option_counts_reasoning_in_tokens(tmp_path, capsys):
    from veripo.models import resolve_model
    from verifier.cli import main

    rpath, out = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    write_rollouts(rpath, rollouts())
    assert main(["pairs", "--rollouts", str(rpath), "--out", str(out), "--judge", "none", "--no-progress"]) == 0
    words = read_pairs(out)[0].chosen_checks["reasoning_tokens"]
    tok_dir = str(resolve_model("smollm2-135m-instruct"))
    assert main(["pairs", "--rollouts", str(rpath), "--out", str(out), "--judge", "none", "--no-progress",
                 "--tokenizer", tok_dir]) == 0
    tokens = read_pairs(out)[0].chosen_checks["reasoning_tokens"]
    assert words == len(RIGHT.split()) and tokens > words  # BPE splits words and punctuation
    assert "| pairs" in capsys.readouterr().out
