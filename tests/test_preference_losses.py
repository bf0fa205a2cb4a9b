"""Preference losses on hand-computed values (docs/algorithms.md section 4), RRPO phrase alignment, the chunked
token-wise KL against the naive one, the registry and the stage config's validation."""

import dataclasses
import math

import pytest
import torch

from veripo.algos import (PREFERENCE_LOSSES, PreferenceHParams, PreferenceInputs, UnknownNameError, dpo_loss,
                          get_preference_loss, leanpo_loss, phrase_masks, phrase_spans, rrpo_loss, simpo_loss,
                          token_kl)

LN2 = math.log(2.0)


def softplus(x: float) -> float:
    """-log sigma(x) = log(1 + exp(-x)), by hand."""
    return math.log1p(math.exp(-x))


def t(*values, requires_grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)


# -- DPO family ------------------------------------------------------------------------------------
# policy_chosen -1, policy_rejected -3, ref -2 / -2: c = 1, r = -1, D = 2; beta 0.5 -> beta D = 1
PC, PR, RC, RR = t(-1.0), t(-3.0), t(-2.0), t(-2.0)


def test_dpo_sigmoid_hand_value_and_metrics():
    losses, m = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert losses.item() == pytest.approx(softplus(1.0), abs=1e-12)  # 0.3132616875
    assert m["rewards/chosen"].item() == pytest.approx(0.5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)
    assert m["rewards/margin"].item() == pytest.approx(1.0)
    assert m["rewards/accuracy"].item() == 1.0


@pytest.mark.parametrize("kind,eps,expected", [
    ("robust", 0.0, softplus(1.0)),
    ("robust", 0.1, (0.9 * softplus(1.0) - 0.1 * softplus(-1.0)) / 0.8),      # 0.18826...
    ("robust", 0.49, (0.51 * softplus(1.0) - 0.49 * softplus(-1.0)) / 0.02),  # -24.19: the (1-2eps) denominator
    ("cdpo", 0.0, softplus(1.0)),
    ("cdpo", 0.1, 0.9 * softplus(1.0) + 0.1 * softplus(-1.0)),                # 0.41326...
    ("cdpo", 0.49, 0.51 * softplus(1.0) + 0.49 * softplus(-1.0)),
    ("hinge", 0.0, 0.0),                                                      # relu(1 - 1)
])
def test_dpo_kinds_hand_values(kind, eps, expected):
    losses, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, kind=kind, label_smoothing=eps)
    assert losses.item() == pytest.approx(expected, abs=1e-10)


def test_ipo_divides_log_ratios_by_token_counts():
    # c / 2 = 0.5, r / 4 = -0.25, D_avg = 0.75; 1 / (2 beta) = 1 -> (0.75 - 1)^2
    losses, m = dpo_loss(PC, PR, RC, RR, beta=0.5, kind="ipo", chosen_tokens=t(2.0), rejected_tokens=t(4.0))
    assert losses.item() == pytest.approx(0.0625, abs=1e-12)
    assert m["rewards/chosen"].item() == pytest.approx(0.25)
    unnormalised, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, kind="ipo")  # (2 - 1)^2
    assert unnormalised.item() == pytest.approx(1.0)


def test_hinge_and_equal_logprobs():
    assert dpo_loss(PC, PR, RC, RR, beta=0.1, kind="hinge")[0].item() == pytest.approx(0.8)
    same = t(-2.0, -5.0)
    for kind, eps, expected in [("sigmoid", 0.0, LN2), ("robust", 0.49, LN2), ("cdpo", 0.3, LN2),
                                ("hinge", 0.0, 1.0), ("ipo", 0.0, 25.0)]:
        losses, m = dpo_loss(same, same, same, same, beta=0.1, kind=kind, label_smoothing=eps)
        assert torch.allclose(losses, torch.full_like(losses, expected), atol=1e-10), kind
        assert m["rewards/accuracy"].item() == 0.0 and m["rewards/margin"].item() == 0.0  # ties rank nothing


def test_dpo_gradient_direction_and_validation():
    pc, pr = t(-1.0, requires_grad=True), t(-1.0, requires_grad=True)
    dpo_loss(pc, pr, t(-1.0), t(-1.0), beta=0.1)[0].sum().backward()
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)  # -beta/2, +beta/2
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 0.5\)"):
        dpo_loss(PC, PR, RC, RR, kind="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing is used by robust, cdpo only"):
        dpo_loss(PC, PR, RC, RR, kind="sigmoid", label_smoothing=0.1)
    with pytest.raises(UnknownNameError, match="known: cdpo, hinge, ipo, robust, sigmoid"):
        dpo_loss(PC, PR, RC, RR, kind="kto")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(PC, PR, RC, RR, beta=0.0)


