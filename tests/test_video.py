"""Video: a synthetic clip goes through qwen-vl-utils and the processor into the tiny VLM and vLLM."""

import gc

import pytest
import torch

from veripo.data import PromptStyle, build_messages, load_records
from veripo.data.video import LoadedVideo, VideoConfig, VideoLoadError, VideoStats, load_video, processor_inputs

CFG = VideoConfig(fps=2.0, nframes=None, min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, max_frames=8)


def video_records(synth_dir):
    return [r for r in load_records(f"{synth_dir}/train.jsonl") if r.data_type == "video"]


def test_sampling_follows_fps_and_frame_cap(synth_dir):
    rec = video_records(synth_dir)[0]
    v = load_video(rec.path, CFG)
    meta = v.metadata
    # 12 frames at 6 fps = 2 s; at 2 fps qwen-vl-utils takes 4 frames, evenly spaced
    assert v.frames.shape[0] == 4 and meta["total_num_frames"] == 12 and meta["fps"] == 6.0
    assert meta["frames_indices"][0] == 0 and meta["frames_indices"][-1] == 11
    assert v.frames.shape[2] * v.frames.shape[3] <= CFG.max_pixels and v.frames.shape[2] % 28 == 0
    fixed = load_video(rec.path, VideoConfig(fps=None, nframes=6, min_pixels=CFG.min_pixels, max_pixels=CFG.max_pixels))
    assert fixed.frames.shape[0] == 6
    frames, vmeta = v.for_vllm()
    assert frames.dtype.name == "uint8" and frames.shape[-1] == 3 and vmeta["duration"] == pytest.approx(2.0)


def test_clip_to_processor_to_tiny_vlm_forward_and_backward(synth_dir, tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    recs = video_records(synth_dir)[:2]
    videos = [load_video(r.path, CFG) for r in recs]
    texts = [proc.apply_chat_template(build_messages(r), add_generation_prompt=True, tokenize=False)
             + "<think>it moves</think><answer>B</answer><|im_end|>" for r in recs]
    inputs = processor_inputs(proc, texts, videos)
    grid = inputs["video_grid_thw"]
    assert grid.shape == (2, 3) and inputs["second_per_grid_ts"].shape == (2,)
    n_video_tokens = (inputs["input_ids"] == model.config.video_token_id).sum().item()
    assert n_video_tokens == int((grid.prod(-1) // 4).sum())  # one placeholder per merged 2x2 patch
    assert inputs["pixel_values_videos"].shape[0] == int(grid.prod(-1).sum())
    out = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    vision_grad = model.model.visual.patch_embed.proj.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0  # the video reached the loss


def test_missing_and_corrupt_videos_raise_or_are_counted(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(VideoLoadError, match=r"corrupt\.mp4: cannot decode video.*on_error=skip"):
        load_video(bad, CFG)
    with pytest.raises(VideoLoadError, match="video file not found"):
        load_video(tmp_path / "nope.mp4", CFG)
    stats = VideoStats()
    skip = VideoConfig(fps=2.0, nframes=None, min_pixels=CFG.min_pixels, max_pixels=CFG.max_pixels, on_error="skip")
    assert load_video(bad, skip, stats) is None and load_video(tmp_path / "nope.mp4", skip, stats) is None
    assert stats.skipped == 2 and stats.loaded == 0 and len(stats.errors) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(fps=2.0, nframes=4), "exactly one of fps and nframes"),
    (dict(fps=None, nframes=None), "exactly one of fps and nframes"),
    (dict(min_pixels=10, max_pixels=5), "min_pixels <= max_pixels"),
    (dict(on_error="ignore"), "on_error"),
])
def test_video_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoConfig(**kwargs)


def test_vllm_loads_tiny_vlm_and_answers_a_video_prompt(synth_dir, tiny_vlm_dir):
    from veripo import compat

    compat.setup_vllm_cpu()
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    proc = AutoProcessor.from_pretrained(tiny_vlm_dir)
    rec = video_records(synth_dir)[0]
    video: LoadedVideo = load_video(rec.path, CFG)
    prompt = proc.apply_chat_template(build_messages(rec, PromptStyle()), add_generation_prompt=True, tokenize=False)
    llm = LLM(model=tiny_vlm_dir, enforce_eager=True, dtype="float32", max_model_len=2048, seed=0,
              limit_mm_per_prompt={"video": 1, "image": 0}, max_num_batched_tokens=4096)
    try:
        params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=0)
        request = {"prompt": prompt, "multi_modal_data": {"video": video.for_vllm()},
                   "mm_processor_kwargs": {"do_resize": False}}
        outs = llm.generate([request, {"prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"}], params)
        with_video = outs[0].outputs[0]
        assert len(with_video.token_ids) > 0 and len(with_video.logprobs) == len(with_video.token_ids)
        # vLLM expanded the one <|video_pad|> into as many placeholders as transformers' processor does
        expected = processor_inputs(proc, [prompt], [video])["input_ids"][0].tolist()
        vid = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        assert outs[0].prompt_token_ids.count(vid) == expected.count(vid) > 1
        assert list(outs[0].prompt_token_ids) == expected
        assert vid not in outs[1].prompt_token_ids
    finally:
        del llm
        gc.collect()
