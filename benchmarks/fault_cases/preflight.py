"""Preflight faults: the stage list, input files and the judge endpoint are checked once the recipe is valid
and before any model loads, so each must fail clearly in seconds, naming the key, file or URL."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from fault_cases._input import endpoint
from faults import Outcome, case, classify, run_cli

CANARY = "sk-canary-preflight-5d1e9b"
RECORD = {"problem_id": "q1", "problem": "What moves?", "data_type": "text", "problem_type": "multiple choice",
          "options": ["A. a ball", "B. a box"], "solution": "<answer>A</answer>"}


def run_bad(tmp: Path, overrides: list[str], names: list[str], **env: str) -> Outcome:
    from faults import env_for_cli

    res = run_cli(["-m", "veripo.run", *overrides, f"output_dir={tmp}/run"], tmp, env=env_for_cli(**env))
    out = classify(res, names)
    if CANARY in res.text:
        out = Outcome("unclear", "the output holds the API key", res.seconds)
    return out


@case("preflight", "preference stage without pairs", config_error=True)
def preference_without_pairs(tmp: Path) -> Outcome:
    return run_bad(tmp, ["stages=[preference]"], ["preference.pairs"])


@case("preflight", "empty pair file")
def empty_pairs(tmp: Path) -> Outcome:
    (tmp / "pairs.jsonl").write_text("")
    return run_bad(tmp, ["stages=[preference]", "preference.pairs=pairs.jsonl"], ["pairs.jsonl", "empty"])


@case("preflight", "malformed pair file")
def malformed_pairs(tmp: Path) -> Outcome:
    (tmp / "pairs.jsonl").write_text("{not json\n")
    return run_bad(tmp, ["stages=[preference]", "preference.pairs=pairs.jsonl"], ["pairs.jsonl:1"])


@case("preflight", "missing pair file")
def missing_pairs(tmp: Path) -> Outcome:
    return run_bad(tmp, ["stages=[preference]", "preference.pairs=nope.jsonl"], ["preference.pairs", "nope.jsonl"])


@case("preflight", "missing data.train")
def missing_train(tmp: Path) -> Outcome:
    return run_bad(tmp, ["data.train=nope.jsonl"], ["data.train", "nope.jsonl"])


@case("preflight", "empty data.train")
def empty_train(tmp: Path) -> Outcome:
    (tmp / "train.jsonl").write_text("\n\n")
    return run_bad(tmp, ["data.train=train.jsonl"], ["data.train", "empty"])


@case("preflight", "data.train is a folder")
def folder_train(tmp: Path) -> Outcome:
    (tmp / "train.jsonl").mkdir()
    return run_bad(tmp, ["data.train=train.jsonl"], ["data.train", "not a file"])


@case("preflight", "malformed data.test")
def malformed_test(tmp: Path) -> Outcome:
    (tmp / "train.jsonl").write_text(json.dumps(RECORD) + "\n")
    (tmp / "test.jsonl").write_text(json.dumps(RECORD) + "\n[1, 2]\n")
    return run_bad(tmp, ["data.train=train.jsonl", "data.test=test.jsonl"], ["test.jsonl:2"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def judge_overrides(url: str, model: str = "served-model") -> list[str]:
    return ["stages=[sft,grpo,verify]", "verify.judge=openai", f"verify.base_url={url}", f"verify.judge_model={model}",
            "verify.api_key_env=VP_FAULT_KEY"]


@case("preflight", "judge endpoint unreachable", config_error=True)
def judge_unreachable(tmp: Path) -> Outcome:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    return run_bad(tmp, judge_overrides(url), ["verify.base_url", url])


@case("preflight", "judge endpoint rejects the key", config_error=True)
def judge_401(tmp: Path) -> Outcome:
    with endpoint("echo401") as url:
        return run_bad(tmp, judge_overrides(url), ["verify.base_url", "VP_FAULT_KEY"], VP_FAULT_KEY=CANARY)


@case("preflight", "judge endpoint answers HTML", config_error=True)
def judge_html(tmp: Path) -> Outcome:
    with endpoint("html") as url:
        return run_bad(tmp, judge_overrides(url), ["verify.base_url", "HTML"], VP_FAULT_KEY=CANARY)


@case("preflight", "judge model not served", config_error=True)
def judge_wrong_model(tmp: Path) -> Outcome:
    with endpoint("ok") as url:
        return run_bad(tmp, judge_overrides(url, model="other"), ["verify.judge_model", "served-model"])
