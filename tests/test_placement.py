"""Placement: RayConfig combinations, the placement plan (pure, no cluster) and the colocated engines'
sleep cycle.

The sleep cycle's GPU path (vLLM sleep mode) cannot run on a CPU machine, so the call sequence is
checked against `FakeSleepModeEngine`, a fake that records what `RolloutGroup` asks of it; the real
`VLLMEngine.sleep` / `wake_up` are checked to pass level and tags through to ``vllm.LLM`` (a recording
stand-in for the LLM object, named `RecordingLLM`) and to be no-ops on CPU.
"""

import pytest

from veripo.config import ConfigError, RayConfig, from_dict
from veripo.workers.group import RolloutGroup
from veripo.workers.placement import (GPU_SHARES, PlacementError, check_rollout_devices, plan_placement)
from veripo.workers.plain import RolloutWorker

NODE_8GPU = {"CPU": 32.0, "GPU": 8.0}


def ray_cfg(**kw) -> RayConfig:
    return from_dict(RayConfig, kw, "ray")


# ------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("kw, message", [
    ({"placement": "spread"}, "ray.placement: 'spread' is not allowed. Allowed values: colocate, split"),
    ({"strategy": "pack"}, "ray.strategy: 'pack' is not allowed"),
    ({"trainer_gpus_per_worker": 2.0}, "ray.trainer_gpus_per_worker must be at most 1"),
    ({"placement": "split", "rollout_gpus_per_worker": 1.5}, "ray.rollout_gpus_per_worker above 1 must be a whole"),
    ({"trainer_gpus_per_worker": 1.0}, "ray.rollout_gpus_per_worker (0.0) must equal ray.trainer_gpus_per_worker"),
    ({"trainer_workers": 1, "rollout_workers": 2}, "ray.rollout_workers (2) must be at most ray.trainer_workers (1)"),
    ({"rollout_resources": {"node_b": 0.01}}, "ray.rollout_resources is for ray.placement=split"),
    ({"placement": "split", "trainer_resources": {"GPU": 1}}, "ray.trainer_resources.GPU: set CPUs and GPUs with"),
    ({"placement": "split", "rollout_resources": {"node_b": 0}}, "ray.rollout_resources.node_b must be > 0"),
    ({"trainer_cpus_per_worker": 0}, "ray.trainer_cpus_per_worker must be > 0 or null"),
    ({"rollout_gpus_per_worker": -1.0, "placement": "split"}, "ray.rollout_gpus_per_worker must be >= 0"),
    ({"trainer_gpu_per_worker": 1}, "ray.trainer_gpu_per_worker: unknown key. Did you mean ray.trainer_gpus_per_worker"),
])
def test_bad_ray_combinations_name_the_key_and_the_fix(kw, message):
    with pytest.raises(ConfigError) as exc:
        ray_cfg(**kw)
    assert message in str(exc.value)


def test_default_is_colocate_without_placement_groups():
    c = RayConfig()
    assert c.placement == "colocate" and c.strategy == "auto" and not c.uses_placement_groups
    assert ray_cfg(placement="split").uses_placement_groups
    assert ray_cfg(trainer_gpus_per_worker=1.0, rollout_gpus_per_worker=1.0).uses_placement_groups


# ------------------------------------------------------------------------------------------ plans

def test_default_plan_shares_cpus_fractionally_as_before():
    plan = plan_placement(RayConfig(), [{"CPU": 1.0}])
    assert plan.groups == [] and plan.cpus_per_actor == 0.5 and plan.colocated and not plan.rollout_first
    assert [s.num_cpus for s in plan.trainer + plan.rollout] == [0.5, 0.5]
    assert all(s.group is None and s.num_gpus == 0 for s in plan.trainer + plan.rollout)
    assert plan_placement(RayConfig(), [{"CPU": 16.0}]).cpus_per_actor == 1.0


