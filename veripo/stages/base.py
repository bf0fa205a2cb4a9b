"""What every stage shares: the `Stage` protocol, the `StageContext` it runs over, and `Progress`, the
loop's resume bookkeeping that training stages report their steps to.

A stage is an object with a ``name`` (its kind: ``sft``, ``grpo``, ``verify``, ``preference``, ``eval``),
``trains`` (whether it updates the policy: the loop then restores the newest policy before it, and saves
its final checkpoint and HF export after it) and one entry::

    run(ctx, out, start_step) -> outputs

`out` is the stage's folder (``iter{i}/{stage}``, `veripo.run_dir.RunDir.stage`), `start_step` the first
step still to do (0 unless a killed run resumes a training stage), and `outputs` what the manifest records
about the stage (steps done, output files, headline numbers). `veripo.stages.STAGES` maps names to stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from veripo.config import RunConfig
from veripo.faults import fault_point
from veripo.report.metrics import MetricsLogger
from veripo.run_dir import CHECKPOINT, POLICY, Manifest, RunDir, checkpoint_info, finish_interrupted_replace
from veripo.stages.common import PromptBuilder, RunRecords
from verifier.judge import ConsistencyJudge


class Progress:
    """Resume bookkeeping of the training stages: the manifest and the policy's step checkpoints.

    A training step is recorded in the manifest (``steps_done``) only after its checkpoint is written, so a
    run killed anywhere resumes from the last recorded step. Each checkpoint carries its own stage id and
    stage step (``stage``, ``stage_step`` in its marker), so a kill between the checkpoint's rename into
    place and the manifest's record is reconciled on resume: the checkpoint's own step wins and the
    manifest is brought up to it (never load a step-N checkpoint and then redo step N). `loaded` is the
    checkpoint the trainer holds now (None: the base model), `policy` the newest finished training
    stage's checkpoint.
    """

    def __init__(self, manifest: Manifest, workers: Any, metrics: MetricsLogger, cfg: RunConfig):
        self.manifest, self.workers, self.metrics, self.cfg = manifest, workers, metrics, cfg
        self.policy: Path | None = None
        self.loaded: Path | None = None
        self._t0: dict[str, float] = {}
        self._trained: dict[str, int] = {}  # stage id -> steps the trainer's weights hold in this process

    # -- the loop's side ------------------------------------------------------------------------
    def start(self, stage_id: str) -> None:
        """A stage starts (or restarts): its wall time continues from what the manifest recorded."""
        self._t0[stage_id] = time.time() - self.manifest.get(stage_id).get("elapsed", 0.0)

    def elapsed(self, stage_id: str) -> float:
        return time.time() - self._t0[stage_id]

    def resumable_step(self, stage_id: str, out: Path) -> int:
        """The first step an unfinished training stage still has to do: the step its checkpoint on disk
        holds (0: start afresh), reconciled with the manifest's ``steps_done``.

        The checkpoint is committed (renamed into place) before the manifest records its step, so a kill
        between the two leaves a checkpoint one save ahead of the manifest: the checkpoint's own
        ``stage_step`` is trusted and the manifest brought up to it (recorded under ``reconciled``). A
        checkpoint behind the manifest, or of another stage, is not loaded: the stage starts afresh."""
        info = self.manifest.get(stage_id)
        recorded = int(info.get("steps_done", 0))
        ckpt = out / CHECKPOINT
        repaired = finish_interrupted_replace(ckpt)
        if repaired:
            print(f"veripo: {stage_id}: {repaired}")
        ck = checkpoint_info(ckpt)
        if ck is None:
            if recorded:
                print(f"veripo: warning: {stage_id}: the manifest records {recorded} step(s) but {ckpt} is missing "
                      "or incomplete; the stage starts afresh")
            return 0
        if "stage_step" not in ck:  # a checkpoint from before the marker held its stage step
            return recorded if recorded > 0 and info.get("checkpoint_step") == recorded else 0
        step = int(ck["stage_step"])
        if ck.get("stage") != stage_id or step < recorded:
            print(f"veripo: warning: {stage_id}: {ckpt} holds step {step} of {ck.get('stage')}, the manifest records "
                  f"{recorded} step(s) of {stage_id}; the stage starts afresh")
            return 0
        if step > recorded:
            print(f"veripo: {stage_id}: the checkpoint holds step {step} but the manifest recorded {recorded} (the "
                  f"run stopped between the two); resuming after step {step}, the checkpoint's")
            self.manifest.mark(stage_id, steps_done=step, checkpoint_step=step)
            self.manifest.record("reconciled", stage=stage_id, manifest_step=recorded, checkpoint_step=step)
        return step

    def restore_policy(self) -> None:
        """After skipped stages (a resumed run), load the newest finished stage's checkpoint."""
        if self.policy is None or self.loaded == self.policy:
            return
        self.workers.trainer.load_checkpoint(str(self.policy))
        self.loaded = self.policy
        self.sync_weights()
        print(f"veripo: policy restored from {self.policy}")

    def finish(self, stage_id: str, out: Path) -> None:
        """A finished training stage: its final checkpoint (unless the last step trained saved it) and HF
        export. The final checkpoint holds every step the trainer trained, also when the stage ran fewer
        steps than it planned (a preference stage whose filter dropped pairs) between two saves."""
        info = self.manifest.get(stage_id)
        ckpt = out / CHECKPOINT
        trained = self._trained.get(stage_id, int(info.get("steps_done", 0)))
        ck = checkpoint_info(ckpt)
        if not trained or ck is None or ck.get("stage_step", info.get("checkpoint_step")) != trained:
            self._save(stage_id, out, trained)
        self.workers.trainer.export_hf(str(out / POLICY))
        self.policy = self.loaded = ckpt
        self.manifest.mark(stage_id, policy=str(out / POLICY))

    # -- the stage's side -----------------------------------------------------------------------
    def begin(self, stage_id: str, out: Path, start_step: int, lr: float | None, warmup_steps: int = 0,
              total_steps: int | None = None) -> None:
        """A training stage's optimizer and schedule (`lr` None: the stage sets them itself, after its own
        set-up); when resuming (`start_step` > 0), then its step checkpoint (weights, optimizer, schedule,
        RNG), pushed to the rollout engines. The metrics rows of the steps about to be (re)done are
        dropped."""
        if lr is not None:
            self.workers.trainer.set_lr(lr, warmup_steps, total_steps)
        self._trained[stage_id] = start_step
        if start_step > 0:
            ckpt = out / CHECKPOINT
            self.workers.trainer.load_checkpoint(str(ckpt))
            self.loaded = ckpt
            self.sync_weights()
            print(f"veripo: {stage_id}: resuming after step {start_step} from {ckpt}")
            self.manifest.record_resume(stage_id, start_step)
        iteration, kind = RunDir.parse_stage_id(stage_id)
        self.metrics.truncate(kind, start_step, iteration=iteration)

    def step_done(self, stage_id: str, out: Path, step: int, total: int) -> None:
        """After a training step: checkpoint every ``checkpoint.every`` steps (and the last), then record it."""
        n = step + 1
        self._trained[stage_id] = n
        if n % self.cfg.checkpoint.every == 0 or n == total:
            self._save(stage_id, out, n)

    def _save(self, stage_id: str, out: Path, n: int) -> None:
        """Checkpoint the trainer after `n` steps of the stage (its marker says so), then record it."""
        self.workers.trainer.save_checkpoint(str(out / CHECKPOINT), meta={"stage": stage_id, "stage_step": n})
        self.loaded = out / CHECKPOINT
        fault_point("progress.saved")  # the checkpoint is in place, the manifest does not know it yet
        self.manifest.mark(stage_id, steps_done=n, checkpoint_step=n, elapsed=round(self.elapsed(stage_id), 1))

    def sync_weights(self) -> dict:
        """Push the trainer's weights into the rollout engines (in place)."""
        ref = self.workers.trainer.weight_buckets_ref(self.cfg.rollout.weight_sync_bucket_mb)
        return self.workers.rollout.update_weights(ref)


@dataclass
class StageContext:
    """Everything a stage reads or drives: the run's config, folder, manifest and progress, its workers
    (trainer, rollout engines, rewards, judge), records, tokenizer, prompts and metrics. The loop makes one
    per run and sets `iteration` and `stage_id` before each stage."""

    cfg: RunConfig
    run: RunDir
    workers: Any  # veripo.workers.Workers
    data: RunRecords
    tokenizer: Any
    prompts: PromptBuilder
    metrics: MetricsLogger
    model_path: Path
    progress: Progress | None = None
    iteration: int = 0
    stage_id: str = ""

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id

    def judge_backend(self):
        """The verifier's judge (its own engine, started once per run, or the configured endpoint);
        None with ``verify.judge=none``."""
        return self.workers.judge_backend(self.cfg.verify)

    def consistency_judge(self, cache: Path) -> ConsistencyJudge | None:
        backend = self.judge_backend()
        return None if backend is None else ConsistencyJudge(backend, cache=cache)


class Stage(Protocol):
    """One stage of an iteration (see the module docstring)."""

    name: ClassVar[str]
    trains: ClassVar[bool]

    def run(self, ctx: StageContext, out: Path, start_step: int) -> dict: ...


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