def test_empty_batch_gives_empty_losses_and_zero_metrics():
    e = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    for losses, m in [dpo_loss(e, e, e, e), leanpo_loss(e, e), simpo_loss(e, e)]:
        assert losses.shape == (0,)
        assert all(v.item() == 0.0 for v in m.values())
    loss = dpo_loss(e, e, e, e)[0].sum()
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(e.grad).any()


# -- RRPO ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chosen,rejected,min_match,expected", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1, []),                                            # no difference
    ([1, 2, 3, 4], [1, 9, 3, 4], 1, [((1, 2), (1, 2))]),
    ([1, 2, 3, 4, 5, 6], [1, 7, 3, 4, 8, 6], 1, [((1, 2), (1, 2)), ((4, 5), (4, 5))]),
    ([1, 2, 3, 4], [1, 7, 8, 9, 4], 1, [((1, 3), (1, 4))]),                          # phrases of different lengths
    ([1, 2, 3], [1, 2, 9, 3], 1, []),                                               # pure insertion: empty on one side
    ([1, 2], [3, 4, 5], 1, [((0, 2), (0, 3))]),                                     # nothing matches
    ([1, 2, 3, 4, 5], [1, 9, 3, 8, 5], 1, [((1, 2), (1, 2)), ((3, 4), (3, 4))]),
    ([1, 2, 3, 4, 5], [1, 9, 3, 8, 5], 2, [((0, 5), (0, 5))]),                       # 1-token matches dropped
    ([1, 2, 3, 4, 5, 6], [1, 2, 9, 4, 5, 6], 2, [((2, 3), (2, 3))]),                  # 2-token match kept
    ([], [1], 1, []),
])
def test_phrase_spans_hand_cases(chosen, rejected, min_match, expected):
    assert phrase_spans(chosen, rejected, min_match=min_match) == expected