def test_colocate_on_one_gpu_node_packs_strictly_and_shares_each_gpu():
    cfg = ray_cfg(trainer_workers=8, rollout_workers=8, trainer_gpus_per_worker=1.0, rollout_gpus_per_worker=1.0,
                  trainer_cpus_per_worker=2.0, rollout_cpus_per_worker=1.0)
    plan = plan_placement(cfg, [NODE_8GPU])
    (group,) = plan.groups
    assert group.name == "colocate" and group.strategy == "STRICT_PACK" and len(group.bundles) == 8
    assert group.bundles[0] == {"CPU": 3.0, "GPU": 1.0}
    assert plan.colocated and plan.rollout_first
    for i in range(8):  # trainer rank i, engine i and reference rank i share bundle i (one GPU)
        t, r, ref = plan.trainer[i], plan.rollout[i], plan.reference[i]
        assert t.group == r.group == ref.group == "colocate" and t.bundle == r.bundle == ref.bundle == i
        assert t.num_gpus + r.num_gpus + ref.num_gpus <= 1.0 and r.num_gpus == GPU_SHARES["rollout"]
        assert (t.num_cpus, r.num_cpus, ref.num_cpus) == (2.0, 1.0, 0.0)


def test_colocate_across_two_nodes_packs_loosely():
    cfg = ray_cfg(trainer_workers=8, rollout_workers=4, trainer_gpus_per_worker=1.0, rollout_gpus_per_worker=1.0)
    plan = plan_placement(cfg, [{"CPU": 8.0, "GPU": 4.0}] * 2)
    assert plan.groups[0].strategy == "PACK"
    assert [b["CPU"] for b in plan.groups[0].bundles] == [2.0] * 4 + [1.0] * 4  # ranks 0-3 hold an engine too


def test_split_gives_each_role_its_group_resources_and_strategy():
    cfg = ray_cfg(placement="split", trainer_workers=2, rollout_workers=1, trainer_gpus_per_worker=1.0,
                  rollout_gpus_per_worker=2.0, trainer_resources={"node_a": 0.01}, rollout_resources={"node_b": 0.01},
                  trainer_cpus_per_worker=4.0, rollout_cpus_per_worker=2.0)
    nodes = [{"CPU": 16.0, "GPU": 2.0, "node_a": 1.0}, {"CPU": 16.0, "GPU": 2.0, "node_b": 1.0}]
    plan = plan_placement(cfg, nodes)
    groups = {g.name: g for g in plan.groups}
    assert groups["trainer"].bundles == [{"CPU": 4.0, "GPU": 1.0, "node_a": 0.01}] * 2
    assert groups["rollout"].bundles == [{"CPU": 2.0, "GPU": 2.0, "node_b": 0.01}]
    assert groups["trainer"].strategy == groups["rollout"].strategy == "STRICT_PACK"
    assert not plan.colocated and not plan.rollout_first
    assert [s.bundle for s in plan.trainer] == [0, 1] and plan.trainer[0].resources == {"node_a": 0.01}
    assert plan.rollout[0].group == "rollout" and plan.rollout[0].num_gpus == 2.0
    assert plan.reference[1].group == "trainer" and plan.reference[1].num_gpus == GPU_SHARES["reference"]


def test_split_on_cpu_nodes_pins_roles_with_node_labels():
    cfg = ray_cfg(placement="split", trainer_resources={"node_head": 0.01}, rollout_resources={"node_worker": 0.01})
    plan = plan_placement(cfg, [{"CPU": 2.0, "node_head": 1.0}, {"CPU": 2.0, "node_worker": 1.0}])
    assert [g.bundles for g in plan.groups] == [[{"CPU": 1.0, "node_head": 0.01}], [{"CPU": 1.0, "node_worker": 0.01}]]


def test_ranks_that_do_not_fit_one_node_span_nodes():
    cfg = ray_cfg(placement="split", trainer_workers=4, trainer_gpus_per_worker=1.0)
    plan = plan_placement(cfg, [{"CPU": 8.0, "GPU": 2.0}] * 2)
    assert plan.groups[0].strategy == "PACK"


