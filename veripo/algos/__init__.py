"""Pure tensor math for veripo's RL stages (docs/algorithms.md); nothing here calls a model.

- advantages: `grpo_advantages` (GRPO / Dr. GRPO), `temporal_bonus` (T-GRPO), `prune_easy`,
  `group_all_correct`; registry `register_adv_estimator` / `get_adv_estimator` ("grpo", "drgrpo");
- losses: `policy_loss` (clipped surrogate, optional dual clip; registered "vanilla"),
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
    prune_easy,
    register_adv_estimator,
    temporal_bonus,
)
from veripo.algos.logprobs import auto_chunk_size, entropy_from_logits, naive_token_logprobs, token_logprobs
from veripo.algos.losses import (
    AGG_MODES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    AggMode,
    ClippedTokenLoss,
    agg_denominator,
    aggregate,
    clipped_token_loss,
    get_agg_mode,
    get_kl,
    get_policy_loss,
    kl_penalty,
    policy_loss,
    register_agg_mode,
    register_kl,
    register_policy_loss,
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
    "DPO_KINDS", "PREFERENCE_LOSSES", "PreferenceHParams", "PreferenceInputs", "PreferenceLoss", "dpo_loss",
    "get_preference_loss", "leanpo_loss", "phrase_masks", "phrase_spans", "register_preference_loss", "rrpo_loss",
    "simpo_loss", "token_kl",
]
