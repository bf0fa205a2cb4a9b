"""veripo.algos (docs/algorithms.md section 1 and the intro's chunked log-probs): hand-computed cases, loop
references in float64 on random inputs, micro-batch splitting, chunked log-prob memory and gradients."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import veripo.algos as A
from veripo.algos import UnknownNameError

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
F64 = torch.float64


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), atol=tol, rtol=0)


# ------------------------------------------------------------------------------------------------
# Loop references (float64, written independently of the implementation)
# ------------------------------------------------------------------------------------------------


def ref_advantages(rewards, gids, eps=1e-6, norm=True):
    groups: dict = {}
    for r, g in zip(rewards, gids):
        groups.setdefault(g, []).append(r)
    out = []
    for r, g in zip(rewards, gids):
        rs = groups[g]
        mean, std = (0.0, 1.0) if len(rs) == 1 else (statistics.fmean(rs), statistics.stdev(rs))
        out.append((r - mean) / (std + eps) if norm else r - mean)
    return out


def ref_token_loss(lp, old, a, cl, ch, c):
    rho = math.exp(min(max(lp - old, -20.0), 20.0))
    loss = max(-a * rho, -a * min(max(rho, 1 - cl), 1 + ch))
    if c is not None and a < 0:
        loss = min(loss, -a * c)
    return loss


def ref_aggregate(L, m, mode, max_len=None):
    rows = [(sum(l * w for l, w in zip(lr, mr)), sum(mr)) for lr, mr in zip(L, m)]
    live = [(s, n) for s, n in rows if n > 0]
    if not live:
        return 0.0
    if mode == "token-mean":
        return sum(s for s, _ in live) / sum(n for _, n in live)
    if mode == "seq-mean-token-mean":
        return statistics.fmean(s / n for s, n in live)
    if mode == "seq-mean-token-sum":
        return statistics.fmean(s for s, _ in live)
    return sum(s for s, _ in live) / (len(live) * (max_len or len(L[0])))


def ref_kl(lp, ref, kind):
    d = lp - ref
    if kind == "k1":
        return d
    if kind == "abs":
        return abs(d)
    if kind == "k2":
        return 0.5 * d * d
    k = min(max(ref - lp, -20.0), 20.0)
    return min(max(math.exp(k) - k - 1, -10.0), 10.0)


def ragged_mask(B, T, gen, empty_row=None):
    """Response tokens after a random prompt length, then right padding."""
    m = torch.zeros(B, T)
    for b in range(B):
        start = int(torch.randint(1, T // 2, (1,), generator=gen))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=gen))
        m[b, start:end] = 1
    if empty_row is not None:
        m[empty_row] = 0
    return m


# ------------------------------------------------------------------------------------------------
# Advantages
# ------------------------------------------------------------------------------------------------


def test_grpo_advantages_hand_computed():
    # group "a": r = 1, 0, 1 -> mean 2/3, unbiased var (1/9 + 4/9 + 1/9) / 2 = 1/3, std 0.5773503
    # group "b": singleton 5 -> mean 0, std 1 -> 5 / (1 + 1e-6)
    # group "c": 2, 4 (interleaved) -> mean 3, std sqrt(2) -> -+0.7071064
    r = torch.tensor([1.0, 0.0, 2.0, 1.0, 5.0, 4.0], dtype=F64)
    g = ["a", "a", "c", "a", "b", "c"]
    s3 = 1 / math.sqrt(3)
    want = [(1 / 3) / (s3 + 1e-6), (-2 / 3) / (s3 + 1e-6), -1 / (math.sqrt(2) + 1e-6),
            (1 / 3) / (s3 + 1e-6), 5 / (1 + 1e-6), 1 / (math.sqrt(2) + 1e-6)]
    close(A.grpo_advantages(r, g), want, 1e-12)
    close(want[:2], [0.5773497, -1.1546994], 1e-6)  # the numbers written out
    # same with integer tensor ids
    close(A.grpo_advantages(r, torch.tensor([7, 7, 3, 7, 9, 3])), want, 1e-12)


def test_grpo_advantages_drgrpo_and_degenerate_groups():
    r = torch.tensor([1.0, 0.0, 1.0, 5.0, 3.0, 3.0])
    g = torch.tensor([0, 0, 0, 1, 2, 2])
    close(A.grpo_advantages(r, g, norm_by_std=False), [1 / 3, -2 / 3, 1 / 3, 5.0, 0.0, 0.0])
    # singleton: exactly r under Dr. GRPO; equal rewards: 0 (no NaN) under GRPO
    adv = A.grpo_advantages(r, g)
    assert adv[3].item() == pytest.approx(5 / (1 + 1e-6), rel=1e-7)
    assert A.grpo_advantages(r, g, norm_by_std=False)[3].item() == 5.0
    assert adv[4].item() == 0.0 and adv[5].item() == 0.0
    d = 1 / math.sqrt(3) + 0.5
    close(A.grpo_advantages(r, g, eps=0.5)[:3], [(1 / 3) / d, (-2 / 3) / d, (1 / 3) / d])
    # eps is added to the std, not the variance: r = 0, 2e-6 -> std sqrt(2) 1e-6 -> A = -+1e-6 / 2.414214e-6
    close(A.grpo_advantages(torch.tensor([0.0, 2e-6], dtype=F64), [0, 0]), [-0.4142136, 0.4142136])
    # integer rewards are accepted
    assert A.grpo_advantages(torch.tensor([1, 0]), [0, 0]).dtype.is_floating_point


def test_grpo_advantages_random_matches_loop_reference():
    rng = random.Random(0)
    for norm in (True, False):
        n = 61
        gids = [f"p{rng.randrange(12)}" for _ in range(n)]  # ragged, non-contiguous, some singletons
        rewards = [rng.choice([0.0, 0.5, 1.0, 1.5]) + rng.random() for _ in range(n)]
        got = A.grpo_advantages(torch.tensor(rewards, dtype=F64), gids, norm_by_std=norm)
        close(got, ref_advantages(rewards, gids, norm=norm))


def test_adv_estimator_registry():
    r, g = torch.tensor([1.0, 0.0, 0.0, 2.0]), [0, 0, 1, 1]
    close(A.get_adv_estimator("grpo")(r, g), A.grpo_advantages(r, g))
    close(A.get_adv_estimator("drgrpo")(r, g), [0.5, -0.5, -1.0, 1.0])
    with pytest.raises(ValueError, match="drgrpo, grpo"):
        A.get_adv_estimator("gpro")


# ------------------------------------------------------------------------------------------------
# Policy loss
# ------------------------------------------------------------------------------------------------


def _hand_case():
    # seq 0: A = +1, ratios 1.0, 1.5, 0.5, 1.1 ; seq 1: A = -1, ratios 1.5, 0.5, 5.0, 100 (masked)
    ratios = torch.tensor([[1.0, 1.5, 0.5, 1.1], [1.5, 0.5, 5.0, 100.0]], dtype=F64)
    old = torch.full((2, 4), -2.0, dtype=F64)
    logp = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    return logp, old, adv, mask


def test_policy_loss_hand_computed():
    logp, old, adv, mask = _hand_case()
    # per token: seq 0: -1, max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, -1.1
    #            seq 1: max(1.5, 1.2) = 1.5, max(0.5, 0.8) = 0.8 (clipped), 5.0, (masked)
    # token-mean: (-3.8 + 7.3) / 7 = 0.5
    loss, m = A.policy_loss(logp, old, adv, mask)
    close(loss, 0.5, 1e-12)
    close(m["pg_clipfrac"], 2 / 7)
    close(m["pg_clipfrac_dual"], 0.0)
    close(m["ratio_mean"], 11.1 / 7)
    close(m["ratio_max"], 5.0)  # the masked ratio 100 does not count
    close(m["ppo_kl"], -(math.log(1.5) * 2 + math.log(0.5) * 2 + math.log(1.1) + math.log(5.0)) / 7)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    # d loss / d logp = -A * rho / 7 on unclipped tokens, 0 on clipped and masked ones
    (grad,) = torch.autograd.grad(loss, logp)
    close(grad, torch.tensor([[-1.0, 0, -0.5, -1.1], [1.5, 0, 5.0, 0]], dtype=F64) / 7)


def test_policy_loss_dual_clip_hand_computed():
    logp, old, adv, mask = _hand_case()
    # dual clip c = 3 on the A < 0 row: 5.0 -> min(5.0, 3.0) = 3.0; (-3.8 + 5.3) / 7
    loss, m = A.policy_loss(logp, old, adv, mask, dual_clip=3.0)
    close(loss, 1.5 / 7, 1e-12)
    close(m["pg_clipfrac_dual"], 1 / 7)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[1, 2].item() == 0.0  # the dual-clipped token has no gradient
    # asymmetric clip (clip_high 0.6): ratio 1.5 at A = +1 is no longer clipped: (-1.5 + ...)
    loss2, m2 = A.policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.6)
    close(loss2, (-1 - 1.5 - 0.5 - 1.1 + 1.5 + 0.8 + 5.0) / 7, 1e-12)
    close(m2["pg_clipfrac"], 1 / 7)
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match="dual_clip"):
            A.policy_loss(logp, old, adv, mask, dual_clip=bad)


def test_policy_loss_ratio_clamp_and_token_advantages():
    old = torch.zeros(1, 2, dtype=F64)
    logp = torch.tensor([[30.0, -30.0]], dtype=F64)  # ratio exp(20) and exp(-20), no inf
    adv = torch.tensor([[-1.0, 1.0]], dtype=F64)  # [B, T] advantages
    parts = A.clipped_token_loss(logp, old, adv)
    close(parts.ratio, [[math.exp(20), math.exp(-20)]], 1e-3)
    # A = -1: max(e^20, 1.2) = e^20 ; A = +1: max(-e^-20, -0.8) = -e^-20 (pessimistic branch)
    close(parts.loss, [[math.exp(20), -math.exp(-20)]], 1e-3)
    assert parts.clipped.tolist() == [[False, False]]
    with pytest.raises(ValueError, match="advantages"):
        A.policy_loss(logp, old, torch.zeros(3), torch.ones(1, 2))


@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("agg", MODES)
def test_policy_loss_random_matches_loop_reference(dual, agg):
    gen = torch.Generator().manual_seed(1)
    B, T = 5, 9
    old = torch.randn(B, T, generator=gen, dtype=F64) - 2
    logp = old + 0.4 * torch.randn(B, T, generator=gen, dtype=F64)
    adv = torch.randn(B, generator=gen, dtype=F64)
    mask = ragged_mask(B, T, gen)
    cl, ch = 0.2, 0.28
    L = [[ref_token_loss(logp[b, t].item(), old[b, t].item(), adv[b].item(), cl, ch, dual) for t in range(T)]
         for b in range(B)]
    loss, _ = A.policy_loss(logp, old, adv, mask, clip_low=cl, clip_high=ch, dual_clip=dual, agg=agg)
    close(loss, ref_aggregate(L, mask.tolist(), agg))


def test_policy_loss_registry():
    assert A.get_policy_loss("vanilla") is A.policy_loss
    assert A.get_policy_loss("ppo_clip") is A.policy_loss
    with pytest.raises(ValueError, match="known: cispo, gspo, gspo_token, ppo_clip, vanilla"):
        A.get_policy_loss("gspo?")


# ------------------------------------------------------------------------------------------------
# KL
# ------------------------------------------------------------------------------------------------


def test_kl_penalty_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, 0.0, -30.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0, -30.0, 0.0]], dtype=F64)
    # d = logp - ref = 0.5, -1, 30, -30 ; k = ref - logp = -0.5, 1, -30 -> -20, 30 -> 20
    close(A.kl_penalty(logp, ref, "k1"), [[0.5, -1.0, 30.0, -30.0]])
    close(A.kl_penalty(logp, ref, "abs"), [[0.5, 1.0, 30.0, 30.0]])
    close(A.kl_penalty(logp, ref, "k2"), [[0.125, 0.5, 450.0, 450.0]])
    # k3: e^-0.5 + 0.5 - 1 = 0.1065307, e - 2 = 0.7182818, then 19 and e^20 - 21 clamped to 10
    close(A.kl_penalty(logp, ref, "k3"), [[0.1065307, 0.7182818, 10.0, 10.0]])
    assert A.kl_penalty(logp, logp, "k3").abs().max().item() == 0.0


@pytest.mark.parametrize("kind", ["k1", "abs", "k2", "k3"])
def test_kl_random_matches_reference(kind):
    gen = torch.Generator().manual_seed(2)
    logp = torch.randn(4, 7, generator=gen, dtype=F64) * 3
    ref = torch.randn(4, 7, generator=gen, dtype=F64) * 3
    want = [[ref_kl(a, b, kind) for a, b in zip(ra, rb)] for ra, rb in zip(logp.tolist(), ref.tolist())]
    close(A.kl_penalty(logp, ref, kind), want)


def test_kl_unknown_kind_lists_known():
    with pytest.raises(ValueError, match="abs, k1, k2, k3"):
        A.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ------------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------------


def test_aggregate_hand_computed_ragged():
    L = torch.tensor([[1.0, 2, 3, 4], [10, 20, 30, 40], [5, 5, 5, 5]], dtype=F64)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=F64)
    # row sums 3 and 60 over 2 and 3 tokens; the all-padding row 3 counts in no denominator
    want = {"token-mean": 63 / 5, "seq-mean-token-mean": (1.5 + 20) / 2, "seq-mean-token-sum": 63 / 2,
            "seq-mean-token-sum-norm": 63 / (2 * 4)}
    for mode, w in want.items():
        close(A.aggregate(L, m, mode), w, 1e-12)
        close(A.aggregate(L[:2], m[:2], mode), w, 1e-12)  # same without the padding row
    close(A.aggregate(L, m, "seq-mean-token-sum-norm", max_len=10), 63 / 20, 1e-12)
    close(A.aggregate(L, m.bool(), "token-mean", denominator=9), 63 / 9, 1e-12)
    with pytest.raises(ValueError, match="denominator"):
        A.aggregate(L, m, "token-mean", denominator=-1)


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_random_matches_loop_reference(mode):
    gen = torch.Generator().manual_seed(3)
    L = torch.randn(6, 11, generator=gen, dtype=F64)
    m = ragged_mask(6, 11, gen, empty_row=4)
    close(A.aggregate(L, m, mode), ref_aggregate(L.tolist(), m.tolist(), mode))
    close(A.aggregate(L, m, mode, max_len=32), ref_aggregate(L.tolist(), m.tolist(), mode, max_len=32))


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_empty_mask_is_zero_not_nan(mode):
    L = torch.randn(3, 5, dtype=F64, requires_grad=True)
    m = torch.zeros(3, 5)
    out = A.aggregate(L, m, mode)
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, L)
    assert torch.equal(g, torch.zeros_like(g))
    # masked-out inf / NaN do not leak
    L2 = torch.tensor([[1.0, float("nan"), float("inf")]], requires_grad=True)
    out2 = A.aggregate(L2, torch.tensor([[1.0, 0.0, 0.0]]), mode)
    assert torch.isfinite(out2)
    (g2,) = torch.autograd.grad(out2, L2)
    assert torch.isfinite(g2).all() and g2[0, 1:].abs().sum() == 0


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_sum_to_full_batch(mode):
    """Split rows into micro-batches (each trimmed to its own length), pass the full batch's
    denominator: the micro-batch losses and gradients sum to the full batch's."""
    gen = torch.Generator().manual_seed(4)
    B, T = 7, 12
    L = torch.randn(B, T, generator=gen, dtype=F64, requires_grad=True)
    m = ragged_mask(B, T, gen, empty_row=2)
    full = A.aggregate(L, m, mode)
    (g_full,) = torch.autograd.grad(full, L)
    den = A.agg_denominator(m, mode)
    parts = [(0, 3), (3, 4), (4, 7)]
    # the denominator is additive over parts (an all-reduce SUM across ranks gives the global one)
    assert sum(A.agg_denominator(m[s:e], mode, max_len=T) for s, e in parts) == den
    total = 0.0
    for s, e in parts:
        t_end = int(m[s:e].nonzero()[:, 1].max()) + 1 if m[s:e].any() else 1
        total = total + A.aggregate(L[s:e, :t_end], m[s:e, :t_end], mode, denominator=den)
    close(total, full, 1e-12)
    (g_sum,) = torch.autograd.grad(total, L)
    close(g_sum, g_full, 1e-12)
    # without the override the parts do NOT sum to the full loss (so the test above can fail)
    naive = sum(A.aggregate(L[s:e], m[s:e], mode) for s, e in parts)
    assert abs(naive.item() - full.item()) > 1e-3


