"""The single controller. `Loop.fit()` reads as the pipeline:

    for each iteration:                      (easy prompts pruned from the pool after the first)
        [sft] -> grpo -> verify -> preference, with an eval after any stage the recipe asks for

The stages hold the details (`veripo.stages`, `verifier`, `veripo.eval`); the loop owns the run folder
and resume. ``runs/NAME/`` holds::

    config.yaml          the composed config
    manifest.json        the single truth about progress: per stage id (``iter0/grpo``) its steps done,
                         whether it is done, wall time and outputs; rewritten atomically
    metrics.jsonl        one row per step of every stage (with its iteration); TensorBoard in tensorboard/
    report.html          plots and samples, rewritten after every stage
    data/                the synthetic set, when the recipe generates it
    iter{i}/{stage}/     the stage's outputs: grpo/rollouts.jsonl, verify/pairs.jsonl, eval_*/results.json,
                         and for stages that train: checkpoint/ (model, optimizer, schedule, RNG) and
                         policy/ (an HF export)

Every file is written atomically or append-only with torn-line-tolerant readers. Training stages save a
step checkpoint every ``checkpoint.every`` steps and record ``steps_done`` in the manifest only after it,
so a run killed anywhere (SIGKILL included) continues, when the same command runs again, from the last
recorded step: outputs of the step that was running are dropped and that step is redone with the same
seed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from veripo.config import RunConfig, stage_plan, to_dict
from veripo.data.rollouts import atomic_write_text
from veripo.faults import PGID_ENV, fault_point

TRAINING_STAGES = ("sft", "grpo", "preference")


class Manifest:
    """The run's single truth about progress, written atomically (temp file + rename)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"created": time.time(), "stages": {}}
        self.data.setdefault("stages", {})
        self.data.setdefault("order", [])

    def get(self, stage: str) -> dict:
        return self.data["stages"].get(stage, {})

    def done(self, stage: str) -> bool:
        return bool(self.get(stage).get("done"))

    def mark(self, stage: str, **info) -> None:
        self.data["stages"].setdefault(stage, {}).update(info)
        if stage not in self.data["order"]:
            self.data["order"].append(stage)
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2))


