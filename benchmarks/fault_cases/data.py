"""Data faults: bad record files given to ``veripo.run`` (data.train) and ``veripo.eval`` (--data), with and
without the skip flags. A skip must be printed and recorded; a file with nothing usable must fail."""

from __future__ import annotations

import json
from pathlib import Path

from fault_cases._input import counted, record, records_file, write_lines
from faults import Outcome, case, classify, run_cli

QUICK_RUN = ["stages=[sft]", "sft.steps=1", "sft.batch_size=2"]


def _run(tmp: Path, train: Path, *extra: str):
    return run_cli(["-m", "veripo.run", f"data.train={train}", f"output_dir={tmp}/run", "name=f", *extra], tmp)


def _eval(tmp: Path, data: Path, *extra: str):
    return run_cli(["-m", "veripo.eval", "--model", "smollm2-135m-instruct", "--data", str(data), "--backend", "hf",
                    "--judge", "none", "--limit", "2", "--max-tokens", "4", "--out", str(tmp / "eval"),
                    "--no-progress", *extra], tmp)


@case("data", "malformed JSON line in data.train")
def malformed_line(tmp: Path) -> Outcome:
    path = records_file(tmp / "train.jsonl", raw={2: b'{"problem_id": 2, "problem": "Which'})
    return classify(_run(tmp, path), ["train.jsonl:3"])


@case("data", "unknown problem_type in data.train")
def bad_problem_type(tmp: Path) -> Outcome:
    path = write_lines(tmp / "train.jsonl", [record(0), record(1, problem_type="multiple-choice")])
    return classify(_run(tmp, path), ["train.jsonl:2", "problem_type"])


@case("data", "empty data.train")
def empty_train(tmp: Path) -> Outcome:
    (tmp / "train.jsonl").write_text("\n")
    return classify(_run(tmp, tmp / "train.jsonl"), ["train.jsonl", "empty"])


@case("data", "every line bad under data.skip_bad")
def all_bad_skipped(tmp: Path) -> Outcome:
    path = write_lines(tmp / "train.jsonl", ["not json", '{"problem_id": 1}'])
    return classify(_run(tmp, path, "data.skip_bad=true"), ["train.jsonl", "no usable records", "2 bad line(s)"])


@case("data", "data.skip_bad: two bad lines skipped, said and recorded")
def skipped_and_said(tmp: Path) -> Outcome:
    path = records_file(tmp / "train.jsonl", n=8, raw={1: b"{oops", 4: json.dumps(record(4, solution="")).encode()})
    res = _run(tmp, path, "data.skip_bad=true", *QUICK_RUN)
    return counted(res, ["2 bad record line(s) skipped by data.skip_bad", "train.jsonl:2"],
                   [(tmp / "run" / "f" / "manifest.json", '"skipped_lines": 2')])


@case("data", "eval --data with a malformed line")
def eval_malformed(tmp: Path) -> Outcome:
    path = records_file(tmp / "test.jsonl", raw={1: b"[1, 2"})
    return classify(_eval(tmp, path), ["test.jsonl:2"])


@case("data", "eval --skip-bad: a bad line skipped, said and recorded")
def eval_skipped(tmp: Path) -> Outcome:
    path = records_file(tmp / "test.jsonl", n=3, raw={0: b'{"problem_id": 0}'})
    res = _eval(tmp, path, "--skip-bad")
    results = next((tmp / "eval").rglob("*.json"), tmp / "eval" / "missing.json")
    return counted(res, ["test.jsonl:1"], [(results, '"skipped_lines": 1')])