def test_policy_loss_micro_batches_sum_to_full_batch():
    gen = torch.Generator().manual_seed(5)
    B, T = 6, 8
    old = torch.randn(B, T, generator=gen, dtype=F64)
    logp = (old + 0.3 * torch.randn(B, T, generator=gen, dtype=F64)).requires_grad_()
    adv, m = torch.randn(B, generator=gen, dtype=F64), ragged_mask(B, T, gen)
    for mode in MODES:
        full, _ = A.policy_loss(logp, old, adv, m, dual_clip=3.0, agg=mode, max_len=16)
        den = A.agg_denominator(m, mode, max_len=16)
        parts = [
            A.policy_loss(logp[s:e], old[s:e], adv[s:e], m[s:e], dual_clip=3.0, agg=mode, denominator=den)[0]
            for s, e in [(0, 2), (2, 5), (5, 6)]
        ]
        close(sum(parts), full, 1e-12)


def test_agg_unknown_mode_lists_known():
    with pytest.raises(ValueError) as e:
        A.aggregate(torch.zeros(1, 1), torch.ones(1, 1), "token_mean")
    assert all(name in str(e.value) for name in MODES)
    with pytest.raises(ValueError, match="token-mean"):
        A.policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), agg="sum")


# ------------------------------------------------------------------------------------------------
# Chunked log-probs and entropy
# ------------------------------------------------------------------------------------------------


