"""The single controller. `Loop.fit()` reads as the pipeline:

    for each iteration:
        for each stage of the iteration's plan ([sft] -> grpo -> verify -> preference, evals between):
            skip it if the manifest says it is done, else run it (from its last recorded step)

The stages hold the details (`veripo.stages`: one module each, one shape, `STAGES`); the run folder's
paths and the manifest are `veripo.run_dir`'s. The loop owns only the iteration over the plan, the
manifest and the resume bookkeeping (`veripo.stages.base.Progress`): training stages save a step
checkpoint every ``checkpoint.every`` steps and record ``steps_done`` in the manifest only after it, so a
run killed anywhere (SIGKILL included) continues, when the same command runs again, from the last
recorded step: what the step that was running wrote is dropped and that step is redone with the same seed.
A step checkpoint also carries its own stage step, so a kill after the checkpoint is committed but before
the manifest records it resumes after that step (`Progress.resumable_step`), never redoing it.

Before any model loads, `setup` checks the run folder: it must be creatable and writable (`output_dir`);
its manifest must parse; a resumed run's config must not change keys that shaped finished work unless
``allow_config_changes`` names them (`veripo.run_dir.check_config_drift`); and the checkpoint the next
stage starts from must be on disk (when only non-training stages remain, the finished stage's ``policy/``
export serves instead).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from veripo.config import RunConfig, stage_plan
from veripo.faults import PGID_ENV
from veripo.models import resolve_model
from veripo.report import MetricsLogger, write_report
from veripo.run_dir import CHECKPOINT, POLICY, Manifest, RunDir, RunDirError, checkpoint_info, open_run
from veripo.stages import Progress, StageContext, stage_for
from veripo.stages.common import PromptBuilder, load_run_records
from veripo.workers import launch_workers


class Loop:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run = RunDir.for_config(cfg)
        self.keep_workers = False  # tests inspect the live workers after fit()
        self.manifest: Manifest | None = None
        self.ctx: StageContext | None = None  # made by setup(): workers, records, tokenizer, metrics
        self._served: Path | None = None  # a missing checkpoint whose stage's policy export the workers loaded

    def fit(self) -> dict:
        """Run every stage of every iteration that is not done yet; returns the manifest."""
        self.ctx = self.setup()
        try:
            for it in range(self.cfg.iterations):
                plan = stage_plan(self.cfg.stages, it)
                for k, name in enumerate(plan):
                    self.run_stage(it, name, f"{k + 1}/{len(plan)}")
        finally:
            if not self.keep_workers:
                self.close()
        self.write_report()
        print(f"veripo: run finished. Report: {self.run.report.absolute()}")
        return self.manifest.data

    def run_stage(self, it: int, name: str, where: str) -> None:
        ctx, progress, stage = self.ctx, self.ctx.progress, stage_for(name)
        key, out = RunDir.stage_id(it, name), self.run.stage(it, name)
        if self.manifest.done(key):
            print(f"veripo: {key} already done; skipping")
            if stage.trains:
                progress.policy = out / CHECKPOINT
            return
        out.mkdir(parents=True, exist_ok=True)
        print(f"veripo: [iteration {it + 1}/{self.cfg.iterations}, stage {where}] {name}")
        progress.restore_policy()
        ctx.iteration, ctx.stage_id = it, key
        ctx.metrics.begin(it)
        progress.start(key)
        start = progress.resumable_step(key, out) if stage.trains else 0
        outputs = stage.run(ctx, out, start) or {}
        previous = progress.policy
        if stage.trains:
            progress.finish(key, out)
        seconds = progress.elapsed(key)
        self.manifest.mark(key, done=True, seconds=round(seconds, 1), **outputs)
        if stage.trains and not self.cfg.checkpoint.keep_stage_checkpoints and previous is not None:
            shutil.rmtree(previous, ignore_errors=True)  # only after the manifest points past it
        print(f"veripo: {key} done in {seconds:.0f} s")
        self.write_report()

    def setup(self) -> StageContext:
        """The run folder, its config and manifest, the records, the tokenizer and the workers."""
        cfg = self.cfg
        if os.environ.get("VERIPO_FAULT"):  # crash tests: the fault kills this whole process group
            os.environ.setdefault(PGID_ENV, str(os.getpgrp()))
        self.open_run_dir()
        model_path = self.policy_source() or resolve_model(cfg.model.path)
        # Not at module level: importing transformers imports torch._dynamo, which sets
        # os.environ["TORCHINDUCTOR_CACHE_DIR"], and importing veripo.loop must change nothing global.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        data = load_run_records(cfg, self.run)
        if any(s.startswith("eval") for s in cfg.stages) and not data.test:
            raise ValueError("stages include eval but there is no held-out split. Fix: set data.test=PATH "
                             "(or leave data.train null to generate the synthetic set with its test split)")
        prompts = PromptBuilder(tokenizer, cfg)  # a template or processor error stops here, before the workers
        metrics = MetricsLogger(self.run.root, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                                run_name=cfg.name)
        done = self.manifest.stages_done()
        # data.skip_bad: what was left out is said here and kept in the manifest (the report shows it)
        self.manifest.data["inputs"] = {"data": {"skipped_lines": data.skipped, "skipped_errors": data.skip_errors[:20],
                                                 "images_left_out": data.images_left_out}}
        self.manifest.save()
        skipped = ""
        if data.skipped:
            first = "; ".join(e.split(". Fix:")[0] for e in data.skip_errors[:3])
            skipped = f" ({data.skipped} bad record line(s) skipped by data.skip_bad, first: {first})"
        print(f"veripo: run {cfg.name} in {self.run.root}: {len(data.train)} train / {len(data.test)} "
              f"test records{skipped}, model {model_path}, {cfg.iterations} iteration(s) of {cfg.stages}"
              + (f"; resuming ({done} stage(s) done)" if done else ""))
        workers = launch_workers(cfg, model_path)
        progress = Progress(self.manifest, workers, metrics, cfg)
        progress.loaded = self._served  # the workers started from that stage's export: nothing to restore
        return StageContext(cfg=cfg, run=self.run, workers=workers, data=data, tokenizer=tokenizer,
                            prompts=prompts, metrics=metrics, model_path=Path(model_path), progress=progress)

    def open_run_dir(self) -> None:
        """The run folder's checks and its manifest (`veripo.run_dir.open_run`, torch-free)."""
        self.manifest = open_run(self.cfg)

    def policy_source(self) -> str | None:
        """Check, before any model loads, that a resumed run can start its next stage from the newest
        finished training stage's checkpoint. When that checkpoint is gone and only stages that train
        nothing remain, the stage's ``policy/`` export serves: the workers load it as their model (returned,
        None otherwise). When a training stage remains, a `RunDirError` names the missing folder."""
        plan = [(it, name) for it in range(self.cfg.iterations) for name in stage_plan(self.cfg.stages, it)]
        todo = [(it, name) for it, name in plan if not self.manifest.done(RunDir.stage_id(it, name))]
        if not todo:
            return None
        first = plan.index(todo[0])
        finished = [(it, name) for it, name in plan[:first] if stage_for(name).trains]
        if not finished:
            return None
        it, name = finished[-1]
        out = self.run.stage(it, name)
        if checkpoint_info(out / CHECKPOINT) is not None:
            return None
        key, export = RunDir.stage_id(it, name), out / POLICY
        nxt = self.run.stage(*todo[0])
        own = checkpoint_info(nxt / CHECKPOINT)
        if stage_for(todo[0][1]).trains and own and own.get("stage") == RunDir.stage_id(*todo[0]):
            self._served = out / CHECKPOINT  # the next stage resumes from its own checkpoint: nothing to restore
            return None
        trains_later = [RunDir.stage_id(i, n) for i, n in todo if stage_for(n).trains]
        if not trains_later and (export / "config.json").is_file():
            print(f"veripo: {key} is done but its checkpoint {out / CHECKPOINT} is missing; the stages left "
                  f"({', '.join(RunDir.stage_id(i, n) for i, n in todo)}) train nothing, so the workers load its "
                  f"policy export {export} instead")
            self.manifest.record("recovered", stage=key, missing=str(out / CHECKPOINT), used=str(export))
            self._served = out / CHECKPOINT
            return str(export)
        raise RunDirError(
            f"{out / CHECKPOINT}: the checkpoint of the finished stage {key} is missing or incomplete, and "
            + (f"{trains_later[0]} must continue training from it" if trains_later else f"its export {export} is "
               "missing too") + ". Fix: restore the folder from a backup; or start the run afresh under a new "
            "name (name=NEW)")

    # what tests and callers read of a run in progress
    @property
    def run_dir(self) -> Path:
        return self.run.root

    @property
    def workers(self):
        return None if self.ctx is None else self.ctx.workers

    @property
    def metrics(self) -> MetricsLogger | None:
        return None if self.ctx is None else self.ctx.metrics

    @property
    def model_path(self) -> Path | None:
        return None if self.ctx is None else self.ctx.model_path

    def write_report(self) -> None:
        """Rewrite report.html; a failure here is reported, never fatal to training."""
        try:
            write_report(self.run.root)
        except Exception as e:  # noqa: BLE001 - the run matters more than its report
            print(f"veripo: warning: could not write the report: {type(e).__name__}: {e}")

    def close(self) -> None:
        if self.ctx is None:
            return
        try:
            if self.ctx.workers is not None:
                self.ctx.workers.close()
        finally:
            self.ctx.workers = None
            self.ctx.metrics.close()
