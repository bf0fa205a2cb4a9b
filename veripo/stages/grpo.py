"""The GRPO stage (ALGORITHMS.md §1): prompts -> rollouts -> rewards -> advantages -> update -> sync.

`GRPOLoss` is the loss callable the policy engine runs; `GRPOStage.step()` is one iteration of the
stage and reads as the algorithm. Every rollout goes to ``rollouts.jsonl`` as a `Rollout` record.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from veripo.config import GRPOConfig
from veripo.data import Record
from veripo.data.rollouts import Rollout
from veripo.faults import fault_point


@dataclass(frozen=True)
class GRPOLoss:
    """Clipped policy loss (+ optional KL to the reference) on one micro-batch.

    With one update per rollout batch the old policy is the current one, so ``old_logp`` defaults to
    the detached current log-probs (ratio 1, gradient -A); a batch that carries ``old_logp`` uses it.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    agg: str = "token-mean"
    chunk_size: int | None = None

    def __call__(self, logits, micro, ctx):
        from veripo.algos import aggregate, kl_penalty, policy_loss, token_logprobs

        logp = token_logprobs(logits, micro.input_ids, chunk_size=self.chunk_size)
        old = micro.old_logp if micro.old_logp is not None else logp.detach()
        denom = ctx.global_tokens if self.agg == "token-mean" else ctx.global_batch_size
        loss, metrics = policy_loss(logp, old, micro.advantages, micro.loss_mask, clip_low=self.clip_low,
                                    clip_high=self.clip_high, dual_clip=self.dual_clip, agg=self.agg,
                                    denominator=denom)
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.kl_coef > 0:
            if micro.ref_logp is None:
                raise ValueError("grpo.kl_coef > 0 needs reference log-probs in the batch (ref_logp)")
            kl = kl_penalty(logp, micro.ref_logp, self.kl_kind)
            kl_loss = aggregate(kl, micro.loss_mask, self.agg, denominator=denom)
            loss = loss + self.kl_coef * kl_loss
            metrics["kl"] = float((kl * micro.loss_mask).sum() / micro.loss_mask.sum().clamp(min=1))
        return loss, metrics

    @classmethod
    def from_config(cls, g: GRPOConfig) -> "GRPOLoss":
        return cls(clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip, kl_coef=g.kl_coef,
                   kl_kind=g.kl_kind, agg=g.agg)


def sample_prompts(pool: Sequence[Record], k: int, seed: int, step: int, iteration: int = 0) -> list[Record]:
    """`k` records for `step`, without replacement, deterministic in (seed, iteration, step)."""
    rng = random.Random(f"{seed}:{step}" if iteration == 0 else f"{seed}:{iteration}:{step}")
    return rng.sample(list(pool), min(k, len(pool)))