def test_token_logprobs_and_entropy_hand_computed():
    ln2, ln3 = math.log(2), math.log(3)
    logits = torch.tensor([[[0.0, 0.0, ln2], [ln3, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    ids = torch.tensor([[1, 2, 0]])
    # position 0: no predecessor -> 0; position 1: softmax(0, 0, ln2) = (1/4, 1/4, 1/2)[2];
    # position 2: softmax(ln3, 0, 0) = (3/5, 1/5, 1/5)[0]
    for chunk in (None, 1, 2):
        close(A.token_logprobs(logits, ids, chunk), [[0.0, math.log(0.5), math.log(0.6)]], 1e-6)
        close(A.entropy_from_logits(logits, chunk),
              [[0.0, 1.5 * ln2, -(0.6 * math.log(0.6) + 0.4 * math.log(0.2))]], 1e-6)


def naive_entropy(logits):
    lp = torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), -1)
    h = -(lp.exp() * lp).sum(-1)
    return torch.cat([h.new_zeros(h.shape[0], 1), h], 1)


def _naive_logprobs_loop(logits, ids):
    B, T, _ = logits.shape
    out = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        for t in range(1, T):
            out[b, t] = torch.log_softmax(logits[b, t - 1].double(), -1)[ids[b, t]]
    return out


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 12, 64, None])
def test_chunked_logprobs_equal_naive_values_and_grads(chunk):
    gen = torch.Generator().manual_seed(6)
    B, T, V = 2, 13, 37  # 12 predicted positions: chunks 5 and 7 do not divide them
    logits = (3 * torch.randn(B, T, V, generator=gen)).requires_grad_()
    ids = torch.randint(0, V, (B, T), generator=gen)
    w = torch.randn(B, T, generator=gen)
    before = logits.detach().clone()
    got = A.token_logprobs(logits, ids, chunk)
    want = A.naive_token_logprobs(logits, ids)
    assert got.dtype == torch.float32 and got.shape == (B, T)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    close(got.detach(), _naive_logprobs_loop(logits.detach(), ids), 1e-5)
    (g,) = torch.autograd.grad((got * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((want * w).sum(), logits)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(logits.detach(), before)  # inputs untouched by the in-place chunk maths
    h = A.entropy_from_logits(logits, chunk)
    torch.testing.assert_close(h, naive_entropy(logits), atol=1e-5, rtol=0)
    (gh,) = torch.autograd.grad((h * w).sum(), logits)
    (gh_ref,) = torch.autograd.grad((naive_entropy(logits) * w).sum(), logits)
    torch.testing.assert_close(gh, gh_ref, atol=1e-5, rtol=1e-4)


def test_chunked_logprobs_float64_gradcheck():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 5, generator=gen, dtype=F64, requires_grad=True)
    ids = torch.randint(0, 5, (2, 6), generator=gen)
    assert torch.autograd.gradcheck(lambda z: A.token_logprobs(z, ids, 4), (x,))
    assert torch.autograd.gradcheck(lambda z: A.entropy_from_logits(z, 4), (x,))
    close(A.token_logprobs(x, ids, 4).detach(), _naive_logprobs_loop(x.detach(), ids), 1e-12)


def test_bf16_logits_are_upcast_per_chunk():
    gen = torch.Generator().manual_seed(8)
    B, T, V = 2, 9, 50
    logits = (4 * torch.randn(B, T, V, generator=gen)).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, V, (B, T), generator=gen)
    w = torch.randn(B, T, generator=gen)
    got = A.token_logprobs(logits, ids, 3)
    assert got.dtype == torch.float32
    want = A.naive_token_logprobs(logits.detach().float(), ids)  # float32 maths on the bf16 values
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad((got * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((A.naive_token_logprobs(logits, ids) * w).sum(), logits)
    assert g.dtype == torch.bfloat16
    torch.testing.assert_close(g.float(), g_ref.float(), atol=2e-3, rtol=1e-2)


class _LargestFloat32(TorchDispatchMode):
    """Records the largest float32 tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_logprobs_never_build_float32_BTV():
    B, T, V, chunk = 2, 40, 301, 8
    logits = torch.randn(B, T, V).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, V, (B, T))
    for fn in (lambda: A.token_logprobs(logits, ids, chunk), lambda: A.entropy_from_logits(logits, chunk)):
        with _LargestFloat32() as rec:
            fn().sum().backward()
        assert rec.largest <= B * chunk * V, rec.largest  # forward and backward
    with _LargestFloat32() as rec:
        A.naive_token_logprobs(logits, ids).sum().backward()
    assert rec.largest >= B * (T - 1) * V  # the recorder does see a [B, T, V] float32 tensor
    assert A.auto_chunk_size(1, 152064) * 152064 <= 2**25


def test_logprob_input_validation():
    with pytest.raises(ValueError, match="chunk_size"):
        A.token_logprobs(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="ids"):
        A.token_logprobs(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long))
    one = torch.zeros(2, 1, 4, requires_grad=True)  # T = 1: nothing to predict
    lp = A.token_logprobs(one, torch.zeros(2, 1, dtype=torch.long))
    assert lp.tolist() == [[0.0], [0.0]]
    lp.sum().backward()
    assert one.grad.abs().sum() == 0


# ------------------------------------------------------------------------------------------------
# T-GRPO bonus and easy-sample pruning
# ------------------------------------------------------------------------------------------------


def test_temporal_bonus_hand_computed():
    # "a": ordered mean (1 + 1 + 0 + 0.05) / 4 = 0.5125 >= 0.8 * mean(1, 0) = 0.4 -> alpha where acc > 0.1
    # "b": ordered mean 0.5 < 0.8 * 1.0 -> nothing ; "c": no shuffled rollouts -> nothing
    acc_o = torch.tensor([1.0, 1.0, 0.0, 0.05, 1.0, 0.0, 1.0])
    ids_o = ["a", "a", "a", "a", "b", "b", "c"]
    acc_s = torch.tensor([1.0, 0.0, 1.0, 1.0])
    ids_s = ["a", "a", "b", "b"]
    close(A.temporal_bonus(acc_o, acc_s, ids_o, ids_s), [0.3, 0.3, 0, 0, 0, 0, 0])
    # the boundary is inclusive: ordered mean 0.5 == mu * 1.0 with mu = 0.5
    close(A.temporal_bonus(acc_o, acc_s, ids_o, ids_s, mu=0.5, alpha=1.0), [1, 1, 0, 0, 1, 0, 0])
    # integer tensor ids
    close(A.temporal_bonus(acc_o, acc_s, torch.tensor([0, 0, 0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1])),
          [0.3, 0.3, 0, 0, 0, 0, 0])


def test_group_all_correct_and_prune_easy():
    keys, flags = A.group_all_correct(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0]), ["p", "p", "q", "q", "r"])
    assert keys == ["p", "q", "r"] and flags.tolist() == [True, False, True]
    assert A.prune_easy(keys, flags, p=0.0) == keys
    assert A.prune_easy(keys, flags, p=1.0) == ["q"]
    n = 20000
    ids, easy = list(range(n)), [i % 2 == 0 for i in range(n)]
    kept = A.prune_easy(ids, easy, p=0.8, generator=torch.Generator().manual_seed(0))
    kept_set = set(kept)
    assert all(i in kept_set for i in range(1, n, 2))  # hard prompts always kept
    dropped = n // 2 - sum(1 for i in kept if i % 2 == 0)
    assert abs(dropped / (n // 2) - 0.8) < 0.02
    assert kept == A.prune_easy(ids, easy, p=0.8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        A.prune_easy(keys, flags, p=1.5)


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------


def test_registry_generic_behaviour():
    reg = A.Registry("thing")
    f = reg.register("x")(lambda: 1)
    reg.register("x")(f)  # same object again: fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(lambda: 2)
    assert reg.get("x") is f and "x" in reg and reg.names() == ["x"]
    with pytest.raises(UnknownNameError, match="unknown thing 'y'; known: x") as e:
        reg.get("y")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert set(A.AGG_MODES.names()) == set(MODES) and A.KL_ESTIMATORS.names() == ["abs", "k1", "k2", "k3"]
