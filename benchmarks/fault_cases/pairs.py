"""Pair-file faults through ``veripo.run stages=[preference] preference.pairs=FILE`` (a user's own pairs):
empty files, identical sides, a malformed first line (which once decided the file's layout)."""

from __future__ import annotations

from pathlib import Path

from fault_cases._input import counted, write_lines
from faults import Outcome, case, classify, run_cli


def pair(i: int, **kw) -> dict:
    return {"id": f"v{i}", "prompt": "<video>\nWhat is happening?", "chosen": f"A dog runs across the yard {i}.",
            "rejected": f"A cat sleeps on a sofa {i}.", **kw}


def _run(tmp: Path, pairs: Path, *extra: str):
    return run_cli(["-m", "veripo.run", "stages=[preference]", f"preference.pairs={pairs}", f"output_dir={tmp}/run",
                    "name=f", *extra], tmp)


@case("pairs", "empty preference.pairs")
def empty(tmp: Path) -> Outcome:
    (tmp / "pairs.jsonl").write_text("")
    return classify(_run(tmp, tmp / "pairs.jsonl"), ["pairs.jsonl", "empty"])


@case("pairs", "a pair whose chosen equals its rejected")
def identical(tmp: Path) -> Outcome:
    path = write_lines(tmp / "pairs.jsonl", [pair(0), pair(1, rejected="A dog runs across the yard 1."), pair(2)])
    return classify(_run(tmp, path), ["pairs.jsonl:2", "rejected"])


@case("pairs", "malformed first line, 10 good pairs")
def malformed_first(tmp: Path) -> Outcome:
    path = write_lines(tmp / "pairs.jsonl", ['{"pair_id": "x", "chosen": "trunc'] + [pair(i) for i in range(10)])
    return classify(_run(tmp, path), ["pairs.jsonl:1"])


@case("pairs", "malformed first line, 10 good pairs, data.skip_bad")
def malformed_first_skipped(tmp: Path) -> Outcome:
    path = write_lines(tmp / "pairs.jsonl", ['{"pair_id": "x", "chosen": "trunc'] + [pair(i) for i in range(10)])
    res = _run(tmp, path, "data.skip_bad=true", "preference.steps=1", "preference.batch_size=2")
    return counted(res, ["10 pairs from", "1 bad line(s) skipped", "pairs.jsonl:1"],
                   [(tmp / "run" / "f" / "manifest.json", '"skipped_lines": 1')])
