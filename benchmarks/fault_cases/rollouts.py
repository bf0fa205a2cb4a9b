"""Rollout-file faults through ``python -m verifier pairs`` (the verifier's own CLI; the verify stage reads
the same way): empty files, bad and torn lines, duplicate ids, embedded records that break the schema."""

from __future__ import annotations

import json
from pathlib import Path

from fault_cases._input import counted, rollout, rollouts_file, write_lines
from faults import Outcome, case, classify, run_cli


def _verifier(tmp: Path, rollouts: Path, *extra: str):
    return run_cli(["-m", "verifier", "pairs", "--rollouts", str(rollouts), "--out", str(tmp / "pairs.jsonl"),
                    "--judge", "none", "--no-progress", *extra], tmp)


@case("rollouts", "good rollouts (control)")
def control(tmp: Path) -> Outcome:
    res = _verifier(tmp, rollouts_file(tmp / "rollouts.jsonl"))
    ok = res.rc == 0 and (tmp / "pairs.jsonl").is_file() and "wrote" in res.out
    return Outcome("ok" if ok else "unclear", res.text.strip().splitlines()[-1][-200:] if res.text.strip() else "")


@case("rollouts", "empty rollout file")
def empty(tmp: Path) -> Outcome:
    (tmp / "rollouts.jsonl").write_text("")
    return classify(_verifier(tmp, tmp / "rollouts.jsonl"), ["rollouts.jsonl", "no rollouts"])


@case("rollouts", "every line bad, --skip-bad")
def all_bad(tmp: Path) -> Outcome:
    path = write_lines(tmp / "rollouts.jsonl", ["{", '{"rollout_id": 1}'])
    return classify(_verifier(tmp, path, "--skip-bad"), ["rollouts.jsonl", "no rollouts", "2 line(s)"])


@case("rollouts", "torn last line, --skip-bad")
def torn(tmp: Path) -> Outcome:
    path = rollouts_file(tmp / "rollouts.jsonl", extra=['{"rollout_id": "r9", "probl'])
    return counted(_verifier(tmp, path, "--skip-bad"), ["rollouts.jsonl:5", "1 bad input line(s) skipped"],
                   [(tmp / "pairs.meta.json", '"skipped_lines": 1')])


@case("rollouts", "embedded record with an unknown problem_type")
def embedded_record(tmp: Path) -> Outcome:
    bad = rollout(1)
    bad["record"]["problem_type"] = "multiple-choice"
    path = rollouts_file(tmp / "rollouts.jsonl", raw={1: json.dumps(bad).encode()})
    return classify(_verifier(tmp, path), ["rollouts.jsonl:2", "record.problem_type"])


@case("rollouts", "embedded multiple-choice record without options")
def embedded_no_options(tmp: Path) -> Outcome:
    bad = rollout(2)
    del bad["record"]["options"]
    path = rollouts_file(tmp / "rollouts.jsonl", raw={2: json.dumps(bad).encode()})
    return classify(_verifier(tmp, path), ["rollouts.jsonl:3", "record.options"])


@case("rollouts", "duplicate rollout_id")
def duplicate(tmp: Path) -> Outcome:
    path = rollouts_file(tmp / "rollouts.jsonl", extra=[rollout(0)])
    return classify(_verifier(tmp, path), ["rollouts.jsonl:5", "rollout_id"])
