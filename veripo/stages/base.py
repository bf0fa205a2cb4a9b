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
from veripo.report.metrics import MetricsLogger
from veripo.run_dir import CHECKPOINT, POLICY, Manifest, RunDir
from veripo.stages.common import PromptBuilder, RunRecords
from verifier.judge import ConsistencyJudge


class Progress:
    """Resume bookkeeping of the training stages: the manifest and the policy's step checkpoints.

    A training step is recorded in the manifest (``steps_done``) only after its checkpoint is written, so a
    run killed anywhere resumes from the last recorded step. `loaded` is the checkpoint the trainer holds
    now (None: the base model), `policy` the newest finished training stage's checkpoint.
    """

    def __init__(self, manifest: Manifest, workers: Any, metrics: MetricsLogger, cfg: RunConfig):
        self.manifest, self.workers, self.metrics, self.cfg = manifest, workers, metrics, cfg
        self.policy: Path | None = None
        self.loaded: Path | None = None
        self._t0: dict[str, float] = {}

    # -- the loop's side ------------------------------------------------------------------------
    def start(self, stage_id: str) -> None:
        """A stage starts (or restarts): its wall time continues from what the manifest recorded."""
        self._t0[stage_id] = time.time() - self.manifest.get(stage_id).get("elapsed", 0.0)

    def elapsed(self, stage_id: str) -> float:
        return time.time() - self._t0[stage_id]

    def resumable_step(self, stage_id: str, out: Path) -> int:
        """Steps of an unfinished training stage that are recorded with their checkpoint on disk (0: start
        afresh)."""
        info = self.manifest.get(stage_id)
        start = int(info.get("steps_done", 0))
        ok = start > 0 and info.get("checkpoint_step") == start and (out / CHECKPOINT / "veripo_checkpoint.json").is_file()
        return start if ok else 0

    def restore_policy(self) -> None:
        """After skipped stages (a resumed run), load the newest finished stage's checkpoint."""
        if self.policy is None or self.loaded == self.policy:
            return
        self.workers.trainer.load_checkpoint(str(self.policy))
        self.loaded = self.policy
        self.sync_weights()
        print(f"veripo: policy restored from {self.policy}")

    def finish(self, stage_id: str, out: Path) -> None:
        """A finished training stage: its final checkpoint (unless the last step saved it) and HF export."""
        info = self.manifest.get(stage_id)
        ckpt = out / CHECKPOINT
        if info.get("checkpoint_step") != info.get("steps_done", -1) or not ckpt.is_dir() or not info.get("steps_done"):
            self.workers.trainer.save_checkpoint(str(ckpt))
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
        if n % self.cfg.checkpoint.every == 0 or n == total:
            self.workers.trainer.save_checkpoint(str(out / CHECKPOINT))
            self.loaded = out / CHECKPOINT
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
