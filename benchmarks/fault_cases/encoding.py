"""Encoding faults: a byte that is not UTF-8 in a data, eval, rollout or pair file. Each reader decodes one
line at a time: the error names file and line (or, under a skip flag, the line is skipped and counted)."""

from __future__ import annotations

from pathlib import Path

from fault_cases._input import counted, latin1, record, records_file, rollout, rollouts_file, write_lines
from faults import Outcome, case, classify, run_cli


def _verifier(tmp: Path, rollouts: Path, *extra: str):
    return run_cli(["-m", "verifier", "pairs", "--rollouts", str(rollouts), "--out", str(tmp / "pairs.jsonl"),
                    "--judge", "none", "--no-progress", *extra], tmp)


@case("encoding", "latin-1 byte in data.train")
def data_train(tmp: Path) -> Outcome:
    path = records_file(tmp / "train.jsonl", raw={1: latin1(record(1))})
    res = run_cli(["-m", "veripo.run", f"data.train={path}", f"output_dir={tmp}/run"], tmp)
    return classify(res, ["train.jsonl:2", "UTF-8"])


@case("encoding", "latin-1 byte in eval --data")
def eval_data(tmp: Path) -> Outcome:
    path = records_file(tmp / "test.jsonl", raw={2: latin1(record(2))})
    res = run_cli(["-m", "veripo.eval", "--model", "smollm2-135m-instruct", "--data", str(path), "--judge", "none",
                   "--out", str(tmp / "eval")], tmp)
    return classify(res, ["test.jsonl:3", "UTF-8"])


@case("encoding", "latin-1 byte in a rollout file")
def rollouts(tmp: Path) -> Outcome:
    path = rollouts_file(tmp / "rollouts.jsonl", raw={1: latin1(rollout(1))})
    return classify(_verifier(tmp, path), ["rollouts.jsonl:2", "UTF-8"])


@case("encoding", "latin-1 byte in a rollout file, --skip-bad")
def rollouts_skipped(tmp: Path) -> Outcome:
    path = rollouts_file(tmp / "rollouts.jsonl", raw={1: latin1(rollout(1))})
    res = _verifier(tmp, path, "--skip-bad")
    return counted(res, ["rollouts.jsonl:2", "1 bad input line(s) skipped"],
                   [(tmp / "pairs.meta.json", '"skipped_lines": 1')])


@case("encoding", "latin-1 byte in the verifier's --data records")
def verifier_data(tmp: Path) -> Outcome:
    rollouts_file(tmp / "rollouts.jsonl")
    data = write_lines(tmp / "data.jsonl", [record("p1")], raw={0: latin1(record("p1"))})
    return classify(_verifier(tmp, tmp / "rollouts.jsonl", "--data", str(data)), ["data.jsonl:1", "UTF-8"])


@case("encoding", "latin-1 byte in preference.pairs")
def pair_file(tmp: Path) -> Outcome:
    lines = [{"id": f"v{i}", "prompt": "What happens?", "chosen": f"A dog runs {i}.", "rejected": f"A cat sits {i}."}
             for i in range(3)]
    bad = '{"id": "v1", "prompt": "Caf\u00e9?", "chosen": "a", "rejected": "b"}'.encode("latin-1")
    path = write_lines(tmp / "pairs.jsonl", lines, raw={1: bad})
    res = run_cli(["-m", "veripo.run", "stages=[preference]", f"preference.pairs={path}", f"output_dir={tmp}/run"], tmp)
    return classify(res, ["pairs.jsonl:2", "UTF-8"])
