"""Where the run's actors go: a placement plan from `veripo.config.RayConfig`, then Ray placement groups.

`plan_placement(ray_cfg, nodes)` is pure (the nodes' resources in, slots out), so every combination is
tested without a cluster; `create_placement_groups` and `actor_options` turn a plan into Ray calls.

* Default (``colocate``, no GPUs, no custom resources, CPUs shared): no placement groups; every actor
  asks for ``min(1, cluster CPUs / actors)`` CPUs, as the single-node CPU recipe always ran.
* ``colocate`` with placement groups: one group, one bundle per trainer rank
  ``{CPU: trainer + rollout CPUs, GPU: g, **trainer_resources}``; trainer rank i and rollout engine i
  (and rank i of the KL reference) share bundle i, so they share its GPU. Their GPU requests split the
  bundle's (`GPU_SHARES`): Ray only counts them (and sets CUDA_VISIBLE_DEVICES to the same device);
  the memory is shared in time, the engine sleeping while the policy trains.
* ``split``: a group per role, one bundle per worker with that role's CPUs, GPUs and resources.

Strategy ``auto``: STRICT_PACK when a group's bundles fit on one node together, else PACK (FSDP2 ranks
then span nodes and meet at rank 0's node IP, see `veripo.workers.group.TrainerGroup`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from veripo.errors import UserError

# ray is imported inside the functions that call it: see veripo.workers.group.

# Shares of one bundle's GPU in Ray's accounting: the trainer rank, the rollout engine beside it
# (colocate) and the frozen KL reference's rank; they add up to at most 1.
GPU_SHARES = {"trainer": 0.5, "rollout": 0.25, "reference": 0.25}
PG_READY_TIMEOUT_S = 600.0


class PlacementError(UserError, ValueError):
    """The cluster cannot hold the requested placement; the message names the role, the need and the fix."""


@dataclass(frozen=True)
class ActorSlot:
    """What one actor asks Ray for, and the placement-group bundle it goes in (None: anywhere)."""

    num_cpus: float
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    group: str | None = None
    bundle: int | None = None


@dataclass(frozen=True)
class GroupSpec:
    name: str
    bundles: list[dict[str, float]]
    strategy: str


@dataclass(frozen=True)
class PlacementPlan:
    groups: list[GroupSpec]
    trainer: list[ActorSlot]
    rollout: list[ActorSlot]
    reference: list[ActorSlot]  # ranks of the frozen KL reference, beside the trainer's
    colocated: bool  # rollout engines share the trainer's devices: they sleep while it trains
    rollout_first: bool  # build (and put to sleep) the engines before the policy loads on the same GPUs
    cpus_per_actor: float


def _fits(need: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v > 0)


def _total(bundles: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _bundle(cpus: float, gpus: float, resources: Mapping[str, float]) -> dict[str, float]:
    b = {"CPU": round(cpus, 4)}
    if gpus > 0:
        b["GPU"] = gpus
    b.update({k: float(v) for k, v in resources.items()})
    return {k: v for k, v in b.items() if v > 0}


def _strategy(requested: str, role: str, bundles: list[dict[str, float]], nodes: Sequence[Mapping[str, float]]) -> str:
    for i, b in enumerate(bundles):
        if not any(_fits(b, n) for n in nodes):
            raise PlacementError(
                f"ray: {role} bundle {i} needs {b}, but no node of the cluster has that much "
                f"(nodes: {[dict(n) for n in nodes]}). Fix: lower ray.{role}_cpus_per_worker / "
                f"ray.{role}_gpus_per_worker, drop ray.{role}_resources that no node offers, or add nodes")
    total = _total(bundles)
    one_node = any(_fits(total, n) for n in nodes)
    if requested == "auto":
        return "STRICT_PACK" if one_node else "PACK"
    if requested == "STRICT_PACK" and not one_node:
        raise PlacementError(f"ray.strategy=STRICT_PACK: the {role} bundles need {total} on one node, and no node has "
                             "that. Fix: ray.strategy=auto (PACK across nodes) or fewer/smaller workers")
    if requested == "STRICT_SPREAD" and len(bundles) > len(nodes):
        raise PlacementError(f"ray.strategy=STRICT_SPREAD needs a node per {role} bundle: {len(bundles)} bundles, "
                             f"{len(nodes)} nodes. Fix: ray.strategy=SPREAD or auto")
    return requested


def plan_placement(ray_cfg, nodes: Sequence[Mapping[str, float]], judge_gpus: float = 0.0) -> PlacementPlan:
    """The slots of every actor for `ray_cfg` on a cluster whose alive nodes have `nodes` resources.

    `judge_gpus`: GPUs the verifier's judge engine will ask for outside the groups (checked to fit)."""
    c = ray_cfg
    nodes = [dict(n) for n in nodes] or [{"CPU": 1.0}]
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes) or 1.0
    n_actors = c.trainer_workers + c.rollout_workers
    per = min(1.0, total_cpus / n_actors)
    colocated = c.placement == "colocate"
    if not c.uses_placement_groups:
        return PlacementPlan(groups=[], trainer=[ActorSlot(per)] * c.trainer_workers,
                             rollout=[ActorSlot(per)] * c.rollout_workers,
                             reference=[ActorSlot(0.0)] * c.trainer_workers, colocated=colocated,
                             rollout_first=False, cpus_per_actor=per)
    ct = c.trainer_cpus_per_worker if c.trainer_cpus_per_worker is not None else per
    cr = c.rollout_cpus_per_worker if c.rollout_cpus_per_worker is not None else per
    gt, gr = c.trainer_gpus_per_worker, c.rollout_gpus_per_worker
    t_res = dict(c.trainer_resources)
    trainer = [ActorSlot(ct, gt * GPU_SHARES["trainer"], t_res, None, i) for i in range(c.trainer_workers)]
    reference = [ActorSlot(0.0, gt * GPU_SHARES["reference"], {}, None, i) for i in range(c.trainer_workers)]
    if colocated:
        bundles = [_bundle(ct + (cr if i < c.rollout_workers else 0.0), gt, t_res) for i in range(c.trainer_workers)]
        groups = [GroupSpec("colocate", bundles, _strategy(c.strategy, "trainer", bundles, nodes))]
        trainer = [_in(s, "colocate") for s in trainer]
        reference = [_in(s, "colocate") for s in reference]
        rollout = [ActorSlot(cr, gr * GPU_SHARES["rollout"], {}, "colocate", j) for j in range(c.rollout_workers)]
    else:
        t_bundles = [_bundle(ct, gt, t_res)] * c.trainer_workers
        r_bundles = [_bundle(cr, gr, c.rollout_resources)] * c.rollout_workers
        groups = [GroupSpec("trainer", t_bundles, _strategy(c.strategy, "trainer", t_bundles, nodes)),
                  GroupSpec("rollout", r_bundles, _strategy(c.strategy, "rollout", r_bundles, nodes))]
        trainer = [_in(s, "trainer") for s in trainer]
        reference = [_in(s, "trainer") for s in reference]
        rollout = [ActorSlot(cr, gr, dict(c.rollout_resources), "rollout", j) for j in range(c.rollout_workers)]
    need = _total([b for g in groups for b in g.bundles])
    have = _total(nodes)
    if judge_gpus > 0:
        need["GPU"] = need.get("GPU", 0.0) + judge_gpus
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}
    if short:
        detail = ", ".join(f"{k}: need {v:g}, cluster has {h:g}" for k, (v, h) in short.items())
        judge = f" (verify.judge_gpus={judge_gpus:g} included: the judge runs on its own GPU)" if judge_gpus else ""
        raise PlacementError(f"ray: the placement needs more than the cluster has: {detail}{judge}. Fix: fewer "
                             "ray.trainer_workers / ray.rollout_workers, fewer GPUs per worker, or more nodes")
    return PlacementPlan(groups=groups, trainer=trainer, rollout=rollout, reference=reference, colocated=colocated,
                         rollout_first=colocated and gt > 0, cpus_per_actor=per)


