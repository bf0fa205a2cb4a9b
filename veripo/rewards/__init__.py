"""Rule-based rewards for video-LLM RL (docs/algorithms.md section 2).

- parsing: `extract_answer`, `extract_choice`, `parse_number` (text -> answer);
- rules: `format_reward`, `accuracy_reward`, `mean_relative_accuracy`, `length_bonus` (unweighted);
- registry: rewards by name (`REWARDS`, a `veripo.registry.Registry`; `register_reward`, `get_reward`)
  and their weighted sum (`RewardFunction`, `compute_rewards` -> `RewardOutput`);
- verl: `compute_score`, the verl-style hook.

`jiwer` and `rouge_score` are imported only when an OCR / free-form answer is first scored.
"""

from veripo.rewards.verl import compute_score, infer_problem_type
from veripo.rewards.parsing import (
    answer_text,
    extract_answer,
    extract_choice,
    extract_think,
    option_letters,
    parse_number,
    strip_answer_tags,
)
from veripo.rewards.registry import (
    DEFAULT_WEIGHTS,
    REWARDS,
    RewardFunction,
    RewardOutput,
    UnknownRewardError,
    compute_rewards,
    get_reward,
    register_reward,
    registered_rewards,
)
from veripo.rewards.rules import (
    ACCURACY_BY_TYPE,
    accuracy_reward,
    canonical_problem_type,
    format_reward,
    length_bonus,
    mean_relative_accuracy,
)

length_reward = length_bonus  # the name docs/algorithms.md's wording suggests

__all__ = [
    "ACCURACY_BY_TYPE",
    "DEFAULT_WEIGHTS",
    "REWARDS",
    "RewardFunction",
    "RewardOutput",
    "UnknownRewardError",
    "accuracy_reward",
    "answer_text",
    "canonical_problem_type",
    "compute_rewards",
    "compute_score",
    "extract_answer",
    "extract_choice",
    "extract_think",
    "format_reward",
    "get_reward",
    "infer_problem_type",
    "length_bonus",
    "length_reward",
    "mean_relative_accuracy",
    "option_letters",
    "parse_number",
    "register_reward",
    "registered_rewards",
    "strip_answer_tags",
]
