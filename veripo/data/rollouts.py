"""Typed records that flow between the stages: `Rollout` (GRPO -> verifier) and `PreferencePair`
(verifier -> preference stage), with validated JSONL reading and atomic writing.

One rollout per line of ``rollouts.jsonl``::

    {"rollout_id": "it0-s3-p7-g2", "problem_id": "7", "response": "<think>...</think><answer>B</answer>",
     "token_ids": [151644, ...], "finish_reason": "stop", "reward": 1.5,
     "reward_components": {"accuracy": 1.0, "format": 0.5}, "advantage": 0.87,
     "step": 3, "iteration": 0, "sample_index": 2,
     "record": {"problem": "...", "problem_type": "multiple choice", "solution": "<answer>B</answer>",
                "options": ["A. left", "B. right"], "caption": "..."}}

`record` (the Video-R1 record of the prompt) is optional: it lets the verifier work from the rollout
file alone; without it the verifier looks the record up by ``problem_id`` in a records file.

Readers stop at the first bad line with an error naming ``file:line:field`` and the fix, or, with
``skip_bad=True``, skip the line and count it in a `LoadReport`. Writers are `veripo.run_dir`'s: they
replace the file atomically (temp file in the same folder, fsync, rename), so a reader never sees half a
file, or append a step at a time.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from veripo.config.verifier import PAIR_TYPES
from veripo.data.records import LoadReport, MissingFileError, Record, RecordError, iter_lines
from veripo.run_dir import append_jsonl, truncate_jsonl, write_jsonl

FINISH_REASONS = ("stop", "length")

__all__ = [
    "FINISH_REASONS", "PAIR_TYPES", "LoadReport", "PreferencePair", "Rollout", "RolloutError",
    "append_rollouts", "check_distinct", "read_jsonl", "read_pairs", "read_rollouts", "same_sides", "write_jsonl",
    "write_pairs", "write_rollouts",
]


class RolloutError(RecordError):
    """A rollout or pair line that does not follow the schema; names ``file:line:field`` and the fix."""


# ---------------------------------------------------------------------------------------------
# field validation helpers (each raises RolloutError naming the field)


def _req(obj: dict, where: str, name: str, fix: str) -> Any:
    if name not in obj or obj[name] is None:
        raise RolloutError(where, name, "missing required field", fix)
    return obj[name]


def _str_id(val: Any, where: str, name: str) -> str:
    if isinstance(val, bool) or not isinstance(val, (str, int)) or str(val).strip() == "":
        raise RolloutError(where, name, f"must be a non-empty string or integer, got {val!r}",
                           f"give every line a \"{name}\"")
    return str(val)


def _str(val: Any, where: str, name: str, allow_empty: bool = True) -> str:
    if not isinstance(val, str) or (not allow_empty and not val.strip()):
        raise RolloutError(where, name, f"must be a{' non-empty' if not allow_empty else ''} string, "
                           f"got {type(val).__name__}", f"write \"{name}\" as a JSON string")
    return val


def _int(val: Any, where: str, name: str, minimum: int | None = 0) -> int:
    if isinstance(val, bool) or not isinstance(val, int) or (minimum is not None and val < minimum):
        raise RolloutError(where, name, f"must be an integer >= {minimum}, got {val!r}",
                           f"write \"{name}\" as a whole number")
    return val


def _float(val: Any, where: str, name: str, optional: bool = False) -> float | None:
    if val is None and optional:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
        raise RolloutError(where, name, f"must be a finite number{' or null' if optional else ''}, got {val!r}",
                           f"write \"{name}\" as a JSON number")
    return float(val)


def _token_ids(val: Any, where: str, name: str) -> tuple[int, ...]:
    if val is None:
        return ()
    if not isinstance(val, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                     and t >= 0 for t in val):
        raise RolloutError(where, name, "must be a list of non-negative integers",
                           f"write \"{name}\" as [id, id, ...] or [] when unknown")
    return tuple(val)


def _dict(val: Any, where: str, name: str, optional: bool = True) -> dict | None:
    if val is None and optional:
        return None
    if not isinstance(val, dict):
        raise RolloutError(where, name, f"must be a JSON object, got {type(val).__name__}",
                           f"write \"{name}\" as {{...}}")
    return val


def _object(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        raise RolloutError(where, "<line>", f"expected a JSON object, got {type(obj).__name__}",
                           "write one JSON object per line")
    return obj


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    """One sampled response to one prompt in a GRPO round.

    `token_ids` are the response tokens (empty when unknown); `finish_reason` is ``"stop"`` or
    ``"length"`` (cut at max_tokens); `reward` is the sum of `reward_components`; `advantage` the
    group-relative advantage (None before it is computed); `sample_index` the position in the group
    of G samples of this prompt. `mean_logprob` (mean token log-prob of the response under the
    sampling policy) is optional and used as the rejected's confidence when present. `record` is the
    prompt's Video-R1 record as a dict (optional). Unknown keys round-trip through `extra`.
    """

    rollout_id: str
    problem_id: str
    response: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str = "stop"
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    advantage: float | None = None
    step: int = 0
    iteration: int = 0
    sample_index: int = 0
    mean_logprob: float | None = None
    record: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise RolloutError("<rollout>", "finish_reason", f"unknown finish reason {self.finish_reason!r}",
                               f"use one of {', '.join(map(repr, FINISH_REASONS))}")
        object.__setattr__(self, "token_ids", tuple(self.token_ids))

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["token_ids"] = list(self.token_ids)
        d["reward_components"] = dict(self.reward_components)
        for optional in ("mean_logprob", "record"):
            if d[optional] is None:
                del d[optional]
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "<rollout>") -> "Rollout":
        """Validate one parsed JSON object; `where` is ``file:line`` for error messages."""
        obj = _object(obj, where)
        comps = _dict(obj.get("reward_components", {}), where, "reward_components", optional=False)
        for k, v in comps.items():
            _float(v, where, f"reward_components.{k}")
        reason = obj.get("finish_reason", "stop")
        if reason not in FINISH_REASONS:
            raise RolloutError(where, "finish_reason", f"unknown finish reason {reason!r}",
                               f"use one of {', '.join(map(repr, FINISH_REASONS))}")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            rollout_id=_str_id(_req(obj, where, "rollout_id", "give every rollout a unique id"), where, "rollout_id"),
            problem_id=_str_id(_req(obj, where, "problem_id", "set the prompt's record id"), where, "problem_id"),
            response=_str(_req(obj, where, "response", "write the generated text"), where, "response"),
            token_ids=_token_ids(obj.get("token_ids"), where, "token_ids"),
            finish_reason=reason,
            reward=_float(obj.get("reward", 0.0), where, "reward"),
            reward_components={k: float(v) for k, v in comps.items()},
            advantage=_float(obj.get("advantage"), where, "advantage", optional=True),
            step=_int(obj.get("step", 0), where, "step"),
            iteration=_int(obj.get("iteration", 0), where, "iteration"),
            sample_index=_int(obj.get("sample_index", 0), where, "sample_index"),
            mean_logprob=_float(obj.get("mean_logprob"), where, "mean_logprob", optional=True),
            record=_embedded_record(obj, where),
            extra={k: v for k, v in obj.items() if k not in known},
        )


def _embedded_record(obj: dict, where: str) -> dict | None:
    """A rollout's ``record``, validated as `load_records` validates a data line (``problem_id`` defaults
    to the rollout's, ``data_type`` to ``text``, since the rollout file may carry a shortened record)."""
    rec = _dict(obj.get("record"), where, "record")
    if rec is None:
        return None
    try:
        Record.from_dict({"problem_id": obj.get("problem_id"), "data_type": "text", **rec}, where=where)
    except RecordError as e:
        raise RolloutError(where, f"record.{e.field}", e.problem, e.fix) from None
    return rec


