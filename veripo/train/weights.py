"""Full weights under their HF checkpoint names, for vLLM weight sync and for HF export.

Names are those `save_pretrained` writes (and vLLM's loaders read): the live module names with peft's
``base_model.model.`` / ``.base_layer`` and wrapper prefixes removed, then mapped back through
transformers' checkpoint conversion (Qwen2.5-VL lives as ``model.language_model.*`` / ``model.visual.*``
but is stored as ``model.*`` / ``visual.*``). LoRA layers are yielded merged: ``W + scaling * B @ A``.
FSDP2 shards are gathered with ``DTensor.full_tensor()``, a collective: every rank must iterate.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")
_LORA_KEYS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
_SKIP_FILES = {"veripo_model.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
               "adapter_config.json"}


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor: gathered from its shards when it is a DTensor (collective), else itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


class CheckpointNames:
    """Maps a live parameter name of `base_model` to its name in an HF checkpoint folder."""

    def __init__(self, base_model: torch.nn.Module):
        self.base_model = base_model
        self._cache: dict[str, str] = {}
        try:
            from transformers.core_model_loading import revert_weight_conversion
        except ImportError:  # older transformers: live names are checkpoint names
            revert_weight_conversion = None
        self._revert = revert_weight_conversion

    def __call__(self, name: str) -> str:
        if self._revert is None:
            return name
        if name not in self._cache:
            out = self._revert(self.base_model, {name: torch.empty(0, device="meta")})
            if len(out) != 1:
                raise NotImplementedError(f"{name}: this model's checkpoint format merges several weights into one "
                                          "(e.g. fused MoE experts), which weight sync does not support yet")
            self._cache[name] = next(iter(out))
        return self._cache[name]


def _live_name(key: str, is_peft: bool) -> str:
    if is_peft and key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    for prefix in _WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key.replace(".base_layer.", ".")


def _lora_delta(module: torch.nn.Module) -> Tensor | None:
    """Sum over active adapters of ``scaling * B @ A`` (float32, full), or None when none is active."""
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return None
    delta = None
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        a = full_tensor(module.lora_A[name].weight.detach()).float()
        b = full_tensor(module.lora_B[name].weight.detach()).float()
        d = (b @ a) * module.scaling[name]
        d = d.T if module.fan_in_fan_out else d
        delta = d if delta is None else delta + d
    return delta


def iter_hf_weights(model: torch.nn.Module, base_model: torch.nn.Module, is_peft: bool,
                    dtype: torch.dtype | None = None, include_tied: bool = True) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(checkpoint_name, full_tensor)`` for every weight of `model` (see the module docstring).

    `base_model` is the transformers model inside any peft wrapper. Tied output embeddings are yielded
    as ``lm_head.weight`` (or the model's own name) too when `include_tied`.
    """
    names = CheckpointNames(base_model)
    out_name = _output_embedding_name(base_model)
    tied_name = names(out_name) if out_name is not None and _is_tied(base_model) else None
    lora_modules = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    yielded: set[str] = set()
    for key, value in model.state_dict().items():
        if any(tag in key for tag in _LORA_KEYS):
            continue
        name = names(_live_name(key, is_peft))
        if name in yielded or (name == tied_name and not include_tied):
            continue
        tensor = full_tensor(value.detach())
        if ".base_layer." in key and key.endswith(".weight"):
            delta = _lora_delta(lora_modules[key.rsplit(".base_layer.", 1)[0]])
            if delta is not None:
                tensor = (tensor.float() + delta).to(tensor.dtype)
        yielded.add(name)
        yield name, tensor if dtype is None else tensor.to(dtype)
    if include_tied and tied_name is not None and tied_name not in yielded:
        tensor = full_tensor(base_model.get_input_embeddings().weight.detach())
        yield tied_name, tensor if dtype is None else tensor.to(dtype)


def _output_embedding_name(base_model: torch.nn.Module) -> str | None:
    out = base_model.get_output_embeddings() if hasattr(base_model, "get_output_embeddings") else None
    if out is None:
        return None
    for name, module in base_model.named_modules():
        if module is out:
            return _live_name(f"{name}.weight", False)
    return None


def _is_tied(base_model: torch.nn.Module) -> bool:
    out = base_model.get_output_embeddings() if hasattr(base_model, "get_output_embeddings") else None
    inp = base_model.get_input_embeddings() if hasattr(base_model, "get_input_embeddings") else None
    return out is not None and inp is not None and out.weight is inp.weight


def source_dtype(model_dir: str | os.PathLike) -> torch.dtype:
    """The dtype a model folder's config declares (float32 when it declares none)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype") or "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


class SafetensorsWriter:
    """Streams tensors into ``model[-0000k-of-0000n].safetensors`` shards plus an index, like save_pretrained."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = 5 * 1024**3):
        self.out_dir, self.max_shard_bytes = out_dir, max_shard_bytes
        self.pending: dict[str, Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self.pending[name] = tensor.detach().to("cpu").contiguous()
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        tmp_name = f"shard-{len(self.shards):05d}.safetensors"
        save_file(self.pending, str(self.out_dir / tmp_name), metadata={"format": "pt"})
        self.shards.append((tmp_name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        if n == 1:
            os.replace(self.out_dir / self.shards[0][0], self.out_dir / "model.safetensors")
            return
        weight_map = {}
        for k, (tmp_name, keys) in enumerate(self.shards):
            final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out_dir / tmp_name, self.out_dir / final)
            weight_map.update({key: final for key in keys})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def copy_model_files(src: str | os.PathLike, dst: Path, dtype: torch.dtype) -> None:
    """Copy config, generation config, tokenizer and processor files (everything but weights) into `dst`."""
    for path in Path(src).iterdir():
        if (not path.is_file() or path.name.startswith(".") or path.name in _SKIP_FILES
                or path.name.endswith(_WEIGHT_SUFFIXES) or path.name.endswith(".lock")):
            continue
        shutil.copy2(path, dst / path.name)
    cfg_path = dst / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
