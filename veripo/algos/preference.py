"""Preference losses (docs/algorithms.md section 4): the DPO family, RRPO, LeanPO and SimPO.

Pure functions of precomputed log-probs; nothing here calls a model. Shapes: B pairs, T tokens, V
vocabulary. Every loss returns ``(losses_B, metrics)``: one loss per pair (reduce it yourself, e.g.
``(losses * weight).sum()`` with ``weight = 1 / global_pairs`` so micro-batches sum to the global mean)
and detached 0-dim metric tensors, always including

    rewards/chosen, rewards/rejected   mean implicit reward of each side
    rewards/margin                     mean of (chosen - rejected)
    rewards/accuracy                   fraction of pairs with chosen reward > rejected reward (ties: 0)

An empty batch (B = 0) gives ``losses`` of shape [0] and zero metrics, never NaN.

- `dpo_loss`: sigmoid, robust, cdpo, ipo, hinge on sequence log-probs (reference: TRL ``DPOTrainer``);
- `rrpo_loss`: phrase-level rewards from `phrase_spans` plus a token-wise KL on the chosen response
  (reference: pritamqu/RRPO ``losses.py``); `token_kl` computes that KL from logits, chunked over T;
- `leanpo_loss` / `simpo_loss`: reference-free, on average per-token log-likelihoods;
- the registry: `get_preference_loss(name)` returns a `PreferenceLoss` that runs any of them on one
  `PreferenceInputs` (per-token tensors of both sides) with one `PreferenceHParams`, adding the
  optional SFT term ``sft_weight * NLL(y+)`` (token mean of the chosen response).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from veripo.algos.logprobs import _check, _Slab, _grad_like, _spans, compute_dtype
from veripo.registry import Registry

Span = tuple[int, int]
SpanPair = tuple[Span, Span]

__all__ = [
    "DPO_KINDS", "PREFERENCE_LOSSES", "PreferenceHParams", "PreferenceInputs", "PreferenceLoss", "dpo_loss",
    "get_preference_loss", "leanpo_loss", "phrase_masks", "phrase_spans", "register_preference_loss",
    "rrpo_loss", "simpo_loss", "token_kl",
]


# ----------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------


def _vector(x: Tensor, name: str, B: int | None = None) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 1 or (B is not None and x.shape[0] != B):
        want = "[B]" if B is None else f"[{B}]"
        raise ValueError(f"{name} must be a {want} tensor, got {getattr(x, 'shape', type(x).__name__)}")
    return x


def _masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x`` over ``mask`` (all of x when None), 0 when nothing is selected; detached."""
    x = x.detach().float()
    if mask is not None:
        x = x[mask]
    return x.mean() if x.numel() else x.new_zeros(())


def _pair_metrics(chosen_B: Tensor, rejected_B: Tensor, valid_B: Tensor | None = None) -> dict[str, Tensor]:
    """Rewards, margin and ranking accuracy over the (valid) pairs; detached 0-dim tensors."""
    margin = chosen_B.detach() - rejected_B.detach()
    return {"rewards/chosen": _masked_mean(chosen_B, valid_B), "rewards/rejected": _masked_mean(rejected_B, valid_B),
            "rewards/margin": _masked_mean(margin, valid_B),
            "rewards/accuracy": _masked_mean((margin > 0).float(), valid_B)}


def _smoothing(eps: float, low: float, high: float, kind: str, closed_high: bool = False) -> float:
    ok = low <= eps <= high if closed_high else low <= eps < high
    if not ok:
        rng = f"[{low}, {high}]" if closed_high else f"[{low}, {high})"
        raise ValueError(f"label_smoothing must be in {rng} for {kind}, got {eps}")
    return float(eps)


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


# ----------------------------------------------------------------------------------------------------
# DPO family
# ----------------------------------------------------------------------------------------------------

