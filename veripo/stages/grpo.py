"""The GRPO stage (docs/algorithms.md §1): prompts -> rollouts -> rewards -> advantages -> update -> sync.

`GRPOStage.run(ctx, out, start_step)` does the stage's steps over its prompt pool (`prompt_pool`: the
train split less the prompts earlier iterations found easy); `GRPOStep.step()` is one step and reads as
the algorithm. `GRPOLoss` is the loss callable the policy engine runs; the advantage estimator, the
policy loss, the KL estimator and the aggregation come from `veripo.algos`' registries by name. Every
rollout goes to ``rollouts.jsonl`` as a `Rollout` record.

Vision runs (``data.use_video``): each prompt carries its clip to the rollout engine, and each trained
sample carries the processor's pixels of the same frames (`PromptBuilder.render`). T-GRPO
(``grpo.temporal``): each video prompt is also rolled out G/2 times on its frames in a shuffled order;
the ordered rollouts get `veripo.algos.temporal_bonus` (alpha when the prompt's ordered accuracy is at
least mu times its shuffled accuracy and the rollout's accuracy > 0.1) before the advantages; only the
ordered rollouts are trained on; the shuffled ones go to ``rollouts_shuffled.jsonl``, never to the
verifier; metrics ``temporal_*``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from veripo.algos import (ADV_ESTIMATORS, POLICY_LOSSES, aggregate, informative_groups, kl_penalty,
                          overlong_penalty, prune_easy, rollout_correction, temporal_bonus, token_logprobs)
from veripo.config import GRPOConfig
from veripo.data import Record
from veripo.data.rollouts import Rollout, append_rollouts, read_rollouts, truncate_rollouts
from veripo.faults import fault_point
from veripo.rewards import extract_think, length_bonus
from veripo.rollout import SamplingConfig
from veripo.run_dir import REFERENCE, ROLLOUTS, SHUFFLED_ROLLOUTS
from veripo.stages.base import StageContext
from veripo.stages.common import policy_batch

# T-GRPO (docs/algorithms.md section 1): alpha is added to ordered rollouts with accuracy > 0.1 when
# mean_acc(ordered) >= mu * mean_acc(shuffled)
TEMPORAL_MU = 0.8
TEMPORAL_ALPHA = 0.3


@dataclass(frozen=True)
class GRPOLoss:
    """The policy loss (by registry name, ``grpo.policy_loss``) + optional KL to the reference, on one
    micro-batch.

    ``old_logp``: a batch that carries it (rollout-mismatch correction or async rollouts compute it with
    the trainer's weights before the update) uses it; otherwise, with one update per rollout batch, the
    old policy is the current one, so it defaults to the detached current log-probs (ratio 1, gradient
    -A). A batch whose ``extras`` hold ``is_weight`` [B, T] (`veripo.algos.rollout_correction`) has its
    per-token loss multiplied by it.

    Denominators are the whole step's (all micro-batches, all ranks), so the micro-batch losses sum to
    the step's loss: tokens for ``token-mean``, sequences for ``seq-mean-*``, sequences times
    `max_len` (``grpo.max_tokens``, the longest a response can be) for ``seq-mean-token-sum-norm``.
    A loss that fixes its own aggregation (GSPO: ``seq-mean-token-mean``) says so in its ``agg`` attribute.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    agg: str = "token-mean"
    chunk_size: int | None = None
    policy_loss: str = "vanilla"
    max_len: int | None = None  # the max response length (for seq-mean-token-sum-norm); None: micro's T

    def denominator(self, agg: str, ctx, micro) -> float:
        """The step-wide denominator of aggregation mode `agg` (see the class docstring)."""
        if agg == "token-mean":
            return ctx.global_tokens
        if agg == "seq-mean-token-sum-norm":
            return ctx.global_batch_size * (self.max_len if self.max_len is not None else micro.loss_mask.shape[-1])
        return ctx.global_batch_size

    def __call__(self, logits, micro, ctx):
        logp = token_logprobs(logits, micro.input_ids, chunk_size=self.chunk_size)
        old = micro.old_logp if micro.old_logp is not None else logp.detach()
        fn = POLICY_LOSSES.get(self.policy_loss)
        agg = getattr(fn, "agg", self.agg)
        loss, metrics = fn(logp, old, micro.advantages, micro.loss_mask, clip_low=self.clip_low,
                           clip_high=self.clip_high, dual_clip=self.dual_clip, agg=agg,
                           denominator=self.denominator(agg, ctx, micro), max_len=self.max_len,
                           token_weights=micro.extras.get(IS_WEIGHT))
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.kl_coef > 0:
            if micro.ref_logp is None:
                raise ValueError("grpo.kl_coef > 0 needs reference log-probs in the batch (ref_logp)")
            kl = kl_penalty(logp, micro.ref_logp, self.kl_kind)
            kl_loss = aggregate(kl, micro.loss_mask, self.agg, denominator=self.denominator(self.agg, ctx, micro),
                                max_len=self.max_len)
            loss = loss + self.kl_coef * kl_loss
            metrics["kl"] = float((kl * micro.loss_mask).sum() / micro.loss_mask.sum().clamp(min=1))
        return loss, metrics

    @classmethod
    def from_config(cls, g: GRPOConfig) -> "GRPOLoss":
        return cls(clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip, kl_coef=g.kl_coef,
                   kl_kind=g.kl_kind, agg=g.agg, policy_loss=g.policy_loss, max_len=g.max_tokens)


IS_WEIGHT = "is_weight"  # PolicyBatch.extras key of the rollout-mismatch weights [B, T]


def adv_estimator_name(g: GRPOConfig) -> str:
    """``grpo.adv_estimator``, except that ``grpo`` with ``norm_adv_by_std: false`` is Dr. GRPO."""
    return "drgrpo" if g.adv_estimator == "grpo" and not g.norm_adv_by_std else g.adv_estimator


def dynamic_sampling(draw_round: Callable[[int], "Sequence[bool] | None"], want: int,
                     max_rounds: int) -> tuple[list[tuple[int, int]], int]:
    """DAPO's dynamic sampling loop (docs/algorithms.md §6.4), apart from the models.

    ``draw_round(r)`` generates round r and returns, per group of that round, whether it is informative
    (its rewards are not all equal), or None when there are no prompts left to draw. Rounds are drawn
    until `want` informative groups are found or `max_rounds` rounds were drawn.

    Returns:
        ``(kept, rounds)``: ``(round, group)`` pairs to train on, the first `want` informative groups in
        draw order, then, when the rounds ran out first, uninformative ones in draw order to fill up to
        `want` (they carry zero advantage; the batch keeps its size, which multi-rank training needs);
        and the number of rounds drawn.
    """
    informative: list[tuple[int, int]] = []
    other: list[tuple[int, int]] = []
    rounds = 0
    for r in range(max_rounds):
        flags = draw_round(r)
        if flags is None:
            break
        rounds += 1
        for i, f in enumerate(flags):
            (informative if f and len(informative) < want else other).append((r, i))
        if len(informative) >= want:
            break
    return informative + other[:max(0, want - len(informative))], rounds


@dataclass
class _Round:
    """One round of rollouts of a step: ``flat`` = (group, record, prompt, sample) per rollout."""

    flat: list
    shuffled: list
    scores: list
    shuffled_scores: list
    rewards: list[float]
    bonus: list[float]
    temporal_metrics: dict
    overlong: list[float]
    n_groups: int


def sample_prompts(pool: Sequence[Record], k: int, seed: int, step: int, iteration: int = 0,
                   round_: int = 0) -> list[Record]:
    """`k` records for `step`, without replacement, deterministic in (seed, iteration, step, round)."""
    key = f"{seed}:{step}" if iteration == 0 else f"{seed}:{iteration}:{step}"
    rng = random.Random(key if round_ == 0 else f"{key}:round{round_}")
    return rng.sample(list(pool), min(k, len(pool)))


def prompt_pool(ctx: StageContext) -> list[Record]:
    """The GRPO prompt pool of iteration ``ctx.iteration`` (VerIPO's easy-sample pruning, docs/algorithms.md
    §1): the train split, minus the prompts each earlier iteration found easy (its latest group of G
    rollouts all accurate), each dropped with probability ``prune.p``; seeded per iteration, and recomputed
    from the rollout files, so a resumed run prunes the same prompts."""
    cfg = ctx.cfg
    pool = list(ctx.data.train)
    if not cfg.prune.enabled:
        return pool
    for j in range(ctx.iteration):
        path = ctx.run.rollouts(j)
        if not path.is_file():
            continue
        latest: dict[str, tuple] = {}
        for r in read_rollouts(path, skip_bad=True):
            acc = r.reward_components.get("accuracy", 0.0) >= cfg.prune.accuracy_threshold
            key = (r.iteration, r.step)
            prev = latest.get(r.problem_id)
            if prev is None or prev[0] < key:
                latest[r.problem_id] = (key, [acc])
            elif prev[0] == key:
                prev[1].append(acc)
        ids = [r.problem_id for r in pool]
        flags = [pid in latest and all(latest[pid][1]) for pid in ids]
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + j)
        kept = set(prune_easy(ids, flags, p=cfg.prune.p, generator=gen))
        new_pool = [r for r in pool if r.problem_id in kept]
        if not new_pool:
            print(f"veripo: pruning after iteration {j} would leave no prompts; keeping the pool")
            continue
        if len(new_pool) < len(pool):
            print(f"veripo: iteration {j + 1}: pruned {len(pool) - len(new_pool)} easy prompts ({len(new_pool)} left)")
        pool = new_pool
    return pool