def check_rollout_devices(ray_cfg, rollout_cfg) -> None:
    """An engine with several GPUs must be tensor-parallel over exactly those (and only on GPUs)."""
    gpus = ray_cfg.rollout_gpus_per_worker
    tp = int((rollout_cfg.vllm_kwargs or {}).get("tensor_parallel_size", 1))
    if gpus > 1 and tp != int(gpus):
        raise PlacementError(f"ray.rollout_gpus_per_worker={gpus:g} gives each engine {gpus:g} GPUs, but "
                             f"rollout.vllm_kwargs.tensor_parallel_size is {tp}. Fix: set "
                             f"rollout.vllm_kwargs.tensor_parallel_size={int(gpus)}")
    if tp > 1 and gpus < tp:
        raise PlacementError(f"rollout.vllm_kwargs.tensor_parallel_size={tp} needs {tp} GPUs per engine, but "
                             f"ray.rollout_gpus_per_worker is {gpus:g}. Fix: ray.rollout_gpus_per_worker={tp} "
                             "(with ray.placement=split)")


def _in(slot: ActorSlot, group: str) -> ActorSlot:
    return ActorSlot(slot.num_cpus, slot.num_gpus, slot.resources, group, slot.bundle)


# -------------------------------------------------------------------------------------------- Ray

def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def create_placement_groups(plan: PlacementPlan, timeout_s: float = PG_READY_TIMEOUT_S) -> dict[str, Any]:
    """The plan's placement groups, reserved (waits until the cluster grants them, else a clear error)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    groups: dict[str, Any] = {}
    for spec in plan.groups:
        groups[spec.name] = placement_group(spec.bundles, strategy=spec.strategy, name="")
    for spec in plan.groups:
        ready, _ = ray.wait([groups[spec.name].ready()], timeout=timeout_s)
        if not ready:
            for pg in groups.values():
                remove_placement_group(pg)
            raise PlacementError(f"ray: the {spec.name} placement group ({spec.strategy}, bundles {spec.bundles}) was "
                                 f"not granted within {timeout_s:.0f} s: the cluster lacks free resources (other jobs "
                                 f"may hold them). Cluster now: {ray.available_resources()}")
    return groups


def remove_placement_groups(groups: Mapping[str, Any]) -> None:
    from ray.util.placement_group import remove_placement_group

    for pg in groups.values():
        remove_placement_group(pg)


def actor_options(slot: ActorSlot, groups: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``.options(...)`` for an actor in `slot`."""
    opts: dict[str, Any] = {"num_cpus": slot.num_cpus}
    if slot.num_gpus:
        opts["num_gpus"] = slot.num_gpus
    if slot.resources:
        opts["resources"] = dict(slot.resources)
    if slot.group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=(groups or {})[slot.group], placement_group_bundle_index=slot.bundle)
    return opts


def probe_options(slot: ActorSlot, groups: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options for a zero-resource task that lands where `slot`'s actor will (its bundle's node)."""
    opts = actor_options(ActorSlot(0.0, 0.0, {}, slot.group, slot.bundle), groups)
    return opts