# kind -> fn(D_B, beta, eps) -> losses_B, with D the (possibly length-normalised) margin of log-ratios
DPO_KINDS: Registry[Callable[[Tensor, float, float], Tensor]] = Registry("DPO loss kind")
_SMOOTHED_KINDS = ("robust", "cdpo")


@DPO_KINDS.register("sigmoid")
def _dpo_sigmoid(D: Tensor, beta: float, eps: float) -> Tensor:
    return -F.logsigmoid(beta * D)


@DPO_KINDS.register("robust")
def _dpo_robust(D: Tensor, beta: float, eps: float) -> Tensor:
    z = beta * D
    return (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


@DPO_KINDS.register("cdpo")
def _dpo_cdpo(D: Tensor, beta: float, eps: float) -> Tensor:
    z = beta * D
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@DPO_KINDS.register("ipo")
def _dpo_ipo(D: Tensor, beta: float, eps: float) -> Tensor:
    return (D - 1.0 / (2.0 * beta)).square()


@DPO_KINDS.register("hinge")
def _dpo_hinge(D: Tensor, beta: float, eps: float) -> Tensor:
    return torch.relu(1.0 - beta * D)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1, kind: str = "sigmoid", label_smoothing: float = 0.0, *,
             chosen_tokens: Tensor | None = None, rejected_tokens: Tensor | None = None) -> tuple[Tensor, dict]:
    """The DPO family (docs/algorithms.md section 4, "DPO family"; reference: TRL ``DPOTrainer`` loss_type).

    With log-ratios ``c = policy_chosen - ref_chosen`` and ``r = policy_rejected - ref_rejected`` and the
    margin ``D = c - r``:

    - ``sigmoid``: ``-log sigma(beta D)`` (DPO);
    - ``robust``:  ``[-(1-eps) log sigma(beta D) + eps log sigma(-beta D)] / (1 - 2 eps)``, eps in [0, 0.5);
    - ``cdpo``:    ``-(1-eps) log sigma(beta D) - eps log sigma(-beta D)`` (conservative DPO), eps in [0, 0.5];
    - ``ipo``:     ``(D_avg - 1/(2 beta))^2`` where each log-ratio is divided by its response's token
      count: pass `chosen_tokens` / `rejected_tokens`, or per-token averages as the four log-probs;
    - ``hinge``:   ``relu(1 - beta D)``.

    `label_smoothing` (eps) applies to robust and cdpo only; another kind with eps != 0 is an error.
    Token counts, when given, normalise the log-ratios for any kind (TRL does it for ipo).

    Args:
        policy_chosen, policy_rejected: Tensor[B], sequence log-probs ``sum_t mask * logp[t]`` of each
            response under the policy (differentiable).
        ref_chosen, ref_rejected: Tensor[B], the same under the frozen reference (no gradient needed).
        chosen_tokens, rejected_tokens: Tensor[B] response token counts (optional, keyword-only).
    Returns:
        losses: Tensor[B]; metrics: rewards/chosen = mean ``beta * c``, rewards/rejected = mean
        ``beta * r``, rewards/margin, rewards/accuracy (fraction with c > r).
    """
    fn = DPO_KINDS.get(kind)
    beta = _positive(beta, "beta")
    eps = float(label_smoothing)
    if kind == "robust":
        _smoothing(eps, 0.0, 0.5, kind)
    elif kind == "cdpo":
        _smoothing(eps, 0.0, 0.5, kind, closed_high=True)
    elif eps != 0.0:
        raise ValueError(f"label_smoothing is used by {', '.join(_SMOOTHED_KINDS)} only; got {eps} for kind={kind!r}")
    B = _vector(policy_chosen, "policy_chosen").shape[0]
    for name, t in (("policy_rejected", policy_rejected), ("ref_chosen", ref_chosen), ("ref_rejected", ref_rejected)):
        _vector(t, name, B)
    c = policy_chosen - ref_chosen.detach().to(policy_chosen.dtype)
    r = policy_rejected - ref_rejected.detach().to(policy_rejected.dtype)
    if (chosen_tokens is None) != (rejected_tokens is None):
        raise ValueError("give both chosen_tokens and rejected_tokens, or neither")
    if chosen_tokens is not None:
        c = c / _vector(chosen_tokens, "chosen_tokens", B).to(c.dtype).clamp(min=1.0)
        r = r / _vector(rejected_tokens, "rejected_tokens", B).to(r.dtype).clamp(min=1.0)
    losses = fn(c - r, beta, eps)
    return losses, _pair_metrics(beta * c, beta * r)


