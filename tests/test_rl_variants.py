"""docs/algorithms.md §6: RLOO, REINFORCE++, GSPO, GSPO-token, CISPO, DAPO's helpers, TIS/MIS and the
GRPO stage's dispatch of them, each against a direct float64 loop over the formula (masks, padding,
all-equal groups), plus the GRPO loss's step-wide denominators (fast: no model)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

import veripo.algos as A
from veripo.config import ConfigError, RunConfig
from veripo.stages.grpo import GRPOLoss, adv_estimator_name, dynamic_sampling
from veripo.train import PolicyBatch
from veripo.train.engine import StepContext

from test_algos import ragged_mask  # the same ragged response masks as the existing parity tests

F64 = torch.float64


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), atol=tol, rtol=0)


def clip(x, lo, hi):
    return min(max(x, lo), hi)


# ------------------------------------------------------------------------------------------------
# Advantage estimators
# ------------------------------------------------------------------------------------------------


def ref_rloo(rewards, gids):
    out = []
    for i, (r, g) in enumerate(zip(rewards, gids)):
        others = [rj for j, (rj, gj) in enumerate(zip(rewards, gids)) if gj == g and j != i]
        out.append(r - sum(others) / len(others) if others else 0.0)
    return out


def ref_reinforce_pp(rewards, gids, eps=1e-6):
    centred = []
    for r, g in zip(rewards, gids):
        rs = [rj for rj, gj in zip(rewards, gids) if gj == g]
        centred.append(r - (statistics.fmean(rs) if len(rs) > 1 else 0.0))
    mu, sd = statistics.fmean(centred), statistics.stdev(centred)
    return [(a - mu) / (sd + eps) for a in centred]


def test_rloo_and_reinforce_pp_hand_computed():
    r, g = torch.tensor([1.0, 0.0, 1.0, 3.0, 3.0, 5.0], dtype=F64), [0, 0, 0, 1, 1, 2]
    # group 0: 1 - (0+1)/2 = 0.5, 0 - 1 = -1, 0.5; group 1 all equal: 0, 0; group of one: 0
    close(A.rloo_advantages(r, g), [0.5, -1.0, 0.5, 0.0, 0.0, 0.0])
    # centred: [1/3, -2/3, 1/3, 0, 0, 5] (a group of one has mean 0), then whitened over the 6 sequences
    c = [1 / 3, -2 / 3, 1 / 3, 0.0, 0.0, 5.0]
    mu, sd = sum(c) / 6, math.sqrt(sum((x - sum(c) / 6) ** 2 for x in c) / 5)
    close(A.reinforce_pp_advantages(r, g), [(x - mu) / (sd + 1e-6) for x in c])
    assert A.get_adv_estimator("rloo") is A.rloo_advantages
    assert A.get_adv_estimator("reinforce_pp") is A.reinforce_pp_advantages


@pytest.mark.parametrize("name,ref", [("rloo", ref_rloo), ("reinforce_pp", ref_reinforce_pp)])
def test_estimators_random_match_loop_reference(name, ref):
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(2, 12)
        gids = [f"p{rng.randint(0, 3)}" for _ in range(n)]  # ragged, non-contiguous, some of size 1
        rewards = [rng.choice([0.0, 1.0, 1.5]) + (rng.random() if rng.random() < 0.5 else 0.0) for _ in range(n)]
        if len(set(rewards)) == 1:
            continue  # reinforce_pp's batch std is 0: covered by the degenerate test
        close(A.get_adv_estimator(name)(torch.tensor(rewards, dtype=F64), gids), ref(rewards, gids))


def test_estimators_all_equal_groups_give_zero():
    r, g = torch.full((6,), 0.7, dtype=F64), [0, 0, 0, 1, 1, 1]
    for name in ("grpo", "drgrpo", "rloo", "reinforce_pp"):
        close(A.get_adv_estimator(name)(r, g), [0.0] * 6)


def test_estimator_names_and_norm_adv_by_std():
    cfg = RunConfig.from_dict({"grpo": {"adv_estimator": "rloo"}}).grpo
    assert adv_estimator_name(cfg) == "rloo"
    assert adv_estimator_name(RunConfig.from_dict({"grpo": {"norm_adv_by_std": False}}).grpo) == "drgrpo"
    with pytest.raises(ConfigError, match="grpo.adv_estimator.*Allowed values: drgrpo, grpo, reinforce_pp, rloo"):
        RunConfig.from_dict({"grpo": {"adv_estimator": "rlo"}})


# ------------------------------------------------------------------------------------------------
# GSPO, GSPO-token, CISPO
# ------------------------------------------------------------------------------------------------


def _random_case(seed, B=5, T=9, empty_row=None, spread=0.3):
    gen = torch.Generator().manual_seed(seed)
    old = torch.randn(B, T, generator=gen, dtype=F64) - 2
    logp = (old + spread * torch.randn(B, T, generator=gen, dtype=F64)).requires_grad_()
    adv = torch.randn(B, generator=gen, dtype=F64)
    mask = ragged_mask(B, T, gen, empty_row)
    mask[:, -1] = 0  # right padding in every row
    return logp, old, adv, mask


def ref_gspo(lp, old, adv, m, cl, ch):
    losses = []
    for b in range(len(lp)):
        n = sum(m[b])
        if n == 0:
            continue
        s = math.exp(clip(sum(w * (x - y) for x, y, w in zip(lp[b], old[b], m[b])) / n, -20, 20))
        losses.append(max(-adv[b] * s, -adv[b] * clip(s, 1 - cl, 1 + ch)))
    return statistics.fmean(losses) if losses else 0.0


@pytest.mark.parametrize("empty_row", [None, 2])
@pytest.mark.parametrize("cl,ch", [(3e-4, 4e-4), (0.2, 0.28)])
def test_gspo_matches_loop_reference(empty_row, cl, ch):
    logp, old, adv, mask = _random_case(0, empty_row=empty_row, spread=0.01 if cl < 0.01 else 0.3)
    loss, metrics = A.gspo_loss(logp, old, adv, mask, clip_low=cl, clip_high=ch, agg="token-mean")  # agg ignored
    close(loss, ref_gspo(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), cl, ch))
    assert 0.0 <= float(metrics["pg_clipfrac"]) <= 1.0
    assert A.get_policy_loss("gspo") is A.gspo_loss


def test_gspo_token_equals_gspo_in_value_and_gradient_for_sequence_advantages():
    logp, old, adv, mask = _random_case(1, spread=0.2)
    for cl, ch in ((0.2, 0.28), (3e-4, 4e-4)):
        l_seq, _ = A.gspo_loss(logp, old, adv, mask, clip_low=cl, clip_high=ch)
        (g_seq,) = torch.autograd.grad(l_seq, logp)
        l_tok, _ = A.gspo_token_loss(logp, old, adv, mask, clip_low=cl, clip_high=ch, agg="seq-mean-token-mean")
        (g_tok,) = torch.autograd.grad(l_tok, logp)
        close(l_tok, l_seq)
        close(g_tok, g_seq)
        assert float(g_seq.abs().sum()) > 0 or cl < 0.01  # the wide clip leaves some sequences a gradient


def test_gspo_token_per_token_advantages_match_loop_reference():
    logp, old, _, mask = _random_case(2, spread=0.2)
    adv_BT = torch.randn(logp.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    cl, ch = 0.2, 0.28
    loss, _ = A.gspo_token_loss(logp, old, adv_BT, mask, clip_low=cl, clip_high=ch, agg="token-mean")
    lp, o, m, a = logp.tolist(), old.tolist(), mask.tolist(), adv_BT.tolist()
    num = den = 0.0
    for b in range(len(lp)):
        n = sum(m[b])
        s = math.exp(clip(sum(w * (x - y) for x, y, w in zip(lp[b], o[b], m[b])) / n, -20, 20))
        for t in range(len(lp[b])):
            if m[b][t]:
                num += max(-a[b][t] * s, -a[b][t] * clip(s, 1 - cl, 1 + ch))
                den += 1
    close(loss, num / den)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("cl", [0.2, 1.0])  # 1.0: no lower bound (MiniMax-M1)
def test_cispo_matches_loop_reference_value_and_gradient(agg, cl):
    logp, old, adv, mask = _random_case(3, empty_row=1, spread=0.5)
    ch = 0.28
    loss, metrics = A.cispo_loss(logp, old, adv, mask, clip_low=cl, clip_high=ch, agg=agg)
    (grad,) = torch.autograd.grad(loss, logp)
    lp, o, m, a = logp.tolist(), old.tolist(), mask.tolist(), adv.tolist()
    lo = max(0.0, 1 - cl)
    rows, gref = [], [[0.0] * len(lp[0]) for _ in lp]
    live = [b for b in range(len(lp)) if sum(m[b]) > 0]
    n_tok = sum(sum(m[b]) for b in live)
    for b in live:
        terms = []
        for t in range(len(lp[b])):
            if m[b][t]:
                w = clip(math.exp(lp[b][t] - o[b][t]), lo, 1 + ch)
                terms.append(-w * a[b] * lp[b][t])
                scale = {"token-mean": n_tok, "seq-mean-token-mean": len(live) * sum(m[b]),
                         "seq-mean-token-sum": len(live)}[agg]
                gref[b][t] = -w * a[b] / scale  # every token keeps a gradient, clipped or not
        rows.append((sum(terms), len(terms)))
    want = {"token-mean": sum(s for s, _ in rows) / n_tok,
            "seq-mean-token-mean": statistics.fmean(s / n for s, n in rows),
            "seq-mean-token-sum": statistics.fmean(s for s, _ in rows)}[agg]
    close(loss, want)
    close(grad, gref)
    assert float(metrics["pg_clipfrac"]) > 0  # spread 0.5 puts some ratios outside [1 - cl, 1.28]


def test_all_losses_ignore_padding_and_empty_masks():
    logp, old, adv, mask = _random_case(4)
    bad = logp.detach().clone()
    bad[mask == 0] = float("nan")  # garbage off the mask must not leak
    for name in ("vanilla", "gspo", "gspo_token", "cispo"):
        fn = A.get_policy_loss(name)
        a, _ = fn(logp, old, adv, mask)
        b, _ = fn(torch.where(mask != 0, logp, bad), torch.where(mask != 0, old, bad), adv, mask)
        close(a, b)
        z, _ = fn(logp, old, adv, torch.zeros_like(mask))
        assert float(z.detach()) == 0.0 and not torch.isnan(z)


def test_token_weights_scale_each_tokens_loss():
    logp, old, adv, mask = _random_case(6)
    w = torch.rand(logp.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    for name in ("vanilla", "gspo_token", "cispo"):
        fn = A.get_policy_loss(name)
        got, _ = fn(logp, old, adv, mask, token_weights=w, agg="token-mean")
        (g_w,) = torch.autograd.grad(got, logp)
        base, _ = fn(logp, old, adv, mask, token_weights=None, agg="token-mean")
        (g_1,) = torch.autograd.grad(base, logp)
        close(g_w, g_1 * w)  # no gradient through the weights, the token's own gradient scaled


# ------------------------------------------------------------------------------------------------
# DAPO helpers and the dynamic-sampling loop
# ------------------------------------------------------------------------------------------------


def test_overlong_penalty_hand_computed():
    # L_max 80, buffer 16: free up to 64, then (64 - |y|) / 16, -1 at 80 and beyond
    close(A.overlong_penalty([0, 64, 65, 72, 80, 81], 80, 16), [0, 0, -1 / 16, -0.5, -1, -1])
    close(A.overlong_penalty([72, 90], 80, 16, factor=0.5), [-0.25, -0.5])
    close(A.overlong_penalty([80, 100], 80, 0), [0, 0])
    with pytest.raises(ValueError, match="buffer"):
        A.overlong_penalty([1], 80, 81)


def test_informative_groups_drop_zero_spread():
    keys, flags = A.informative_groups([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0], ["a", "a", "b", "b", "c", "c", "d"])
    assert keys == ["a", "b", "c", "d"] and flags.tolist() == [False, True, False, False]


def _scripted(rounds):
    drawn = []

    def draw(r):
        drawn.append(r)
        return rounds[r] if r < len(rounds) else None
    return draw, drawn


def test_dynamic_sampling_refills_to_the_requested_groups():
    draw, drawn = _scripted([[True, False, False, True], [False, True, True, True], [True] * 4])
    kept, n = dynamic_sampling(draw, 4, max_rounds=5)
    assert n == 2 and drawn == [0, 1]  # stops as soon as 4 informative groups are in
    assert kept == [(0, 0), (0, 3), (1, 1), (1, 2)]


def test_dynamic_sampling_stops_at_the_round_limit_and_fills_up():
    draw, drawn = _scripted([[False, True, False], [False, False, False], [True, True, True]])
    kept, n = dynamic_sampling(draw, 3, max_rounds=2)
    assert n == 2 and drawn == [0, 1]  # round 2 would have had them: the limit wins
    assert kept == [(0, 1), (0, 0), (0, 2)]  # the informative group, then uninformative ones fill the batch


def test_dynamic_sampling_stops_when_no_prompts_are_left():
    draw, drawn = _scripted([[True, False]])
    kept, n = dynamic_sampling(draw, 2, max_rounds=4)
    assert n == 1 and drawn == [0, 1] and kept == [(0, 0), (0, 1)]


# ------------------------------------------------------------------------------------------------
# Rollout-mismatch correction
# ------------------------------------------------------------------------------------------------


def _mismatch_case():
    # token ratios exp(old - rollout): row 0: 1, 3, 0.25, (pad); row 1: 1.5, 0.4, (pad), (pad)
    ratios = torch.tensor([[1.0, 3.0, 0.25, 9.0], [1.5, 0.4, 9.0, 9.0]], dtype=F64)
    roll = torch.full((2, 4), -1.0, dtype=F64)
    old = roll + ratios.log()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return old, roll, mask


def test_tis_token_weights_on_hand_made_ratios():
    old, roll, mask = _mismatch_case()
    w, m = A.rollout_correction(old, roll, mask, "tis", "token", c=2.0)
    close(w, [[1.0, 2.0, 0.25, 0.0], [1.5, 0.4, 0.0, 0.0]])
    close(m["mismatch_ratio_mean"], (1 + 3 + 0.25 + 1.5 + 0.4) / 5)
    close(m["mismatch_ratio_max"], 3.0)
    close(m["mismatch_corrected_frac"], 1 / 5)  # only the 3 was truncated
    k3 = [math.exp(-math.log(r)) + math.log(r) - 1 for r in (1, 3, 0.25, 1.5, 0.4)]
    close(m["mismatch_kl_k3"], sum(k3) / 5)


def test_mis_token_and_sequence_masks_on_hand_made_ratios():
    old, roll, mask = _mismatch_case()
    w, m = A.rollout_correction(old, roll, mask, "mis", "token", c=2.0)
    close(w, [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # 3 > 2, 0.25 < 1/2, 0.4 < 1/2 are dropped
    close(m["mismatch_corrected_frac"], 3 / 5)
    # sequence level: products 0.75 and 0.6, both inside [1/2, 2]; with C = 1.5, 0.6 < 1/1.5 drops row 1
    w, m = A.rollout_correction(old, roll, mask, "mis", "sequence", c=2.0)
    close(w, [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    close(m["mismatch_ratio_mean"], (0.75 + 0.6) / 2)
    w, m = A.rollout_correction(old, roll, mask, "mis", "sequence", c=1.5)
    close(w, [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    close(m["mismatch_corrected_frac"], 0.5)


def test_tis_sequence_and_monitor():
    old, roll, mask = _mismatch_case()
    old = old.clone()
    old[0, 0] += math.log(4.0)  # row 0's product becomes 3 > C
    w, m = A.rollout_correction(old, roll, mask, "tis", "sequence", c=2.0)
    close(w, [[2.0, 2.0, 2.0, 0.0], [0.6, 0.6, 0.0, 0.0]])
    close(m["mismatch_ratio_max"], 3.0)
    w, m = A.rollout_correction(old, roll, mask, "monitor", "token", c=2.0)
    close(w, mask)
    with pytest.raises(ValueError, match="known: mis, monitor, tis"):
        A.rollout_correction(old, roll, mask, "is")
    with pytest.raises(ValueError, match="> 1"):
        A.rollout_correction(old, roll, mask, "tis", c=1.0)


# ------------------------------------------------------------------------------------------------
# The GRPO stage's loss: registry dispatch and step-wide denominators
# ------------------------------------------------------------------------------------------------


def _micro(B=4, T=7, V=11, seed=0, max_resp=None):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        mask[b, 2:2 + 1 + b % (T - 2)] = 1
    logits = torch.randn(B, T, V, generator=gen, dtype=F64, requires_grad=True)
    adv = torch.randn(B, generator=gen)
    old = (torch.randn(B, T, generator=gen) * 0.1 - 2.4).to(F64)
    batch = PolicyBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask, advantages=adv,
                        old_logp=old)
    return logits, batch


def _run_loss(loss_fn, logits, batch, micro_size):
    total, B = 0.0, batch.batch_size
    for i in range(0, B, micro_size):
        micro = batch.slice(i, min(B, i + micro_size))
        ctx = StepContext(B, batch.num_tokens(), i // micro_size, 1, 0, 1, 0)
        loss, _ = loss_fn(logits[i:i + micro_size], micro, ctx)
        total = total + loss
    return total


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("name", ["vanilla", "gspo", "gspo_token", "cispo"])
def test_grpo_loss_micro_batches_sum_to_the_full_batch_loss(agg, name):
    logits, batch = _micro()
    loss_fn = GRPOLoss(agg=agg, policy_loss=name, max_len=12, clip_low=0.2, clip_high=0.28)
    full = _run_loss(loss_fn, logits, batch, 4)
    parts = _run_loss(loss_fn, logits, batch, 1)
    close(parts, full)
    logp = A.token_logprobs(logits, batch.input_ids)
    fn = A.get_policy_loss(name)
    want, _ = fn(logp, batch.old_logp, batch.advantages, batch.loss_mask, clip_low=0.2, clip_high=0.28,
                 agg=getattr(fn, "agg", agg), max_len=12)
    close(full, want)


def test_grpo_loss_seq_mean_token_sum_norm_divides_by_max_response_length():
    # the bug this fixes: the denominator was B, so -norm equalled seq-mean-token-sum
    logits, batch = _micro()
    s = _run_loss(GRPOLoss(agg="seq-mean-token-sum", max_len=12), logits, batch, 2)
    n = _run_loss(GRPOLoss(agg="seq-mean-token-sum-norm", max_len=12), logits, batch, 2)
    close(n, s / 12)
    assert abs(float(s)) > 1e-6


def test_grpo_loss_applies_is_weights_from_the_batch():
    logits, batch = _micro()
    w = torch.zeros(batch.input_ids.shape)
    w[:2] = 1.0  # the last two sequences are masked out by their weights
    weighted = batch.with_fields(extras={"is_weight": w})
    got = _run_loss(GRPOLoss(agg="seq-mean-token-sum"), logits, weighted, 2)
    front = _run_loss(GRPOLoss(agg="seq-mean-token-sum"), logits[:2], batch.slice(0, 2), 2)
    close(got, front * 2 / 4)  # same numerator, the step's 4 sequences in the denominator


def test_config_choices_come_from_the_registries():
    for key, bad, known in [("policy_loss", "gpso", "cispo, gspo, gspo_token, ppo_clip, vanilla"),
                            ("rollout_correction", "tiss", "mis, monitor, tis")]:
        with pytest.raises(ConfigError, match=f"grpo.{key}.*{known}"):
            RunConfig.from_dict({"grpo": {key: bad}})
    cfg = RunConfig.from_dict({"grpo": {"policy_loss": "cispo", "clip_low": 5.0, "rollout_correction": "mis"}}).grpo
    assert cfg.policy_loss == "cispo" and cfg.clip_low == 5.0  # no lower bound for CISPO
    with pytest.raises(ConfigError, match="clip_low"):
        RunConfig.from_dict({"grpo": {"clip_low": 5.0}})
    with pytest.raises(ConfigError, match="grpo.overlong_buffer"):
        RunConfig.from_dict({"grpo": {"max_tokens": 64, "overlong_buffer": 65}})
    with pytest.raises(ConfigError, match="grpo.rollout_correction_c"):
        RunConfig.from_dict({"grpo": {"rollout_correction_c": 1.0}})
    with pytest.raises(ConfigError, match="grpo.max_rounds"):
        RunConfig.from_dict({"grpo": {"max_rounds": 0}})


def test_report_plots_mismatch_and_dynamic_sampling_only_when_logged():
    from veripo.report.html import _grpo_plots, _Plotter

    base = [{"reward_mean": 0.1 * i, "response_tokens_mean": 40.0, "truncated_frac": 0.0, "iteration": 0,
             "_step": i, "step": i} for i in range(4)]
    titles = {}
    for name, extra in [("plain", {}), ("mismatch", {"mismatch_ratio_mean": 1.01, "mismatch_ratio_max": 1.4,
                                                     "mismatch_corrected_frac": 0.0, "mismatch_kl_k3": 1e-4}),
                        ("ds", {"ds_rounds": 2, "ds_groups_seen": 8, "ds_informative_groups": 3,
                                "ds_filled_groups": 1})]:
        p = _Plotter()
        with p.style():
            _grpo_plots(p, [{**r, **extra} for r in base], [])
        titles[name] = {t for t, _ in p.plots}
    assert "GRPO rollout/trainer mismatch" in titles["mismatch"] - titles["plain"]
    assert "GRPO dynamic sampling" in titles["ds"] - titles["plain"]
    assert not any("mismatch" in t or "dynamic" in t for t in titles["plain"])
