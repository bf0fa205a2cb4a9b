"""The GRPO stage (ALGORITHMS.md §1): prompts -> rollouts -> rewards -> advantages -> update -> sync.

`GRPOLoss` is the loss callable the policy engine runs; `GRPOStage.step()` is one iteration of the
stage and reads as the algorithm. Every rollout goes to ``rollouts.jsonl`` as a `Rollout` record.

Vision runs (``data.use_video``): each prompt carries its clip to the rollout engine, and each trained
sample carries the processor's pixels of the same frames (`PromptBuilder.render`). T-GRPO
(``grpo.temporal``): each video prompt is also rolled out G/2 times on its frames in a shuffled order;
the ordered rollouts get `veripo.algos.temporal_bonus` (alpha when the prompt's ordered accuracy is at
least mu times its shuffled accuracy and the rollout's accuracy > 0.1) before the advantages; only the
ordered rollouts are trained on; the shuffled ones go to ``rollouts_shuffled.jsonl``, never to the
verifier; metrics ``temporal_*``.
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

# T-GRPO (ALGORITHMS.md section 1): alpha is added to ordered rollouts with accuracy > 0.1 when
# mean_acc(ordered) >= mu * mean_acc(shuffled)
TEMPORAL_MU = 0.8
TEMPORAL_ALPHA = 0.3


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
        self.shuffled_path = self.out_dir / "rollouts_shuffled.jsonl"  # T-GRPO's shuffled-frame rollouts
        self._warned_temporal = False

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
        import torch

        from veripo.algos import grpo_advantages
        from veripo.rollout import SamplingConfig
        from veripo.stages.common import policy_batch

        t0 = time.perf_counter()
        records = sample_prompts(self.records, self.cfg.prompts_per_step, self.seed, step, self.iteration)
        prompts = [self.prompts.render(r) for r in records]  # with its clip for a video record of a vision run
        sampling = SamplingConfig(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  max_tokens=self.cfg.max_tokens,
                                  seed=self.seed * 100_003 + self.iteration * 10_007 + step)
        samples = self.workers.rollout.generate([p.request() for p in prompts], sampling, self.cfg.group_size)
        shuffled = self._shuffled_rollouts(step, prompts, sampling) if self.cfg.temporal else []
        t_rollout = time.perf_counter() - t0
        fault_point("grpo.rollout")

        flat = [(g, rec, p, s) for g, (rec, p, group) in enumerate(zip(records, prompts, samples)) for s in group]
        _check_prompt_ids(flat)
        both = flat + shuffled
        all_scores = self.workers.rewards.score([s.text for *_, s in both], [rec for _, rec, _, _ in both])
        scores, shuffled_scores = all_scores[:len(flat)], all_scores[len(flat):]
        rewards = self._with_length_bonus(flat, scores)
        bonus, temporal_metrics = self._temporal_bonus(flat, scores, shuffled, shuffled_scores)
        rewards = [r + b for r, b in zip(rewards, bonus)]
        group_ids = torch.tensor([g for g, *_ in flat])
        adv = grpo_advantages(torch.tensor(rewards, dtype=torch.float64), group_ids,
                              norm_by_std=self.cfg.norm_adv_by_std).float()

        # only the ordered-frame rollouts are trained on; a video sample carries its frames' pixels
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        response_ids, adv, n_placeholder = self._trainable_responses(flat, adv, pad_id)
        batch = policy_batch([p.token_ids for _, _, p, _ in flat], response_ids, pad_id,
                             advantages=adv.tolist(), visuals=[p.visual for _, _, p, _ in flat])
        if self.cfg.kl_coef > 0:
            batch = batch.with_fields(ref_logp=self.workers.reference.logprobs(batch))
        t1 = time.perf_counter()
        train_metrics = self.workers.trainer.train_step(batch, self.loss)
        t_train = time.perf_counter() - t1

        t2 = time.perf_counter()
        sync = self.workers.rollout.update_weights(self.workers.trainer.weight_buckets_ref(self.bucket_mb))
        t_sync = time.perf_counter() - t2

        temporal_groups = {g for g, *_ in shuffled}
        self._write_rollouts(step, flat, scores, rewards, adv.tolist(), bonus, temporal_groups)
        if shuffled:
            self._write_shuffled(step, shuffled, shuffled_scores)
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
            **temporal_metrics,
            **({"placeholder_responses": n_placeholder} if n_placeholder is not None else {}),
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

    def _trainable_responses(self, flat, adv, pad_id: int):
        """The response ids to train on. In a vision batch, a response holding a frame or image placeholder
        token (a random or broken model samples one now and then) would be read by the trainer as one more
        frame slot and fail the forward: it trains with advantage 0, the placeholders replaced by padding.
        Returns the ids, the advantages and how many responses that hit (None outside vision batches)."""
        ids = [list(s.token_ids) for *_, s in flat]
        if not any(p.visual for _, _, p, _ in flat):
            return ids, adv, None
        bad = self.prompts.placeholder_ids
        adv, hit = adv.clone(), 0
        for i, row in enumerate(ids):
            if bad.intersection(row):
                ids[i] = [pad_id if t in bad else t for t in row]
                adv[i] = 0.0
                hit += 1
        return ids, adv, hit

    # -- T-GRPO (ALGORITHMS.md section 1, temporal variant) ---------------------------------------------
    def _shuffled_rollouts(self, step: int, prompts: list, sampling) -> list[tuple]:
        """G/2 rollouts of every video prompt on its frames in a shuffled order (deterministic in seed,
        iteration, step and record), as ``(group, record, prompt, sample)``; never trained on."""
        import dataclasses

        idx = [g for g, p in enumerate(prompts) if p.video is not None]
        if not idx:
            if not self._warned_temporal:
                print("veripo: grpo.temporal=true but no prompt carries a video (data.use_video=false or no "
                      "video records): T-GRPO adds nothing")
                self._warned_temporal = True
            return []
        G = self.cfg.group_size
        shuffled = [self.prompts.render(prompts[g].record, shuffle=True,
                                        seed=f"{self.seed}:{self.iteration}:{step}:{prompts[g].record.problem_id}")
                    for g in idx]
        # own per-sample seeds, after the ordered rollouts' (seed + i * G + j)
        sh_sampling = dataclasses.replace(sampling, seed=sampling.seed + len(prompts) * G)
        groups = self.workers.rollout.generate([p.request(f"{p.record.problem_id}#shuffled") for p in shuffled],
                                               sh_sampling, max(1, G // 2))
        return [(g, p.record, p, s) for g, p, group in zip(idx, shuffled, groups) for s in group]

    def _temporal_bonus(self, flat, scores, shuffled, shuffled_scores) -> tuple[list[float], dict]:
        """`veripo.algos.temporal_bonus` for the ordered rollouts, and the step's temporal metrics."""
        if not shuffled:
            return [0.0] * len(flat), {}
        import torch

        from veripo.algos import temporal_bonus

        acc_o = torch.tensor([sc.components.get("accuracy", 0.0) for sc in scores], dtype=torch.float64)
        acc_s = torch.tensor([sc.components.get("accuracy", 0.0) for sc in shuffled_scores], dtype=torch.float64)
        ids_o = torch.tensor([g for g, *_ in flat])
        ids_s = torch.tensor([g for g, *_ in shuffled])
        bonus = temporal_bonus(acc_o, acc_s, ids_o, ids_s, mu=TEMPORAL_MU, alpha=TEMPORAL_ALPHA)
        video = torch.isin(ids_o, ids_s)
        groups = ids_s.unique().tolist()
        passed = [float(acc_o[ids_o == g].mean() >= TEMPORAL_MU * acc_s[ids_s == g].mean()) for g in groups]
        metrics = {
            "temporal_acc_ordered": float(acc_o[video].mean()),
            "temporal_acc_shuffled": float(acc_s.mean()),
            "temporal_ratio": sum(passed) / len(passed),  # video prompts with acc(ordered) >= mu * acc(shuffled)
            "temporal_bonus_applied": float((bonus[video] > 0).double().mean()),  # ordered video rollouts given alpha
            "temporal_bonus_mean": float(bonus[video].mean()),
        }
        return bonus.tolist(), metrics

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

    def _write_rollouts(self, step, flat, scores, rewards, advantages, bonus, temporal_groups) -> None:
        """The trained (ordered-frame) rollouts to ``rollouts.jsonl``; under T-GRPO a video prompt's carry
        ``frames: "ordered"`` and their bonus as ``reward_components["temporal"]``."""
        rows = []
        counters: dict[int, int] = {}
        for (g, rec, _, s), sc, r, a, b in zip(flat, scores, rewards, advantages, bonus):
            k = counters.get(g, 0)
            counters[g] = k + 1
            comps, extra = dict(sc.components), {}
            if g in temporal_groups:
                comps["temporal"] = float(b)
                extra["frames"] = "ordered"
            rows.append(Rollout(rollout_id=f"it{self.iteration}-s{step}-{rec.problem_id}-{k}",
                                problem_id=rec.problem_id, response=s.text, token_ids=tuple(s.token_ids),
                                finish_reason=s.finish_reason, reward=float(r), reward_components=comps,
                                advantage=float(a), step=step, iteration=self.iteration, sample_index=k,
                                mean_logprob=_mean_logprob(s), record=rec.to_dict(), extra=extra))
        _append(self.rollouts_path, rows)

    def _write_shuffled(self, step, shuffled, scores) -> None:
        """T-GRPO's shuffled-frame rollouts to ``rollouts_shuffled.jsonl`` (``frames: "shuffled"`` and the
        ``frame_order``, no advantage): for the report; the verifier reads ``rollouts.jsonl`` only, so no
        pair is built from them."""
        rows = []
        counters: dict[int, int] = {}
        for (g, rec, p, s), sc in zip(shuffled, scores):
            k = counters.get(g, 0)
            counters[g] = k + 1
            rows.append(Rollout(rollout_id=f"it{self.iteration}-s{step}-{rec.problem_id}-shuffled{k}",
                                problem_id=rec.problem_id, response=s.text, token_ids=tuple(s.token_ids),
                                finish_reason=s.finish_reason, reward=float(sc.total),
                                reward_components=dict(sc.components), advantage=None, step=step,
                                iteration=self.iteration, sample_index=k, mean_logprob=_mean_logprob(s),
                                record=rec.to_dict(), extra={"frames": "shuffled", "frame_order": list(p.frame_order)}))
        _append(self.shuffled_path, rows)


def _mean_logprob(s) -> float | None:
    return (sum(s.logprobs) / len(s.logprobs)) if s.logprobs else None


def _append(path: Path, rows: list[Rollout]) -> None:
    """Append rollouts to a JSONL file, flushed and fsynced (a torn last line is dropped on resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(r.to_json() for r in rows) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _check_prompt_ids(flat) -> None:
    """A video prompt is trained on the processor's expansion of its placeholders; the engine must have
    sampled from the same tokens, else the batch would not be what the rollout saw."""
    for _, rec, p, s in flat:
        if p.video is not None and s.prompt_token_ids and list(s.prompt_token_ids) != list(p.token_ids):
            raise RuntimeError(f"record {rec.problem_id!r}: the rollout engine saw a {len(s.prompt_token_ids)}-token "
                               f"prompt, the trainer's processor made {len(p.token_ids)} tokens of the same prompt "
                               "and frames. Fix: the engine and the trainer must load the same model folder "
                               "(processor and chat template)")
