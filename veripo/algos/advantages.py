"""Outcome advantages and reward shaping for GRPO (docs/algorithms.md section 1).

- `grpo_advantages`: group-relative advantages, std-normalised (GRPO) or not (Dr. GRPO), vectorised
  with ``index_add_`` over groups (no Python loop over groups);
- `temporal_bonus`: the T-GRPO reward bonus for ordered-frame rollouts (Video-R1);
- `prune_easy`, `group_all_correct`: VerIPO's easy-sample pruning between GRPO rounds;
- `rloo_advantages`, `reinforce_pp_advantages` (docs/algorithms.md §6.1);
- DAPO helpers: `informative_groups` (dynamic sampling), `overlong_penalty` (overlong reward shaping);
- the advantage-estimator registry: ``get_adv_estimator("grpo" | "drgrpo" | "rloo" | "reinforce_pp")``.

Shapes: B rollouts; ``group_ids`` names each rollout's prompt (G rollouts share one id).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Callable, Protocol

import torch
from torch import Tensor

from veripo.registry import Registry

GroupIds = Tensor | Sequence[Hashable]


class AdvEstimator(Protocol):
    def __call__(self, rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6) -> Tensor: ...


ADV_ESTIMATORS: Registry[AdvEstimator] = Registry("advantage estimator")


def register_adv_estimator(name: str) -> Callable[[AdvEstimator], AdvEstimator]:
    """Decorator: register ``fn(rewards_B, group_ids, *, eps) -> adv_B`` under `name`."""
    return ADV_ESTIMATORS.register(name)


def get_adv_estimator(name: str) -> AdvEstimator:
    """The estimator registered under `name` ("grpo", "drgrpo", ...); an unknown name raises
    `UnknownNameError` (a ValueError) listing the known ones."""
    return ADV_ESTIMATORS.get(name)


def group_index(group_ids: GroupIds, device: torch.device | str | None = None) -> tuple[Tensor, list]:
    """Dense group numbers for rollouts.

    Args:
        group_ids: Tensor[B] of integers, or a length-B sequence of hashables (e.g. prompt id strings).
    Returns:
        ``(index_B, keys)``: LongTensor[B] with values in ``[0, len(keys))`` and the distinct ids in
        index order (sorted for a tensor, first-seen order for a sequence).
    """
    if isinstance(group_ids, Tensor):
        if group_ids.dim() != 1 or group_ids.is_floating_point():
            raise ValueError(
                f"group_ids must be a 1-D integer tensor, got {group_ids.dtype} {tuple(group_ids.shape)}"
            )
        keys, index = torch.unique(group_ids, sorted=True, return_inverse=True)
        return index.to(device or group_ids.device), keys.tolist()
    first_seen: dict[Hashable, int] = {}
    index = [first_seen.setdefault(g, len(first_seen)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long, device=device), list(first_seen)


def _group_sums(values_B: Tensor, index_B: Tensor, n_groups: int) -> Tensor:
    sums_G = torch.zeros(n_groups, dtype=values_B.dtype, device=values_B.device)
    return sums_G.index_add_(0, index_B, values_B)


def _grouped(rewards, group_ids) -> tuple[Tensor, Tensor, list, Tensor]:
    """Checked float rewards[B], each rollout's group index[B], the group keys and each group's size[G]."""
    r_B = _as_float(rewards)
    if r_B.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(r_B.shape)}")
    index_B, keys = group_index(group_ids, device=r_B.device)
    if index_B.numel() != r_B.numel():
        raise ValueError(f"{r_B.numel()} rewards but {index_B.numel()} group ids")
    return r_B, index_B, keys, _group_sums(torch.ones_like(r_B), index_B, len(keys))


def _as_float(x: Tensor | Sequence[float]) -> Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def grpo_advantages(
    rewards: Tensor, group_ids: GroupIds, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """Group-relative outcome advantages (docs/algorithms.md section 1; reference: verl
    ``compute_grpo_outcome_advantage``).

    For the rollouts of one prompt (one group g):
        ``A_i = (r_i - mean_g(r)) / (std_g(r) + eps)``   if `norm_by_std` (GRPO),
        ``A_i =  r_i - mean_g(r)``                       otherwise (Dr. GRPO),
    with the unbiased (Bessel, n - 1) standard deviation. A group of size 1 is defined to have mean 0
    and std 1, so its advantage is ``r_i / (1 + eps)`` (GRPO; equal to r_i up to that factor, as in
    verl) or exactly ``r_i`` (Dr. GRPO). A group whose rewards are all equal gets advantage 0.

    Args:
        rewards: Tensor[B], one scalar reward per rollout (integer rewards are cast to float).
        group_ids: Tensor[B] of integers or a length-B sequence of hashables (the prompt of each rollout);
            groups need not be contiguous nor of equal size.
        eps: added to the std (not to the variance).
        norm_by_std: divide by the group std (True) or not (False, Dr. GRPO).
    Returns:
        Tensor[B] (rewards' float dtype and device): one advantage per rollout, to be broadcast over
        its response tokens by the policy loss.
    """
    r_B, index_B, keys, n_G = _grouped(rewards, group_ids)
    mean_G = _group_sums(r_B, index_B, len(keys)) / n_G
    single_G = n_G < 2
    mean_G = torch.where(single_G, torch.zeros_like(mean_G), mean_G)
    centred_B = r_B - mean_G[index_B]
    if not norm_by_std:
        return centred_B
    var_G = _group_sums(centred_B.square(), index_B, len(keys)) / (n_G - 1).clamp(min=1)
    std_G = torch.where(single_G, torch.ones_like(var_G), var_G.sqrt())
    return centred_B / (std_G[index_B] + eps)


@register_adv_estimator("grpo")
def _grpo(rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6) -> Tensor:
    """GRPO: std-normalised group-relative advantages (`grpo_advantages`, ``norm_by_std=True``)."""
    return grpo_advantages(rewards, group_ids, eps=eps, norm_by_std=True)


@register_adv_estimator("drgrpo")
def _drgrpo(rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO: mean-centred group advantages without std normalisation (`eps` unused)."""
    return grpo_advantages(rewards, group_ids, eps=eps, norm_by_std=False)


@register_adv_estimator("rloo")
def rloo_advantages(rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6) -> Tensor:
    """RLOO: each rollout's reward minus the mean of the OTHER rollouts of its group (docs/algorithms.md
    §6.1; reference: verl ``compute_rloo_outcome_advantage``, TRL RLOO).

    ``A_i = r_i - (sum_g r - r_i) / (n_g - 1)`` for a group of n_g >= 2 rollouts, which equals
    ``n_g / (n_g - 1) * (r_i - mean_g r)``; a group of one rollout has no baseline and gets 0. `eps` is
    unused (kept for the estimator signature).

    Args:
        rewards: Tensor[B]; group_ids: Tensor[B] of ints or a length-B sequence of hashables.
    Returns:
        Tensor[B] in rewards' float dtype.
    """
    r_B, index_B, keys, n_G = _grouped(rewards, group_ids)
    sum_G = _group_sums(r_B, index_B, len(keys))
    n_B = n_G[index_B]
    others_B = (sum_G[index_B] - r_B) / (n_B - 1).clamp(min=1)
    return torch.where(n_B > 1, r_B - others_B, torch.zeros_like(r_B))


@register_adv_estimator("reinforce_pp")
def reinforce_pp_advantages(rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6) -> Tensor:
    """REINFORCE++ with a group baseline (docs/algorithms.md §6.1; reference: verl
    ``compute_reinforce_plus_plus_baseline_outcome_advantage``).

    ``A_i = r_i - mean_g(r)`` (a group of one: mean 0), then whitened over the batch's sequences:
    ``(A - mean_B(A)) / (std_B(A) + eps)``, std unbiased, one value per sequence (verl whitens over
    response tokens, which weighs long responses more; veripo whitens per sequence). A batch of one
    sequence is only centred (std taken as 1).

    Returns:
        Tensor[B] in rewards' float dtype.
    """
    a_B = grpo_advantages(rewards, group_ids, eps=eps, norm_by_std=False)
    if a_B.numel() < 2:
        return (a_B - a_B.mean()) / (1.0 + eps)
    return (a_B - a_B.mean()) / (a_B.std(unbiased=True) + eps)


def informative_groups(rewards: Tensor | Sequence[float], group_ids: GroupIds, tol: float = 0.0) -> tuple[list, Tensor]:
    """DAPO dynamic sampling's test (docs/algorithms.md §6.4): which groups' rewards are not all equal.

    A group whose rewards all lie within `tol` of each other (max - min <= tol) has zero advantage under
    every group-relative estimator and carries no gradient.

    Returns:
        ``(keys, informative_G)``: the distinct group ids (see `group_index` for their order) and a
        BoolTensor[G].
    """
    r_B = _as_float(rewards)
    index_B, keys = group_index(group_ids, device=r_B.device)
    G = len(keys)
    hi = torch.full((G,), -float("inf"), dtype=r_B.dtype).scatter_reduce(0, index_B, r_B, "amax")
    lo = torch.full((G,), float("inf"), dtype=r_B.dtype).scatter_reduce(0, index_B, r_B, "amin")
    return keys, (hi - lo) > tol


def overlong_penalty(lengths: Tensor | Sequence[int], max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (docs/algorithms.md §6.4), added to each rollout's reward.

    With ``L = max_len`` (the generation limit) and ``b = buffer``: 0 for ``|y| <= L - b``;
    ``factor * ((L - b) - |y|) / b`` for ``L - b < |y| <= L`` (falling linearly to ``-factor`` at L);
    ``-factor`` beyond L. ``buffer == 0`` turns it off (all zeros).

    Args:
        lengths: Tensor[B] or sequence of response lengths in tokens.
    Returns:
        Tensor[B] float64 of penalties (<= 0).
    """
    n_B = torch.as_tensor(lengths, dtype=torch.float64)
    if buffer < 0 or buffer > max_len:
        raise ValueError(f"overlong buffer must be in [0, max_len={max_len}], got {buffer}")
    if buffer == 0:
        return torch.zeros_like(n_B)
    start = max_len - buffer
    soft = (start - n_B) / buffer * factor
    return torch.where(n_B <= start, torch.zeros_like(n_B), torch.where(n_B <= max_len, soft,
                                                                           torch.full_like(n_B, -factor)))


def temporal_bonus(
    acc_ordered: Tensor,
    acc_shuffled: Tensor,
    group_ids_ordered: GroupIds,
    group_ids_shuffled: GroupIds,
    mu: float = 0.8,
    alpha: float = 0.3,
) -> Tensor:
    """T-GRPO reward bonus for rollouts on frames in their true order (docs/algorithms.md section 1,
    "Temporal variant"; after Video-R1).

    For each prompt g that has shuffled-frame rollouts: if ``mean(acc_ordered[g]) >= mu *
    mean(acc_shuffled[g])``, every ordered rollout of g with accuracy > 0.1 gets `alpha`; all other
    ordered rollouts get 0. A prompt with no shuffled rollouts (e.g. an image or text prompt) gets no
    bonus. Shuffled rollouts never get a bonus (they are not trained on).

    Args:
        acc_ordered: Tensor[B_o], accuracy reward of each ordered-frame rollout.
        acc_shuffled: Tensor[B_s], accuracy reward of each shuffled-frame rollout.
        group_ids_ordered / group_ids_shuffled: the prompt of each rollout (Tensor of ints or a sequence
            of hashables; both must use the same kind of ids).
    Returns:
        Tensor[B_o] of bonuses (0 or `alpha`), to be added to the ordered rollouts' rewards.
    """
    a_o = _as_float(acc_ordered)
    a_s = _as_float(acc_shuffled).to(device=a_o.device, dtype=a_o.dtype)
    if a_o.dim() != 1 or a_s.dim() != 1:
        raise ValueError("acc_ordered and acc_shuffled must be 1-D")
    ids_o, ids_s = (
        g.tolist() if isinstance(g, Tensor) else list(g) for g in (group_ids_ordered, group_ids_shuffled)
    )
    if len(ids_o) != a_o.numel() or len(ids_s) != a_s.numel():
        raise ValueError("each accuracy needs exactly one group id")
    index, keys = group_index(ids_o + ids_s, device=a_o.device)
    idx_o, idx_s = index[: len(ids_o)], index[len(ids_o):]
    n = len(keys)
    mean_o = _group_sums(a_o, idx_o, n) / _group_sums(torch.ones_like(a_o), idx_o, n).clamp(min=1)
    cnt_s = _group_sums(torch.ones_like(a_s), idx_s, n)
    mean_s = _group_sums(a_s, idx_s, n) / cnt_s.clamp(min=1)
    ok_G = (cnt_s > 0) & (mean_o >= mu * mean_s)
    return torch.where(ok_G[idx_o] & (a_o > 0.1), torch.full_like(a_o, alpha), torch.zeros_like(a_o))


def group_all_correct(acc: Tensor, group_ids: GroupIds, threshold: float = 1.0) -> tuple[list, Tensor]:
    """Which prompts had every rollout correct (docs/algorithms.md section 1, easy-sample pruning).

    Args:
        acc: Tensor[B], accuracy reward of each rollout.
        group_ids: the prompt of each rollout.
        threshold: a rollout is correct when ``acc >= threshold`` (accuracy 1 by default).
    Returns:
        ``(prompt_ids, all_correct_G)``: the distinct prompt ids (see `group_index` for their order)
        and a BoolTensor[G].
    """
    a_B = _as_float(acc)
    index_B, keys = group_index(group_ids, device=a_B.device)
    wrong_G = _group_sums((a_B < threshold).to(a_B.dtype), index_B, len(keys))
    return keys, wrong_G == 0


def prune_easy(
    prompt_ids: Sequence[Hashable],
    all_correct_flags: Sequence[bool] | Tensor,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> list:
    """VerIPO easy-sample pruning (docs/algorithms.md section 1): each prompt whose rollouts were all
    correct is dropped from the next GRPO round with probability `p`; others are always kept.

    Args:
        prompt_ids: length-P sequence of prompt ids.
        all_correct_flags: length-P booleans (e.g. from `group_all_correct`).
        p: drop probability in [0, 1].
        generator: a CPU `torch.Generator` for reproducibility (one uniform draw per prompt, in order).
    Returns:
        The kept prompt ids, in their input order.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    ids = list(prompt_ids)
    flags = torch.as_tensor(all_correct_flags, dtype=torch.bool).reshape(-1).cpu()
    if flags.numel() != len(ids):
        raise ValueError(f"{len(ids)} prompt ids but {flags.numel()} flags")
    drop = flags & (torch.rand(len(ids), generator=generator) < p)
    return [pid for pid, d in zip(ids, drop.tolist()) if not d]
