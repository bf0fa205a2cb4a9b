"""The policy engine: FSDP2 equals one process, accumulation invariance, every parameter moves, LoRA,
checkpoint resume, HF export, a Qwen2.5-VL video batch; plus PolicyBatch and TrainConfig.

Tiny random Llamas (hidden 32, 2 layers, vocab 128) keep most tests to a second; SmolLM2-135M runs
once, for "every parameter changes" and the HF export round trip of a real pretrained model.
"""

import json
import os

import pytest
import torch

from veripo.algos import token_logprobs
from veripo.train import LoraConfig, PolicyBatch, PolicyEngine, StepContext, TrainConfig, run_on_local_ranks
from veripo.train.optim import LrFactor

# Float32 tolerances. Losses and log-probs: 1e-5 (measured ~1e-7). Gradients: 1e-6 absolute (measured
# ~3e-8, largest gradients ~0.2). Weights after AdamW steps at lr 1e-2: 1e-4, i.e. 1% of one step (measured
# ~1e-5): Adam divides by sqrt(v), so an element whose gradient is ~1e-8 turns rounding noise into a
# visible part of its step; a wrong or missing micro-batch moves weights by ~lr and fails all three.
FP32_ATOL = 1e-5
GRAD_ATOL = 1e-6
WEIGHT_ATOL = 1e-4


