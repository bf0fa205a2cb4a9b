"""`veripo.preflight`: the stage list, the input files and the judge endpoint are checked before any model
loads, each failure one `PreflightError` naming the key, file or URL and the fix (issue 16, item 4).

The judge endpoint is a local ``http.server`` stub standing in for an OpenAI-compatible server (a remote
endpoint is out of this machine's reach)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from veripo.config import RunConfig
from veripo.errors import UserError
from veripo.preflight import PreflightError, check_judge_endpoint, preflight

RECORD = {"problem_id": "q1", "problem": "What moves?", "data_type": "text", "problem_type": "multiple choice",
          "options": ["A. a ball", "B. a box"], "solution": "<answer>A</answer>"}
CANARY = "sk-canary-3f9a1c77e0d2"


def cfg(**sections) -> RunConfig:
    return RunConfig.from_dict(sections)


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_preference_without_a_pair_source_names_preference_pairs():
    with pytest.raises(PreflightError) as exc:
        preflight(cfg(stages=["preference"]))
    assert str(exc.value).startswith("preference.pairs:") and "Fix: set preference.pairs=PATH" in str(exc.value)
    preflight(cfg(stages=["sft", "grpo", "verify", "preference"]))  # pairs from the verify stage: fine


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "the file is empty"),
    ("\n  \n\n", "the file is empty"),
    ("DIR", "not a file"),
])
def test_data_file_missing_empty_or_a_folder(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PreflightError) as exc:
        preflight(cfg(data={"train": str(path)}))
    assert f"data.train={path}" in str(exc.value) and message in str(exc.value)


def test_data_file_that_does_not_parse_names_its_line(tmp_path):
    train = write(tmp_path / "train.jsonl", json.dumps(RECORD) + "\n{not json\n")
    with pytest.raises(UserError) as exc:
        preflight(cfg(data={"train": train}))
    assert f"{train}:2" in str(exc.value)


def test_good_data_file_passes(tmp_path):
    train = write(tmp_path / "train.jsonl", json.dumps(RECORD) + "\n")
    test = write(tmp_path / "test.jsonl", json.dumps({**RECORD, "problem_id": "q2"}) + "\n")
    preflight(cfg(data={"train": train, "test": test}, stages=["sft", "grpo"]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_data_file(tmp_path):
    train = write(tmp_path / "train.jsonl", json.dumps(RECORD) + "\n")
    os.chmod(train, 0)
    with pytest.raises(PreflightError, match="cannot read it"):
        preflight(cfg(data={"train": train}))


def test_pair_file_empty_or_malformed(tmp_path):
    empty = write(tmp_path / "empty.jsonl", "")
    with pytest.raises(PreflightError, match=r"preference.pairs=.*empty.jsonl: the file is empty"):
        preflight(cfg(stages=["preference"], preference={"pairs": empty}))
    bad = write(tmp_path / "bad.jsonl", "{broken\n")
    with pytest.raises(UserError) as exc:
        preflight(cfg(stages=["preference"], preference={"pairs": bad}))
    assert f"{bad}:1" in str(exc.value)
    good = write(tmp_path / "good.jsonl", json.dumps({"id": "p1", "prompt": "Q?", "chosen": "yes", "rejected": "no"}))
    preflight(cfg(stages=["preference"], preference={"pairs": good}))


def test_pair_file_is_read_as_the_run_reads_it_under_data_skip_bad(tmp_path):
    """A malformed first line before good pairs: an error without data.skip_bad, skipped with it (the
    preference stage skips and counts it too); a file of bad lines only fails, saying how many."""
    pair = json.dumps({"id": "p1", "prompt": "Q?", "chosen": "yes", "rejected": "no"})
    mixed = write(tmp_path / "mixed.jsonl", "{broken\n" + pair + "\n")
    with pytest.raises(UserError, match="mixed.jsonl:1"):
        preflight(cfg(stages=["preference"], preference={"pairs": mixed}))
    preflight(cfg(stages=["preference"], preference={"pairs": mixed}, data={"skip_bad": True}))
    bad = write(tmp_path / "bad.jsonl", "{broken\nnot json\n")
    with pytest.raises(PreflightError, match=r"no usable pairs in the file \(2 bad line\(s\) skipped"):
        preflight(cfg(stages=["preference"], preference={"pairs": bad}, data={"skip_bad": True}))


# ---- the judge endpoint ----

class Stub(BaseHTTPRequestHandler):
    """A stand-in for an OpenAI-compatible server: ``mode`` picks the answer to GET /v1/models."""

    mode = "ok"
    seen_auth: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        Stub.seen_auth.append(self.headers.get("Authorization"))
        if self.mode == "slow":
            time.sleep(2)
        if self.mode == "401":
            echo = {"error": f"bad key {self.headers.get('Authorization')}"}  # a server echoing the header
            body, ctype, code = json.dumps(echo), "application/json", 401
        elif self.mode == "html":
            body, ctype, code = "<html><body>login</body></html>", "text/html", 200
        elif self.path != "/v1/models":
            body, ctype, code = "not found", "text/plain", 404
        else:
            body, ctype, code = json.dumps({"object": "list", "data": [{"id": "judge-7b"}]}), "application/json", 200
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Stub.mode, Stub.seen_auth = "ok", []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def judge_cfg(base_url: str, model: str = "judge-7b", **verify) -> RunConfig:
    return cfg(stages=["sft", "grpo", "verify"],
               verify={"judge": "openai", "base_url": base_url, "judge_model": model, "api_key_env": "VP_TEST_KEY",
                       **verify})


def test_endpoint_that_answers_passes_and_gets_the_key(stub, monkeypatch):
    monkeypatch.setenv("VP_TEST_KEY", CANARY)
    check_judge_endpoint(judge_cfg(stub + "/v1"))
    assert Stub.seen_auth == [f"Bearer {CANARY}"]


@pytest.mark.parametrize("mode, path, model, message", [
    ("401", "/v1", "judge-7b", "refused the API key (HTTP 401"),
    ("html", "/v1", "judge-7b", "answered HTML, not JSON"),
    ("ok", "", "judge-7b", "HTTP 404"),
    ("ok", "/v1", "other-model", "verify.judge_model=other-model: not served"),
])
def test_endpoint_errors_name_the_url_and_never_the_key_or_body(stub, monkeypatch, mode, path, model, message):
    monkeypatch.setenv("VP_TEST_KEY", CANARY)
    Stub.mode = mode
    with pytest.raises(PreflightError) as exc:
        check_judge_endpoint(judge_cfg(stub + path, model=model))
    text = str(exc.value)
    assert message in text and "127.0.0.1" in text and "Fix:" in text
    assert CANARY not in text and "login" not in text and "bad key" not in text


def test_unreachable_endpoint_fails_at_once():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(PreflightError) as exc:
        check_judge_endpoint(judge_cfg(f"http://127.0.0.1:{port}/v1"))
    assert time.perf_counter() - t0 < 2
    assert f"verify.base_url=http://127.0.0.1:{port}/v1" in str(exc.value) and "did not answer" in str(exc.value)


def test_silent_endpoint_times_out(stub):
    Stub.mode = "slow"
    with pytest.raises(PreflightError, match="no answer within 0.5 s"):
        check_judge_endpoint(judge_cfg(stub + "/v1"), timeout=0.5)


def test_endpoint_not_checked_when_no_stage_uses_the_judge():
    check_judge_endpoint(cfg(stages=["sft", "grpo"], eval={"judge": True},
                             verify={"judge": "openai", "base_url": "http://127.0.0.1:1/v1"}))


def test_the_run_stops_before_any_model_loads(tmp_path):
    """On the command line: one line, exit 2, in seconds, and no torch imported (no model was loaded)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "veripo.run", "stages=[preference]",
                           f"output_dir={tmp_path}/run"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=env)
    elapsed = time.perf_counter() - t0
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:")]
    assert proc.returncode == 2 and lines == [lines[0]] and lines[0].startswith("veripo: preference.pairs:")
    assert not any(ln.rstrip().endswith("| torch") for ln in proc.stderr.splitlines())
    assert not (tmp_path / "run").exists() and elapsed < 10