class GRPOStage:
    """``grpo.steps`` GRPO steps over the iteration's prompt pool; a KL reference (``grpo.kl_coef`` > 0) is a
    frozen export of the policy at the stage's start, loaded on its own ranks for the stage."""

    name = "grpo"
    trains = True

    def run(self, ctx: StageContext, out: Path, start_step: int) -> dict:
        g, it = ctx.cfg.grpo, ctx.iteration
        if g.kl_coef > 0:
            ctx.workers.start_reference(str(_export_reference(ctx, out)))
        lr = g.lr if it == 0 or g.lr_after_first is None else g.lr_after_first
        ctx.progress.begin(ctx.stage_id, out, start_step, lr, 0, g.steps)
        truncate_rollouts(out / ROLLOUTS, from_step=start_step)
        truncate_rollouts(out / SHUFFLED_ROLLOUTS, from_step=start_step)  # T-GRPO's, never verified
        ctx.metrics.begin(it, step_offset=it * g.steps)
        pool = prompt_pool(ctx)
        steps = GRPOStep(ctx, out, pool)
        bar = tqdm(range(start_step, g.steps), desc="grpo", disable=not ctx.cfg.logging.progress, unit="step",
                   initial=start_step, total=g.steps)
        for step in bar:
            m = steps.step(step)
            bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy_mean']:.2f}",
                            fmt=f"{m['format_mean']:.2f}")
            ctx.progress.step_done(ctx.stage_id, out, step, g.steps)
        ctx.workers.close_reference()
        ctx.metrics.begin(it)
        return {"steps_done": g.steps, "pool": len(pool), "rollouts": str(out / ROLLOUTS)}