@dataclass(frozen=True)
class PreferencePair:
    """One contrastive pair for the preference stage.

    `type` is one of ``penalty``, ``consistency``, ``reflection``, ``caption``; `prompt` is the question
    text (the preference stage renders it with the same template as GRPO); `chosen_checks` /
    `rejected_checks` are the verifier's check results of each side (a dict), `chosen_verdict` /
    `rejected_verdict` the judge's verdicts (``consistent``, ``inconsistent``, ``unknown``, ``skipped``)
    or, for caption pairs, None with the scores in `chosen_score` / `rejected_score`.
    `config_hash` identifies the verifier config that made the pair; `judge` the judge that ran;
    `video_path` the prompt's media file and `record` its Video-R1 record (optional), so the
    preference stage can render the prompt exactly as the GRPO stage did.
    """

    pair_id: str
    problem_id: str
    type: str
    prompt: str
    chosen: str
    rejected: str
    chosen_id: str
    rejected_id: str
    chosen_token_ids: tuple[int, ...] = ()
    rejected_token_ids: tuple[int, ...] = ()
    chosen_checks: dict[str, Any] = field(default_factory=dict)
    rejected_checks: dict[str, Any] = field(default_factory=dict)
    chosen_verdict: str | None = None
    rejected_verdict: str | None = None
    chosen_score: float | None = None
    rejected_score: float | None = None
    config_hash: str = ""
    judge: str | None = None
    video_path: str | None = None
    record: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.type not in PAIR_TYPES:
            raise RolloutError("<pair>", "type", f"unknown pair type {self.type!r}",
                               f"use one of {', '.join(map(repr, PAIR_TYPES))}")
        object.__setattr__(self, "chosen_token_ids", tuple(self.chosen_token_ids))
        object.__setattr__(self, "rejected_token_ids", tuple(self.rejected_token_ids))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["chosen_token_ids"] = list(self.chosen_token_ids)
        d["rejected_token_ids"] = list(self.rejected_token_ids)
        if d["record"] is None:
            del d["record"]
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "<pair>") -> "PreferencePair":
        obj = _object(obj, where)
        ptype = _req(obj, where, "type", f"set the pair type ({', '.join(PAIR_TYPES)})")
        if ptype not in PAIR_TYPES:
            raise RolloutError(where, "type", f"unknown pair type {ptype!r}",
                               f"use one of {', '.join(map(repr, PAIR_TYPES))}")

        def opt_str(name: str) -> str | None:
            val = obj.get(name)
            return None if val is None else _str(val, where, name)

        known = {f.name for f in fields(cls)} - {"extra"}
        return check_distinct(cls(
            pair_id=_str_id(_req(obj, where, "pair_id", "give every pair a unique id"), where, "pair_id"),
            problem_id=_str_id(_req(obj, where, "problem_id", "set the prompt's record id"), where, "problem_id"),
            type=ptype,
            prompt=_str(_req(obj, where, "prompt", "write the question text"), where, "prompt", allow_empty=False),
            chosen=_str(_req(obj, where, "chosen", "write the preferred response"), where, "chosen"),
            rejected=_str(_req(obj, where, "rejected", "write the dispreferred response"), where, "rejected"),
            chosen_id=_str_id(_req(obj, where, "chosen_id", "set the chosen rollout id"), where, "chosen_id"),
            rejected_id=_str_id(_req(obj, where, "rejected_id", "set the rejected rollout id"), where, "rejected_id"),
            chosen_token_ids=_token_ids(obj.get("chosen_token_ids"), where, "chosen_token_ids"),
            rejected_token_ids=_token_ids(obj.get("rejected_token_ids"), where, "rejected_token_ids"),
            chosen_checks=_dict(obj.get("chosen_checks", {}), where, "chosen_checks", optional=False),
            rejected_checks=_dict(obj.get("rejected_checks", {}), where, "rejected_checks", optional=False),
            chosen_verdict=opt_str("chosen_verdict"),
            rejected_verdict=opt_str("rejected_verdict"),
            chosen_score=_float(obj.get("chosen_score"), where, "chosen_score", optional=True),
            rejected_score=_float(obj.get("rejected_score"), where, "rejected_score", optional=True),
            config_hash=_str(obj.get("config_hash", ""), where, "config_hash"),
            judge=opt_str("judge"),
            video_path=opt_str("video_path"),
            record=_dict(obj.get("record"), where, "record"),
            extra={k: v for k, v in obj.items() if k not in known},
        ), where)