def test_phrase_masks_offsets_and_bounds():
    mc, mr = phrase_masks([[((1, 3), (0, 1))]], 8, 6, chosen_offset=3, rejected_offset=[2])
    assert mc.tolist() == [[0, 0, 0, 0, 1, 1, 0, 0]] and mr.tolist() == [[0, 0, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="outside"):
        phrase_masks([[((1, 9), (0, 1))]], 8, 6)


def _rrpo_inputs():
    pc = t(-1.0, -2.0, -3.0, -4.0, requires_grad=True)
    pr = t(-1.0, -1.0, -5.0, -1.0, requires_grad=True)
    ones = t(-1.0, -1.0, -1.0, -1.0)
    return pc, pr, ones


def test_rrpo_hand_value_with_a_skipped_pair():
    pc, pr, ref = _rrpo_inputs()
    # pair 0: phrase tokens 1..2 on both sides: dc = (-2+1)+(-3+1) = -3, dr = (-1+1)+(-5+1) = -4, u = 0.1
    # pair 1: identical responses -> no phrase -> skipped
    P = torch.stack([pc, pc]), torch.stack([pr, pc]), torch.stack([ref, ref]), torch.stack([ref, ref])
    losses, m = rrpo_loss(*P, spans=[[((1, 3), (1, 3))], []], token_kl_chosen=t(2.0, 7.0), beta=0.1, alpha=0.01)
    assert losses[0].item() == pytest.approx(softplus(0.1) + 0.01 * 2.0, abs=1e-12)  # 0.66439666
    assert losses[1].item() == 0.0
    assert m["rrpo/skipped"].item() == 1.0 and m["rrpo/token_kl"].item() == pytest.approx(2.0)
    assert m["rewards/chosen"].item() == pytest.approx(-0.3) and m["rewards/rejected"].item() == pytest.approx(-0.4)
    assert m["rewards/accuracy"].item() == 1.0
    losses.sum().backward()
    s = torch.sigmoid(torch.tensor(0.1, dtype=torch.float64)).item()
    # only the phrase tokens of pair 0 get gradient: d/dlogp_c = -beta (1 - sigma(u)) on both chosen phrase tokens
    assert pc.grad.tolist() == pytest.approx([0.0, -0.1 * (1 - s), -0.1 * (1 - s), 0.0])


def test_rrpo_empty_diff_batch_contributes_no_loss():
    pc, pr, ref = _rrpo_inputs()
    kl = t(3.0, requires_grad=True)
    losses, m = rrpo_loss(pc[None], pr[None], ref[None], ref[None], spans=[[]], token_kl_chosen=kl)
    loss = losses.sum()
    loss.backward()
    assert loss.item() == 0.0 and m["rrpo/skipped"].item() == 1.0
    assert pc.grad.abs().sum().item() == 0.0 and kl.grad.item() == 0.0
    assert all(not math.isnan(v.item()) for v in m.values())
    e = torch.zeros(0, 4, dtype=torch.float64)
    losses, m = rrpo_loss(e, e, e, e, spans=[], token_kl_chosen=torch.zeros(0))  # B = 0
    assert losses.shape == (0,) and m["rewards/accuracy"].item() == 0.0


def test_rrpo_equal_logprobs_and_mask_form():
    pc, _, ref = _rrpo_inputs()
    spans = [[((0, 2), (1, 3))]]
    masks = phrase_masks(spans, 4, 4)
    a, _ = rrpo_loss(ref[None], ref[None], ref[None], ref[None], spans, t(0.0))
    assert a.item() == pytest.approx(LN2)
    b, _ = rrpo_loss(pc[None], ref[None], ref[None], ref[None], spans, t(0.0))
    c, _ = rrpo_loss(pc[None], ref[None], ref[None], ref[None], masks, t(0.0))
    assert b.item() == pytest.approx(softplus(0.1 * -1.0)) and c.item() == b.item()  # dc = 0 + (-1), dr = 0


def test_token_kl_matches_naive_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    pol = torch.randn(2, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 7, 11, generator=g, dtype=torch.float64)
    w = torch.randn(2, 7, generator=g, dtype=torch.float64)
    lp, lq = torch.log_softmax(ref[:, :-1], -1), torch.log_softmax(pol[:, :-1], -1)
    naive = torch.cat([torch.zeros(2, 1, dtype=torch.float64), (lp.exp() * (lp - lq)).sum(-1)], 1)
    (gn,) = torch.autograd.grad((naive * w).sum(), pol)
    got = token_kl(pol, ref, chunk_size=3)
    (gg,) = torch.autograd.grad((got * w).sum(), pol)
    assert torch.allclose(got, naive, atol=1e-12) and torch.allclose(gg, gn, atol=1e-12)
    assert (got[:, 1:] > 0).all() and got[:, 0].abs().max() == 0
    assert token_kl(ref.clone().requires_grad_(), ref).abs().max() < 1e-12  # KL(p || p) = 0
    f32 = token_kl(pol.detach().float().bfloat16(), ref.float())
    assert f32.dtype == torch.float32 and torch.allclose(f32, naive.float(), atol=5e-2)


# -- LeanPO / SimPO --------------------------------------------------------------------------------
def test_leanpo_and_simpo_hand_values():
    # well ranked: D = 0.5, beta D - gamma = 0.5, no smoothing
    l1, m1 = leanpo_loss(t(-1.0), t(-1.5), beta=2.0, gamma=0.5, label_smoothing=0.1)
    assert l1.item() == pytest.approx(softplus(0.5), abs=1e-12)
    assert m1["leanpo/smoothed"].item() == 0.0 and m1["rewards/chosen"].item() == pytest.approx(-2.0)
    # mis-ranked: D = -0.5 -> eps_i = 0.1: -(0.9) log sigma(-1.5) - 0.1 log sigma(1 - 0.5)
    l2, m2 = leanpo_loss(t(-1.5), t(-1.0), beta=2.0, gamma=0.5, label_smoothing=0.1)
    assert l2.item() == pytest.approx(0.9 * softplus(-1.5) + 0.1 * softplus(0.5), abs=1e-12)  # 1.57868
    assert m2["leanpo/smoothed"].item() == 1.0 and m2["rewards/accuracy"].item() == 0.0
    s2, ms = simpo_loss(t(-1.5), t(-1.0), beta=2.0, gamma=0.5)
    assert s2.item() == pytest.approx(softplus(-1.5), abs=1e-12) and "leanpo/smoothed" not in ms
    # equal log-probs: -log sigma(-gamma) for both; smoothing just below 0.5 is accepted, 0.5 is not
    for loss in (leanpo_loss(t(-1.0), t(-1.0), label_smoothing=0.4999)[0], simpo_loss(t(-1.0), t(-1.0))[0]):
        assert loss.item() == pytest.approx(softplus(-0.5), abs=1e-12)
    with pytest.raises(ValueError, match="label_smoothing"):
        leanpo_loss(t(-1.0), t(-1.0), label_smoothing=0.5)


# -- registry --------------------------------------------------------------------------------------
def test_registry_names_and_unknown_name():
    assert PREFERENCE_LOSSES.names() == ["cdpo", "hinge", "ipo", "leanpo", "robust", "rrpo", "sigmoid", "simpo"]
    with pytest.raises(UnknownNameError, match="unknown preference loss 'dpo'; known: cdpo, hinge, ipo, leanpo"):
        get_preference_loss("dpo")


def _inputs(logp_c, logp_r, ref=None):
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.float64)
    return PreferenceInputs(logp_c, logp_r, mask, mask, ref, ref)