# ----------------------------------------------------------------------------------------------------
# RRPO
# ----------------------------------------------------------------------------------------------------


def phrase_spans(chosen_ids: Sequence[int], rejected_ids: Sequence[int], min_match: int = 1) -> list[SpanPair]:
    """The differing phrases of two responses (docs/algorithms.md section 4, RRPO).

    ``difflib.SequenceMatcher(None, chosen, rejected, autojunk=False)`` finds the matching blocks;
    blocks shorter than `min_match` are dropped (their tokens join the surrounding gaps); the gaps
    between consecutive kept blocks are paired in order, and a gap non-empty on both sides is a phrase.
    Gaps empty on one side (a pure insertion or deletion) are not phrases.

    Spans are half-open token ranges into each response (Python slices): phrase k is
    ``chosen_ids[s_c:e_c]`` and ``rejected_ids[s_r:e_r]`` (docs/algorithms.md's ``[s_k, e_k]`` with e exclusive).

    >>> phrase_spans([1, 2, 3, 4], [1, 9, 3, 4])
    [((1, 2), (1, 2))]
    """
    if not isinstance(min_match, int) or min_match < 1:
        raise ValueError(f"min_match must be an integer >= 1, got {min_match!r}")
    a, b = list(chosen_ids), list(rejected_ids)
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    spans: list[SpanPair] = []
    pa = pb = 0
    for i, j, size in blocks:  # the last block is the (len(a), len(b), 0) sentinel: always kept
        if size < min_match and size != 0:
            continue
        if i > pa and j > pb:
            spans.append(((pa, i), (pb, j)))
        pa, pb = i + size, j + size
    return spans