class Loop:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir) / cfg.name
        self.workers = None
        self.keep_workers = False  # tests inspect the live workers after fit()
        self.iteration = 0

    def fit(self) -> dict:
        """Run every stage of every iteration that is not done yet; returns the manifest."""
        self.setup()
        try:
            for it in range(self.cfg.iterations):
                self.iteration = it
                plan = stage_plan(self.cfg.stages, it)
                for k, stage in enumerate(plan):
                    self.run_stage(it, stage, f"{k + 1}/{len(plan)}")
        finally:
            if not self.keep_workers:
                self.close()
        self.write_report()
        print(f"veripo: run finished. Report: {(self.run_dir / 'report.html').absolute()}")
        return self.manifest.data

    def run_stage(self, it: int, stage: str, where: str) -> None:
        key = f"iter{it}/{stage}"
        if self.manifest.done(key):
            print(f"veripo: {key} already done; skipping")
            if stage in TRAINING_STAGES:
                self.policy_checkpoint = self.run_dir / key / "checkpoint"
            return
        out = self.run_dir / key
        out.mkdir(parents=True, exist_ok=True)
        print(f"veripo: [iteration {it + 1}/{self.cfg.iterations}, stage {where}] {stage}")
        self.restore_policy()
        self.metrics.context = {"iteration": it}
        self.stage_t0 = t0 = time.time() - self.manifest.get(key).get("elapsed", 0.0)
        kind = "eval" if stage.startswith("eval_") else stage
        outputs = getattr(self, f"run_{kind}")(it, out, stage) or {}
        previous = self.policy_checkpoint
        if kind in TRAINING_STAGES:
            self.save_policy(key, out)
        self.manifest.mark(key, done=True, seconds=round(time.time() - t0, 1), **outputs)
        if kind in TRAINING_STAGES and not self.cfg.checkpoint.keep_stage_checkpoints and previous is not None:
            shutil.rmtree(previous, ignore_errors=True)  # only after the manifest points past it
        print(f"veripo: {key} done in {time.time() - t0:.0f} s")
        self.write_report()

    # -- the stages: each returns what the manifest records about its outputs ----------------------
    def run_sft(self, it: int, out: Path, stage: str) -> dict:
        from tqdm import tqdm

        from veripo.stages.common import policy_batch
        from veripo.stages.sft import SFTLoss, sft_batches

        c = self.cfg.sft
        self.workers.trainer.set_lr(c.lr, c.warmup_steps, c.steps)
        start = self.resume_steps(f"iter{it}/sft", out, "sft")
        batches = sft_batches(self.data.train, self.prompts, self.tokenizer, c.steps, c.batch_size, self.cfg.seed)
        bar = tqdm(batches, total=c.steps, desc="sft", disable=not self.cfg.logging.progress, unit="step")
        for step, (prompts, r_ids) in enumerate(bar):
            if step < start:
                continue
            batch = policy_batch([p.token_ids for p in prompts], r_ids, self.pad_id,
                                 visuals=[p.visual for p in prompts])  # a video prompt carries its frames
            m = self.workers.trainer.train_step(batch, SFTLoss())
            self.metrics.log("sft", step, {k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "step"})
            bar.set_postfix(nll=f"{m.get('nll', float('nan')):.3f}")
            fault_point("sft.step")
            self.step_done(f"iter{it}/sft", out, step, c.steps)
        self.sync_weights()
        return {"steps_done": c.steps}

    def run_grpo(self, it: int, out: Path, stage: str) -> dict:
        from veripo.data.rollouts import truncate_rollouts
        from veripo.stages.grpo import GRPOStage

        g = self.cfg.grpo
        key = f"iter{it}/grpo"
        if g.kl_coef > 0:
            self.workers.reference = self.make_reference(out)
        lr = g.lr if it == 0 or g.lr_after_first is None else g.lr_after_first
        self.workers.trainer.set_lr(lr, 0, g.steps)
        start = self.resume_steps(key, out, "grpo")
        truncate_rollouts(out / "rollouts.jsonl", from_step=start)
        truncate_rollouts(out / "rollouts_shuffled.jsonl", from_step=start)  # T-GRPO's, never verified
        self.metrics.step_offset = it * g.steps
        pool = self.pool(it)
        grpo = GRPOStage(g, self.workers, self.prompts, self.tokenizer, pool, out, self.metrics, self.cfg.seed,
                         iteration=it, progress=self.cfg.logging.progress, sample_every=self.cfg.logging.sample_every,
                         bucket_mb=self.cfg.rollout.weight_sync_bucket_mb)
        grpo.run(start_step=start, on_step_done=lambda step, m: self.step_done(key, out, step, g.steps))
        if self.workers.reference is not None:
            self.workers.close_reference()
        self.metrics.step_offset = 0
        return {"steps_done": g.steps, "pool": len(pool), "rollouts": str(out / "rollouts.jsonl")}

    def run_verify(self, it: int, out: Path, stage: str) -> dict:
        from veripo.data.rollouts import read_rollouts, write_pairs
        from verifier.pipeline import score_captions, verify

        v = self.cfg.verify
        self.metrics.truncate("verify", 0, iteration=it)
        rollouts = read_rollouts(self.run_dir / f"iter{it}" / "grpo" / "rollouts.jsonl", skip_bad=True)
        if v.last_steps is not None:
            last = max((r.step for r in rollouts), default=0)
            rollouts = [r for r in rollouts if r.step > last - v.last_steps]
        vcfg = v.verifier_config()
        cache = out / "judge_cache.jsonl"
        if v.mode == "caption":
            from verifier.caption_judge import CaptionJudge

            result = score_captions(rollouts, CaptionJudge(self.judge_backend(), cache=cache),
                                    records=self.data.train, config=vcfg)
        else:
            result = verify(rollouts, records=self.data.train, judge=self.consistency_judge(cache), config=vcfg,
                            tokenizer=self.tokenizer, progress=self.cfg.logging.progress)
        fault_point("verify.judged")
        write_pairs(out / "pairs.jsonl", result.pairs)
        _write_json(out / "pairs.meta.json", {**result.meta(), "inputs": {"rollouts": len(rollouts)}})
        stats = result.stats.to_dict()
        self.metrics.log("verify", 0, {k: v for k, v in stats.items() if isinstance(v, (int, float, dict)) or v is None})
        print(f"veripo: verifier: {len(result.pairs)} pairs from {len(rollouts)} rollouts "
              f"({', '.join(f'{k} {n}' for k, n in sorted(stats.get('pairs_by_type', {}).items())) or 'none'}); "
              f"inconsistency rate {_pct(stats.get('inconsistency_rate'))}")
        return {"pairs": len(result.pairs), "pairs_file": str(out / "pairs.jsonl")}

    def run_preference(self, it: int, out: Path, stage: str) -> dict:
        from veripo.data.pairs import load_pair_file
        from veripo.data.rollouts import read_pairs
        from veripo.stages.preference import run_preference_stage

        c = self.cfg.preference
        key = f"iter{it}/preference"
        if c.pairs:
            pairs = load_pair_file(c.pairs)
        else:
            path = self.run_dir / f"iter{it}" / "verify" / "pairs.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no pair file. Fix: put verify before preference in stages, or "
                                        "set preference.pairs=PATH (a verifier or LLaVA-Hound-style pair JSONL)")
            pairs = read_pairs(path)
        start = self.resume_steps(key, out, "preference")
        n_pairs = min(len(pairs), c.max_pairs) if c.max_pairs else len(pairs)
        total = c.total_steps(n_pairs) if n_pairs else 0

        def done(step: int, row: dict) -> None:
            fault_point("preference.step")
            self.step_done(key, out, step, total)

        video = self.cfg.data.use_video  # a vision model: video pairs carry their frames
        history = run_preference_stage(c, self.workers.trainer, pairs, self.tokenizer, self.prompts, self.metrics,
                                       progress=self.cfg.logging.progress, out_dir=out, seed=self.cfg.seed + it,
                                       start_step=start, on_step_done=done,
                                       processor=self.prompts.processor if video else None,
                                       video_cfg=self.prompts.video_cfg if video else None)
        self.sync_weights()
        return {"steps_done": start + len(history), "pairs": len(pairs)}

    def run_eval(self, it: int, out: Path, stage: str) -> dict:
        from veripo.eval import evaluate, write_results

        e = self.cfg.eval
        after = stage[len("eval_"):]
        self.metrics.truncate("eval", 0, iteration=it, after=after)
        records = self.data.test[: e.limit] if e.limit else self.data.test
        judge = self.consistency_judge(out / "judge_cache.jsonl") if e.judge else None

        def generate(requests, sampling):
            return [group[0] for group in self.workers.rollout.generate(requests, sampling, 1)]

        result = evaluate(records, generate, self.prompts.make_request, judge=judge, max_tokens=e.max_tokens,
                          temperature=e.temperature, seed=self.cfg.seed, reward_weights=self.cfg.grpo.reward_weights,
                          verifier_config=self.cfg.verify.verifier_config(), tokenizer=self.tokenizer,
                          progress=self.cfg.logging.progress)
        write_results(result, out, {"iteration": it, "after": after, "model": str(self.model_path),
                                    "records": len(records)})
        self.metrics.log("eval", it, {"after": after, **result.summary})
        s = result.summary
        print(f"veripo: eval after {after}: accuracy {_pct(s.get('accuracy'))}, format {_pct(s.get('format_rate'))}, "
              f"inconsistency {_pct(s.get('inconsistency_rate'))} on {len(records)} held-out records")
        return {"accuracy": s.get("accuracy"), "inconsistency_rate": s.get("inconsistency_rate"),
                "results": str(out / "results.json")}

    # -- easy-sample pruning ----------------------------------------------------------------------
    def pool(self, it: int) -> list:
        """The GRPO prompt pool of iteration `it`: the train split, minus the prompts each earlier
        iteration found easy (all G rollouts accurate), each dropped with probability prune.p."""
        import torch

        from veripo.algos import prune_easy
        from veripo.data.rollouts import read_rollouts

        pool = list(self.data.train)
        if not self.cfg.prune.enabled:
            return pool
        for j in range(it):
            path = self.run_dir / f"iter{j}" / "grpo" / "rollouts.jsonl"
            if not path.is_file():
                continue
            latest: dict[str, tuple] = {}
            for r in read_rollouts(path, skip_bad=True):
                acc = r.reward_components.get("accuracy", 0.0) >= self.cfg.prune.accuracy_threshold
                key = (r.iteration, r.step)
                prev = latest.get(r.problem_id)
                if prev is None or prev[0] < key:
                    latest[r.problem_id] = (key, [acc])
                elif prev[0] == key:
                    prev[1].append(acc)
            ids = [r.problem_id for r in pool]
            flags = [pid in latest and all(latest[pid][1]) for pid in ids]
            gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + j)
            kept = set(prune_easy(ids, flags, p=self.cfg.prune.p, generator=gen))
            new_pool = [r for r in pool if r.problem_id in kept]
            if not new_pool:
                print(f"veripo: pruning after iteration {j} would leave no prompts; keeping the pool")
                continue
            if len(new_pool) < len(pool):
                print(f"veripo: iteration {j + 1}: pruned {len(pool) - len(new_pool)} easy prompts "
                      f"({len(new_pool)} left)")
            pool = new_pool
        return pool

    # -- plumbing -------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import AutoTokenizer

        from veripo.models import resolve_model
        from veripo.report import MetricsLogger
        from veripo.stages.common import PromptBuilder, load_run_data
        from veripo.workers import launch_workers

        if os.environ.get("VERIPO_FAULT"):  # crash tests: the fault kills this whole process group
            os.environ.setdefault(PGID_ENV, str(os.getpgrp()))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.manifest = Manifest(self.run_dir / "manifest.json")
        self.policy_checkpoint: Path | None = None  # newest finished training stage's checkpoint
        self.loaded_checkpoint: Path | None = None  # what the trainer holds now (None: the base model)
        self.model_path = resolve_model(self.cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.data = load_run_data(self.cfg, self.run_dir)
        if any(s.startswith("eval") for s in self.cfg.stages) and not self.data.test:
            raise ValueError("stages include eval but there is no held-out split. Fix: set data.test=PATH "
                             "(or leave data.train null to generate the synthetic set with its test split)")
        self.prompts = PromptBuilder(self.tokenizer, self.cfg)
        self.metrics = MetricsLogger(self.run_dir, tensorboard=self.cfg.logging.tensorboard,
                                     wandb=self.cfg.logging.wandb, run_name=self.cfg.name)
        done = sum(1 for v in self.manifest.data["stages"].values() if v.get("done"))
        print(f"veripo: run {self.cfg.name} in {self.run_dir}: {len(self.data.train)} train / {len(self.data.test)} "
              f"test records, model {self.model_path}, {self.cfg.iterations} iteration(s) of {self.cfg.stages}"
              + (f"; resuming ({done} stage(s) done)" if done else ""))
        self.workers = launch_workers(self.cfg, self.model_path)

    def _write_config(self) -> None:
        import yaml

        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))

    def resume_steps(self, key: str, out: Path, stage: str) -> int:
        """Steps of an unfinished stage already done (0 when it starts afresh); loads their checkpoint
        and drops the metrics of later steps, which are about to be redone."""
        info = self.manifest.get(key)
        start = int(info.get("steps_done", 0))
        ckpt = out / "checkpoint"
        if start > 0 and info.get("checkpoint_step") == start and (ckpt / "veripo_checkpoint.json").is_file():
            self.workers.trainer.load_checkpoint(str(ckpt))
            self.loaded_checkpoint = ckpt
            self.sync_weights()
            print(f"veripo: {key}: resuming after step {start} from {ckpt}")
            self.manifest.data.setdefault("resumes", []).append({"stage": key, "from_step": start, "time": time.time()})
            self.manifest.save()
        else:
            start = 0
        self.metrics.truncate(stage, start, iteration=self.iteration)
        return start

    def step_done(self, key: str, out: Path, step: int, total: int) -> None:
        """After a training step: checkpoint every `checkpoint.every` steps (and the last), then record it."""
        n = step + 1
        if n % self.cfg.checkpoint.every == 0 or n == total:
            self.workers.trainer.save_checkpoint(str(out / "checkpoint"))
            self.loaded_checkpoint = out / "checkpoint"
            self.manifest.mark(key, steps_done=n, checkpoint_step=n, elapsed=round(time.time() - self.stage_t0, 1))

    def save_policy(self, key: str, out: Path) -> None:
        """A finished training stage: its final checkpoint (unless the last step saved it) and HF export."""
        info = self.manifest.get(key)
        ckpt = out / "checkpoint"
        if info.get("checkpoint_step") != info.get("steps_done", -1) or not ckpt.is_dir() or not info.get("steps_done"):
            self.workers.trainer.save_checkpoint(str(ckpt))
        self.workers.trainer.export_hf(str(out / "policy"))
        self.policy_checkpoint = self.loaded_checkpoint = ckpt
        self.manifest.mark(key, policy=str(out / "policy"))

    def restore_policy(self) -> None:
        """After skipped stages (a resumed run), load the newest finished stage's checkpoint."""
        if self.policy_checkpoint is None or self.loaded_checkpoint == self.policy_checkpoint:
            return
        self.workers.trainer.load_checkpoint(str(self.policy_checkpoint))
        self.loaded_checkpoint = self.policy_checkpoint
        self.sync_weights()
        print(f"veripo: policy restored from {self.policy_checkpoint}")

    def make_reference(self, out: Path):
        """A frozen copy of the current policy (the KL anchor): exported once, loaded by its own ranks."""
        path = out / "reference"
        if not (path / ".complete").is_file():
            self.workers.trainer.export_hf(str(path))
            (path / ".complete").write_text("")
        # in the trainer ranks' bundles (a share of their GPUs): it only runs between the policy's steps
        return self.workers.reference_group(str(path))

    def judge_backend(self):
        """The judge's own engine (started once per run) or the configured endpoint."""
        v = self.cfg.verify
        if v.judge == "none":
            return None
        if self.workers.judge is None:
            from veripo.workers.group import RemoteJudge

            options: dict[str, Any] = dict(v.judge_kwargs)
            if v.judge == "openai":
                options.update(base_url=v.base_url, api_key_env=v.api_key_env)
            self.workers.judge = RemoteJudge(v.judge, v.judge_model, v.judge_max_tokens, options, v.judge_gpus,
                                             self.workers.threads)
        return self.workers.judge

    def consistency_judge(self, cache: Path):
        from verifier.judge import ConsistencyJudge

        backend = self.judge_backend()
        return None if backend is None else ConsistencyJudge(backend, cache=cache)

    def sync_weights(self) -> dict:
        ref = self.workers.trainer.weight_buckets_ref(self.cfg.rollout.weight_sync_bucket_mb)
        return self.workers.rollout.update_weights(ref)

    def write_report(self) -> None:
        """Rewrite report.html; a failure here is reported, never fatal to training."""
        try:
            from veripo.report import write_report
        except ImportError:
            return
        try:
            write_report(self.run_dir)
        except Exception as e:  # noqa: BLE001 - the run matters more than its report
            print(f"veripo: warning: could not write the report: {type(e).__name__}: {e}")

    def close(self) -> None:
        if self.workers is not None:
            try:
                self.workers.close()
            finally:
                self.workers = None
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
