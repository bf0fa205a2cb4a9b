"""Two Ray nodes on one machine (loopback), the loop placed across them.

The fixture starts a head (``node_head`` resource) and a second node (``node_worker``, its own IP
127.0.0.2) with ``ray start --block``, each in its own session; teardown ends exactly those sessions'
processes (never ``ray stop``, which would end every Ray cluster on the machine). A driver subprocess
(this file run as a script: a clean process for ``ray.init``) then runs:

1. a small SmolLM2 loop (SFT 1 step, GRPO 2 steps) with ``ray.placement=split``, the trainer pinned to
   the head and the rollout engine to the other node by node labels; it reports where every actor ran
   (the actors' own Ray node ids), the run's manifest and metrics, and the engine's weights read back
   against the trainer's after the last sync (so the cross-node weight push is proven bit for bit);
2. a two-rank FSDP2 trainer group spread over both nodes (STRICT_SPREAD), whose ranks rendezvous at
   rank 0's node IP (not 127.0.0.1) and gather the full weights together.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # an end-to-end run: deselect with -m 'not slow'

HEAD_LABEL, WORKER_LABEL = "node_head", "node_worker"
WORKER_IP = "127.0.0.2"
STEPS, PROMPTS, GROUP = 2, 2, 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    """Every port a node opens, picked free, so other Ray clusters on the machine are never touched."""
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [arg for name in names for arg in (name, str(_free_port()))]


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                pids.append(int(entry))
    return pids


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each node's session leader (``ray start --block`` stops its node), then SIGKILL whatever
    is left in those sessions (Ray's own processes and actor workers stay in the session they began in)."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        for pid in _session_pids(p.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip(f"no ray CLI beside {sys.executable}")
    # Ray's socket paths must stay short: a temp dir directly under /tmp, not pytest's deep folders
    temp = tempfile.mkdtemp(prefix="veripo-ray-", dir="/tmp")
    logs = tmp_path_factory.mktemp("ray_logs")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    port = _free_port()
    common = ["--block", "--num-cpus=2", f"--object-store-memory={1024 * 2**20}", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(ray_bin), "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
             "--node-ip-address=127.0.0.1", f"--ray-client-server-port={_free_port()}",
             f"--resources={json.dumps({HEAD_LABEL: 1})}", *common, *_ports()],
            env=env, start_new_session=True, stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT))
        deadline = time.time() + 90
        while True:  # the head's GCS listens: the second node may join
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or procs[0].poll() is not None:
                    pytest.fail(f"Ray head did not start: {(logs / 'head.log').read_text()[-3000:]}")
                time.sleep(0.3)
        procs.append(subprocess.Popen(
            [str(ray_bin), "start", f"--address=127.0.0.1:{port}", f"--node-ip-address={WORKER_IP}",
             f"--resources={json.dumps({WORKER_LABEL: 1})}", *common, *_ports()],
            env=env, start_new_session=True, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT))
        yield f"127.0.0.1:{port}", logs
    finally:
        _stop(procs)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def driven(two_nodes, tmp_path_factory):
    address, logs = two_nodes
    out = tmp_path_factory.mktemp("two_node_runs")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "drive", address, str(out)], env=env, capture_output=True,
                          text=True, timeout=480)
    result_file = out / "result.json"
    if proc.returncode != 0 or not result_file.is_file():
        pytest.fail(f"driver failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    result = json.loads(result_file.read_text())
    result["stdout"], result["driver_seconds"] = proc.stdout, time.time() - t0
    print(f"two-node driver: {result['driver_seconds']:.0f} s {result['seconds']}")
    return result


def test_trainer_and_rollout_engine_ran_on_different_nodes(driven):
    labels = driven["labels"]  # Ray node id -> which node (by its custom resource)
    assert sorted(labels.values()) == ["head", "worker"]
    where = driven["placement"]
    assert [labels[n["node_id"]] for n in where["trainer"]] == ["head"]
    assert [labels[n["node_id"]] for n in where["rollout"]] == ["worker"]
    assert where["rollout"][0]["ip"] == WORKER_IP and where["trainer"][0]["ip"] != WORKER_IP
    assert "veripo: placement (split" in driven["stdout"]


def test_the_run_finished_with_rollouts_written_and_weights_synced_across_nodes(driven):
    run = Path(driven["run_dir"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["iter0/sft"]["done"] and manifest["stages"]["iter0/grpo"]["done"]
    rows = [json.loads(line) for line in (run / "iter0" / "grpo" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS * PROMPTS * GROUP
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grpo = [m for m in metrics if m.get("stage") == "grpo"]
    assert [m["step"] for m in grpo] == list(range(STEPS)) and all(m["sync_bytes"] > 0 for m in grpo)
    assert driven["weight_mismatches"] == []  # the engine on the other node holds the trainer's weights exactly


def test_fsdp2_ranks_on_two_nodes_meet_at_rank0_node_ip(driven):
    fsdp = driven["fsdp"]
    labels = driven["labels"]
    ranks = fsdp["ranks"]
    assert sorted(labels[r["node_id"]] for r in ranks) == ["head", "worker"]  # one rank per node
    assert fsdp["master_addr"] == ranks[0]["ip"] != "127.0.0.1"
    assert fsdp["tensors"] > 0  # rank 0 gathered the full weights: both ranks joined the process group


# ------------------------------------------------------------------------------------- the driver

def _wait_for_nodes(n: int, timeout_s: float = 120) -> dict:
    import ray

    deadline = time.time() + timeout_s
    while True:
        alive = [x for x in ray.nodes() if x.get("Alive")]
        if len(alive) >= n:
            return {x["NodeID"]: ("head" if HEAD_LABEL in x["Resources"] else "worker") for x in alive}
        if time.time() > deadline:
            raise TimeoutError(f"only {len(alive)} of {n} Ray nodes joined in {timeout_s} s")
        time.sleep(0.5)


def _cross_node_fsdp(train_cfg, model_path: str) -> dict:
    import dataclasses

    import ray

    from veripo.config import RayConfig
    from veripo.workers.group import TrainerGroup
    from veripo.workers.placement import cluster_nodes, create_placement_groups, plan_placement, remove_placement_groups

    ray_cfg = RayConfig(placement="split", strategy="STRICT_SPREAD", trainer_workers=2, rollout_workers=1,
                        trainer_cpus_per_worker=1.0, rollout_cpus_per_worker=0.5)
    plan = plan_placement(ray_cfg, cluster_nodes())
    groups = create_placement_groups(plan, timeout_s=120)
    try:
        cfg = dataclasses.replace(train_cfg, strategy="fsdp2", dtype="float32")
        group = TrainerGroup(cfg, model_path, 2, plan.cpus_per_actor, 1, plan.trainer, groups)
        ranks = ray.get([w.node.remote() for w in group.workers])
        buckets = ray.get(group.weight_buckets_ref(256))
        for w in group.workers:
            ray.kill(w)
        return {"master_addr": group.master_addr, "ranks": ranks, "tensors": sum(len(b) for b in buckets)}
    finally:
        remove_placement_groups(groups)


def drive(address: str, out_dir: str) -> None:
    """Run the loop on the two-node cluster at `address` and write what the tests check to result.json."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from veripo.config import RunConfig
    from veripo.loop import Loop
    from veripo.run import recipes_dir
    from veripo.workers.group import init_ray

    t0 = time.time()
    init_ray(address, None)
    labels = _wait_for_nodes(2)
    times = {"connect": time.time() - t0}
    with initialize_config_dir(config_dir=str(recipes_dir()), version_base=None):
        data = OmegaConf.to_container(compose(config_name="smollm2_cpu"), resolve=True)
    data.update(name="two_node", output_dir=out_dir, stages=["sft", "grpo"])
    data["sft"].update(steps=1, batch_size=2)
    data["grpo"].update(steps=STEPS, prompts_per_step=PROMPTS, group_size=GROUP, max_tokens=16)
    data["logging"].update(tensorboard=False, progress=False)
    data["rollout"].update(kv_cache_gib=0.25, max_model_len=1024)  # small: the machine is shared
    data["ray"].update(address=address, placement="split", trainer_resources={HEAD_LABEL: 0.01},
                       rollout_resources={WORKER_LABEL: 0.01})
    cfg = RunConfig.from_dict(data)
    loop = Loop(cfg)
    loop.keep_workers = True
    t0 = time.time()
    loop.fit()
    times["loop"] = time.time() - t0
    w = loop.workers
    result = {"labels": labels, "run_dir": str(loop.run_dir), "placement": w.placement(),
              "weight_mismatches": w.rollout.verify_weights(w.trainer.weight_buckets_ref(
                  cfg.rollout.weight_sync_bucket_mb))}
    loop.keep_workers = False
    loop.close()
    t0 = time.time()
    result["fsdp"] = _cross_node_fsdp(cfg.train, str(loop.model_path))
    times["fsdp"] = time.time() - t0
    result["seconds"] = {k: round(v, 1) for k, v in times.items()}
    print(f"two-node driver seconds: {result['seconds']}", flush=True)
    (Path(out_dir) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "drive":
    drive(sys.argv[2], sys.argv[3])
