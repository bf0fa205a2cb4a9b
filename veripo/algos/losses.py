"""Per-token policy-gradient loss, KL estimators and loss aggregation (docs/algorithms.md section 1).

Pure functions of precomputed tensors; nothing here calls a model. Shapes: B sequences, T tokens;
``mask_BT`` is 1 on response tokens and 0 on prompt and padding (bool or float; a float mask acts as
per-token weights). Masked-out positions never reach the result, even when they hold inf or NaN.

Micro-batches and ranks. Every aggregation mode is ``sum_b row_term_b / denominator`` where the row
terms depend on one sequence only and the default denominator (`agg_denominator`) is additive over
sequences. So for a global batch split into micro-batches (and ranks) by rows,

    sum over parts of aggregate(L[part], mask[part], mode, denominator=D) == aggregate(L, mask, mode)
    with D = agg_denominator(mask, mode, max_len)       (the full batch's denominator)
           = sum over parts of agg_denominator(mask[part], mode, max_len)  (e.g. an all-reduce SUM)

which is what gradient accumulation and data parallelism (gradients summed) need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from veripo.registry import Registry

# ----------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggMode:
    """An aggregation mode: ``aggregate = row_terms(L, mask).sum() / denominator(mask, max_len)``.

    ``row_terms(loss_BT, mask_BT) -> Tensor[B]`` depends on each row alone;
    ``denominator(mask_BT, max_len) -> 0-dim Tensor`` must be additive over a split of the rows.
    """

    row_terms: Callable[[Tensor, Tensor], Tensor]
    denominator: Callable[[Tensor, int], Tensor]
    doc: str = ""


AGG_MODES: Registry[AggMode] = Registry("loss aggregation mode")


def register_agg_mode(name: str) -> Callable[[AggMode], AggMode]:
    """Register an `AggMode` under `name` (used as ``register_agg_mode("x")(AggMode(...))``)."""
    return AGG_MODES.register(name)


def get_agg_mode(name: str) -> AggMode:
    """The `AggMode` named `name`; an unknown name raises `UnknownNameError` listing the known ones."""
    return AGG_MODES.get(name)


def _masked(loss_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """``mask * loss`` with exact zeros where mask == 0 (so inf/NaN in masked-out slots never leak)."""
    m = mask_BT.to(loss_BT.dtype)
    return torch.where(mask_BT != 0, loss_BT * m, torch.zeros((), dtype=loss_BT.dtype, device=loss_BT.device))


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with a zero denominator replaced by 1 (the numerator is then 0: nothing was
    masked in), so the result and its gradient are 0, never NaN."""
    den = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    return num / torch.where(den == 0, torch.ones_like(den), den)


def _n_seqs(mask_BT: Tensor) -> Tensor:
    return (mask_BT != 0).any(dim=-1).sum()


def _token_sums(loss_BT: Tensor, mask_BT: Tensor) -> Tensor:
    return _masked(loss_BT, mask_BT).sum(dim=-1)


def _token_means(loss_BT: Tensor, mask_BT: Tensor) -> Tensor:
    return _safe_div(_token_sums(loss_BT, mask_BT), mask_BT.to(loss_BT.dtype).sum(dim=-1))


register_agg_mode("token-mean")(AggMode(
    _token_sums, lambda mask_BT, max_len: mask_BT.sum(dtype=torch.float64),
    "sum(mask*L) / sum(mask): every response token weighs the same (GRPO's DAPO-style / TRL bnpo)"))
register_agg_mode("seq-mean-token-mean")(AggMode(
    _token_means, lambda mask_BT, max_len: _n_seqs(mask_BT),
    "mean over sequences of sum_t(mask*L) / sum_t(mask) (original GRPO / TRL grpo)"))
register_agg_mode("seq-mean-token-sum")(AggMode(
    _token_sums, lambda mask_BT, max_len: _n_seqs(mask_BT),
    "mean over sequences of sum_t(mask*L)"))
