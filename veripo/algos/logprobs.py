"""Per-token log-probs and entropies from logits, chunked over T (docs/algorithms.md intro, "Per-token
log-probs").

``logp[b, t] = log_softmax(logits[b, t-1])[ids[b, t]]`` in float32 without ever building a float32
``[B, T, V]`` tensor: the logits (any float dtype, e.g. bf16) are upcast one chunk of positions at a
time into one reused float32 slab, so the extra memory is O(B * chunk * V) in the forward AND in the
backward (custom autograd Functions recompute each chunk's softmax instead of keeping float32 chunks
alive; only the per-position log-sum-exp, Tensor[B, T], is saved). The gradient w.r.t. the logits is
one tensor in the logits' dtype, as with the naive computation. Float64 logits are computed in float64.
Measured by benchmarks/logprob_memory.py (V = 152064, T = 4096, bf16): peak extra memory 0.03x the
naive forward and 0.19x the naive forward + backward.

Position 0 has no predecessor: its log-prob and entropy are defined as 0 (the caller's response mask
excludes prompt tokens anyway). The logits' last position predicts nothing and gets zero gradient.
Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Auto chunk size: positions per chunk so that one float32 chunk holds about this many elements
# (2**25 floats = 128 MiB; e.g. 220 positions at V = 152064, B = 1).
CHUNK_ELEMENTS = 2**25


def compute_dtype(logits: Tensor) -> torch.dtype:
    """float32 for bf16 / fp16 / fp32 logits, float64 for float64 logits."""
    return torch.promote_types(logits.dtype, torch.float32)


def auto_chunk_size(batch: int, vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Positions per chunk so that a float32 ``[batch, chunk, vocab]`` slab has ~`elements` elements."""
    return max(1, elements // max(1, batch * vocab))


def _spans(n: int, chunk: int):
    for s in range(0, n, chunk):
        yield s, min(s + chunk, n)


def _check(logits: Tensor, ids: Tensor | None, chunk_size: int | None) -> int:
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float [B, T, V] tensor, got {logits.dtype} {tuple(logits.shape)}")
    if ids is not None and (ids.shape != logits.shape[:2] or ids.is_floating_point()):
        raise ValueError(
            f"ids must be an integer [B, T] tensor matching logits, got {ids.dtype} {tuple(ids.shape)}"
        )
    B, _, V = logits.shape
    if chunk_size is None:
        return auto_chunk_size(B, V)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


class _Slab:
    """One reusable ``[B, chunk, V]`` buffer in the compute dtype, so every chunk reuses the same
    memory (no allocation, page faults or two live chunks at once)."""

    def __init__(self, logits: Tensor, chunk: int, dtype: torch.dtype):
        B, T, V = logits.shape
        self.B, self.V = B, V
        self.flat = torch.empty(B * min(chunk, max(T - 1, 0)) * V, dtype=dtype, device=logits.device)

    def take(self, n: int) -> Tensor:
        return self.flat[: self.B * n * self.V].view(self.B, n, self.V)

    def load(self, src_BnV: Tensor) -> Tensor:
        """An upcast copy of ``src_BnV`` in the slab."""
        return self.take(src_BnV.shape[1]).copy_(src_BnV)


def _grad_like(logits: Tensor) -> Tensor:
    """The logits' gradient buffer: every position is written by the chunk loop except the last."""
    grad = torch.empty_like(logits)
    grad[:, -1:].zero_()
    return grad


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """``out[b, j+1] = log_softmax(x[b, j])[tgt[b, j]]`` for x = logits[:, :-1], tgt = ids[:, 1:]."""

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, chunk: int) -> Tensor:
        B, T, V = logits.shape
        cdt = compute_dtype(logits)
        tgt = ids[:, 1:].unsqueeze(-1).long()
        out = torch.zeros(B, T, dtype=cdt, device=logits.device)
        lse = torch.zeros(B, max(T - 1, 0), dtype=cdt, device=logits.device)
        slab = _Slab(logits, chunk, cdt)
        for s, e in _spans(T - 1, chunk):
            x = slab.load(logits[:, s:e])
            picked = x.gather(-1, tgt[:, s:e]).squeeze(-1)
            m = x.amax(dim=-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf row: lse = -inf
            lse_c = x.sub_(m).exp_().sum(dim=-1).log_().add_(m.squeeze(-1))
            lse[:, s:e] = lse_c
            out[:, s + 1 : e + 1] = picked - lse_c
        ctx.save_for_backward(logits, tgt, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, tgt, lse = ctx.saved_tensors
        cdt = compute_dtype(logits)
        grad = _grad_like(logits)
        g = grad_out[:, 1:].to(cdt)
        slab = _Slab(logits, ctx.chunk, cdt)
        for s, e in _spans(logits.shape[1] - 1, ctx.chunk):
            # d out / d x_v = 1[v = tgt] - softmax(x)_v
            p = slab.load(logits[:, s:e]).sub_(lse[:, s:e, None]).exp_()
            gc = g[:, s:e, None]
            grad[:, s:e] = p.mul_(-gc).scatter_add_(-1, tgt[:, s:e], gc)
        return grad, None, None


class _ChunkedEntropy(torch.autograd.Function):
    """``out[b, j+1] = H(softmax(x[b, j]))`` for x = logits[:, :-1] (two float32 slabs)."""

    @staticmethod
    def forward(ctx, logits: Tensor, chunk: int) -> Tensor:
        B, T, V = logits.shape
        cdt = compute_dtype(logits)
        out = torch.zeros(B, T, dtype=cdt, device=logits.device)
        lse = torch.zeros(B, max(T - 1, 0), dtype=cdt, device=logits.device)
        slab_y, slab_p = _Slab(logits, chunk, cdt), _Slab(logits, chunk, cdt)
        for s, e in _spans(T - 1, chunk):
            y = slab_y.load(logits[:, s:e])
            m = y.amax(dim=-1, keepdim=True)
            p = torch.sub(y, m, out=slab_p.take(e - s)).exp_()
            lse_c = p.sum(dim=-1).log_().add_(m.squeeze(-1))
            y.sub_(lse_c[..., None])  # log p
            torch.exp(y, out=p)
            out[:, s + 1 : e + 1] = -(p.mul_(y)).sum(dim=-1)  # H = -sum_v p_v log p_v
            lse[:, s:e] = lse_c
        ctx.save_for_backward(logits, lse, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, lse, ent = ctx.saved_tensors
        cdt = compute_dtype(logits)
        grad = _grad_like(logits)
        g = grad_out[:, 1:].to(cdt)
        H = ent[:, 1:]
        slab_y, slab_p = _Slab(logits, ctx.chunk, cdt), _Slab(logits, ctx.chunk, cdt)
        for s, e in _spans(logits.shape[1] - 1, ctx.chunk):
            # dH/dx_v = -p_v (log p_v + H)
            y = slab_y.load(logits[:, s:e]).sub_(lse[:, s:e, None])
            p = torch.exp(y, out=slab_p.take(e - s))
            grad[:, s:e] = y.add_(H[:, s:e, None]).mul_(p).mul_(-g[:, s:e, None])
        return grad, None


def token_logprobs(logits: Tensor, ids: Tensor, chunk_size: int | None = None) -> Tensor:
    """Log-probs of the taken tokens, chunked over T (docs/algorithms.md intro, "Per-token log-probs").

    ``logp[b, t] = log_softmax(logits[b, t-1].float())[ids[b, t]]`` for t >= 1 and ``logp[b, 0] = 0``
    (no predecessor; mask it out). Computed `chunk_size` positions at a time with float32 per chunk
    (extra memory O(B * chunk_size * V) float32 in forward and backward); equal to the naive float32
    computation to ~1e-6 and differentiable w.r.t. `logits` (same gradient as the naive one).

    Args:
        logits: Tensor[B, T, V], any float dtype (bf16 is upcast per chunk); logits[:, t] predicts
            token t + 1, as returned by a causal LM for input ids `ids`.
        ids: Tensor[B, T] integer token ids, each in [0, V) (replace padding ids such as -100 first).
        chunk_size: positions per chunk; None picks `auto_chunk_size(B, V)` (~128 MiB float32 per chunk).
    Returns:
        Tensor[B, T] float32 (float64 for float64 logits: the compute dtype is float32 or wider).
    """
    chunk = _check(logits, ids, chunk_size)
    return _ChunkedTokenLogprobs.apply(logits, ids, chunk)


def entropy_from_logits(logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """Entropy of the predictive distribution of each taken token, chunked over T, aligned with
    `token_logprobs` (docs/algorithms.md intro): ``H[b, t] = entropy(softmax(logits[b, t-1].float()))`` for
    t >= 1 and ``H[b, 0] = 0``. Differentiable (chunked backward, float32 per chunk).

    Args:
        logits: Tensor[B, T, V], any float dtype.
        chunk_size: as in `token_logprobs`.
    Logits must be finite (a -inf logit makes ``p log p`` NaN here; `token_logprobs` accepts -inf).

    Returns:
        Tensor[B, T] float32 (float64 for float64 logits).
    """
    chunk = _check(logits, None, chunk_size)
    return _ChunkedEntropy.apply(logits, chunk)


def naive_token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """The unchunked reference of `token_logprobs` (builds the float32 [B, T, V] log-softmax; for
    tests and benchmarks only). Tensor[B, T, V], Tensor[B, T] -> Tensor[B, T] float32."""
    _check(logits, ids, 1)
    logsm_BTV = torch.log_softmax(logits[:, :-1].to(compute_dtype(logits)), dim=-1)
    lp = logsm_BTV.gather(-1, ids[:, 1:, None].long()).squeeze(-1)
    return torch.cat([lp.new_zeros(lp.shape[0], 1), lp], dim=1)