def _export_reference(ctx: StageContext, out: Path) -> Path:
    """A frozen copy of the current policy (the KL anchor), exported once per stage."""
    path = out / REFERENCE
    if not (path / ".complete").is_file():
        ctx.workers.trainer.export_hf(str(path))
        (path / ".complete").write_text("")
    return path


class GRPOStep:
    """One GRPO step at a time over `records` (the stage's pool), for the stage folder `out`."""

    def __init__(self, ctx: StageContext, out: Path, records: Sequence[Record]):
        self.ctx, self.cfg, self.records = ctx, ctx.cfg.grpo, list(records)
        self.workers, self.prompts, self.tokenizer, self.metrics = ctx.workers, ctx.prompts, ctx.tokenizer, ctx.metrics
        self.seed, self.iteration = ctx.cfg.seed, ctx.iteration
        self.loss = GRPOLoss.from_config(self.cfg)
        self.advantages = ADV_ESTIMATORS.get(adv_estimator_name(self.cfg))
        self.rollouts_path = Path(out) / ROLLOUTS
        self.shuffled_path = Path(out) / SHUFFLED_ROLLOUTS  # T-GRPO's shuffled-frame rollouts
        self._warned_temporal = False

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        g = self.cfg
        rounds: list[_Round] = []
        used: set[str] = set()

        def draw(r: int):
            pool = self.records if r == 0 else [rec for rec in self.records if rec.problem_id not in used]
            if not pool:
                return None
            records = sample_prompts(pool, g.prompts_per_step, self.seed, step, self.iteration, round_=r)
            used.update(rec.problem_id for rec in records)
            rnd = self._round(step, r, records)
            rounds.append(rnd)
            _, flags = informative_groups(rnd.rewards, [k for k, *_ in rnd.flat])
            return flags.tolist()

        kept, n_rounds = dynamic_sampling(draw, g.prompts_per_step, g.max_rounds if g.dynamic_sampling else 1)
        if not g.dynamic_sampling:
            kept = [(0, k) for k in range(rounds[0].n_groups)]
        t_rollout = time.perf_counter() - t0
        fault_point("grpo.rollout")

        # the trained groups, renumbered 0..K-1 in kept order
        new_id = {key: k for k, key in enumerate(kept)}
        rows = [(r, i) for r, rnd in enumerate(rounds) for i, (k, *_) in enumerate(rnd.flat) if (r, k) in new_id]
        rows.sort(key=lambda ri: new_id[(ri[0], rounds[ri[0]].flat[ri[1]][0])])  # stable: keeps a group's order
        flat = [(new_id[(r, rounds[r].flat[i][0])], *rounds[r].flat[i][1:]) for r, i in rows]
        scores = [rounds[r].scores[i] for r, i in rows]
        rewards = [rounds[r].rewards[i] for r, i in rows]
        bonus = [rounds[r].bonus[i] for r, i in rows]
        shuffled = [(new_id[(r, k)], *rest) for r, rnd in enumerate(rounds) for k, *rest in rnd.shuffled
                    if (r, k) in new_id]
        shuffled_scores = [sc for r, rnd in enumerate(rounds) for (k, *_), sc in zip(rnd.shuffled, rnd.shuffled_scores)
                           if (r, k) in new_id]
        temporal_metrics = rounds[0].temporal_metrics
        group_ids = torch.tensor([k for k, *_ in flat])
        adv = self.advantages(torch.tensor(rewards, dtype=torch.float64), group_ids).float()

        # only the ordered-frame rollouts are trained on; a video sample carries its frames' pixels
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        response_ids, adv, n_placeholder = self._trainable_responses(flat, adv, pad_id)
        batch = policy_batch([p.token_ids for _, _, p, _ in flat], response_ids, pad_id,
                             advantages=adv.tolist(), visuals=[p.visual for _, _, p, _ in flat])
        if g.kl_coef > 0:
            batch = batch.with_fields(ref_logp=self.workers.reference.logprobs(batch))
        mismatch: dict[str, float] = {}
        if g.rollout_correction is not None:
            batch, mismatch = self._correct_mismatch(batch, flat, response_ids)
        t1 = time.perf_counter()
        train_metrics = self.workers.trainer.train_step(batch, self.loss)
        t_train = time.perf_counter() - t1

        t2 = time.perf_counter()
        bucket_mb = self.ctx.cfg.rollout.weight_sync_bucket_mb
        sync = self.workers.rollout.update_weights(self.workers.trainer.weight_buckets_ref(bucket_mb))
        t_sync = time.perf_counter() - t2

        temporal_groups = {k for k, *_ in shuffled}
        self._write_rollouts(step, flat, scores, rewards, adv.tolist(), bonus, temporal_groups)
        self._write_untrained(step, rounds, new_id)
        if shuffled:
            self._write_shuffled(step, shuffled, shuffled_scores)
        comps = {}
        for sc in scores:
            for k, v in sc.components.items():
                comps.setdefault(k, []).append(v)
        lengths = [len(s.token_ids) for *_, s in flat]
        n_seen = sum(rnd.n_groups for rnd in rounds)
        n_informative = sum(1 for rnd in rounds for f in informative_groups(
            rnd.rewards, [k for k, *_ in rnd.flat])[1].tolist() if f)
        m = {
            "reward_mean": sum(rewards) / len(rewards),
            **{f"{k}_mean": sum(v) / len(v) for k, v in comps.items()},
            "response_tokens_mean": sum(lengths) / len(lengths),
            "truncated_frac": sum(s.finish_reason == "length" for *_, s in flat) / len(flat),
            "adv_abs_mean": float(adv.abs().mean()),
            **temporal_metrics,
            **({"placeholder_responses": n_placeholder} if n_placeholder is not None else {}),
            **({"overlong_penalty_mean": sum(rounds[r].overlong[i] for r, i in rows) / len(rows)}
               if g.overlong_buffer else {}),
            **({"ds_rounds": n_rounds, "ds_groups_seen": n_seen, "ds_informative_groups": n_informative,
                "ds_filled_groups": max(0, len(kept) - n_informative)} if g.dynamic_sampling else {}),
            **mismatch,
            **{f"train/{k}": v for k, v in train_metrics.items() if isinstance(v, (int, float))},
            "time_rollout_s": t_rollout, "time_train_s": t_train, "time_sync_s": t_sync,
            "sync_bytes": sync.get("bytes", 0),
        }
        m.setdefault("accuracy_mean", 0.0)
        m.setdefault("format_mean", 0.0)
        self.metrics.log("grpo", step, m)
        log = self.ctx.cfg.logging
        if log.sample_every and step % log.sample_every == 0 and log.progress:
            best = max(range(len(flat)), key=lambda i: rewards[i])
            print(f"\n[grpo step {step}] reward={rewards[best]:.2f} sample: {flat[best][3].text[:300]!r}")
        return m

    def _round(self, step: int, r: int, records: list[Record]) -> _Round:
        """Round `r` of `step`: roll out `records` (G each; plus T-GRPO's shuffled ones), score them and
        shape the rewards (length bonus, temporal bonus, DAPO overlong penalty). Round 0 is the whole step
        without dynamic sampling; later rounds draw other prompts with their own sampling seeds."""
        g = self.cfg
        prompts = [self.prompts.render(rec) for rec in records]  # with its clip for a video record of a vision run
        sampling = SamplingConfig(temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens,
                                  seed=self.seed * 100_003 + self.iteration * 10_007 + step + r * 1_000_003)
        samples = self.workers.rollout.generate([p.request() for p in prompts], sampling, g.group_size)
        shuffled = self._shuffled_rollouts(step, prompts, sampling) if g.temporal else []
        flat = [(k, rec, p, s) for k, (rec, p, group) in enumerate(zip(records, prompts, samples)) for s in group]
        _check_prompt_ids(flat)
        both = flat + shuffled
        all_scores = self.workers.rewards.score([s.text for *_, s in both], [rec for _, rec, _, _ in both])
        scores, shuffled_scores = all_scores[:len(flat)], all_scores[len(flat):]
        rewards = self._with_length_bonus(flat, scores)
        bonus, temporal_metrics = self._temporal_bonus(flat, scores, shuffled, shuffled_scores)
        overlong = overlong_penalty([len(s.token_ids) for *_, s in flat], g.max_tokens, g.overlong_buffer,
                                    g.overlong_penalty).tolist()
        rewards = [x + b + o for x, b, o in zip(rewards, bonus, overlong)]
        return _Round(flat, shuffled, scores, shuffled_scores, rewards, bonus, temporal_metrics, overlong,
                      len(records))

    def _correct_mismatch(self, batch, flat, response_ids):
        """The trainer's log-probs before the update (``old_logp``) against the engine's log-probs of the
        sampled tokens: `veripo.algos.rollout_correction`'s weights go to the batch as ``extras["is_weight"]``;
        returns the batch and the step's mismatch metrics. A response whose placeholder tokens were padded
        out (`_trainable_responses`: advantage 0) is not what the engine sampled: it counts as ratio 1."""
        g = self.cfg
        old = self.workers.trainer.logprobs(batch)
        roll = torch.zeros_like(old)
        for b, (_, rec, p, s) in enumerate(flat):
            if len(s.logprobs) != len(s.token_ids):
                raise ValueError(f"grpo.rollout_correction={g.rollout_correction} needs the engine's log-prob of "
                                 f"every sampled token, but a rollout of {rec.problem_id!r} has {len(s.logprobs)} for "
                                 f"{len(s.token_ids)} tokens. Fix: keep the engine's log-probs on (rollout.logprobs_mode"
                                 " processed or raw), or set grpo.rollout_correction=null")
            start = len(p.token_ids)
            if list(response_ids[b]) != list(s.token_ids):
                roll[b] = old[b]
                continue
            roll[b, start:start + len(s.logprobs)] = torch.tensor(s.logprobs, dtype=roll.dtype)
        w, metrics = rollout_correction(old, roll, batch.loss_mask, g.rollout_correction,
                                        g.rollout_correction_level, g.rollout_correction_c)
        return batch.with_fields(old_logp=old, extras={**batch.extras, IS_WEIGHT: w.float()}), metrics

    def _write_untrained(self, step, rounds: list[_Round], trained: dict) -> None:
        """Dynamic sampling's dropped groups still go to ``rollouts.jsonl`` (the verifier and easy-sample
        pruning read them), with advantage 0 and ``trained: false``."""
        rows = []
        for r, rnd in enumerate(rounds):
            counters: dict[int, int] = {}
            for (k, rec, _, s), sc, rew in zip(rnd.flat, rnd.scores, rnd.rewards):
                if (r, k) in trained:
                    continue
                j = counters.get(k, 0)
                counters[k] = j + 1
                rows.append(Rollout(rollout_id=f"it{self.iteration}-s{step}-{rec.problem_id}-{j}",
                                    problem_id=rec.problem_id, response=s.text, token_ids=tuple(s.token_ids),
                                    finish_reason=s.finish_reason, reward=float(rew),
                                    reward_components=dict(sc.components), advantage=0.0, step=step,
                                    iteration=self.iteration, sample_index=j, mean_logprob=_mean_logprob(s),
                                    record=rec.to_dict(), extra={"trained": False, "round": r}))
        if rows:
            append_rollouts(self.rollouts_path, rows)

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

    # -- T-GRPO (docs/algorithms.md section 1, temporal variant) ---------------------------------------------
    def _shuffled_rollouts(self, step: int, prompts: list, sampling) -> list[tuple]:
        """G/2 rollouts of every video prompt on its frames in a shuffled order (deterministic in seed,
        iteration, step and record), as ``(group, record, prompt, sample)``; never trained on."""
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
        append_rollouts(self.rollouts_path, rows)

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
        append_rollouts(self.shuffled_path, rows)


def _mean_logprob(s) -> float | None:
    return (sum(s.logprobs) / len(s.logprobs)) if s.logprobs else None


def _check_prompt_ids(flat) -> None:
    """A video prompt is trained on the processor's expansion of its placeholders; the engine must have
    sampled from the same tokens, else the batch would not be what the rollout saw."""
    for _, rec, p, s in flat:
        if p.video is not None and s.prompt_token_ids and list(s.prompt_token_ids) != list(p.token_ids):
            raise RuntimeError(f"record {rec.problem_id!r}: the rollout engine saw a {len(s.prompt_token_ids)}-token "
                               f"prompt, the trainer's processor made {len(p.token_ids)} tokens of the same prompt "
                               "and frames. Fix: the engine and the trainer must load the same model folder "
                               "(processor and chat template)")