register_agg_mode("seq-mean-token-sum-norm")(AggMode(
    _token_sums, lambda mask_BT, max_len: _n_seqs(mask_BT) * max_len,
    "sum(mask*L) / (B * max_response_len) (Dr. GRPO / TRL dr_grpo)"))


def agg_denominator(mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """The default denominator of `aggregate` for `mask` (docs/algorithms.md section 1, "Aggregation").

    - ``token-mean``: the number of masked-in tokens ``sum(mask)`` (float64, exact for counts);
    - ``seq-mean-token-mean`` / ``seq-mean-token-sum``: the number of sequences with at least one
      masked-in token (all-padding rows are not counted);
    - ``seq-mean-token-sum-norm``: that number of sequences times `max_len` (default ``mask.shape[1]``).

    It is additive over a split of the rows, so the global batch's denominator is the sum (all-reduce
    SUM over ranks) of each part's. Pass the global one as ``denominator=`` to `aggregate` for each
    micro-batch, and the micro-batch losses sum to the global loss.

    Args:
        mask: Tensor[B, T], 1 on response tokens.
    Returns:
        0-dim Tensor on mask's device.
    """
    return get_agg_mode(mode).denominator(mask, mask.shape[-1] if max_len is None else int(max_len))


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    denominator: Tensor | float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce a per-token loss matrix to a scalar (docs/algorithms.md section 1, "Aggregation"; reference:
    verl ``agg_loss``, TRL GRPOTrainer ``loss_type`` bnpo / grpo / dr_grpo).

    Modes (``loss_BT`` = L, ``mask_BT`` = m):
    - ``token-mean``:              ``sum(m*L) / sum(m)``;
    - ``seq-mean-token-mean``:     ``sum_b [sum_t(m*L) / sum_t(m)] / n_seqs``;
    - ``seq-mean-token-sum``:      ``sum_b  sum_t(m*L)             / n_seqs``;
    - ``seq-mean-token-sum-norm``: ``sum(m*L) / (n_seqs * max_len)`` (Dr. GRPO), ``max_len`` =
      `max_len` or ``loss.shape[1]``; pass the configured max response length when T also covers the
      prompt, and always when micro-batches are padded to different lengths;
    with ``n_seqs`` the number of rows with at least one masked-in token (= B when there is no
    all-padding row).

    ``denominator`` replaces the whole divisor above (tokens, sequences, or sequences * max_len; see
    `agg_denominator`), e.g. the global batch's across micro-batches and ranks, so the parts' losses
    SUM to the global loss; `max_len` is then unused. Empty masks: a zero divisor is replaced by 1, and
    since the numerator is then 0 the loss is exactly 0 with zero gradient, never NaN (likewise a row
    with no masked-in token contributes 0 in ``seq-mean-token-mean``).

    Args:
        loss: Tensor[B, T] per-token loss.
        mask: Tensor[B, T] (bool or float), same shape.
    Returns:
        0-dim Tensor in loss's dtype, differentiable w.r.t. `loss`.
    """
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(f"loss and mask must both be [B, T]; got {tuple(loss.shape)}, {tuple(mask.shape)}")
    agg = get_agg_mode(mode)
    if denominator is None:
        denominator = agg.denominator(mask, loss.shape[-1] if max_len is None else int(max_len))
    elif not isinstance(denominator, Tensor) and denominator < 0:
        raise ValueError(f"denominator must be >= 0, got {denominator}")
    return _safe_div(agg.row_terms(loss, mask).sum(), denominator)


# ----------------------------------------------------------------------------------------------------
# KL to the reference policy
# ----------------------------------------------------------------------------------------------------

KlFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KlFn] = Registry("KL estimator")


def register_kl(name: str) -> Callable[[KlFn], KlFn]:
    """Decorator: register ``fn(logp_BT, ref_logp_BT) -> kl_BT`` under `name`."""
    return KL_ESTIMATORS.register(name)


def get_kl(name: str) -> KlFn:
    """The KL estimator `name` (k1, abs, k2, k3); unknown names raise `UnknownNameError`."""
    return KL_ESTIMATORS.get(name)


@register_kl("k1")
def _kl_k1(logp: Tensor, ref: Tensor) -> Tensor:
    return logp - ref


@register_kl("abs")
def _kl_abs(logp: Tensor, ref: Tensor) -> Tensor:
    return (logp - ref).abs()


@register_kl("k2")
def _kl_k2(logp: Tensor, ref: Tensor) -> Tensor:
    return 0.5 * (logp - ref).square()


@register_kl("k3")
def _kl_k3(logp: Tensor, ref: Tensor) -> Tensor:
    k = (ref - logp).clamp(-20.0, 20.0)
    return (k.exp() - k - 1.0).clamp(-10.0, 10.0)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate between the policy and the reference policy on the sampled tokens
    (docs/algorithms.md section 1, "KL to the reference policy"; reference: verl ``kl_penalty``).

    - ``k1``: ``logp - ref``;  ``abs``: ``|logp - ref|``;  ``k2``: ``0.5 (logp - ref)^2``;
    - ``k3`` (low variance): ``k = clamp(ref - logp, -20, 20)``; ``exp(k) - k - 1`` clamped to [-10, 10].

    Args:
        logp: Tensor[B, T], policy log-probs of the taken tokens.
        ref_logp: Tensor[B, T], reference-policy log-probs of the same tokens.
        kind: a registered estimator name; unknown names raise `UnknownNameError` listing the known.
    Returns:
        Tensor[B, T] (unmasked; aggregate it with `aggregate` and the response mask).
    """
    fn = get_kl(kind)
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    return fn(logp, ref_logp)


# ----------------------------------------------------------------------------------------------------
# Policy loss
# ----------------------------------------------------------------------------------------------------

PolicyLossFn = Callable[..., "tuple[Tensor, dict[str, Tensor]]"]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register ``fn(logp, old_logp, advantages, mask, **options) -> (loss, metrics)``."""
    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss `name` ("vanilla", ...); unknown names raise `UnknownNameError`."""
    return POLICY_LOSSES.get(name)


@dataclass(frozen=True)
class ClippedTokenLoss:
    """Per-token pieces of the clipped surrogate, all Tensor[B, T]."""

    loss: Tensor  # L, differentiable w.r.t. logp
    ratio: Tensor  # rho (detached)
    clipped: Tensor  # bool: the clipped branch L2 > L1 is active
    dual_clipped: Tensor  # bool: A < 0 and the dual-clip bound -A*c is active


def clipped_token_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> ClippedTokenLoss:
    """The unaggregated clipped surrogate of `policy_loss` (docs/algorithms.md section 1); `adv` is
    Tensor[B] (broadcast over tokens) or Tensor[B, T]."""
    if logp_BT.shape != old_logp_BT.shape or logp_BT.dim() != 2:
        raise ValueError(
            f"logp and old_logp must both be [B, T]; got {tuple(logp_BT.shape)}, {tuple(old_logp_BT.shape)}"
        )
    if adv.dim() == 1 and adv.shape[0] == logp_BT.shape[0]:
        adv_BT = adv.unsqueeze(-1)
    elif adv.shape == logp_BT.shape:
        adv_BT = adv
    else:
        raise ValueError(
            f"advantages must be [B] or [B, T] for logp {tuple(logp_BT.shape)}, got {tuple(adv.shape)}"
        )
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    adv_BT = adv_BT.to(logp_BT.dtype)
    ratio = torch.exp((logp_BT - old_logp_BT).clamp(-20.0, 20.0))
    l1 = -adv_BT * ratio
    l2 = -adv_BT * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(l1, l2)
    clipped = l2 > l1
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        l3 = -adv_BT * dual_clip
        neg = (adv_BT < 0).expand_as(loss)
        dual = neg & (loss > l3)
        loss = torch.where(neg, torch.minimum(loss, l3), loss)
    return ClippedTokenLoss(loss, ratio.detach(), clipped, dual)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = (mask != 0)
    return _safe_div(torch.where(m, x.double(), 0.0).sum(), m.sum())


@register_policy_loss("vanilla")
def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    *,
    denominator: Tensor | float | None = None,
    max_len: int | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped policy-gradient loss with optional dual clip (docs/algorithms.md section 1,
    "Policy loss"; reference: verl ``compute_policy_loss_vanilla``). Registered as "vanilla".

    Per token: ``rho = exp(clamp(logp - old_logp, -20, 20))``, ``L1 = -A rho``,
    ``L2 = -A clip(rho, 1 - clip_low, 1 + clip_high)``, ``L = max(L1, L2)``; with ``dual_clip = c > 1``,
    where ``A < 0``: ``L = min(L, -A c)``. Then ``aggregate(L, mask, agg, denominator=, max_len=)``.

    Args:
        logp: Tensor[B, T], current policy log-probs of the taken tokens (carries the gradient).
        old_logp: Tensor[B, T], log-probs under the policy that sampled them (no gradient needed).
        advantages: Tensor[B] (broadcast over tokens) or Tensor[B, T].
        mask: Tensor[B, T], 1 on response tokens.
        clip_low, clip_high: eps_low in [0, 1), eps_high >= 0. dual_clip: None or c > 1 (else ValueError).
        agg, denominator, max_len: see `aggregate` (micro-batch / rank splitting).
        token_weights: None or Tensor[B, T] of constant per-token factors applied to L before aggregation
            (the rollout-mismatch weights of `rollout_correction`; no gradient flows through them).
    Returns:
        ``(loss, metrics)``: loss is a 0-dim Tensor; metrics are detached 0-dim float64 Tensors (no
        device sync; call ``.item()`` when logging), each a plain mean over THIS call's masked-in
        tokens (0 when the mask is empty), independent of `denominator`:
        ``pg_clipfrac`` (fraction where the clipped branch L2 > L1 is active), ``pg_clipfrac_dual``
        (fraction where the dual-clip bound is active; 0 without dual clip), ``ppo_kl`` (approximate
        KL: mean of ``old_logp - logp``), ``ratio_mean``, ``ratio_max`` (max over masked-in tokens).
    """
    if mask.shape != logp.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match logp {tuple(logp.shape)}")
    parts = clipped_token_loss(logp, old_logp, advantages, clip_low, clip_high, dual_clip)
    loss = aggregate(_weighted(parts.loss, token_weights), mask, agg, denominator=denominator, max_len=max_len)
    return loss, _ratio_metrics(logp, old_logp, mask, parts.ratio, parts.clipped, parts.dual_clipped)


register_policy_loss("ppo_clip")(policy_loss)  # the same loss under its textbook name


def _weighted(loss_BT: Tensor, token_weights: Tensor | None) -> Tensor:
    if token_weights is None:
        return loss_BT
    if token_weights.shape != loss_BT.shape:
        raise ValueError(f"token_weights {tuple(token_weights.shape)} must match the loss {tuple(loss_BT.shape)}")
    return loss_BT * token_weights.detach().to(loss_BT.dtype)


def _ratio_metrics(logp: Tensor, old_logp: Tensor, mask: Tensor, ratio: Tensor, clipped: Tensor,
                   dual: Tensor | None = None) -> dict[str, Tensor]:
    with torch.no_grad():
        m = mask != 0
        return {
            "pg_clipfrac": _masked_mean(clipped, mask),
            "pg_clipfrac_dual": _masked_mean(dual if dual is not None else torch.zeros_like(clipped), mask),
            "ppo_kl": _masked_mean(old_logp.detach() - logp.detach(), mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "ratio_max": torch.where(m, ratio.detach().double(), 0.0).amax() if m.numel() else
            torch.zeros((), dtype=torch.float64, device=logp.device),
        }


def _check_inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
                  clip_high: float, allow_no_lower: bool = False) -> Tensor:
    """Shape and clip-range checks shared by the losses below; returns the advantages as [B, 1] or [B, T]."""
    if logp.shape != old_logp.shape or logp.dim() != 2 or mask.shape != logp.shape:
        raise ValueError(f"logp, old_logp and mask must all be [B, T]; got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if clip_low < 0 or (clip_low >= 1 and not allow_no_lower) or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        return advantages.to(logp.dtype).unsqueeze(-1)
    if advantages.shape == logp.shape:
        return advantages.to(logp.dtype)
    raise ValueError(f"advantages must be [B] or [B, T] for logp {tuple(logp.shape)}, got {tuple(advantages.shape)}")


def sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's length-normalised sequence ratio ``s_b = exp(sum_t m (logp - old_logp) / |y_b|)``, with
    the exponent clamped to [-20, 20]; Tensor[B] (1 for a row without response tokens), differentiable."""
    m = mask.to(logp.dtype)
    n_B = m.sum(-1)
    mean_B = _safe_div(_masked(logp - old_logp, mask).sum(-1), n_B)
    return torch.exp(mean_B.clamp(-20.0, 20.0))


@register_policy_loss("gspo")
def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    agg: str = "seq-mean-token-mean",
    *,
    denominator: Tensor | float | None = None,
    max_len: int | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: clipped surrogate on the sequence-level ratio (docs/algorithms.md §6.2; reference: verl
    ``compute_policy_loss_gspo``, TRL ``importance_sampling_level="sequence"``). Registered as "gspo".

    ``s_b = exp(sum_t m (logp - old_logp) / |y_b|)``; ``L_b = max(-A_b s_b, -A_b clip(s_b, 1 - clip_low,
    1 + clip_high))``, one value per sequence; the loss is the mean of L_b over sequences with a response
    token (`agg` is ignored: GSPO always aggregates as ``seq-mean-token-mean``, whose denominator is the
    number of sequences; pass the global one as `denominator`). `dual_clip` is not used. With
    `token_weights`, L_b is weighted by each sequence's mean weight.

    Args:
        logp, old_logp, mask: Tensor[B, T]; advantages: Tensor[B] (one per sequence; a [B, T] tensor is
            averaged over the mask).
    Returns:
        ``(loss, metrics)`` as `policy_loss`; the ratio metrics are over sequences.
    """
    adv = _check_inputs(logp, old_logp, advantages, mask, clip_low, clip_high)
    adv_B = adv.squeeze(-1) if adv.shape[-1] == 1 else _safe_div(_masked(adv, mask).sum(-1), (mask != 0).sum(-1))
    s_B = sequence_ratio(logp, old_logp, mask)
    l1 = -adv_B * s_B
    l2 = -adv_B * s_B.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_B = torch.maximum(l1, l2)
    loss_BT = _weighted(loss_B.unsqueeze(-1).expand_as(logp), token_weights)
    loss = aggregate(loss_BT, mask, "seq-mean-token-mean", denominator=denominator)
    rows = (mask != 0).any(-1)
    clipped = (l2 > l1) & rows
    with torch.no_grad():
        metrics = _ratio_metrics(logp, old_logp, mask, s_B.detach().unsqueeze(-1).expand_as(logp),
                                 clipped.unsqueeze(-1).expand_as(logp))
        metrics["pg_clipfrac"] = _safe_div(clipped.double().sum(), rows.sum())
        metrics["ratio_mean"] = _safe_div(torch.where(rows, s_B.detach().double(), 0.0).sum(), rows.sum())
    return loss, metrics


gspo_loss.agg = "seq-mean-token-mean"  # GRPOLoss reads this: the denominator GSPO needs


@register_policy_loss("gspo_token")
def gspo_token_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    *,
    denominator: Tensor | float | None = None,
    max_len: int | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token (docs/algorithms.md §6.2): per token ``s_bt = sg(s_b) * exp(logp_bt - sg(logp_bt))``,
    equal in value to the sequence ratio s_b but with each token's own gradient, so per-token advantages
    ([B, T]) can be used. ``L_bt = max(-A_bt s_bt, -A_bt clip(s_bt, 1 - clip_low, 1 + clip_high))`` (the
    clip is decided by s_b, since s_bt == s_b in value), aggregated with `agg` like `policy_loss`.
    `dual_clip` is not used. Registered as "gspo_token".
    """
    adv = _check_inputs(logp, old_logp, advantages, mask, clip_low, clip_high)
    s_B = sequence_ratio(logp, old_logp, mask).detach()
    s_BT = s_B.unsqueeze(-1) * torch.exp(logp - logp.detach())
    l1 = -adv * s_BT
    l2 = -adv * s_BT.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(_weighted(torch.maximum(l1, l2), token_weights), mask, agg, denominator=denominator,
                     max_len=max_len)
    return loss, _ratio_metrics(logp, old_logp, mask, s_BT.detach(), l2 > l1)


@register_policy_loss("cispo")
def cispo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    *,
    denominator: Tensor | float | None = None,
    max_len: int | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1; docs/algorithms.md §6.3): REINFORCE with a clipped, stop-gradient IS weight.

    ``rho = exp(clamp(logp - old_logp, -20, 20))``, ``w = sg(clip(rho, max(0, 1 - clip_low), 1 + clip_high))``,
    ``L = -w A logp`` per token, aggregated with `agg`. Every token keeps a gradient (``-w A d logp``),
    unlike PPO's clip, which zeroes it. ``clip_low >= 1`` removes the lower bound (MiniMax-M1's choice).
    `dual_clip` is not used. Registered as "cispo"; ``pg_clipfrac`` is the fraction of tokens whose rho
    was clipped.
    """
    adv = _check_inputs(logp, old_logp, advantages, mask, clip_low, clip_high, allow_no_lower=True)
    rho = torch.exp((logp - old_logp).clamp(-20.0, 20.0)).detach()
    lo, hi = max(0.0, 1.0 - clip_low), 1.0 + clip_high
    w = rho.clamp(lo, hi)
    loss = aggregate(_weighted(-w * adv * logp, token_weights), mask, agg, denominator=denominator, max_len=max_len)
    return loss, _ratio_metrics(logp, old_logp, mask, rho, (rho < lo) | (rho > hi))


# ----------------------------------------------------------------------------------------------------
# Rollout / trainer mismatch correction
# ----------------------------------------------------------------------------------------------------

CorrectionFn = Callable[[Tensor, Tensor, float], "tuple[Tensor, Tensor]"]
ROLLOUT_CORRECTIONS: Registry[CorrectionFn] = Registry("rollout correction")


@ROLLOUT_CORRECTIONS.register("tis")
def _tis(ratio: Tensor, valid: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """Truncated IS: weight min(ratio, C); the flagged entries are those truncated (ratio > C)."""
    return ratio.clamp(max=c), ratio > c


@ROLLOUT_CORRECTIONS.register("mis")
def _mis(ratio: Tensor, valid: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """Masked IS: weight 1 inside [1/C, C], 0 outside (the flagged entries)."""
    out = (ratio < 1.0 / c) | (ratio > c)
    return (~out).to(ratio.dtype), out


@ROLLOUT_CORRECTIONS.register("monitor")
def _monitor(ratio: Tensor, valid: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """No correction (weights 1); the metrics are still computed (flagged: ratio outside [1/C, C])."""
    return torch.ones_like(ratio), (ratio < 1.0 / c) | (ratio > c)


CORRECTION_LEVELS = ("token", "sequence")


def rollout_correction(
    old_logp: Tensor,
    rollout_logp: Tensor,
    mask: Tensor,
    mode: str = "tis",
    level: str = "token",
    c: float = 2.0,
) -> tuple[Tensor, dict[str, float]]:
    """Importance weights correcting the gap between the rollout engine's and the trainer's policy
    (docs/algorithms.md §6.5; reference: verl ``rollout_corr``, TRL ``vllm_importance_sampling_*``).

    ``ratio = exp(clamp(old_logp - rollout_logp, -20, 20))`` per token (``level="token"``), or per
    sequence ``exp(clamp(sum_t m (old_logp - rollout_logp), -20, 20))`` (``level="sequence"``: the
    product of the token ratios, NOT length-normalised, broadcast over the sequence's tokens). Then
    - ``tis``: weight ``min(ratio, c)``;
    - ``mis``: weight 1 if ``1/c <= ratio <= c`` else 0 (the token, or the whole sequence, leaves the loss);
    - ``monitor``: weight 1 (metrics only).
    The weights carry no gradient; multiply the per-token policy loss by them (``token_weights=``).

    Args:
        old_logp: Tensor[B, T], the trainer's log-probs of the sampled tokens before the update.
        rollout_logp: Tensor[B, T], the engine's log-probs of the same tokens (0 off the mask).
        mask: Tensor[B, T], 1 on response tokens.
        c: the threshold C > 1.
    Returns:
        ``(weights_BT, metrics)``: weights are 0 off the mask; metrics are floats over the masked-in
        tokens (token level) or the sequences with a response token (sequence level):
        ``mismatch_ratio_mean``, ``mismatch_ratio_max``, ``mismatch_corrected_frac`` (fraction truncated
        for tis, masked for mis, outside [1/c, c] for monitor) and ``mismatch_kl_k3`` (the k3 estimate
        ``kl_penalty(old_logp, rollout_logp, "k3")`` averaged over response tokens, whatever the level).
    """
    if old_logp.shape != rollout_logp.shape or old_logp.shape != mask.shape or old_logp.dim() != 2:
        raise ValueError(f"old_logp, rollout_logp and mask must all be [B, T]; got {tuple(old_logp.shape)}, "
                         f"{tuple(rollout_logp.shape)}, {tuple(mask.shape)}")
    if level not in CORRECTION_LEVELS:
        raise ValueError(f"unknown rollout correction level {level!r}; known: {', '.join(CORRECTION_LEVELS)}")
    if not c > 1.0:
        raise ValueError(f"the rollout-correction threshold C must be > 1, got {c}")
    fn = ROLLOUT_CORRECTIONS.get(mode)
    with torch.no_grad():
        old, roll = old_logp.double(), rollout_logp.double()
        m = mask != 0
        diff = torch.where(m, old - roll, torch.zeros((), dtype=torch.float64))
        if level == "token":
            ratio = torch.exp(diff.clamp(-20.0, 20.0))
            valid = m
        else:
            ratio = torch.exp(diff.sum(-1).clamp(-20.0, 20.0))
            valid = m.any(-1)
        w, flagged = fn(ratio, valid, float(c))
        n = valid.sum()
        metrics = {
            "mismatch_ratio_mean": float(_safe_div(torch.where(valid, ratio, 0.0).sum(), n)),
            "mismatch_ratio_max": float(torch.where(valid, ratio, 0.0).amax()) if valid.numel() else 0.0,
            "mismatch_corrected_frac": float(_safe_div((flagged & valid).double().sum(), n)),
            "mismatch_kl_k3": float(_masked_mean(kl_penalty(old, roll, "k3"), mask)),
        }
        w_BT = w if level == "token" else w.unsqueeze(-1).expand_as(old)
        w_BT = torch.where(m, w_BT, torch.zeros((), dtype=torch.float64))
    return w_BT.to(old_logp.dtype), metrics
