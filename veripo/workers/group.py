"""Ray launch: the trainer group (N ranks), the rollout group and an optional reward-actor pool.

`launch_workers` starts (or joins) a Ray cluster and wraps the plain classes with ``ray.remote`` here.
The groups hide the fan-out: a batch is split across trainer ranks and prompts across rollout
engines; weights go from trainer rank 0 to every engine through Ray's object store in buckets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from veripo.workers.plain import JudgeWorker, RewardScorer, RolloutWorker, TrainerWorker


def init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
    ray.init(**kwargs)


class TrainerGroup:
    """N `TrainerWorker` ranks as Ray actors; a call fans out and returns rank 0's result."""

    def __init__(self, train_cfg, model_path: str, world_size: int, cpus_per_actor: float, threads: int | None):
        import ray

        from veripo.train.dist import free_port

        port = free_port()
        cls = ray.remote(TrainerWorker).options(num_cpus=cpus_per_actor)
        self.workers = [cls.remote(train_cfg, model_path, rank, world_size, "127.0.0.1", port, threads)
                        for rank in range(world_size)]
        self.world_size = world_size

    def _shards(self, batch) -> list:
        if self.world_size == 1:
            return [batch]
        B = batch.input_ids.shape[0]
        if B % self.world_size:
            raise ValueError(f"batch of {B} sequences does not split over {self.world_size} trainer ranks. "
                             "Fix: make prompts_per_step * group_size a multiple of ray.trainer_workers")
        per = B // self.world_size
        return [batch.slice(r * per, (r + 1) * per) for r in range(self.world_size)]

    def _all(self, method: str, *args) -> list:
        import ray

        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def train_step(self, batch, loss_fn) -> dict:
        import ray

        from veripo.faults import fault_point

        refs = [w.train_step.remote(shard, loss_fn) for w, shard in zip(self.workers, self._shards(batch))]
        fault_point("train.step")
        return ray.get(refs)[0]

    def logprobs(self, batch):
        import ray
        import torch

        parts = ray.get([w.logprobs.remote(s) for w, s in zip(self.workers, self._shards(batch))])
        return torch.cat(parts, dim=0)

    def set_lr(self, lr: float, warmup_steps: int = 0, total_steps: int | None = None) -> None:
        self._all("set_lr", lr, warmup_steps, total_steps)

    def weight_buckets_ref(self, bucket_mb: int, dtype: str | None = None):
        """An object ref to rank 0's buckets (all ranks take part in gathering the shards)."""
        import ray

        refs = [w.weight_buckets.remote(bucket_mb, dtype) for w in self.workers]
        ray.wait(refs, num_returns=len(refs))
        return refs[0]

    def save_checkpoint(self, path: str) -> None:
        self._all("save_checkpoint", path)

    def load_checkpoint(self, path: str) -> None:
        self._all("load_checkpoint", path)

    def export_hf(self, path: str) -> None:
        self._all("export_hf", path)


class RolloutGroup:
    """`RolloutWorker` engines as Ray actors; prompts are split across them, results kept in order."""

    def __init__(self, rollout_cfg, model_path: str, n_workers: int, cpus_per_actor: float, threads: int | None):
        import ray

        cls = ray.remote(RolloutWorker).options(num_cpus=cpus_per_actor)
        self.workers = [cls.remote(rollout_cfg, model_path, threads) for _ in range(n_workers)]

    def generate(self, requests: Sequence, sampling, n: int) -> list:
        import ray

        k = len(self.workers)
        chunks = [list(requests[i::k]) for i in range(k)]
        results = ray.get([w.generate.remote(c, sampling, n) for w, c in zip(self.workers, chunks) if c])
        out: list = [None] * len(requests)
        for i, res in enumerate(results):
            out[i::k] = res
        return out

    def update_weights(self, buckets_ref) -> dict:
        import ray

        infos = ray.get([w.update_weights.remote(buckets_ref) for w in self.workers])
        return infos[0]

    def verify_weights(self, buckets_ref) -> list[str]:
        """Mismatching weight names across all engines (empty: every engine holds exactly these weights)."""
        import ray

        return sorted({n for bad in ray.get([w.verify_weights.remote(buckets_ref) for w in self.workers]) for n in bad})

    def close(self) -> None:
        import ray

        ray.get([w.close.remote() for w in self.workers])