class GRPOStage:
    """One GRPO stage over `records`, driving the workers; `run()` does `cfg.steps` steps."""

    def __init__(self, cfg: GRPOConfig, workers, prompts, tokenizer, records: Sequence[Record],
                 out_dir: Path, metrics, seed: int, iteration: int = 0, bucket_mb: int = 256, progress: bool = True,
                 sample_every: int = 1):
        self.cfg, self.workers, self.prompts, self.tokenizer = cfg, workers, prompts, tokenizer
        self.records, self.out_dir, self.metrics = list(records), Path(out_dir), metrics
        self.seed, self.iteration, self.bucket_mb = seed, iteration, bucket_mb
        self.progress, self.sample_every = progress, sample_every
        self.loss = GRPOLoss.from_config(cfg)
        self.rollouts_path = self.out_dir / "rollouts.jsonl"

    def run(self, start_step: int = 0, on_step_done=None) -> list[dict]:
        from tqdm import tqdm

        history = []
        bar = tqdm(range(start_step, self.cfg.steps), desc="grpo", disable=not self.progress, unit="step",
                   initial=start_step, total=self.cfg.steps)
        for step in bar:
            m = self.step(step)
            history.append(m)
            bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy_mean']:.2f}",
                            fmt=f"{m['format_mean']:.2f}")
            if on_step_done is not None:
                on_step_done(step, m)
        return history

    def step(self, step: int) -> dict:
        from veripo.algos import grpo_advantages
        from veripo.rollout import GenerationRequest, SamplingConfig

        t0 = time.perf_counter()
        records = sample_prompts(self.records, self.cfg.prompts_per_step, self.seed, step, self.iteration)
        prompts = [self.prompts(r) for r in records]
        requests = [GenerationRequest(prompt_token_ids=p.token_ids, request_id=f"{r.problem_id}") for p, r in zip(prompts, records)]
        sampling = SamplingConfig(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  max_tokens=self.cfg.max_tokens,
                                  seed=self.seed * 100_003 + self.iteration * 10_007 + step)
        samples = self.workers.rollout.generate(requests, sampling, self.cfg.group_size)
        t_rollout = time.perf_counter() - t0
        fault_point("grpo.rollout")

        flat = [(g, rec, p, s) for g, (rec, p, group) in enumerate(zip(records, prompts, samples)) for s in group]
        scores = self.workers.rewards.score([s.text for *_, s in flat], [rec for _, rec, _, _ in flat])
        rewards = self._with_length_bonus(flat, scores)
        import torch

        group_ids = torch.tensor([g for g, *_ in flat])
        adv = grpo_advantages(torch.tensor(rewards, dtype=torch.float64), group_ids,
                              norm_by_std=self.cfg.norm_adv_by_std).float()

        from veripo.stages.common import policy_batch

        batch = policy_batch([p.token_ids for _, _, p, _ in flat], [s.token_ids for *_, s in flat],
                             self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0,
                             advantages=adv.tolist())
        if self.cfg.kl_coef > 0:
            batch = batch.with_fields(ref_logp=self.workers.reference.logprobs(batch))
        t1 = time.perf_counter()
        train_metrics = self.workers.trainer.train_step(batch, self.loss)
        t_train = time.perf_counter() - t1

        t2 = time.perf_counter()
        sync = self.workers.rollout.update_weights(self.workers.trainer.weight_buckets_ref(self.bucket_mb))
        t_sync = time.perf_counter() - t2

        self._write_rollouts(step, flat, scores, rewards, adv.tolist())
        comps = {}
        for sc in scores:
            for k, v in sc.components.items():
                comps.setdefault(k, []).append(v)
        lengths = [len(s.token_ids) for *_, s in flat]
        m = {
            "reward_mean": sum(rewards) / len(rewards),
            **{f"{k}_mean": sum(v) / len(v) for k, v in comps.items()},
            "response_tokens_mean": sum(lengths) / len(lengths),
            "truncated_frac": sum(s.finish_reason == "length" for *_, s in flat) / len(flat),
            "adv_abs_mean": float(adv.abs().mean()),
            **{f"train/{k}": v for k, v in train_metrics.items() if isinstance(v, (int, float))},
            "time_rollout_s": t_rollout, "time_train_s": t_train, "time_sync_s": t_sync,
            "sync_bytes": sync.get("bytes", 0),
        }
        m.setdefault("accuracy_mean", 0.0)
        m.setdefault("format_mean", 0.0)
        self.metrics.log("grpo", step, m)
        if self.sample_every and step % self.sample_every == 0 and self.progress:
            best = max(range(len(flat)), key=lambda i: rewards[i])
            print(f"\n[grpo step {step}] reward={rewards[best]:.2f} sample: {flat[best][3].text[:300]!r}")
        return m

    def _with_length_bonus(self, flat, scores) -> list[float]:
        rewards = [sc.total for sc in scores]
        if self.cfg.length_bonus <= 0:
            return rewards
        from veripo.rewards import extract_think, length_bonus

        groups: dict[int, list[int]] = {}
        for i, (g, *_) in enumerate(flat):
            groups.setdefault(g, []).append(i)
        for idx in groups.values():
            counts = [len(self.tokenizer(extract_think(flat[i][3].text) or "")["input_ids"]) for i in idx]
            correct = [scores[i].components.get("accuracy", 0.0) > 0.5 for i in idx]
            bonus = length_bonus(counts, correct, w=self.cfg.length_bonus, l_min=self.cfg.length_min,
                                 l_max=self.cfg.length_max)
            for i, b in zip(idx, bonus):
                rewards[i] += b
        return rewards

    def _write_rollouts(self, step, flat, scores, rewards, advantages) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        counters: dict[int, int] = {}
        for (g, rec, _, s), sc, r, a in zip(flat, scores, rewards, advantages):
            k = counters.get(g, 0)
            counters[g] = k + 1
            ro = Rollout(rollout_id=f"it{self.iteration}-s{step}-{rec.problem_id}-{k}", problem_id=rec.problem_id,
                         response=s.text, token_ids=tuple(s.token_ids), finish_reason=s.finish_reason,
                         reward=float(r), reward_components=dict(sc.components), advantage=float(a), step=step,
                         iteration=self.iteration, sample_index=k,
                         mean_logprob=(sum(s.logprobs) / len(s.logprobs)) if s.logprobs else None,
                         record=rec.to_dict())
            lines.append(ro.to_json())
        with open(self.rollouts_path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())

