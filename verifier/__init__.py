"""The rollout-aware verifier (docs/algorithms.md section 3): rule checks, a consistency judge LLM,
contrastive pairs and the caption-proxy judge, usable without veripo's trainer.

    from verifier import VerifierConfig, ConsistencyJudge, VLLMJudge, verify
    result = verify(rollouts, judge=ConsistencyJudge(VLLMJudge()), config=VerifierConfig())
    result.pairs, result.stats.inconsistency_rate

Command line: ``python -m verifier pairs --rollouts R.jsonl --out P.jsonl`` and
``python -m verifier score ...`` (see ``python -m verifier --help``).
"""

from verifier.caption_judge import CaptionJudge, CaptionStats, caption_pairs, parse_score
from verifier.checks import Checks, check_rollout, parse_response, repetition_ratio
from veripo.config import ConfigError, VerifierConfig
from verifier.judge import (
    CONSISTENT,
    INCONSISTENT,
    JUDGES,
    SKIPPED,
    UNKNOWN,
    CallableJudge,
    ConsistencyJudge,
    JudgeBackend,
    JudgeError,
    OpenAIJudge,
    ScriptedJudge,
    Verdict,
    VerdictCache,
    VLLMJudge,
    parse_verdict,
)
from verifier.pairs import PairStats, build_pairs
from verifier.pipeline import CaptionResult, VerifyResult, score_captions, verify

__all__ = [
    "CONSISTENT", "INCONSISTENT", "JUDGES", "SKIPPED", "UNKNOWN",
    "CallableJudge", "CaptionJudge", "CaptionResult", "CaptionStats", "Checks", "ConfigError",
    "ConsistencyJudge", "JudgeBackend", "JudgeError", "OpenAIJudge", "PairStats", "ScriptedJudge",
    "Verdict", "VerdictCache", "VerifierConfig", "VerifyResult", "VLLMJudge",
    "build_pairs", "caption_pairs", "check_rollout", "parse_response", "parse_score", "parse_verdict",
    "repetition_ratio", "score_captions", "verify",
]