class RewardPool:
    """Rule rewards in the driver (reward_workers=0) or spread over Ray actors."""

    def __init__(self, weights: dict[str, float], n_workers: int):
        self.local = RewardScorer(weights) if n_workers == 0 else None
        self.actors = []
        if n_workers:
            import ray

            cls = ray.remote(RewardScorer).options(num_cpus=0)
            self.actors = [cls.remote(weights) for _ in range(n_workers)]

    def score(self, responses: Sequence[str], records: Sequence[Any]) -> list:
        if self.local is not None:
            return self.local.score(responses, records)
        import ray

        k = len(self.actors)
        parts = ray.get([a.score.remote(list(responses[i::k]), list(records[i::k])) for i, a in enumerate(self.actors)])
        out: list = [None] * len(responses)
        for i, part in enumerate(parts):
            out[i::k] = part
        return out


class RemoteJudge:
    """A `verifier.judge.JudgeBackend` whose engine is a `JudgeWorker` actor (the judge's own engine,
    `gpus` GPUs of it; 0 on CPU, where it only runs between the policy's steps)."""

    def __init__(self, backend: str, model: str | None, max_tokens: int, options: dict | None = None,
                 gpus: float = 0.0, threads: int | None = None):
        import ray

        cls = ray.remote(JudgeWorker).options(num_cpus=0, num_gpus=gpus)
        self.actor = cls.remote(backend, model, max_tokens, options, threads)
        info = ray.get(self.actor.info.remote())
        self.judge_id, self.supports_prefill = info["judge_id"], info["supports_prefill"]
        self.workers = [self.actor]

    def judge_batch(self, requests: list) -> list[str]:
        import ray

        return ray.get(self.actor.judge_batch.remote(requests))


@dataclass
class Workers:
    trainer: TrainerGroup
    rollout: RolloutGroup
    rewards: RewardPool
    cpus_per_actor: float = 1.0
    threads: int | None = None
    reference: TrainerGroup | None = None  # frozen policy for KL terms, made by the stage that needs it
    judge: RemoteJudge | None = None  # the verifier's judge engine, started by the first stage that asks

    def close_reference(self) -> None:
        import ray

        if self.reference is not None:
            for actor in self.reference.workers:
                ray.kill(actor)
            self.reference = None

    def close(self) -> None:
        """Shut the engines down and end every actor, so their memory is free for what runs next."""
        import ray

        try:
            self.rollout.close()
        finally:
            groups = [self.trainer, self.rollout] + [g for g in (self.reference, self.judge) if g is not None]
            for actor in [w for g in groups for w in g.workers] + list(self.rewards.actors):
                ray.kill(actor)


def launch_workers(cfg, model_path: str) -> Workers:
    """Start Ray and the run's actors. CPUs are shared fractionally when the cluster has fewer than actors."""
    import ray

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    total = ray.cluster_resources().get("CPU", 1.0)
    n_actors = cfg.ray.trainer_workers + cfg.ray.rollout_workers
    per = min(1.0, total / n_actors)
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, int(total))
    trainer = TrainerGroup(cfg.train, model_path, cfg.ray.trainer_workers, per, threads)
    rollout = RolloutGroup(cfg.rollout, model_path, cfg.ray.rollout_workers, per, threads)
    return Workers(trainer=trainer, rollout=rollout, rewards=RewardPool(cfg.grpo.reward_weights, cfg.ray.reward_workers),
                   cpus_per_actor=per, threads=threads)
