"""Helpers the input families share (data, encoding, rollouts, pairs, judge): small files, a FAKE
OpenAI-compatible endpoint (a local http.server in a thread) and the `counted` classifier."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from faults import CliResult, Outcome

REC = {"problem": "Which way does the red circle move?", "data_type": "text", "problem_type": "multiple choice",
       "options": ["A. left", "B. right"], "solution": "<answer>B</answer>",
       "caption": "frame 0: a red circle at the left. frame 1: the circle at the right."}
CANARY = "sk-CANARY-5e8b1f0c9a7d"
RIGHT = "The circle starts on the left and ends on the right side of the frame, so it moves right."
LEFT = "The circle starts on the right and ends on the left side of the frame, so it moves left."


def record(pid: int | str, **kw) -> dict:
    return {"problem_id": pid, **REC, **kw}


def write_lines(path: Path, rows: list, raw: dict[int, bytes] | None = None) -> Path:
    """JSONL of `rows` (dicts, or str lines as is); `raw` replaces line i (0-based) with raw bytes."""
    lines = [(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode() for r in rows]
    for i, b in (raw or {}).items():
        lines[i] = b
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def records_file(path: Path, n: int = 6, raw: dict[int, bytes] | None = None) -> Path:
    return write_lines(path, [record(i) for i in range(n)], raw)


def rollout(i: int, pid: str = "p1", text: str = RIGHT, answer: str = "B", **kw) -> dict:
    rec = {k: v for k, v in REC.items()}
    return {"rollout_id": f"r{i}", "problem_id": pid, "sample_index": i, "record": rec,
            "response": f"<think>{text}</think><answer>{answer}</answer>", **kw}


def rollouts_file(path: Path, raw: dict[int, bytes] | None = None, extra: list | None = None) -> Path:
    rows = [rollout(0), rollout(1, text=LEFT), rollout(2, text=LEFT, answer="A"), rollout(3, answer="A")]
    return write_lines(path, rows + (extra or []), raw)


def latin1(row: dict) -> bytes:
    """`row` as a JSON line with an e-acute in latin-1 (one byte, 0xe9): not UTF-8."""
    return json.dumps({**row, "problem" if "problem" in row else "response": "Caf\u00e9 ?"},
                      ensure_ascii=False).encode("latin-1")


def counted(res: CliResult, names: list[str] | tuple[str, ...], files: list[tuple[Path, str]] = ()) -> Outcome:
    """Bad lines skipped under a skip flag: `counted` when the run exited 0 without a traceback, its output
    names every string in `names` (the count, the file:line) and each file in `files` holds its string
    (the manifest's record of the skip); `silent` when it exited 0 without saying; else as `classify`."""
    detail = " | ".join(res.text.strip().splitlines()[-3:])[-300:]
    if "Traceback (most recent call last)" in res.text:
        return Outcome("traceback", detail, res.seconds)
    if res.rc != 0:
        return Outcome("unclear", f"exit {res.rc}: {detail}", res.seconds)
    missing = [n for n in names if n not in res.text]
    missing += [f"{s} in {p.name}" for p, s in files if not p.is_file() or s not in p.read_text(errors="replace")]
    if missing:
        return Outcome("silent", f"exit 0, does not say {missing}: {detail}", res.seconds)
    return Outcome("counted", detail, res.seconds)


def leaked(res: CliResult, root: Path, secret: str = CANARY) -> Outcome | None:
    """`silent` (a leak) when `secret` is in the output or any file under `root`, else None."""
    where = ["stdout/stderr"] if secret in res.text else []
    where += [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    return Outcome("silent", f"API key leaked into {where}", res.seconds) if where else None


class _Endpoint(BaseHTTPRequestHandler):
    """GET /models (the preflight's probe) and POST (a judge request), misbehaving as ``server.mode``."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.server.mode == "echo401":
            self._reply(401, "application/json", json.dumps({"error": self.headers.get("Authorization", "")}))
        elif self.server.mode == "html":
            self._reply(200, "text/html", "<!doctype html><html><body>Sign in</body></html>")
        else:
            self._reply(200, "application/json", json.dumps({"data": [{"id": "served-model"}]}))

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        mode = self.server.mode
        if mode == "echo401":
            self._reply(401, "application/json", json.dumps({"error": f"invalid key in header '{auth}'"}))
        elif mode == "html":
            self._reply(200, "text/html", "<!doctype html><html><body>It works!</body></html>")
        else:  # garbage: a reply that is no verdict (and echoes the header)
            content = f"Sure! Here is a poem about turtles. ({auth})"
            self._reply(200, "application/json", json.dumps({"choices": [{"message": {"content": content}}]}))

    def _reply(self, code: int, ctype: str, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def endpoint(mode: str) -> Iterator[str]:
    """A FAKE OpenAI-compatible endpoint (the real one is out of this machine's reach) misbehaving as `mode`
    (echo401, html, garbage; anything else serves ``served-model`` on GET /models); yields its base_url."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    server.mode = mode
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
