"""Judge-endpoint faults through ``python -m verifier pairs --judge openai`` against a FAKE local endpoint
(http.server in a thread): an error body echoing the Authorization header (a canary key must appear in
nothing printed or written), HTML with HTTP 200, replies that are no verdict, an unreachable URL."""

from __future__ import annotations

from pathlib import Path

from fault_cases._input import CANARY, endpoint, leaked, rollouts_file
from faults import Outcome, case, classify, env_for_cli, run_cli


def _verifier(tmp: Path, url: str):
    rollouts = rollouts_file(tmp / "rollouts.jsonl")
    return run_cli(["-m", "verifier", "pairs", "--rollouts", str(rollouts), "--out", str(tmp / "pairs.jsonl"),
                    "--judge", "openai", "--judge-model", "m", "--base-url", url, "--api-key-env", "VERIPO_FAULT_KEY",
                    "--no-progress"], tmp, env=env_for_cli(VERIPO_FAULT_KEY=CANARY))


def _judged(tmp: Path, mode: str, names: list[str]) -> Outcome:
    with endpoint(mode) as url:
        res = _verifier(tmp, url)
    return leaked(res, tmp) or classify(res, [n.replace("URL", url) for n in names])


@case("judge", "error body echoes the Authorization header (canary key)")
def echo(tmp: Path) -> Outcome:
    return _judged(tmp, "echo401", ["URL/chat/completions", "HTTP 401", "[REDACTED]"])


@case("judge", "endpoint answers HTML with HTTP 200")
def html(tmp: Path) -> Outcome:
    return _judged(tmp, "html", ["URL/chat/completions", "text/html"])


@case("judge", "judge answers only garbage (and echoes the key)")
def garbage(tmp: Path) -> Outcome:
    return _judged(tmp, "garbage", ["could be read as a verdict", "poem about turtles"])


@case("judge", "unreachable base_url")
def unreachable(tmp: Path) -> Outcome:
    return classify(_verifier(tmp, "http://127.0.0.1:9/v1"), ["127.0.0.1:9", "unreachable"])
