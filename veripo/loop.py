"""The single controller: it reads as the pipeline, ``[sft] -> grpo -> …``; the stages hold the details.

The run folder ``runs/NAME/`` holds ``config.yaml``, ``manifest.json`` (which stages are done,
rewritten atomically), ``metrics.jsonl``, TensorBoard logs and one folder per stage with its outputs,
a checkpoint and an HF export of the policy. Rerunning the same command skips finished stages and
restores the policy from the last one's checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from veripo.config import RunConfig, to_dict


class Manifest:
    """The run's single truth about progress, written atomically (temp file + rename)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"stages": {}, "created": time.time()}

    def done(self, stage: str) -> bool:
        return bool(self.data["stages"].get(stage, {}).get("done"))

    def mark(self, stage: str, **info) -> None:
        self.data["stages"].setdefault(stage, {}).update(info)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


class Loop:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir) / cfg.name
        self.workers = None
        self.keep_workers = False  # tests inspect the live workers after fit()

    def fit(self) -> dict:
        """Run every configured stage that is not done yet; returns the manifest."""
        self.setup()
        try:
            for stage in self.cfg.stages:
                if self.manifest.done(stage):
                    print(f"veripo: stage {stage} already done in {self.run_dir}; skipping")
                    self.last_done = stage
                    continue
                self.restore_policy()
                t0 = time.time()
                getattr(self, f"run_{stage}")()
                self.finish_stage(stage, seconds=time.time() - t0)
        finally:
            if not self.keep_workers:
                self.close()
        print(f"veripo: run finished. Outputs in {self.run_dir}/ (metrics.jsonl, manifest.json, stage folders)")
        return self.manifest.data

    # -- the stages -----------------------------------------------------------------------------
    def run_sft(self) -> None:
        from veripo.stages.sft import SFTLoss, sft_batches
        from veripo.stages.common import policy_batch
        from tqdm import tqdm

        c = self.cfg.sft
        self.workers.trainer.set_lr(c.lr, c.warmup_steps, c.steps)
        pad = self.pad_id
        batches = sft_batches(self.data.train, self.prompts, self.tokenizer, c.steps, c.batch_size, self.cfg.seed)
        for step, (p_ids, r_ids) in enumerate(tqdm(batches, total=c.steps, desc="sft", disable=not self.cfg.logging.progress)):
            m = self.workers.trainer.train_step(policy_batch(p_ids, r_ids, pad), SFTLoss())
            self.metrics.log("sft", step, {k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "step"})
        self.sync_weights()

    def run_grpo(self) -> None:
        from veripo.stages.grpo import GRPOStage

        g = self.cfg.grpo
        if g.kl_coef > 0 and self.workers.reference is None:
            self.workers.reference = self.make_reference("grpo")
        self.workers.trainer.set_lr(g.lr, 0, g.steps)
        stage = GRPOStage(g, self.workers, self.prompts, self.tokenizer, self.data.train, self.run_dir / "grpo",
                          self.metrics, self.cfg.seed, progress=self.cfg.logging.progress,
                          sample_every=self.cfg.logging.sample_every, bucket_mb=self.cfg.rollout.weight_sync_bucket_mb)
        stage.run()

    def run_preference(self) -> None:
        from veripo.data.pairs import load_pair_file
        from veripo.data.rollouts import read_pairs
        from veripo.stages.preference import run_preference_stage

        c = self.cfg.preference
        if c.pairs:
            pairs = load_pair_file(c.pairs)
        else:
            path = self.run_dir / "verify" / "pairs.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no pair file. Fix: run the verify stage first, or set "
                                        "preference.pairs=PATH (a verifier or LLaVA-Hound-style pair JSONL)")
            pairs = read_pairs(path)
        run_preference_stage(c, self.workers.trainer, pairs, self.tokenizer, self.prompts, self.metrics,
                             progress=self.cfg.logging.progress, out_dir=self.run_dir / "preference", seed=self.cfg.seed)
        self.sync_weights()

    # -- plumbing -------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import AutoTokenizer

        from veripo.models import resolve_model
        from veripo.report import MetricsLogger
        from veripo.stages.common import PromptBuilder, load_run_data
        from veripo.workers import launch_workers

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.manifest = Manifest(self.run_dir / "manifest.json")
        self.last_done = None
        self.model_path = resolve_model(self.cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.data = load_run_data(self.cfg, self.run_dir)
        self.prompts = PromptBuilder(self.tokenizer, self.cfg)
        self.metrics = MetricsLogger(self.run_dir, tensorboard=self.cfg.logging.tensorboard,
                                     wandb=self.cfg.logging.wandb, run_name=self.cfg.name)
        print(f"veripo: run {self.cfg.name} in {self.run_dir}: {len(self.data.train)} train / {len(self.data.test)} "
              f"test records, model {self.model_path}, stages {self.cfg.stages}")
        self.workers = launch_workers(self.cfg, self.model_path)

    def _write_config(self) -> None:
        import yaml

        path = self.run_dir / "config.yaml"
        text = yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
        tmp = path.with_name("config.yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def restore_policy(self) -> None:
        """After skipped stages, load the last finished stage's checkpoint into the trainer and engines."""
        if self.last_done is None:
            return
        ckpt = self.run_dir / self.last_done / "checkpoint"
        self.workers.trainer.load_checkpoint(str(ckpt))
        self.sync_weights()
        self.last_done = None

    def make_reference(self, stage: str):
        """A frozen copy of the current policy (the KL anchor): exported once, loaded by its own ranks."""
        from veripo.workers.group import TrainerGroup

        path = self.run_dir / stage / "reference"
        if not (path / "config.json").is_file():
            self.workers.trainer.export_hf(str(path))
        # num_cpus=0: it only runs forward passes between the policy's steps, never beside them
        return TrainerGroup(self.cfg.train, str(path), self.cfg.ray.trainer_workers, 0, self.workers.threads)

    def sync_weights(self) -> dict:
        ref = self.workers.trainer.weight_buckets_ref(self.cfg.rollout.weight_sync_bucket_mb)
        return self.workers.rollout.update_weights(ref)

    def finish_stage(self, stage: str, seconds: float) -> None:
        out = self.run_dir / stage
        out.mkdir(parents=True, exist_ok=True)
        self.workers.trainer.save_checkpoint(str(out / "checkpoint"))
        self.workers.trainer.export_hf(str(out / "policy"))
        self.manifest.mark(stage, done=True, seconds=round(seconds, 1), policy=str(out / "policy"))
        print(f"veripo: stage {stage} done in {seconds:.0f} s; policy exported to {out / 'policy'}")

    def close(self) -> None:
        if self.workers is not None:
            try:
                self.workers.close()
            finally:
                self.workers = None
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
