"""Section ``verify.config``: `VerifierConfig`, every threshold of the rollout-aware verifier
(docs/algorithms.md section 3).

Frozen; `__post_init__` rejects a bad value naming the field. `config_hash()` identifies a config in
the pairs it made; `with_overrides(["key=value", ...])` applies command-line overrides (the verifier's
CLI); `from_dict` is the one converter of `veripo.config`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, Iterable

from veripo.config.convert import ConfigError, from_dict

# every type a pair record may carry (the report's order), and the ones the consistency verifier builds,
# in its default priority order; "caption" pairs come from the caption-proxy judge
PAIR_TYPES = ("penalty", "consistency", "reflection", "caption")
VERIFIER_PAIR_TYPES = ("consistency", "reflection", "penalty")
JUDGE_SCOPES = ("all", "accurate")

DEFAULT_REFLECTION_MARKERS = (
    "wait",
    "let me re-check",
    "let me recheck",
    "let me double-check",
    "let me double check",
    "let me verify",
    "let me reconsider",
    "let me re-examine",
    "re-examining",
    "actually,",
    "on second thought",
    "i made a mistake",
    "that was a mistake",
    "i was wrong",
    "that's not right",
    "that is not right",
    "that's incorrect",
    "correction:",
    "hold on",
)


def _error(name: str, problem: str) -> ConfigError:
    return ConfigError(f"verifier config field {name!r}: {problem}", name)


@dataclass(frozen=True)
class VerifierConfig:
    """Thresholds of the checks, the pair rules and the caption judge.

    Length (`reasoning_tokens` of the <think> part; tokenizer tokens when a tokenizer is given, else
    whitespace-separated words): below `min_reasoning_tokens` is "no reasoning", above
    `max_reasoning_tokens` is "runaway"; both exclude a rollout as chosen, a runaway one may be rejected.

    Repetition: `repetition_ratio` over word n-grams with n in [`ngram_min`, `ngram_max`] above
    `repetition_threshold`, or one sentence/line of at least `min_repeat_words` words occurring
    `max_line_repeats` times or more.

    Pairs: `pair_types` in priority order (pairs are taken round-robin across the types, one per type
    per round, until `max_pairs_per_prompt`); a rollout with `accuracy >= accuracy_threshold` is
    accurate; with `chosen_requires_format` a chosen must have both <think> and <answer>.

    Judge: `judge_scope` = ``all`` judges every rollout (the inconsistency rate covers all of them),
    ``accurate`` only the accurate ones (cheaper; the rate then covers accurate rollouts only).
    """

    min_reasoning_tokens: int = 5
    max_reasoning_tokens: int = 4096
    ngram_min: int = 4
    ngram_max: int = 8
    repetition_threshold: float = 0.3
    max_line_repeats: int = 3
    min_repeat_words: int = 3
    accuracy_threshold: float = 0.5
    chosen_requires_format: bool = True
    reflection_markers: tuple[str, ...] | str = DEFAULT_REFLECTION_MARKERS  # a string: one marker
    pair_types: tuple[str, ...] | str = VERIFIER_PAIR_TYPES  # a string: comma-separated
    max_pairs_per_prompt: int = 2
    judge_scope: str = "all"
    caption_margin: float = 2.0

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, problem: str) -> None:
            if not cond:
                raise _error(name, f"{problem}, got {getattr(self, name)!r}")

        for name in ("min_reasoning_tokens", "max_reasoning_tokens", "ngram_min", "ngram_max",
                     "max_line_repeats", "min_repeat_words", "max_pairs_per_prompt"):
            val = getattr(self, name)
            need(isinstance(val, int) and not isinstance(val, bool), name, "must be an integer")
        for name in ("repetition_threshold", "accuracy_threshold", "caption_margin"):
            val = getattr(self, name)
            need(isinstance(val, (int, float)) and not isinstance(val, bool), name, "must be a number")
        need(isinstance(self.chosen_requires_format, bool), "chosen_requires_format", "must be true or false")
        need(self.min_reasoning_tokens >= 0, "min_reasoning_tokens", "must be >= 0")
        need(self.max_reasoning_tokens > self.min_reasoning_tokens, "max_reasoning_tokens",
             f"must be greater than min_reasoning_tokens ({self.min_reasoning_tokens})")
        need(self.ngram_min >= 1, "ngram_min", "must be >= 1")
        need(self.ngram_max >= self.ngram_min, "ngram_max", f"must be >= ngram_min ({self.ngram_min})")
        need(0.0 < self.repetition_threshold <= 1.0, "repetition_threshold", "must be in (0, 1]")
        need(self.max_line_repeats >= 2, "max_line_repeats", "must be >= 2")
        need(self.min_repeat_words >= 1, "min_repeat_words", "must be >= 1")
        need(0.0 < self.accuracy_threshold <= 1.0, "accuracy_threshold", "must be in (0, 1]")
        need(self.max_pairs_per_prompt >= 1, "max_pairs_per_prompt", "must be >= 1")
        need(self.caption_margin >= 0, "caption_margin", "must be >= 0")
        need(self.judge_scope in JUDGE_SCOPES, "judge_scope", f"must be one of {', '.join(JUDGE_SCOPES)}")
        markers = self.reflection_markers
        if isinstance(markers, str):
            markers = (markers,)
        need(isinstance(markers, (tuple, list)) and all(isinstance(m, str) and m.strip() for m in markers),
             "reflection_markers", "must be a list of non-empty strings")
        object.__setattr__(self, "reflection_markers", tuple(m.lower() for m in markers))
        types = self.pair_types
        if isinstance(types, str):
            types = tuple(t.strip() for t in types.split(",") if t.strip())
        need(isinstance(types, (tuple, list)) and len(types) > 0, "pair_types", "must be a non-empty list")
        for t in types:
            if t not in VERIFIER_PAIR_TYPES:
                raise _error("pair_types", f"unknown pair type {t!r}; known: {', '.join(VERIFIER_PAIR_TYPES)}")
        need(len(set(types)) == len(types), "pair_types", "must not repeat a type")
        object.__setattr__(self, "pair_types", tuple(types))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["reflection_markers"] = list(self.reflection_markers)
        d["pair_types"] = list(self.pair_types)
        return d

    def config_hash(self) -> str:
        """First 16 hex digits of sha256 over the canonical JSON of the config."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_dict(cls, obj: dict[str, Any], prefix: str = "") -> "VerifierConfig":
        """`veripo.config.from_dict` for this section (errors name ``prefix.KEY``)."""
        return from_dict(cls, obj, prefix)

    def with_overrides(self, overrides: Iterable[str]) -> "VerifierConfig":
        """Apply ``key=value`` strings; the value is parsed by the field's type (JSON for lists,
        or a comma-separated list)."""
        d = self.to_dict()
        types = {f.name: f.type for f in fields(self)}
        for item in overrides:
            if "=" not in item:
                raise _error(item, "an override must look like key=value")
            key, raw = (s.strip() for s in item.split("=", 1))
            if key not in types:
                raise _error(key, f"unknown field; known fields: {', '.join(sorted(types))}")
            d[key] = _parse_value(key, str(types[key]), raw)
        return VerifierConfig.from_dict(d)


def _parse_value(key: str, type_name: str, raw: str) -> Any:
    if "tuple" in type_name:
        if raw.startswith("["):
            try:
                val = json.loads(raw)
            except json.JSONDecodeError as e:
                raise _error(key, f"invalid JSON list {raw!r} ({e.msg})") from e
            return tuple(val)
        return tuple(s.strip() for s in raw.split(",") if s.strip())
    if type_name == "bool":
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise _error(key, f"expected true or false, got {raw!r}")
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise _error(key, f"expected an integer, got {raw!r}") from None
    if type_name == "float":
        try:
            return float(raw)
        except ValueError:
            raise _error(key, f"expected a number, got {raw!r}") from None
    return raw