def same_sides(chosen: str, rejected: str, chosen_ids: tuple[int, ...] = (),
               rejected_ids: tuple[int, ...] = ()) -> bool:
    """Whether a pair's two sides are one response: the same text and, when both sides carry token ids,
    the same ids (a response cut at max_tokens has the text of its finished twin but not its EOS)."""
    if chosen.strip() != rejected.strip():
        return False
    return not (chosen_ids and rejected_ids) or tuple(chosen_ids) == tuple(rejected_ids)


def check_distinct(pair: PreferencePair, where: str) -> PreferencePair:
    """`pair` when its two sides differ (`same_sides`); a pair whose chosen equals its rejected teaches nothing
    (its loss has no gradient) and hints at a broken pair file, so it is an error naming `where`."""
    if same_sides(pair.chosen, pair.rejected, pair.chosen_token_ids, pair.rejected_token_ids):
        raise RolloutError(where, "rejected", "is the same text as \"chosen\" (a pair must differ)",
                           "drop the pair or fix the file that made it")
    return pair


# ---------------------------------------------------------------------------------------------
# JSONL reading and writing

T = TypeVar("T")


def read_jsonl(path: str | os.PathLike, from_dict: Callable[[Any, str], T], skip_bad: bool = False,
               report: LoadReport | None = None, id_field: str | None = None) -> list[T]:
    """Read a JSONL file through ``from_dict(obj, "file:line")``.

    Blank lines are ignored. A line that is not JSON, or that `from_dict` rejects, raises a
    `RecordError` naming ``file:line`` (or is skipped and counted in `report` with ``skip_bad``).
    With `id_field`, a repeated id is an error too (naming both lines).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file. Fix: check the path")
    out: list[T] = []
    seen: dict[str, str] = {}
    bad: list[str] = []
    for lineno, line in iter_lines(path):
        where = f"{path}:{lineno}"
        try:
            if isinstance(line, RecordError):  # not UTF-8
                raise line
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RolloutError(where, "<json>", f"invalid JSON at column {e.colno} ({e.msg})",
                                   "write one complete JSON object per line") from e
            item = from_dict(obj, where)
            if id_field is not None:
                key = getattr(item, id_field)
                if key in seen:
                    raise RolloutError(where, id_field, f"duplicate id {key!r} (first at {seen[key]})",
                                       f"give every line a unique {id_field}")
                seen[key] = where
        except RecordError as err:
            if not skip_bad:
                raise
            bad.append(str(err))
            continue
        out.append(item)
    if report is not None:
        report.skipped += len(bad)
        report.errors.extend(bad)
    return out


def read_rollouts(path: str | os.PathLike, skip_bad: bool = False, report: LoadReport | None = None) -> list[Rollout]:
    """Read ``rollouts.jsonl``; rollout ids must be unique."""
    return read_jsonl(path, Rollout.from_dict, skip_bad=skip_bad, report=report, id_field="rollout_id")


def write_rollouts(path: str | os.PathLike, rollouts: Iterable[Rollout]) -> Path:
    """Write rollouts atomically (replaces the file)."""
    return write_jsonl(path, rollouts)


def append_rollouts(path: str | os.PathLike, rollouts: Iterable[Rollout]) -> Path:
    """Append rollouts to a growing ``rollouts.jsonl`` (one step at a time), flushed and fsynced.

    Appending is not atomic: a crash can leave a torn last line, which `read_rollouts` reports as
    ``file:line`` (or skips with ``skip_bad``). Use `write_rollouts` for a finished stage output.
    """
    return append_jsonl(path, rollouts)


def read_pairs(path: str | os.PathLike, skip_bad: bool = False, report: LoadReport | None = None) -> list[PreferencePair]:
    """Read ``pairs.jsonl``; pair ids must be unique."""
    return read_jsonl(path, PreferencePair.from_dict, skip_bad=skip_bad, report=report, id_field="pair_id")


def write_pairs(path: str | os.PathLike, pairs: Iterable[PreferencePair]) -> Path:
    """Write pairs atomically (replaces the file)."""
    return write_jsonl(path, pairs)


def truncate_rollouts(path: str | os.PathLike, from_step: int) -> int:
    """Keep only the rollouts of steps before `from_step` (and no torn line) in a growing
    ``rollouts.jsonl``, atomically; a resumed GRPO stage calls this before redoing `from_step`.
    Returns the number of lines dropped."""
    return truncate_jsonl(path, lambda row: row["step"] < from_step)