@pytest.mark.parametrize("kw, nodes, judge, message", [
    ({"placement": "split", "trainer_resources": {"node_x": 0.01}}, [{"CPU": 4.0}], 0.0,
     "trainer bundle 0 needs {'CPU': 1.0, 'node_x': 0.01}, but no node of the cluster has that"),
    ({"trainer_workers": 4, "rollout_workers": 4, "trainer_gpus_per_worker": 1.0, "rollout_gpus_per_worker": 1.0,
      "strategy": "STRICT_PACK"}, [{"CPU": 8.0, "GPU": 2.0}] * 2, 0.0, "ray.strategy=STRICT_PACK: the trainer bundles"),
    ({"trainer_workers": 2, "rollout_workers": 2, "trainer_gpus_per_worker": 1.0, "rollout_gpus_per_worker": 1.0},
     [{"CPU": 8.0, "GPU": 2.0}], 1.0, "GPU: need 3, cluster has 2 (verify.judge_gpus=1 included"),
    ({"trainer_workers": 3, "trainer_gpus_per_worker": 1.0, "rollout_gpus_per_worker": 1.0},
     [{"CPU": 8.0, "GPU": 1.0}] * 2, 0.0, "GPU: need 3, cluster has 2"),
    ({"placement": "split", "trainer_workers": 3, "strategy": "STRICT_SPREAD"}, [{"CPU": 8.0}] * 2, 0.0,
     "STRICT_SPREAD needs a node per trainer bundle"),
])
def test_impossible_placements_fail_before_anything_starts(kw, nodes, judge, message):
    with pytest.raises(PlacementError) as exc:
        plan_placement(ray_cfg(**kw), nodes, judge_gpus=judge)
    assert message in str(exc.value)


def test_tensor_parallel_engines_need_matching_gpus():
    from veripo.config import RolloutConfig

    split = ray_cfg(placement="split", rollout_gpus_per_worker=2.0)
    check_rollout_devices(split, RolloutConfig(vllm_kwargs={"tensor_parallel_size": 2}))
    with pytest.raises(PlacementError, match="set rollout.vllm_kwargs.tensor_parallel_size=2"):
        check_rollout_devices(split, RolloutConfig())
    with pytest.raises(PlacementError, match="ray.rollout_gpus_per_worker=2 .with ray.placement=split"):
        check_rollout_devices(RayConfig(), RolloutConfig(vllm_kwargs={"tensor_parallel_size": 2}))


# ------------------------------------------------------------------------------------------ sleep

class FakeSleepModeEngine:
    """A fake rollout engine with vLLM's sleep-mode API that records every call (the GPU path of the
    cycle, which a CPU machine cannot run for real)."""

    def __init__(self, supports_sleep: bool = True):
        self.supports_sleep = supports_sleep
        self.calls: list = []

    def generate(self, requests, sampling, n):
        self.calls.append("generate")
        return [[f"{r}-{j}" for j in range(n)] for r in requests]

    def update_weights(self, named):
        self.calls.append("update_weights")
        return {"tensors": len(list(named))}

    def verify_weights(self, named):
        self.calls.append("verify_weights")
        return []

    def sleep(self, level=None):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def close(self):
        self.calls.append("close")


def fake_group(level=1, supports_sleep=True, engines=2):
    fakes = [FakeSleepModeEngine(supports_sleep) for _ in range(engines)]
    group = RolloutGroup.in_process([RolloutWorker.from_engine(f) for f in fakes], sleep_level=level)
    return group, fakes


BUCKETS = [{"w": __import__("torch").zeros(2)}]
WAKE_ALL, WAKE_W, WAKE_KV = ("wake_up", None), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])


def test_level1_cycle_wakes_for_rollouts_and_pushes_and_sleeps_while_the_policy_trains():
    group, fakes = fake_group(level=1)
    group.ready()  # engines built: asleep before the policy loads
    assert group.generate(["a", "b", "c"], None, 2) == [["a-0", "a-1"], ["b-0", "b-1"], ["c-0", "c-1"]]
    group.update_weights(BUCKETS)  # after a train step
    assert group.verify_weights(BUCKETS) == []
    group.generate(["d"], None, 1)
    assert fakes[0].calls == [
        ("sleep", 1),
        WAKE_ALL, "generate", ("sleep", 1),
        WAKE_W, "update_weights", WAKE_KV, ("sleep", 1),  # only the weights wake for a push
        WAKE_W, "verify_weights", WAKE_KV, ("sleep", 1),
        WAKE_ALL, "generate", ("sleep", 1),
    ]
    # an engine without prompts in a round ("d" goes to engine 0 only) still wakes and sleeps with the others
    assert fakes[1].calls == fakes[0].calls[:-2] + [("sleep", 1)]
    assert group.state == "asleep"


