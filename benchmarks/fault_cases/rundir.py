"""Run-folder damage: a truncated manifest or config.yaml, an output_dir that cannot hold a run folder, and
the deleted checkpoint of a finished stage (with the next stage training, or not)."""

from __future__ import annotations

import shutil
from pathlib import Path

from faults import Outcome, case, classify, run_cli
from fault_cases.resume import finished_sft, sft_args


@case("rundir", "truncated manifest.json")
def truncated_manifest(tmp: Path) -> Outcome:
    run = tmp / "r"
    run.mkdir()
    (run / "manifest.json").write_text('{"created": 1, "stages": {"iter0/sft": {"steps_do')
    return classify(run_cli(sft_args(tmp), tmp), ["manifest.json", "Fix"])


@case("rundir", "damaged config.yaml of a finished run")
def damaged_config(tmp: Path) -> Outcome:
    run = finished_sft(tmp)
    (run / "config.yaml").write_text((run / "config.yaml").read_text()[:300] + "\n  - [unclosed\n")
    return classify(run_cli(sft_args(tmp), tmp), ["config.yaml", "Fix"])


@case("rundir", "output_dir names a file")
def output_dir_file(tmp: Path) -> Outcome:
    (tmp / "out").write_text("x")
    args = [a if not a.startswith("output_dir=") else f"output_dir={tmp / 'out'}" for a in sft_args(tmp)]
    return classify(run_cli(args, tmp), ["output_dir", "Fix"])


@case("rundir", "output_dir not writable")
def output_dir_unwritable(tmp: Path) -> Outcome:
    # /proc refuses new folders even to root (chmod does not stop root)
    args = [a if not a.startswith("output_dir=") else "output_dir=/proc/veripo-runs" for a in sft_args(tmp)]
    return classify(run_cli(args, tmp), ["output_dir", "Fix"])


@case("rundir", "deleted checkpoint of a finished stage, next stage trains")
def deleted_checkpoint_then_training(tmp: Path) -> Outcome:
    run = finished_sft(tmp)
    shutil.rmtree(run / "iter0/sft/checkpoint")
    res = run_cli(sft_args(tmp, "stages=[sft,grpo]", "grpo.steps=1"), tmp)
    out = classify(res, ["iter0/sft/checkpoint", "Fix"])
    if out.result == "clear" and res.seconds > 30:
        out.detail = f"clear but late ({res.seconds:.0f} s): {out.detail}"
    return out


@case("rundir", "deleted checkpoint of a finished stage, next stage evaluates")
def deleted_checkpoint_then_eval(tmp: Path) -> Outcome:
    run = finished_sft(tmp)
    shutil.rmtree(run / "iter0/sft/checkpoint")
    res = run_cli(sft_args(tmp, "stages=[sft,eval]", "eval.limit=2", "eval.max_tokens=16"), tmp)
    if res.rc != 0:
        return classify(res, ["iter0/sft/checkpoint"])
    if "policy export" not in res.text or not (run / "iter0/eval_sft/results.json").is_file():
        return Outcome("silent", "exit 0 without saying what served the policy")
    return Outcome("recovered", [ln for ln in res.text.splitlines() if "policy export" in ln][0][-240:])