def test_registered_losses_use_sums_averages_and_the_sft_term():
    lc = torch.tensor([[9.0, -1.0, -1.0], [9.0, -2.0, 50.0]], dtype=torch.float64)  # prompt / padding ignored
    lr = torch.tensor([[9.0, -2.0, -2.0], [9.0, -2.0, 50.0]], dtype=torch.float64)
    ref = torch.full((2, 3), -1.0, dtype=torch.float64)
    losses, m = get_preference_loss("sigmoid")(_inputs(lc, lr, ref), PreferenceHParams(beta=0.5))
    assert losses.tolist() == pytest.approx([softplus(1.0), softplus(-0.0)])  # D = 0 - (-2) = 2; D = -1 - (-1) = 0
    ipo, _ = get_preference_loss("ipo")(_inputs(lc, lr, ref), PreferenceHParams(beta=0.5))
    assert ipo.tolist() == pytest.approx([0.0, 1.0])  # D_avg = 1 (2 tokens), 0 (1 token); (D_avg - 1)^2
    sft, m = get_preference_loss("simpo")(_inputs(lc, lr), PreferenceHParams(beta=2.0, gamma=0.5, sft_weight=0.5))
    assert sft.tolist() == pytest.approx([softplus(2.0 - 0.5) + 0.5 * 1.0, softplus(-0.5) + 0.5 * 2.0])
    assert m["sft/nll"].item() == pytest.approx(1.5) and m["logps/chosen_avg"].item() == pytest.approx(-1.5)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        get_preference_loss("hinge")(_inputs(lc, lr), PreferenceHParams(beta=0.1))


# -- stage config ----------------------------------------------------------------------------------
def test_preference_config_validation_names_the_field():
    from veripo.config import ConfigError, from_dict
    from veripo.config import PreferenceConfig, allowed_values

    loss_field = next(f for f in dataclasses.fields(PreferenceConfig) if f.name == "loss")
    assert sorted(allowed_values(loss_field)) == PREFERENCE_LOSSES.names() == [  # read from the registry
        "cdpo", "hinge", "ipo", "leanpo", "robust", "rrpo", "sigmoid", "simpo"]
    for bad, field in [({"loss": "dpo"}, "preference.loss"), ({"beta": -1.0}, "preference.beta"),
                       ({"label_smoothing": 0.1}, "preference.label_smoothing"),
                       ({"loss": "robust", "label_smoothing": 0.5}, "preference.label_smoothing"),
                       ({"batch_size": 0}, "preference.batch_size"), ({"min_match": 0}, "preference.min_match"),
                       ({"alpha": -0.1}, "preference.alpha"), ({"steps": 0}, "preference.steps")]:
        with pytest.raises(ValueError, match=field):
            PreferenceConfig(**bad)
    cfg = from_dict(PreferenceConfig, {"loss": "leanpo", "lr": 1e-6, "pairs": None}, "preference")
    assert cfg.hparams() == PreferenceHParams(beta=2.0, label_smoothing=0.1, gamma=0.5, alpha=0.01, sft_weight=0.0)
    assert PreferenceConfig(loss="cdpo", label_smoothing=0.5, beta=0.2).hparams().beta == 0.2
    assert PreferenceConfig(batch_size=3, epochs=2).total_steps(7) == 6
    with pytest.raises(ConfigError, match="preference.los: unknown key"):
        from_dict(PreferenceConfig, {"los": "rrpo"}, "preference")
    with pytest.raises(ConfigError, match="preference.loss: 'kto' is not allowed"):
        from_dict(PreferenceConfig, {"loss": "kto"}, "preference")
