"""Bad input is never dropped unsaid (issue 16, items 5, 6, 9): non-UTF-8 bytes name file:line (or are
skipped and counted), a malformed first line does not decide a pair file's layout, identical pair sides and
bad embedded records are rejected, empty inputs fail their stage, skip counts reach the manifest and the
report, and an API key never reaches anything veripo prints or writes (a canary against a local stand-in
server, a FAKE of an OpenAI-compatible endpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from veripo.data.pairs import load_pair_file, pair_file_layout
from veripo.data.records import LoadReport, RecordError, load_records
from veripo.data.rollouts import Rollout, read_pairs, read_rollouts, write_rollouts
from verifier.judge import JUDGES, JudgeError, OpenAIJudge, redact

ROOT = Path(__file__).resolve().parents[1]
REC = {"problem_id": "p1", "problem": "Which way does the red circle move?", "data_type": "text",
       "problem_type": "multiple choice", "options": ["A. left", "B. right"], "solution": "<answer>B</answer>"}
CANARY = "sk-CANARY-7f3a9d2e1b4c"


def rec_line(pid: str, **kw) -> bytes:
    return (json.dumps({**REC, "problem_id": pid, **kw}, ensure_ascii=False) + "\n").encode()


# ---- encoding (item 6) ------------------------------------------------------------------------------
def test_a_non_utf8_byte_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    path = tmp_path / "train.jsonl"
    bad = rec_line("p2", problem="Caf\u00e9?").replace("\u00e9".encode(), b"\xe9")  # latin-1 e-acute
    path.write_bytes(b"\xef\xbb\xbf" + rec_line("p1") + bad + rec_line("p3"))  # a BOM on line 1 is fine
    with pytest.raises(RecordError, match=r"train\.jsonl:2:<encoding>: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        load_records(path)
    report = LoadReport()
    assert [r.problem_id for r in load_records(path, skip_bad=True, report=report)] == ["p1", "p3"]
    assert report.skipped == 1 and "train.jsonl:2" in report.summary()


def test_a_json_list_with_a_bad_byte_names_its_line(tmp_path):
    path = tmp_path / "train.json"
    bad = rec_line("p2", problem="x\u00ff").replace("\u00ff".encode(), b"\xff")
    path.write_bytes(b"[\n" + rec_line("p1").rstrip() + b",\n" + bad.rstrip() + b"\n]")
    with pytest.raises(RecordError, match=r"train\.json:3:<encoding>"):
        load_records(path)


def test_rollout_and_pair_files_decode_per_line(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    write_rollouts(path, [Rollout(rollout_id=f"r{i}", problem_id="p1", response=f"<answer>{i}</answer>")
                          for i in range(3)])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1].replace(b"<answer>1", b"<answer>\x91") + lines[2])
    with pytest.raises(RecordError, match=r"rollouts\.jsonl:2:<encoding>"):
        read_rollouts(path)
    report = LoadReport()
    assert [r.rollout_id for r in read_rollouts(path, skip_bad=True, report=report)] == ["r0", "r2"]
    assert report.skipped == 1


# ---- pair files (item 5) ----------------------------------------------------------------------------
def external(i: int, **kw) -> str:
    return json.dumps({"id": f"v{i}", "prompt": "<video>\nWhat happens?", "chosen": f"A dog runs {i}.",
                       "rejected": f"A cat sleeps {i}.", **kw})


def test_a_malformed_first_line_does_not_decide_the_layout(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"id": "v0", "prompt": "broken\n' + "\n".join(external(i) for i in range(1, 11)) + "\n")
    assert pair_file_layout(path) == "external"
    report = LoadReport()
    pairs = load_pair_file(path, skip_bad=True, report=report)
    assert len(pairs) == 10 and report.skipped == 1 and "pairs.jsonl:1" in report.errors[0]
    with pytest.raises(RecordError, match=r"pairs\.jsonl:1:<json>"):
        load_pair_file(path)


def test_a_pair_whose_chosen_equals_its_rejected_is_rejected_with_file_and_line(tmp_path):
    path = tmp_path / "ext.jsonl"
    path.write_text(external(1) + "\n" + external(2, rejected="A dog runs 2.") + "\n")
    with pytest.raises(RecordError, match=r"ext\.jsonl:2:rejected: is the same text as \"chosen\""):
        load_pair_file(path)
    verifier_pair = {"pair_id": "x", "problem_id": "p1", "type": "penalty", "prompt": "Q?", "chosen": "same",
                     "rejected": " same ", "chosen_id": "a", "rejected_id": "b"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(verifier_pair) + "\n")
    with pytest.raises(RecordError, match=r"pairs\.jsonl:1:rejected"):
        read_pairs(path)
    # a response cut at max_tokens has its finished twin's text but different tokens (no EOS): a real pair
    path.write_text(json.dumps({**verifier_pair, "chosen_token_ids": [5, 2], "rejected_token_ids": [5]}) + "\n")
    assert len(read_pairs(path)) == 1


def test_the_verifier_never_writes_a_pair_with_identical_sides():
    from verifier.checks import check_rollout
    from verifier.pairs import IDENTICAL, PairStats, build_pairs

    text = "<think>The circle starts on the left and ends on the right, so it moves right.</think><answer>B</answer>"
    rs = [Rollout(rollout_id=f"r{i}", problem_id="p1", response=text, sample_index=i, record=REC) for i in range(2)]
    checks = {r.rollout_id: check_rollout(r, REC) for r in rs}
    st = PairStats()
    pairs = build_pairs(rs, checks, {"r0": "consistent", "r1": "inconsistent"}, stats=st)
    assert pairs == [] and st.identical_dropped == 1 and st.prompts_without_pair == {IDENTICAL: 1}


def test_an_embedded_record_is_validated_like_a_data_line(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    good = {"rollout_id": "r0", "problem_id": "p1", "response": "x", "record": {k: v for k, v in REC.items()
                                                                              if k != "problem_id"}}
    bad = {**good, "rollout_id": "r1", "record": {**good["record"], "problem_type": "multiple-choice"}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"rollouts\.jsonl:2:record\.problem_type: unknown problem type "
                                          r"'multiple-choice'\. Fix: use one of"):
        read_rollouts(path)


# ---- empty inputs fail their stage (item 5) ---------------------------------------------------------
def _ctx(tmp_path: Path, **cfg) -> SimpleNamespace:
    from veripo.config import RunConfig
    from veripo.run_dir import RunDir

    metrics = SimpleNamespace(truncate=lambda *a, **k: None, log=lambda *a, **k: None)
    return SimpleNamespace(cfg=RunConfig.from_dict(cfg), run=RunDir(tmp_path / "run"), iteration=0, metrics=metrics,
                           data=SimpleNamespace(train=[]), tokenizer=None, consistency_judge=lambda cache: None)


def test_the_verify_stage_fails_on_an_empty_rollout_file_and_counts_skipped_lines(tmp_path):
    from veripo.stages.verify import VerifyStage

    ctx = _ctx(tmp_path)
    path = ctx.run.rollouts(0)
    path.parent.mkdir(parents=True)
    path.write_text("\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RecordError, match=r"rollouts\.jsonl:<file>: no rollouts to verify \(it is empty\)"):
        VerifyStage().run(ctx, out, 0)
    write_rollouts(path, [Rollout(rollout_id=f"r{i}", problem_id="p1", record=REC, sample_index=i,
                                  response=f"<think>It moves {d}.</think><answer>{a}</answer>")
                          for i, (d, a) in enumerate([("right", "B"), ("left", "A")])])
    with open(path, "ab") as f:
        f.write(b'{"rollout_id": "torn", "probl')  # a crash tore the last line
    outputs = VerifyStage().run(ctx, out, 0)
    assert outputs["skipped_lines"] == 1 and "rollouts.jsonl:3" in outputs["skipped_errors"][0]
    assert json.loads((out / "pairs.meta.json").read_text())["inputs"]["skipped_lines"]["skipped"] == 1


def test_the_preference_stage_fails_on_an_empty_pair_file(tmp_path):
    from veripo.stages.preference import PreferenceStage

    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match=r"pairs\.jsonl:<file>: no preference pairs to train on \(the file is"):
        PreferenceStage().run(_ctx(tmp_path, preference={"pairs": str(empty)}), tmp_path, 0)
    empty.write_text("not json\n")
    with pytest.raises(RecordError, match=r"all 1 line\(s\) are bad"):
        PreferenceStage().run(_ctx(tmp_path, preference={"pairs": str(empty)}, data={"skip_bad": True}), tmp_path, 0)


def test_a_verifier_round_without_pairs_is_said_and_recorded_not_trained(tmp_path, capsys):
    from veripo.stages.preference import PreferenceStage

    ctx = _ctx(tmp_path)
    ctx.stage_id, begun = "iter0/preference", []
    ctx.progress = SimpleNamespace(begin=lambda *a, **k: begun.append(a))
    path = ctx.run.pairs(0)
    path.parent.mkdir(parents=True)
    path.write_text("")
    outputs = PreferenceStage().run(ctx, tmp_path, 0)
    assert outputs["steps_done"] == 0 and "verifier found no contrastive pair" in outputs["not_trained"]
    assert "nothing to train" in capsys.readouterr().out and begun


def test_the_report_lists_every_skip_the_manifest_records(tmp_path):
    from veripo.report.html import skipped_input

    man = {"inputs": {"data": {"skipped_lines": 2, "skipped_errors": ["train.jsonl:4:<json>: invalid JSON"]}},
           "stages": {"iter0/verify": {"done": True, "skipped_lines": 1, "verdicts_unknown": 3},
                      "iter0/preference": {"done": True, "not_trained": "no pairs"},
                      "iter0/grpo": {"done": True}}}
    lines = skipped_input(man)
    assert lines[0].startswith("data (data.train / data.test): 2 bad line(s) skipped (first: train.jsonl:4")
    assert "iter0/verify: 1 bad line(s) skipped" in lines and any("3 judge repl" in x for x in lines)
    assert "iter0/preference: nothing trained: no pairs" in lines
    assert skipped_input({"stages": {"iter0/grpo": {"done": True}}}) == [] and skipped_input(None) == []


# ---- secrets and misbehaving judges (item 9) --------------------------------------------------------
class _Endpoint(BaseHTTPRequestHandler):
    """A FAKE OpenAI-compatible endpoint; `server.mode`: ``echo401`` (an error body echoing the
    Authorization header), ``html`` (HTTP 200 with a web page), ``garbage`` (a reply that is no verdict and
    echoes the header too)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        mode = self.server.mode
        if mode == "echo401":
            code, ctype, data = 401, "application/json", json.dumps({"error": f"bad key in header '{auth}'"})
        elif mode == "html":
            code, ctype, data = 200, "text/html", "<!doctype html><html><body>Welcome</body></html>"
        else:
            content = f"I like turtles. (you sent {auth})"
            code, ctype, data = 200, "application/json", json.dumps({"choices": [{"message": {"content": content}}]})
        body = data.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    server.mode = "echo401"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _verifier(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    rollouts = tmp_path / "rollouts.jsonl"
    if not rollouts.exists():
        write_rollouts(rollouts, [Rollout(rollout_id=f"r{i}", problem_id="p1", record=REC, sample_index=i,
                                          response=f"<think>It moves {d} across.</think><answer>{a}</answer>")
                                  for i, (d, a) in enumerate([("right", "B"), ("left", "A")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "VERIPO_CANARY_KEY": CANARY}
    return subprocess.run([sys.executable, "-m", "verifier", "pairs", "--rollouts", str(rollouts), "--out",
                           str(tmp_path / "pairs.jsonl"), "--judge", "openai", "--judge-model", "m", "--base-url",
                           url, "--api-key-env", "VERIPO_CANARY_KEY", "--no-progress", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _written(tmp_path: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file())


def test_an_api_key_echoed_by_the_endpoint_is_never_printed_or_written(tmp_path, endpoint):
    url = f"http://127.0.0.1:{endpoint.server_port}/v1"
    for mode in ("echo401", "garbage"):
        endpoint.mode = mode
        res = _verifier(tmp_path, url)
        assert res.returncode == 3, res.stderr
        assert "Traceback" not in res.stderr
        assert CANARY not in res.stdout + res.stderr and CANARY not in _written(tmp_path)
        assert "[REDACTED]" in res.stderr  # the echo arrived, with the key cut out
    # the garbage judge: the stage fails showing its last reply instead of writing 0 pairs and exiting 0
    assert "none of its 2 replies could be read as a verdict" in res.stderr and "I like turtles" in res.stderr
    assert not (tmp_path / "pairs.jsonl").exists()


def test_an_endpoint_answering_html_is_an_error_naming_the_url(endpoint):
    endpoint.mode = "html"
    url = f"http://127.0.0.1:{endpoint.server_port}/v1"
    with pytest.raises(JudgeError, match=rf"judge endpoint {url}/chat/completions answered HTTP 200 with "
                                         r"text/html that is not the API's JSON \(it starts '<!doctype html>"):
        OpenAIJudge(url, "m", transport_retries=0).judge_batch([[{"role": "user", "content": "hi"}]])


def test_the_verifier_cli_fails_on_an_empty_rollout_file(tmp_path):
    (tmp_path / "rollouts.jsonl").write_text("")
    res = _verifier(tmp_path, "http://127.0.0.1:9/v1")
    assert res.returncode == 2
    assert "rollouts.jsonl:<file>: no rollouts to verify (it has no rollout lines)" in res.stderr


def test_the_openai_judge_takes_its_options_from_judge_kwargs_and_says_what_it_ignores(capsys):
    make = JUDGES.get("openai")
    b = make(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="K", timeout=7.5, concurrency=3,
             gpu_memory_utilization=0.85, dtype="bfloat16")
    assert isinstance(b, OpenAIJudge) and b.timeout == 7.5 and b.concurrency == 3
    assert "judge_kwargs dtype, gpu_memory_utilization ignored" in capsys.readouterr().out


def test_redact():
    assert redact(f"Bearer {CANARY} and {CANARY}", CANARY) == "Bearer [REDACTED] and [REDACTED]"
    assert redact("nothing", None, "") == "nothing"


def test_a_line_torn_inside_a_multibyte_character_is_skipped_like_any_torn_line(tmp_path):
    from veripo.run_dir import read_json_lines, truncate_jsonl

    path = tmp_path / "rollouts.jsonl"
    torn = json.dumps({"step": 1, "response": "caf\u00e9"}, ensure_ascii=False).encode()
    path.write_bytes(b'{"step": 0}\n' + torn[: torn.index(b"\xc3") + 1])  # cut between the two bytes of the e
    assert read_json_lines(path) == [{"step": 0}]
    assert truncate_jsonl(path, lambda r: True) == 1 and path.read_text() == '{"step": 0}\n'


def test_a_template_file_that_is_not_utf8_names_its_line(tmp_path):
    from verifier.templates import PromptTemplate, TemplateError

    path = tmp_path / "mine.txt"
    path.write_bytes(b"[user]\nQuestion: {{question}}\nR\xe9ponse: {{answer}}\n")
    with pytest.raises(TemplateError, match=r"mine\.txt:3: not UTF-8 text \(byte 0xe9\)"):
        PromptTemplate.load(path)