def test_level2_keeps_pushed_weights_resident_and_repushes_dropped_ones():
    group, fakes = fake_group(level=2, engines=1)
    pushes = []
    group.weights_source = lambda: pushes.append("source") or BUCKETS
    group.ready()
    group.update_weights(BUCKETS)  # sleeping now would drop the new weights: they stay, the KV cache stays freed
    assert group.state == "weights"
    group.generate(["a"], None, 1)
    assert group.state == "lost"
    group.generate(["b"], None, 1)  # two rollouts without a push: the policy's weights come back first
    assert pushes == ["source"]
    assert fakes[0].calls == [
        ("sleep", 1),
        WAKE_W, "update_weights",
        WAKE_KV, "generate", ("sleep", 2),
        WAKE_W, "update_weights", WAKE_KV, "generate", ("sleep", 2),
    ]


def test_level2_without_a_weight_source_refuses_to_generate_on_dropped_weights():
    group, _ = fake_group(level=2, engines=1)
    group.generate(["a"], None, 1)
    with pytest.raises(RuntimeError, match="no weights_source"):
        group.generate(["b"], None, 1)


def test_cpu_engines_skip_the_cycle_and_say_so_once(capsys):
    import veripo.workers.group as group_module

    group_module._SLEEP_NOOP_LOGGED = False
    group, fakes = fake_group(supports_sleep=False, engines=1)
    group.ready()
    group.generate(["a"], None, 1)
    group.update_weights(BUCKETS)
    group.generate(["b"], None, 1)
    assert fakes[0].calls == ["generate", "update_weights", "generate"]
    assert capsys.readouterr().out.count("sleep/wake is a no-op") == 1


def test_split_engines_never_sleep():
    fake = FakeSleepModeEngine()
    group = RolloutGroup.in_process([RolloutWorker.from_engine(fake)], sleep=False)
    group.ready()
    group.generate(["a"], None, 1)
    group.update_weights(BUCKETS)
    assert fake.calls == ["generate", "update_weights"]


def test_worker_adapts_to_engines_without_levels_or_tags():
    class PlainSleepEngine:  # HFEngine's signature: sleep() / wake_up()
        def __init__(self):
            self.calls = []

        def sleep(self):
            self.calls.append("sleep")

        def wake_up(self):
            self.calls.append("wake_up")

    engine = PlainSleepEngine()
    worker = RolloutWorker.from_engine(engine)
    worker.sleep(2)
    worker.wake_up(["weights"])
    assert engine.calls == ["sleep", "wake_up"]


class RecordingLLM:
    """Stands in for ``vllm.LLM`` (same sleep / wake_up signatures) and records the calls."""

    def __init__(self):
        self.calls = []

    def sleep(self, level: int = 1, mode: str = "abort"):
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tags))
        return tags is None


def _engine(on_cpu: bool):
    from veripo.config import RolloutConfig
    from veripo.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # no model: only the sleep-mode calls are under test
    engine.cfg, engine.on_cpu, engine.llm = RolloutConfig(sleep_level=2), on_cpu, RecordingLLM()
    return engine


def test_vllm_engine_passes_level_and_tags_to_vllm_on_gpu():
    engine = _engine(on_cpu=False)
    assert engine.supports_sleep
    engine.sleep()
    engine.wake_up(["weights"])
    engine.wake_up(["kv_cache"])
    engine.sleep(level=1)
    engine.wake_up()
    assert engine.llm.calls == [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"]), ("sleep", 1),
                                ("wake_up", None)]


def test_vllm_engine_sleep_is_an_explicit_noop_on_cpu(caplog):
    import logging

    import veripo.rollout.vllm_engine as vllm_engine

    vllm_engine._SLEEP_NOOP_LOGGED = False
    engine = _engine(on_cpu=True)
    with caplog.at_level(logging.INFO, logger="veripo.rollout.vllm_engine"):
        engine.sleep()
        engine.wake_up(["weights"])
        engine.sleep(level=2)
    assert not engine.supports_sleep and engine.llm.calls == []
    assert sum("no sleep mode" in r.message for r in caplog.records) == 1