def phrase_masks(spans: Sequence[Sequence[SpanPair]], chosen_len: int, rejected_len: int,
                 chosen_offset: int | Sequence[int] = 0, rejected_offset: int | Sequence[int] = 0,
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Float masks ``[B, chosen_len]`` and ``[B, rejected_len]`` that are 1 on every phrase token.

    `spans[b]` are pair b's `phrase_spans` (response coordinates); each offset (one int, or one per
    pair) is where that response starts on the T axis (e.g. the prompt length in a prompt + response row).
    """
    B = len(spans)
    offs_c = [chosen_offset] * B if isinstance(chosen_offset, int) else list(chosen_offset)
    offs_r = [rejected_offset] * B if isinstance(rejected_offset, int) else list(rejected_offset)
    if len(offs_c) != B or len(offs_r) != B:
        raise ValueError(f"phrase_masks: need one offset per pair ({B})")
    mc = torch.zeros(B, chosen_len, device=device)
    mr = torch.zeros(B, rejected_len, device=device)
    for b, pairs in enumerate(spans):
        for (sc, ec), (sr, er) in pairs:
            if not (0 <= sc < ec and 0 <= sr < er and offs_c[b] + ec <= chosen_len and offs_r[b] + er <= rejected_len):
                raise ValueError(f"phrase_masks: pair {b} span {((sc, ec), (sr, er))} is empty or outside the "
                                 f"[{chosen_len}] / [{rejected_len}] rows at offsets {offs_c[b]}, {offs_r[b]}")
            mc[b, offs_c[b] + sc:offs_c[b] + ec] = 1.0
            mr[b, offs_r[b] + sr:offs_r[b] + er] = 1.0
    return mc, mr


def rrpo_loss(policy_logp_chosen: Tensor, policy_logp_rejected: Tensor, ref_logp_chosen: Tensor,
              ref_logp_rejected: Tensor, spans: Sequence[Sequence[SpanPair]] | tuple[Tensor, Tensor],
              token_kl_chosen: Tensor, beta: float = 0.1, alpha: float = 0.01) -> tuple[Tensor, dict]:
    """RRPO, refined regularized preference optimization (docs/algorithms.md section 4, RRPO; reference:
    pritamqu/RRPO ``losses.py``).

    Phrase reward ``r(y_k) = beta * sum_{t in phrase k} (logp[t] - ref[t])``, ``u = sum_k r(y+_k) - r(y-_k)``;
    loss ``-log sigma(u) + alpha * D_TKL`` per pair, where ``D_TKL`` is the token-wise KL of the chosen
    response summed over its tokens (`token_kl`, masked and summed by the caller).

    A pair with no differing phrase is skipped: its loss is exactly 0 with zero gradient, and it is
    counted in ``rrpo/skipped``; reduce with a mean over the valid pairs (see
    `veripo.stages.preference`). Metrics (rewards as in the reference: summed phrase rewards) are over
    the valid pairs; a batch with none gives zeros.

    Args:
        policy_logp_chosen: Tensor[B, Tc] per-token log-probs of the chosen rows (differentiable);
        policy_logp_rejected: Tensor[B, Tr]; ref_logp_chosen: Tensor[B, Tc]; ref_logp_rejected: Tensor[B, Tr].
        spans: per pair, its `phrase_spans` as indices into the T axes above (response-only rows, or
            spans shifted by the prompt length), or precomputed masks ``(mask_c [B, Tc], mask_r [B, Tr])``
            from `phrase_masks`.
        token_kl_chosen: Tensor[B], ``sum_t mask+ * KL(p_ref || p_theta)`` of each chosen response.
    Returns:
        losses: Tensor[B]; metrics incl. rrpo/skipped (count), rrpo/token_kl (mean over valid pairs).
    """
    beta = _positive(beta, "beta")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if policy_logp_chosen.dim() != 2 or policy_logp_rejected.dim() != 2:
        raise ValueError("policy_logp_chosen / policy_logp_rejected must be [B, T] per-token log-probs")
    B, Tc = policy_logp_chosen.shape
    Tr = policy_logp_rejected.shape[1]
    for name, t, shape in (("policy_logp_rejected", policy_logp_rejected, (B, Tr)),
                           ("ref_logp_chosen", ref_logp_chosen, (B, Tc)),
                           ("ref_logp_rejected", ref_logp_rejected, (B, Tr))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    _vector(token_kl_chosen, "token_kl_chosen", B)
    if isinstance(spans, tuple) and len(spans) == 2 and all(isinstance(m, Tensor) for m in spans):
        mask_c, mask_r = spans
    else:
        if len(spans) != B:
            raise ValueError(f"spans must hold one list of phrase spans per pair ({B}), got {len(spans)}")
        mask_c, mask_r = phrase_masks(spans, Tc, Tr, device=policy_logp_chosen.device)
    mask_c = mask_c.to(policy_logp_chosen.dtype)
    mask_r = mask_r.to(policy_logp_rejected.dtype)
    valid = (mask_c != 0).any(dim=-1) & (mask_r != 0).any(dim=-1)
    zero = torch.zeros((), dtype=policy_logp_chosen.dtype, device=policy_logp_chosen.device)
    # masked sums with exact zeros off-phrase (inf/NaN in padding never leaks)
    dc = torch.where(mask_c != 0, (policy_logp_chosen - ref_logp_chosen.detach()) * mask_c, zero).sum(-1)
    dr = torch.where(mask_r != 0, (policy_logp_rejected - ref_logp_rejected.detach()) * mask_r, zero).sum(-1)
    u = beta * (dc - dr)
    per_pair = -F.logsigmoid(u) + alpha * token_kl_chosen.to(u.dtype)
    losses = torch.where(valid, per_pair, zero)
    metrics = _pair_metrics(beta * dc, beta * dr, valid)
    metrics["rrpo/skipped"] = (~valid).sum().float()
    metrics["rrpo/token_kl"] = _masked_mean(token_kl_chosen, valid)
    return losses, metrics


class _ChunkedTokenKL(torch.autograd.Function):
    """``out[b, j+1] = KL(softmax(r[b, j]) || softmax(x[b, j]))`` for x = logits[:, :-1], r = ref[:, :-1]."""

    @staticmethod
    def forward(ctx, logits: Tensor, ref_logits: Tensor, chunk: int) -> Tensor:
        B, T, V = logits.shape
        cdt = compute_dtype(logits)
        out = torch.zeros(B, T, dtype=cdt, device=logits.device)
        lse_q = torch.zeros(B, max(T - 1, 0), dtype=cdt, device=logits.device)
        lse_p = torch.zeros_like(lse_q)
        slab_q, slab_p = _Slab(logits, chunk, cdt), _Slab(logits, chunk, cdt)
        for s, e in _spans(T - 1, chunk):
            q = slab_q.load(logits[:, s:e])
            p = slab_p.load(ref_logits[:, s:e])
            lq, lp = torch.logsumexp(q, -1), torch.logsumexp(p, -1)
            q.sub_(lq[..., None])              # log q_theta
            p.sub_(lp[..., None])              # log p_ref
            q.neg_().add_(p)                   # log p_ref - log q_theta
            out[:, s + 1:e + 1] = p.exp_().mul_(q).sum(-1)
            lse_q[:, s:e], lse_p[:, s:e] = lq, lp
        ctx.save_for_backward(logits, ref_logits, lse_q, lse_p)
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, ref_logits, lse_q, lse_p = ctx.saved_tensors
        cdt = compute_dtype(logits)
        grad = _grad_like(logits)
        g = grad_out[:, 1:].to(cdt)
        slab_q, slab_p = _Slab(logits, ctx.chunk, cdt), _Slab(logits, ctx.chunk, cdt)
        for s, e in _spans(logits.shape[1] - 1, ctx.chunk):
            # d KL / d x_v = q_theta(v) - p_ref(v)
            q = slab_q.load(logits[:, s:e]).sub_(lse_q[:, s:e, None]).exp_()
            p = slab_p.load(ref_logits[:, s:e]).sub_(lse_p[:, s:e, None]).exp_()
            grad[:, s:e] = q.sub_(p).mul_(g[:, s:e, None])
        return grad, None, None


def token_kl(policy_logits: Tensor, ref_logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """Token-wise KL of the reference from the policy at every position (docs/algorithms.md section 4,
    RRPO ``D_TKL``), chunked over T, aligned with `veripo.algos.token_logprobs`:

    ``kl[b, t] = sum_v p_ref(v) (log p_ref(v) - log p_theta(v))`` with both distributions from the logits
    at position ``t - 1`` (log_softmax in float32 per chunk, never ``softmax().log()``); ``kl[b, 0] = 0``.
    ``D_TKL = (kl * mask).sum(-1)``. Extra memory O(B * chunk_size * V) float32 (two slabs) in forward and
    backward; differentiable w.r.t. `policy_logits` only (the reference is treated as a constant).

    Args:
        policy_logits: Tensor[B, T, V], any float dtype.
        ref_logits: Tensor[B, T, V], the frozen reference's logits for the same ids (any float dtype).
        chunk_size: positions per chunk (None: ~128 MiB float32 per slab, as `token_logprobs`).
    Both must be finite. Returns Tensor[B, T] float32 (float64 for float64 logits).
    """
    chunk = _check(policy_logits, None, chunk_size)
    if ref_logits.shape != policy_logits.shape or not ref_logits.is_floating_point():
        raise ValueError(f"ref_logits must be a float tensor shaped like policy_logits {tuple(policy_logits.shape)}, "
                         f"got {ref_logits.dtype} {tuple(ref_logits.shape)}")
    return _ChunkedTokenKL.apply(policy_logits, ref_logits.detach(), chunk)


# ----------------------------------------------------------------------------------------------------
# LeanPO and SimPO (reference-free)
# ----------------------------------------------------------------------------------------------------


def leanpo_loss(policy_avg_chosen: Tensor, policy_avg_rejected: Tensor, beta: float = 2.0, gamma: float = 0.5,
                label_smoothing: float = 0.1) -> tuple[Tensor, dict]:
    """LeanPO, lean preference optimization (docs/algorithms.md section 4, LeanPO; a reconstruction after the
    authors' code): reward ``r(y) = beta * mean_t logp[t]``, ``D = mean logp(y+) - mean logp(y-)``, dynamic
    smoothing ``eps_i = eps * 1[D_i < 0]`` (only mis-ranked pairs are smoothed; not differentiated), and

        loss_i = -(1 - eps_i) log sigma(beta D_i - gamma) - eps_i log sigma(-beta D_i - gamma).

    The margin gamma is not divided by beta. Defaults beta = 2.0, gamma = 0.5, eps = 0.1 (eps in [0, 0.5)).

    Args:
        policy_avg_chosen, policy_avg_rejected: Tensor[B], mean per-token log-prob of each response
            under the policy (differentiable).
    Returns:
        losses: Tensor[B]; metrics: rewards (``beta * mean logp``), margin, accuracy, leanpo/smoothed
        (fraction of pairs smoothed).
    """
    beta = _positive(beta, "beta")
    eps = _smoothing(float(label_smoothing), 0.0, 0.5, "leanpo")
    B = _vector(policy_avg_chosen, "policy_avg_chosen").shape[0]
    _vector(policy_avg_rejected, "policy_avg_rejected", B)
    D = policy_avg_chosen - policy_avg_rejected
    eps_B = eps * (D.detach() < 0).to(D.dtype)
    losses = -(1.0 - eps_B) * F.logsigmoid(beta * D - gamma) - eps_B * F.logsigmoid(-beta * D - gamma)
    metrics = _pair_metrics(beta * policy_avg_chosen, beta * policy_avg_rejected)
    metrics["leanpo/smoothed"] = _masked_mean((eps_B > 0).float())
    return losses, metrics


def simpo_loss(policy_avg_chosen: Tensor, policy_avg_rejected: Tensor, beta: float = 2.0,
               gamma: float = 0.5) -> tuple[Tensor, dict]:
    """SimPO: ``-log sigma(beta (mean logp(y+) - mean logp(y-)) - gamma)``, the eps = 0 case of `leanpo_loss`
    (docs/algorithms.md section 4). Tensor[B] averages in, (losses Tensor[B], metrics) out."""
    losses, metrics = leanpo_loss(policy_avg_chosen, policy_avg_rejected, beta=beta, gamma=gamma, label_smoothing=0.0)
    del metrics["leanpo/smoothed"]
    return losses, metrics


# ----------------------------------------------------------------------------------------------------
# Registry: one call shape for every loss
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceInputs:
    """Per-token tensors of B pairs (one common T per side; masks pick the response tokens).

    logp_chosen_BT / logp_rejected_BT: policy log-probs (differentiable);
    mask_chosen_BT / mask_rejected_BT: 1 on response tokens, 0 on prompt and padding;
    ref_chosen_BT / ref_rejected_BT: reference log-probs (losses with a reference);
    phrase_chosen_BT / phrase_rejected_BT: RRPO phrase masks (`phrase_masks`);
    token_kl_chosen_B: RRPO ``D_TKL`` per pair (None: the alpha term is off).
    """

    logp_chosen_BT: Tensor
    logp_rejected_BT: Tensor
    mask_chosen_BT: Tensor
    mask_rejected_BT: Tensor
    ref_chosen_BT: Tensor | None = None
    ref_rejected_BT: Tensor | None = None
    phrase_chosen_BT: Tensor | None = None
    phrase_rejected_BT: Tensor | None = None
    token_kl_chosen_B: Tensor | None = None

    @staticmethod
    def _sum(x_BT: Tensor, mask_BT: Tensor) -> Tensor:
        m = mask_BT.to(x_BT.dtype)
        return torch.where(mask_BT != 0, x_BT * m, torch.zeros((), dtype=x_BT.dtype, device=x_BT.device)).sum(-1)

    def tokens(self) -> tuple[Tensor, Tensor]:
        return self.mask_chosen_BT.float().sum(-1), self.mask_rejected_BT.float().sum(-1)

    def sums(self) -> tuple[Tensor, Tensor]:
        return self._sum(self.logp_chosen_BT, self.mask_chosen_BT), self._sum(self.logp_rejected_BT, self.mask_rejected_BT)

    def averages(self) -> tuple[Tensor, Tensor]:
        (sc, sr), (nc, nr) = self.sums(), self.tokens()
        return sc / nc.clamp(min=1.0).to(sc.dtype), sr / nr.clamp(min=1.0).to(sr.dtype)

    def ref_sums(self) -> tuple[Tensor, Tensor]:
        if self.ref_chosen_BT is None or self.ref_rejected_BT is None:
            raise ValueError("this preference loss needs reference log-probs (ref_chosen_BT / ref_rejected_BT)")
        return self._sum(self.ref_chosen_BT, self.mask_chosen_BT), self._sum(self.ref_rejected_BT, self.mask_rejected_BT)


@dataclass(frozen=True)
class PreferenceHParams:
    beta: float
    label_smoothing: float = 0.0
    gamma: float = 0.5
    alpha: float = 0.01
    sft_weight: float = 0.0


ComputeFn = Callable[[PreferenceInputs, PreferenceHParams], "tuple[Tensor, dict, Tensor]"]


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered preference loss: ``loss(inputs, hparams) -> (losses_B, metrics)``.

    `compute` returns (losses, metrics, valid_B); the call adds ``sft_weight * NLL(y+)`` (token-mean NLL
    of the chosen response) on valid pairs. The flags tell a trainer what to prepare.
    """

    name: str
    compute: ComputeFn
    needs_reference: bool          # reference sequence / token log-probs
    needs_token_kl: bool           # the frozen reference's full logits on the chosen response (RRPO)
    default_beta: float
    default_label_smoothing: float = 0.0
    uses_label_smoothing: bool = False
    uses_gamma: bool = False
    needs_phrases: bool = False

    def __call__(self, inputs: PreferenceInputs, hp: PreferenceHParams) -> tuple[Tensor, dict]:
        losses, metrics, valid = self.compute(inputs, hp)
        avg_c, avg_r = inputs.averages()
        metrics["logps/chosen_avg"] = _masked_mean(avg_c, valid)
        metrics["logps/rejected_avg"] = _masked_mean(avg_r, valid)
        if hp.sft_weight:
            nll = -avg_c
            losses = losses + hp.sft_weight * torch.where(valid, nll, torch.zeros_like(nll))
            metrics["sft/nll"] = _masked_mean(nll, valid)
        return losses, metrics


PREFERENCE_LOSSES: Registry[PreferenceLoss] = Registry("preference loss")


def register_preference_loss(loss: PreferenceLoss) -> PreferenceLoss:
    """Register a `PreferenceLoss` under its name."""
    return PREFERENCE_LOSSES.register(loss.name)(loss)


def get_preference_loss(name: str) -> PreferenceLoss:
    """The preference loss `name` (cdpo, hinge, ipo, leanpo, robust, rrpo, sigmoid, simpo); an unknown
    name raises `UnknownNameError` listing the known ones."""
    return PREFERENCE_LOSSES.get(name)


def _all_valid(inputs: PreferenceInputs) -> Tensor:
    return torch.ones(inputs.logp_chosen_BT.shape[0], dtype=torch.bool, device=inputs.logp_chosen_BT.device)


def _dpo_compute(kind: str) -> ComputeFn:
    def compute(inputs: PreferenceInputs, hp: PreferenceHParams):
        (pc, pr), (rc, rr) = inputs.sums(), inputs.ref_sums()
        nc, nr = inputs.tokens() if kind == "ipo" else (None, None)  # IPO: per-token log-ratios
        losses, metrics = dpo_loss(pc, pr, rc, rr, beta=hp.beta, kind=kind, label_smoothing=hp.label_smoothing,
                                   chosen_tokens=nc, rejected_tokens=nr)
        return losses, metrics, _all_valid(inputs)
    return compute


def _rrpo_compute(inputs: PreferenceInputs, hp: PreferenceHParams):
    if inputs.phrase_chosen_BT is None or inputs.phrase_rejected_BT is None:
        raise ValueError("rrpo needs phrase masks (phrase_chosen_BT / phrase_rejected_BT; see phrase_masks)")
    if inputs.ref_chosen_BT is None or inputs.ref_rejected_BT is None:
        raise ValueError("rrpo needs reference per-token log-probs (ref_chosen_BT / ref_rejected_BT)")
    kl = inputs.token_kl_chosen_B
    if kl is None:
        if hp.alpha != 0:
            raise ValueError("rrpo with alpha > 0 needs token_kl_chosen_B (see token_kl)")
        kl = torch.zeros(inputs.logp_chosen_BT.shape[0], device=inputs.logp_chosen_BT.device)
    losses, metrics = rrpo_loss(inputs.logp_chosen_BT, inputs.logp_rejected_BT, inputs.ref_chosen_BT,
                                inputs.ref_rejected_BT, (inputs.phrase_chosen_BT, inputs.phrase_rejected_BT), kl,
                                beta=hp.beta, alpha=hp.alpha)
    valid = (inputs.phrase_chosen_BT != 0).any(-1) & (inputs.phrase_rejected_BT != 0).any(-1)
    return losses, metrics, valid


def _leanpo_compute(inputs: PreferenceInputs, hp: PreferenceHParams):
    losses, metrics = leanpo_loss(*inputs.averages(), beta=hp.beta, gamma=hp.gamma, label_smoothing=hp.label_smoothing)
    return losses, metrics, _all_valid(inputs)


def _simpo_compute(inputs: PreferenceInputs, hp: PreferenceHParams):
    losses, metrics = simpo_loss(*inputs.averages(), beta=hp.beta, gamma=hp.gamma)
    return losses, metrics, _all_valid(inputs)


for _kind in ("sigmoid", "robust", "cdpo", "ipo", "hinge"):
    register_preference_loss(PreferenceLoss(_kind, _dpo_compute(_kind), needs_reference=True, needs_token_kl=False,
                                            default_beta=0.1, uses_label_smoothing=_kind in _SMOOTHED_KINDS))
register_preference_loss(PreferenceLoss("rrpo", _rrpo_compute, needs_reference=True, needs_token_kl=True,
                                        default_beta=0.1, needs_phrases=True))
register_preference_loss(PreferenceLoss("leanpo", _leanpo_compute, needs_reference=False, needs_token_kl=False,
                                        default_beta=2.0, default_label_smoothing=0.1, uses_label_smoothing=True,
                                        uses_gamma=True))
register_preference_loss(PreferenceLoss("simpo", _simpo_compute, needs_reference=False, needs_token_kl=False,
                                        default_beta=2.0, uses_gamma=True))