# -- helpers ---------------------------------------------------------------------------------------
def build_tiny_llama(out_dir, seed=0, attention_dropout=0.0, tie=True) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
                      attention_dropout=attention_dropout, tie_word_embeddings=tie)
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def make_batch(n: int, seed: int, prompt_len: int = 3) -> PolicyBatch:
    """`n` random sequences of different lengths; the loss counts the tokens after the prompt."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        length = int(torch.randint(prompt_len + 2, 16, (), generator=g))
        samples.append({"input_ids": torch.randint(1, 128, (length,), generator=g),
                        "loss_mask": torch.tensor([0] * prompt_len + [1] * (length - prompt_len)),
                        "advantages": torch.randn((), generator=g)})
    return PolicyBatch.collate(samples, pad_id=0)


def pg_loss(logits, micro: PolicyBatch, ctx: StepContext):
    """A policy-gradient loss, token-mean plus a sequence-normalised term, summing to the global loss."""
    logp = token_logprobs(logits, micro.input_ids)
    weighted = -micro.advantages[:, None] * logp * micro.loss_mask
    loss = weighted.sum() / ctx.global_tokens + 0.1 * weighted.sum(-1).sum() / ctx.global_batch_size
    return loss, {"mean_logp": (logp * micro.loss_mask).sum() / micro.loss_mask.sum()}


def weights(engine: PolicyEngine) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone().cpu() for n, t in engine.named_parameters_for_sync()}


def grads(engine: PolicyEngine) -> dict[str, torch.Tensor]:
    """Full gradients by parameter name (gathered under FSDP2; every rank must call)."""
    from veripo.train.weights import full_tensor

    return {n: full_tensor(p.grad).detach().clone().cpu() for n, p in engine.model.named_parameters()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


CFG = dict(lr=1e-2, weight_decay=0.01, grad_clip=1.0)


# -- 1. FSDP2 on 2 CPU ranks equals one process ---------------------------------------------------
def _fsdp_rank(rank: int, world: int, model_dir: str, ckpt_dir: str):
    engine = PolicyEngine(TrainConfig(strategy="fsdp2", micro_batch_size=2, **CFG), model_dir)
    assert engine.world_size == 2 and engine.rank == rank
    b1, b2 = make_batch(4, seed=1), make_batch(4, seed=2)
    shard1 = b1.slice(2 * rank, 2 * rank + 2)
    logp = engine.logprobs(shard1)
    m1 = engine.train_step(shard1, pg_loss)
    g1 = grads(engine)  # after clipping, which both strategies apply alike
    engine.save_checkpoint(ckpt_dir)
    shard2 = b2.slice(0, 3) if rank == 0 else b2.slice(3, 4)  # uneven: rank 1 runs a padding pass
    m2 = engine.train_step(shard2, pg_loss)
    w = weights(engine)
    return {"logp": logp, "m1": m1, "m2": m2, "grads": g1 if rank == 0 else None, "weights": w if rank == 0 else None}


def test_fsdp2_two_ranks_equal_single_process(tiny_llama, tmp_path):
    ranks = run_on_local_ranks(_fsdp_rank, 2, tiny_llama, str(tmp_path / "fsdp_ckpt"), timeout_s=300)
    single = PolicyEngine(TrainConfig(strategy="single", micro_batch_size=2, **CFG), tiny_llama)
    b1, b2 = make_batch(4, seed=1), make_batch(4, seed=2)
    logp = single.logprobs(b1)
    m1 = single.train_step(b1, pg_loss)
    g1 = grads(single)
    m2 = single.train_step(b2, pg_loss)
    w = weights(single)
    assert torch.allclose(torch.cat([r["logp"] for r in ranks]), logp, atol=FP32_ATOL, rtol=0)
    for key, ref in (("m1", m1), ("m2", m2)):
        for r in ranks:  # every rank reports the global metrics
            assert r[key]["loss"] == pytest.approx(ref["loss"], abs=FP32_ATOL)
            # sums, not averages, over ranks: an averaged gradient would have half this norm
            assert r[key]["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
            assert r[key]["tokens"] == ref["tokens"] and r[key]["sequences"] == 4
    assert m1["grad_norm"] > CFG["grad_clip"]  # clipping was active (and agrees across strategies)
    gdiff = max_diff(ranks[0]["grads"], g1)
    assert gdiff < GRAD_ATOL, f"FSDP2 vs single: max |dgrad| = {gdiff:.2e}"
    diff = max_diff(ranks[0]["weights"], w)
    assert diff < WEIGHT_ATOL, f"FSDP2 vs single: max |dw| = {diff:.2e}"
    assert max_diff(ranks[0]["weights"], weights_of(tiny_llama)) > 1e-3  # the weights did move

    # the 2-rank (sharded) checkpoint after step 1 loads into one process and continues identically
    resumed = PolicyEngine(TrainConfig(strategy="single", micro_batch_size=2, **CFG), tiny_llama)
    assert resumed.load_checkpoint(tmp_path / "fsdp_ckpt")["world_size"] == 2
    m2r = resumed.train_step(b2, pg_loss)
    assert m2r["loss"] == pytest.approx(m2["loss"], abs=FP32_ATOL)
    assert max_diff(weights(resumed), w) < WEIGHT_ATOL


def weights_of(model_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    cfg = json.loads(open(os.path.join(model_dir, "config.json")).read())
    if cfg.get("tie_word_embeddings") and "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


# -- 2. batch 8 x 1 equals 2 x 4 with gradient accumulation ---------------------------------------
def test_accumulation_8x1_equals_2x4_with_gradient_checkpointing(tiny_llama):
    batch = make_batch(8, seed=3)
    results = []
    for mbs in (1, 4):  # the 2 x 4 run also recomputes activations (gradient checkpointing)
        engine = PolicyEngine(TrainConfig(micro_batch_size=mbs, gradient_checkpointing=mbs == 4, **CFG), tiny_llama)
        assert engine.base_model.is_gradient_checkpointing == (mbs == 4)
        metrics = [engine.train_step(batch, pg_loss)]
        g = grads(engine)
        metrics.append(engine.train_step(batch, pg_loss))
        results.append((metrics, g, weights(engine)))
    (ma, ga, wa), (mb, gb, wb) = results
    for a, b in zip(ma, mb):
        assert a["loss"] == pytest.approx(b["loss"], abs=FP32_ATOL)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert "mean_logp" in a and "mean_logp" in b  # per-micro-batch means: not comparable across splits
    gdiff, diff = max_diff(ga, gb), max_diff(wa, wb)
    assert gdiff < GRAD_ATOL, f"8x1 vs 2x4: max |dgrad| = {gdiff:.2e}"
    assert diff < WEIGHT_ATOL, f"8x1 vs 2x4: max |dw| = {diff:.2e}"
    assert ma[1]["loss"] != ma[0]["loss"] and max_diff(wa, weights_of(tiny_llama)) > 1e-3


# -- 3 + 5. every parameter changes (SmolLM2, full fine-tune); the HF export reloads identically ---
def test_full_finetune_moves_every_parameter_and_export_reloads(smollm2_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = PolicyEngine(TrainConfig(lr=1e-5, micro_batch_size=2), smollm2_dir)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = ["The capital of France is Paris.", "Two plus two equals four, said the teacher."]
    samples = []
    for text in texts:
        ids = torch.tensor(tok(text).input_ids)
        samples.append({"input_ids": ids, "loss_mask": (torch.arange(len(ids)) >= 2).long(), "advantages": 1.0})
    batch = PolicyBatch.collate(samples, pad_id=tok.pad_token_id or 0)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    metrics = engine.train_step(batch, pg_loss)
    assert metrics["skipped"] == 0 and metrics["grad_norm"] > 0
    unchanged = [n for n, p in engine.model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    del before

    out = engine.export_hf(tmp_path / "export")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (tmp_path / ".export.tmp").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    engine.model.eval()
    with torch.no_grad():
        expected = engine.compute_logits(batch)
        got = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(got, expected, atol=FP32_ATOL, rtol=0), float((got - expected).abs().max())
    assert AutoTokenizer.from_pretrained(out)(texts[0]).input_ids == tok(texts[0]).input_ids


# -- 3 (LoRA). only adapters change; sync and export merge them -----------------------------------
def test_lora_trains_only_adapters_and_export_merges(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(micro_batch_size=4, lora=LoraConfig(rank=4, alpha=8, target_modules=("q_proj", "v_proj")),
                      **CFG)
    engine = PolicyEngine(cfg, tiny_llama)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    trainable = {n for n, p in engine.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    batch = make_batch(4, seed=4)
    for _ in range(2):  # lora_A gets a gradient only once lora_B is non-zero
        engine.train_step(batch, pg_loss)
    changed = {n for n, p in engine.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable

    synced = weights(engine)
    original = weights_of(tiny_llama)
    assert synced.keys() == original.keys()  # HF names: no peft prefixes, no lora tensors, lm_head included
    moved = {n for n in synced if not torch.equal(synced[n], original[n])}
    assert moved == {f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")}

    engine.export_hf(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    engine.model.eval()
    with torch.no_grad():
        expected = engine.compute_logits(batch)
        got = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(got, expected, atol=FP32_ATOL, rtol=0), float((got - expected).abs().max())


# -- 4. checkpoint save/load then one more step equals an uninterrupted run -----------------------
def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    model_dir = build_tiny_llama(tmp_path / "dropout_llama", attention_dropout=0.2)  # RNG matters
    cfg = TrainConfig(micro_batch_size=2, warmup_steps=2, lr_schedule="cosine", total_steps=10, **CFG)
    b1, b2 = make_batch(4, seed=5), make_batch(4, seed=6)
    run = PolicyEngine(cfg, model_dir)
    m1 = run.train_step(b1, pg_loss)
    run.save_checkpoint(tmp_path / "ckpt")
    run.save_checkpoint(tmp_path / "ckpt")  # overwriting is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "dropout_llama"]
    m2 = run.train_step(b2, pg_loss)
    w2 = weights(run)

    resumed = PolicyEngine(cfg, model_dir)
    assert resumed.load_checkpoint(tmp_path / "ckpt")["step"] == 1 and resumed.step == 1
    m2r = resumed.train_step(b2, pg_loss)
    assert m2r["lr"] == m2["lr"] != m1["lr"]  # the warm-up schedule resumed mid-way
    assert m2r["loss"] == m2["loss"] and m2r["grad_norm"] == m2["grad_norm"]
    assert max_diff(weights(resumed), w2) == 0.0

    other_rng = PolicyEngine(cfg, model_dir)
    other_rng.load_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(1234)  # dropout draws differ: the equality above needed the restored RNG
    assert other_rng.train_step(b2, pg_loss)["loss"] != m2["loss"]

    (tmp_path / "broken").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete veripo checkpoint"):
        resumed.load_checkpoint(tmp_path / "broken")


# -- 6. Qwen2.5-VL with a video trains one step; the vision tower gets gradients -------------------
def test_qwen2_5_vl_video_batch_trains_and_exports(tiny_vlm_dir, synth_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from veripo.data import build_messages, load_records
    from veripo.data.video import VideoConfig, load_video, processor_inputs

    proc = AutoProcessor.from_pretrained(tiny_vlm_dir)
    proc.tokenizer.padding_side = "right"
    video_cfg = VideoConfig(fps=2.0, nframes=None, min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, max_frames=8)
    recs = [r for r in load_records(f"{synth_dir}/train.jsonl") if r.data_type == "video"][:2]
    videos = [load_video(r.path, video_cfg) for r in recs]
    responses = ["<think>it moves</think><answer>B</answer><|im_end|>",
                 "<think>red</think><answer>A</answer><|im_end|>"]
    texts = [proc.apply_chat_template(build_messages(r), add_generation_prompt=True, tokenize=False) + resp
             for r, resp in zip(recs, responses)]
    inputs = processor_inputs(proc, texts, videos)
    lengths = inputs["attention_mask"].sum(-1)
    loss_mask = torch.zeros_like(inputs["input_ids"])
    for b, resp in enumerate(responses):
        n = len(proc.tokenizer(resp).input_ids)
        loss_mask[b, lengths[b] - n:lengths[b]] = 1
    batch = PolicyBatch.from_processor(inputs, loss_mask, advantages=torch.tensor([1.0, -0.5]))
    assert batch.videos_per_sample.tolist() == [1, 1]

    # slicing by sample matches what the processor gives for that sample alone; collate rebuilds the batch
    alone = [processor_inputs(proc, [t], [v]) for t, v in zip(texts, videos)]
    assert torch.equal(batch.slice(1, 2).pixel_values_videos, alone[1]["pixel_values_videos"])
    assert torch.equal(batch.slice(1, 2).video_grid_thw, alone[1]["video_grid_thw"])
    rebuilt = PolicyBatch.collate([{**{k: v[0] for k, v in a.items() if k in ("input_ids", "attention_mask",
                                                                            "mm_token_type_ids")},
                                    "pixel_values_videos": a["pixel_values_videos"],
                                    "video_grid_thw": a["video_grid_thw"],
                                    "second_per_grid_ts": a["second_per_grid_ts"],
                                    "loss_mask": loss_mask[b, :a["input_ids"].shape[1]]}
                                   for b, a in enumerate(alone)], pad_id=proc.tokenizer.pad_token_id)
    for name in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw"):
        assert torch.equal(getattr(rebuilt, name), getattr(batch, name)), name

    engine = PolicyEngine(TrainConfig(micro_batch_size=1, lr=1e-3), tiny_vlm_dir)
    assert engine.is_vl
    assert torch.allclose(engine.logprobs(batch, micro_batch_size=1), engine.logprobs(batch, micro_batch_size=2),
                          atol=FP32_ATOL, rtol=0)
    visual = engine.base_model.model.visual.patch_embed.proj.weight
    before = visual.detach().clone()
    metrics = engine.train_step(batch, pg_loss)
    assert metrics["sequences"] == 2 and metrics["tokens"] == int(loss_mask.sum())
    assert visual.grad is not None and visual.grad.abs().sum() > 0  # the video reached the loss
    assert not torch.equal(visual.detach(), before)

    with safe_open(os.path.join(tiny_vlm_dir, "model.safetensors"), "pt") as f:
        on_disk = set(f.keys())
    assert {n for n, _ in engine.named_parameters_for_sync()} == on_disk  # checkpoint names (vLLM loads these)

    out = engine.export_hf(tmp_path / "vlm_export")
    reloaded = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert AutoProcessor.from_pretrained(out).video_processor.merge_size == 2
    engine.model.eval()
    with torch.no_grad():
        expected = engine.compute_logits(batch)
        got = reloaded(**batch.model_inputs()).logits
    assert torch.allclose(got, expected, atol=FP32_ATOL, rtol=0), float((got - expected).abs().max())


def test_bfloat16_compute_keeps_float32_master_weights(tiny_llama):
    engine = PolicyEngine(TrainConfig(dtype="bfloat16", micro_batch_size=2, **CFG), tiny_llama)
    batch = make_batch(4, seed=7)
    assert engine.compute_logits(batch.slice(0, 2)).dtype == torch.bfloat16
    metrics = engine.train_step(batch, pg_loss)
    assert metrics["skipped"] == 0 and metrics["grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())
    assert max_diff(weights(engine), weights_of(tiny_llama)) > 1e-3


# -- PolicyBatch and TrainConfig ------------------------------------------------------------------
def test_policy_batch_collate_slice_split_extras():
    samples = [{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1], "advantages": 0.5, "old_logp": [0.0, -1.0, -2.0],
                "extras": {"chosen": torch.tensor(1)}},
               {"input_ids": [8, 9], "loss_mask": [0, 1], "advantages": -1.0, "old_logp": [0.0, -3.0],
                "extras": {"chosen": torch.tensor(0)}},
               {"input_ids": [1, 2, 3, 4], "loss_mask": [0, 0, 1, 1], "advantages": 2.0,
                "old_logp": [0.0, 0.0, -1.0, -1.0], "extras": {"chosen": torch.tensor(1)}}]
    batch = PolicyBatch.collate(samples, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.num_tokens() == 5 and batch.old_logp[1].tolist() == [0.0, -3.0, 0.0, 0.0]
    parts = batch.split(2)
    assert [p.batch_size for p in parts] == [2, 1]
    assert parts[1].extras["chosen"].tolist() == [1] and parts[1].advantages.tolist() == [2.0]
    assert batch.with_fields(ref_logp=torch.zeros(3, 4)).ref_logp.shape == (3, 4)
    with pytest.raises(ValueError, match="unknown keys.*'extras'"):
        PolicyBatch.collate([{"input_ids": [1], "loss_mask": [1], "reward": 1.0}], pad_id=0)
    with pytest.raises(ValueError, match="right-padded"):
        PolicyBatch(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1]]),
                    loss_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="old_logp has shape"):
        batch.with_fields(old_logp=torch.zeros(3, 5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), r"TrainConfig\.lr"),
    (dict(lr_schedule="step"), r"TrainConfig\.lr_schedule must be one of constant, cosine, linear"),
    (dict(lr_schedule="cosine"), r"TrainConfig\.total_steps"),
    (dict(strategy="ddp"), r"TrainConfig\.strategy"),
    (dict(dtype="float16"), r"TrainConfig\.dtype"),
    (dict(micro_batch_size=0), r"TrainConfig\.micro_batch_size"),
    (dict(grad_clip=0.0), r"TrainConfig\.grad_clip"),
    (dict(lora={"rank": 0}), r"LoraConfig\.rank"),
])
def test_train_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_train_config_from_dict_and_lr_schedule():
    cfg = TrainConfig.from_dict({"lr": 1.0, "warmup_steps": 2, "lr_schedule": "cosine", "total_steps": 6,
                                 "lora": {"rank": 4}})
    assert cfg.lora == LoraConfig(rank=4)
    factors = [LrFactor(cfg)(s) for s in range(7)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[4] == pytest.approx(0.5) and factors[6] == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"train.learning_rate: unknown key. .*Known keys of train: .*\blr\b"):
        TrainConfig.from_dict({"learning_rate": 1.0})  # the one converter's message: the key, the known ones
