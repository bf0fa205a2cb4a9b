"""Pure tensor math for veripo's RL stages (docs/algorithms.md); nothing here calls a model.

- advantages: `grpo_advantages` (GRPO / Dr. GRPO), `temporal_bonus` (T-GRPO), `prune_easy`,
  `group_all_correct`; registry `register_adv_estimator` / `get_adv_estimator` ("grpo", "drgrpo", "rloo", "reinforce_pp"),
  `informative_groups` and `overlong_penalty` (DAPO);
- losses: `policy_loss` (clipped surrogate, optional dual clip; registered "vanilla" and "ppo_clip"),
  `gspo_loss`, `gspo_token_loss`, `cispo_loss` (registered "gspo", "gspo_token", "cispo"),
  `rollout_correction` (TIS / MIS weights and mismatch metrics; registry ROLLOUT_CORRECTIONS),
  `kl_penalty` (k1, abs, k2, k3), `aggregate` / `agg_denominator` (token-mean, seq-mean-token-mean,
  seq-mean-token-sum, seq-mean-token-sum-norm), each family in its own registry;
- logprobs: `token_logprobs`, `entropy_from_logits` (chunked over T, float32 per chunk);
- every family is a `veripo.registry.Registry` (re-exported here with `UnknownNameError`, a
  ValueError and a KeyError that lists the known names).

Shapes: B sequences, T tokens, V vocabulary; tensor names carry them as suffixes (``logp_BT``).
"""

from veripo.algos.advantages import (
    ADV_ESTIMATORS,
    get_adv_estimator,
    group_all_correct,
    group_index,
    grpo_advantages,
    informative_groups,
    overlong_penalty,
    prune_easy,
    register_adv_estimator,
    reinforce_pp_advantages,
    rloo_advantages,
    temporal_bonus,
)
from veripo.algos.logprobs import auto_chunk_size, entropy_from_logits, naive_token_logprobs, token_logprobs
from veripo.algos.losses import (
    AGG_MODES,
    CORRECTION_LEVELS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    ROLLOUT_CORRECTIONS,
    AggMode,
    ClippedTokenLoss,
    agg_denominator,
    aggregate,
    cispo_loss,
    clipped_token_loss,
    get_agg_mode,
    get_kl,
    get_policy_loss,
    gspo_loss,
    gspo_token_loss,
    kl_penalty,
    policy_loss,
    register_agg_mode,
    register_kl,
    register_policy_loss,
    rollout_correction,
    sequence_ratio,
)
from veripo.algos.preference import (
    DPO_KINDS,
    PREFERENCE_LOSSES,
    PreferenceHParams,
    PreferenceInputs,
    PreferenceLoss,
    dpo_loss,
    get_preference_loss,
    leanpo_loss,
    phrase_masks,
    phrase_spans,
    register_preference_loss,
    rrpo_loss,
    simpo_loss,
    token_kl,
)
from veripo.registry import Registry, UnknownNameError

__all__ = [
    "ADV_ESTIMATORS", "AGG_MODES", "KL_ESTIMATORS", "POLICY_LOSSES",
    "AggMode", "ClippedTokenLoss", "Registry", "UnknownNameError",
    "agg_denominator", "aggregate", "auto_chunk_size", "clipped_token_loss", "entropy_from_logits",
    "get_adv_estimator", "get_agg_mode", "get_kl", "get_policy_loss", "group_all_correct", "group_index",
    "grpo_advantages", "kl_penalty", "naive_token_logprobs", "policy_loss", "prune_easy",
    "register_adv_estimator", "register_agg_mode", "register_kl", "register_policy_loss",
    "temporal_bonus", "token_logprobs",
    "CORRECTION_LEVELS", "ROLLOUT_CORRECTIONS", "cispo_loss", "gspo_loss", "gspo_token_loss", "informative_groups",
    "overlong_penalty", "reinforce_pp_advantages", "rloo_advantages", "rollout_correction", "sequence_ratio",
    "DPO_KINDS", "PREFERENCE_LOSSES", "PreferenceHParams", "PreferenceInputs", "PreferenceLoss", "dpo_loss",
    "get_preference_loss", "leanpo_loss", "phrase_masks", "phrase_spans", "register_preference_loss", "rrpo_loss",
    "simpo_loss", "token_kl",
]
