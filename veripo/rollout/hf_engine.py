"""`HFEngine`: the `RolloutEngine` protocol on transformers ``generate``, for models vLLM cannot load.

Log-probs come from the scores ``generate`` samples from: "processed" is ``log_softmax`` of the scores
after the temperature, top-k and top-p warpers (the same distribution vLLM's ``processed_logprobs``
reports), "raw" of the model's logits. Greedy decoding applies no warper, so both are the raw ones.
A call holds all steps' scores (``max_tokens x rows x vocab`` float32): fine for tests and small
models, not for long rollouts of 150k-vocabulary models (use vLLM there).

Finish reason: "stop" when the response ends with an EOS token (kept in ``token_ids``, as vLLM keeps
it) or completes a stop string (its tokens kept, the text cut before it), "length" otherwise.

Randomness: the engine keeps its own torch random stream (seeded with `RolloutConfig.seed`), so other
code drawing random numbers does not change the rollouts; `SamplingConfig.seed` seeds one call. Unlike
vLLM, samples then depend on their batch (one stream for the whole batch).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from veripo.config import RolloutConfig
from veripo.data.video import LoadedVideo, processor_inputs
from veripo.rollout.types import GenerationRequest, Sample, SamplingConfig

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_loaded_video(video: Any):
    if isinstance(video, LoadedVideo):
        return video
    frames, meta = video  # vLLM's (uint8 [T, H, W, 3], metadata) pair
    frames = torch.as_tensor(frames).permute(0, 3, 1, 2).to(torch.float32)
    return LoadedVideo(path=str(meta.get("path", "<frames>")), frames=frames, metadata=dict(meta))


def _stop_index(tokenizer, tokens: list[int], stops: tuple[str, ...]) -> int | None:
    """Smallest k with a stop string inside ``decode(tokens[:k])`` (binary search: containment only grows)."""
    def hit(k: int) -> bool:
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        return any(s in text for s in stops)

    if not stops or not hit(len(tokens)):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class HFEngine:
    """transformers ``generate`` behind the `RolloutEngine` protocol (text or video prompts)."""

    def __init__(self, model_path: str | os.PathLike, cfg: RolloutConfig = RolloutConfig(backend="hf"),
                 device: str | torch.device | None = None):
        # transformers here, not with veripo.rollout: importing it takes about 1 s and sets
        # os.environ["TORCHINDUCTOR_CACHE_DIR"] (it imports torch._dynamo)
        from transformers import AutoConfig

        self.cfg = cfg
        self.model_path = str(model_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        config = AutoConfig.from_pretrained(self.model_path)
        self.multimodal = hasattr(config, "vision_config")
        if self.multimodal:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.model_path)
            self.tokenizer = self.processor.tokenizer
            auto = AutoModelForImageTextToText
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            auto = AutoModelForCausalLM
        self.tokenizer.padding_side = "left"
        self.model = auto.from_pretrained(self.model_path, dtype=_DTYPES[cfg.dtype]).to(self.device).eval()
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = sorted({*(eos if isinstance(eos, list) else [eos])} - {None})
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self._rng = torch.Generator().manual_seed(cfg.seed).get_state()
        self._cuda_rng = None

    # ---------------------------------------------------------------- generate

    def _encode(self, requests: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        if any(r.video is not None for r in requests):
            if self.processor is None:
                raise ValueError(f"HFEngine: {self.model_path} is a text model; it cannot take a video")
            if any(r.prompt is None for r in requests):
                raise ValueError("HFEngine: a batch with videos needs text prompts (the processor expands the "
                                 "video placeholders); pass GenerationRequest(prompt=...)")
            videos = [_as_loaded_video(r.video) for r in requests if r.video is not None]
            return processor_inputs(self.processor, [r.prompt for r in requests], videos)
        ids = [list(r.prompt_token_ids) if r.prompt is None else self.tokenizer(r.prompt)["input_ids"]
               for r in requests]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        return {"input_ids": input_ids, "attention_mask": mask}

    def _generation_config(self, sampling: SamplingConfig, n: int, max_new: int):
        from transformers import GenerationConfig

        kw: dict[str, Any] = dict(max_new_tokens=max_new, num_return_sequences=n, return_dict_in_generate=True,
                                  output_scores=sampling.logprobs == "processed",
                                  output_logits=sampling.logprobs == "raw", eos_token_id=self.eos_ids,
                                  pad_token_id=self.pad_id, do_sample=not sampling.greedy,
                                  min_new_tokens=min(sampling.min_tokens, max_new))
        if not sampling.greedy:  # a fresh config: the checkpoint's generation defaults (top_k=50, ...) do not leak in
            kw.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
        if sampling.stop:
            kw["stop_strings"] = list(sampling.stop)
        return GenerationConfig(**kw)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Sample]]:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"generate: n must be an integer >= 1, got {n!r}")
        if not requests:
            return []
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in self._encode(requests).items()}
        prompt_len = inputs["input_ids"].shape[1]
        max_new = min(sampling.max_tokens, self.cfg.max_model_len - prompt_len)
        if max_new < 1:
            raise ValueError(f"HFEngine: a prompt of {prompt_len} tokens leaves no room under max_model_len="
                             f"{self.cfg.max_model_len}. Fix: raise RolloutConfig.max_model_len or shorten the prompt")
        gen_cfg = self._generation_config(sampling, n, max_new)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            else:
                torch.set_rng_state(self._rng)
                if devices and self._cuda_rng is not None:
                    torch.cuda.set_rng_state(self._cuda_rng, self.device)
            out = self.model.generate(**inputs, generation_config=gen_cfg,
                                      tokenizer=self.tokenizer if sampling.stop else None)
            if sampling.seed is None:
                self._rng = torch.get_rng_state()
                self._cuda_rng = torch.cuda.get_rng_state(self.device) if devices else None
        return self._samples(requests, inputs, out, sampling, n, prompt_len)

    def _samples(self, requests, inputs, out, sampling: SamplingConfig, n: int, prompt_len: int) -> list[list[Sample]]:
        new = out.sequences[:, prompt_len:]
        steps = out.scores if sampling.logprobs == "processed" else out.logits
        if steps:
            lp = torch.stack([s.float().log_softmax(-1).gather(1, new[:, t:t + 1].to(s.device)).squeeze(1).cpu()
                              for t, s in enumerate(steps)], dim=1)
        new, mask = new.cpu().tolist(), inputs["attention_mask"].cpu()
        prompt_ids = inputs["input_ids"].cpu()
        results = []
        for i, r in enumerate(requests):
            rid = r.request_id or str(i)
            p_ids = prompt_ids[i][mask[i].bool()].tolist()
            samples = []
            for j in range(n):
                row = i * n + j
                tokens = new[row]
                end, reason = len(tokens), "length"
                eos_at = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
                if eos_at is not None:
                    end, reason = eos_at + 1, "stop"
                stop_at = _stop_index(self.tokenizer, tokens[:end], sampling.stop)
                if stop_at is not None:
                    end, reason = stop_at, "stop"
                tokens = tokens[:end]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if stop_at is not None:
                    text = text[:min(text.find(s) for s in sampling.stop if s in text)]
                logprobs = lp[row, :end].tolist() if steps else []
                samples.append(Sample(request_id=rid, index=j, token_ids=tokens, text=text, finish_reason=reason,
                                      logprobs=logprobs, prompt_token_ids=p_ids))
            results.append(samples)
        return results

    # ---------------------------------------------------------------- weights

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict:
        """Copy HF-named tensors into the model in place (a streaming ``load_state_dict``)."""
        t0 = time.perf_counter()
        state = self.model.state_dict(keep_vars=True)
        if not hasattr(self, "_by_checkpoint_name"):
            # the trainer sends checkpoint names (Qwen2.5-VL: ``visual.*``, ``model.*``); the live model
            # may name them differently (``model.visual.*``, ``model.language_model.*``)
            # veripo.train: only for an HF engine taking weights (0.9 s and 50 MiB more than veripo.rollout,
            # in every rollout actor otherwise)
            from veripo.train.weights import CheckpointNames

            to_ckpt = CheckpointNames(self.model)
            self._by_checkpoint_name = {to_ckpt(n): n for n in state}
        count = size = 0
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = state.get(name)
                if target is None and name in self._by_checkpoint_name:
                    target = state.get(self._by_checkpoint_name[name])
                if target is None:
                    known = ", ".join(list(state)[:3])
                    raise KeyError(f"HFEngine.update_weights: {name!r} is not a tensor of {self.model_path} "
                                   f"(names look like {known}, ...)")
                if target.shape != tensor.shape:
                    raise ValueError(f"HFEngine.update_weights: {name!r} has shape {tuple(tensor.shape)}, "
                                     f"the model's is {tuple(target.shape)}")
                target.copy_(tensor)
                count += 1
                size += tensor.numel() * tensor.element_size()
        seconds = time.perf_counter() - t0
        return {"tensors": count, "bytes": size, "buckets": 1, "seconds": seconds,
                "seconds_per_gb": seconds / max(size / 1e9, 1e-12), "transport": "inline"}

    # ---------------------------------------------------------------- memory

    @property
    def supports_sleep(self) -> bool:
        return self.device.type == "cuda"

    def sleep(self) -> None:
        if self.supports_sleep:
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        if self.supports_sleep:
            self.model.to(self.device)

    def close(self) -> None:
        self.__dict__.pop("model", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"HFEngine({Path(self.model_path).name}, device={self.device})"
