"""Resume faults: kills in every window between "checkpoint committed" and "manifest committed", and a
resumed run whose config changed keys that shaped finished work.

Each kill case runs a 3-step SFT-only run killed at a fault point (`veripo.faults`), then the same command
again, and checks that the stage ended with exactly 3 trained steps: the checkpoint's engine step, its
stage step, the manifest and the metrics rows. A step trained twice is a silent loss.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml
from faults import Outcome, case, classify, env_for_cli, run_cli

STEPS = 3
BASE = ["stages=[sft]", f"sft.steps={STEPS}", "sft.batch_size=2", "data.synth.n=8", "logging.progress=false",
        "logging.tensorboard=false", "logging.sample_every=0", "name=r"]
_FINISHED: Path | None = None


def sft_args(tmp: Path, *extra: str) -> list[str]:
    return ["-m", "veripo.run", f"output_dir={tmp}", *BASE, *extra]


def finished_sft(tmp: Path) -> Path:
    """A copy of a finished 3-step SFT run folder (``tmp/r``), made once per process."""
    global _FINISHED
    if _FINISHED is None:
        src = Path(tempfile.mkdtemp(prefix="veripo-fault-finished-sft-"))
        res = run_cli(sft_args(src), src)
        if res.rc != 0:
            raise RuntimeError(f"the finished-SFT fixture failed: {res.text[-500:]}")
        _FINISHED = src
    shutil.copytree(_FINISHED / "r", tmp / "r")
    return tmp / "r"


# the killed run in a session of its own: a fault SIGKILLs its whole process group, not this script
IN_OWN_SESSION = ["-c", "import os, runpy, sys; os.setsid(); sys.argv = ['veripo.run', *sys.argv[1:]]; "
                  "runpy.run_module('veripo.run', run_name='__main__', alter_sys=True)"]


def _kill_and_resume(tmp: Path, fault: str) -> Outcome:
    killed = run_cli([*IN_OWN_SESSION, *sft_args(tmp)[2:]], tmp, env=env_for_cli(VERIPO_FAULT=fault))
    if killed.rc not in (-9, 137):
        return Outcome("unclear", f"{fault} did not kill the run (rc {killed.rc}): {killed.text[-200:]}")
    res = run_cli(sft_args(tmp), tmp)
    if res.rc != 0:
        return classify(res, ["checkpoint"])
    run = tmp / "r"
    marker = json.loads((run / "iter0/sft/checkpoint/veripo_checkpoint.json").read_text())
    stage = json.loads((run / "manifest.json").read_text())["stages"]["iter0/sft"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["step"] for r in rows if r.get("stage") == "sft" and "nll" in r]
    got = (marker["step"], marker.get("stage_step"), stage["steps_done"], steps)
    if got != (STEPS, STEPS, STEPS, list(range(STEPS))):
        return Outcome("silent", f"after {fault}: engine step, stage step, manifest, metrics rows = {got}")
    said = [ln for ln in res.text.splitlines() if ln.startswith("veripo:") and "resum" in ln]
    return Outcome("recovered", f"{fault}: {STEPS} steps, each once; " + " | ".join(said)[-240:])


@case("resume", "kill after the checkpoint rename, before the manifest (trainer rank)")
def kill_after_rename(tmp: Path) -> Outcome:
    return _kill_and_resume(tmp, "checkpoint.renamed:2")


@case("resume", "kill after the save returned, before the manifest (driver)")
def kill_after_save(tmp: Path) -> Outcome:
    return _kill_and_resume(tmp, "progress.saved:1")


@case("resume", "kill between the two renames of a checkpoint")
def kill_in_swap(tmp: Path) -> Outcome:
    return _kill_and_resume(tmp, "replace_dir.swap:1")


@case("resume", "changed key that shaped a finished stage", config_error=True)
def drift_refused(tmp: Path) -> Outcome:
    finished_sft(tmp)
    res = run_cli(sft_args(tmp, "sft.lr=1e-4"), tmp)
    out = classify(res, ["sft.lr", "allow_config_changes"])
    if out.result == "clear" and yaml.safe_load((tmp / "r/config.yaml").read_text())["sft"]["lr"] != 5e-05:
        return Outcome("silent", "refused, but config.yaml was rewritten anyway")
    return out


@case("resume", "changed key accepted with allow_config_changes")
def drift_allowed(tmp: Path) -> Outcome:
    finished_sft(tmp)
    res = run_cli(sft_args(tmp, "sft.lr=1e-4", "allow_config_changes=[sft.lr]"), tmp)
    if res.rc != 0:
        return classify(res, ["sft.lr"])
    changes = json.loads((tmp / "r/manifest.json").read_text()).get("config_changes", [])
    if not changes or "sft.lr" not in changes[-1]["changes"]:
        return Outcome("silent", "accepted without a record in the manifest")
    return Outcome("recovered", f"recorded: {changes[-1]['changes']}")
