"""The Video-R1 record: one question about one video (or image, or caption-only text).

A JSONL file holds one record per line, in the Video-R1 layout::

    {"problem_id": 7, "problem": "Which way does the red circle move?",
     "data_type": "video", "problem_type": "multiple choice",
     "options": ["A. left", "B. right", "C. up", "D. down"],
     "solution": "<answer>B</answer>", "path": "clips/7.mp4",
     "data_source": "veripo-synth", "caption": "frame 0: ..."}

`load_records` validates every line and stops at the first bad one with an error that names
``file:line:field`` and says how to fix it (or skips and counts bad lines when asked to).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from veripo.errors import UserError
from veripo.rewards.parsing import extract_answer

PROBLEM_TYPES = ("multiple choice", "numerical", "regression", "OCR", "free-form")
DATA_TYPES = ("video", "image", "text")
REQUIRED_FIELDS = ("problem_id", "problem", "data_type", "problem_type", "solution")


class RecordError(UserError, ValueError):
    """A record that does not follow the schema; the message names file:line:field and the fix."""

    def __init__(self, where: str, field_name: str, problem: str, fix: str):
        self.where, self.field, self.problem, self.fix = where, field_name, problem, fix
        super().__init__(f"{where}:{field_name}: {problem}. Fix: {fix}")


class MissingFileError(UserError, FileNotFoundError):
    """An input file that is not there (or not a file); the message names it and the fix."""


@dataclass(frozen=True)
class Record:
    """One question. `solution` keeps the dataset's form (``<answer>B</answer>`` or a bare ``B``);
    use `answer` for the bare ground truth. `path` is resolved against the JSONL's folder when relative.
    """

    problem_id: str
    problem: str
    data_type: str
    problem_type: str
    solution: str
    options: tuple[str, ...] = ()
    path: str | None = None
    data_source: str = ""
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def answer(self) -> str:
        """The ground truth without ``<answer>`` tags."""
        inner = extract_answer(self.solution)
        return (inner if inner is not None else self.solution).strip()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = list(self.options)
        extra = d.pop("extra")
        d = {k: v for k, v in d.items() if v is not None}
        d.update(extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "<record>", base_dir: str | os.PathLike | None = None) -> "Record":
        """Validate one parsed JSON object; `where` is ``file:line`` for error messages."""
        if not isinstance(obj, dict):
            raise RecordError(where, "<line>", f"expected a JSON object, got {type(obj).__name__}",
                              "write one JSON object per line")
        for name in REQUIRED_FIELDS:
            if name not in obj or obj[name] is None:
                raise RecordError(where, name, "missing required field",
                                  f"add \"{name}\" (required fields: {', '.join(REQUIRED_FIELDS)})")
        pid = obj["problem_id"]
        if isinstance(pid, bool) or not isinstance(pid, (int, str)) or str(pid).strip() == "":
            raise RecordError(where, "problem_id", f"must be a non-empty string or integer, got {pid!r}",
                              "give every record a unique id")
        for name in ("problem", "solution"):
            val = obj[name]
            if isinstance(val, (int, float)) and not isinstance(val, bool) and name == "solution":
                val = str(val)
            if not isinstance(val, str) or not val.strip():
                raise RecordError(where, name, f"must be a non-empty string, got {obj[name]!r}",
                                  f"put the {'question' if name == 'problem' else 'ground-truth answer'} text here")
        ptype = obj["problem_type"]
        if ptype not in PROBLEM_TYPES:
            raise RecordError(where, "problem_type", f"unknown problem type {ptype!r}",
                              f"use one of {', '.join(repr(p) for p in PROBLEM_TYPES)}")
        dtype = obj["data_type"]
        if dtype not in DATA_TYPES:
            raise RecordError(where, "data_type", f"unknown data type {dtype!r}",
                              f"use one of {', '.join(repr(d) for d in DATA_TYPES)}")
        options = obj.get("options") or []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise RecordError(where, "options", f"must be a list of strings, got {options!r}",
                              'write options as ["A. first", "B. second", ...]')
        if ptype == "multiple choice" and len(options) < 2:
            raise RecordError(where, "options", "a multiple-choice record needs at least two options",
                              'add "options": ["A. ...", "B. ...", ...] or change problem_type')
        path = obj.get("path")
        if dtype in ("video", "image"):
            if not isinstance(path, str) or not path.strip():
                raise RecordError(where, "path", f"a {dtype} record needs the media file's path",
                                  "set \"path\" to the file, relative to the JSONL's folder or absolute,"
                                  " or set \"data_type\": \"text\"")
            if base_dir is not None and not os.path.isabs(path):
                path = os.path.normpath(os.path.join(base_dir, path))
        elif path is not None and not isinstance(path, str):
            raise RecordError(where, "path", f"must be a string, got {path!r}", "give the media file's path")
        caption = obj.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise RecordError(where, "caption", f"must be a string, got {type(caption).__name__}",
                              "write the caption as one string")
        known = set(REQUIRED_FIELDS) | {"options", "path", "data_source", "caption"}
        return cls(
            problem_id=str(pid),
            problem=obj["problem"],
            data_type=dtype,
            problem_type=ptype,
            solution=str(obj["solution"]),
            options=tuple(options),
            path=path,
            data_source=str(obj.get("data_source") or ""),
            caption=caption,
            extra={k: v for k, v in obj.items() if k not in known},
        )


@dataclass
class LoadReport:
    """What a reader with ``skip_bad=True`` skipped: the count and one message per bad line."""

    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self, limit: int = 3) -> str:
        """``"N bad line(s) skipped (first: file:line:field: ...)"``; '' when nothing was skipped."""
        if not self.skipped:
            return ""
        first = "; ".join(e.split(". Fix:")[0] for e in self.errors[:limit])
        return f"{self.skipped} bad line(s) skipped" + (f" (first: {first})" if first else "")

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        """What a manifest records: the count and the first `limit` messages."""
        return {"skipped": self.skipped, "errors": self.errors[:limit]}


def encoding_error(where: str, line: bytes, err: UnicodeDecodeError) -> RecordError:
    """The `RecordError` for a `line` that is not UTF-8 (`err` from decoding it): names the byte and its column."""
    return RecordError(where, "<encoding>", f"not UTF-8 text (byte 0x{line[err.start]:02x} at column {err.start + 1})",
                       "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`), or skip bad lines "
                       "with the skip flag (data.skip_bad=true / --skip-bad)")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str | RecordError]]:
    """``(line number, text)`` for every non-blank line of a text file, decoded as UTF-8 one line at a time
    (a byte-order mark on the first line is dropped), so one bad byte costs one line: such a line comes as
    ``(line number, RecordError)`` naming ``file:line`` and the byte, for the caller to raise or skip."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, encoding_error(f"{path}:{lineno}", raw, e)
                continue
            if text.strip():
                yield lineno, text.rstrip("\r\n")


def load_records(path: str | os.PathLike, skip_bad: bool = False, check_media: bool = False,
                 report: LoadReport | None = None) -> list[Record]:
    """Read and validate a Video-R1 JSONL file (a ``.json`` file holding one list works too).

    Blank lines are ignored. With ``skip_bad=False`` the first bad line raises `RecordError`
    naming ``file:line:field``; with ``skip_bad=True`` it is skipped and counted in `report`.
    ``check_media=True`` also requires each media file to exist. Duplicate ids are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such data file. Fix: check the path (data.train / data.test)"
                                " or generate the synthetic set with `python -m veripo.data.synth --out DIR`")
    base_dir = path.parent
    entries: list[tuple[str, Any]] = []
    bad: list[RecordError] = []
    if path.suffix == ".json" and _starts_with_list(path):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:  # one JSON document: a bad byte spoils all of it, no line to skip
            for lineno, line in enumerate(raw.splitlines(), start=1):
                try:
                    line.decode("utf-8-sig")
                except UnicodeDecodeError as e:
                    raise encoding_error(f"{path}:{lineno}", line, e) from None
            raise
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{e.lineno}", "<json>", f"invalid JSON ({e.msg})", "fix the JSON syntax") from e
        entries = [(f"{path}:item {i}", obj) for i, obj in enumerate(items)]
    else:
        for lineno, line in iter_lines(path):
            where = f"{path}:{lineno}"
            if isinstance(line, RecordError):
                if not skip_bad:
                    raise line
                bad.append(line)
                continue
            try:
                entries.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                err = RecordError(where, "<json>", f"invalid JSON at column {e.colno} ({e.msg})",
                                  "write one complete JSON object per line")
                if not skip_bad:
                    raise err from e
                bad.append(err)

    records: list[Record] = []
    seen: dict[str, str] = {}
    for where, obj in entries:
        try:
            rec = Record.from_dict(obj, where=where, base_dir=base_dir)
            if rec.problem_id in seen:
                raise RecordError(where, "problem_id", f"duplicate id {rec.problem_id!r} (first at {seen[rec.problem_id]})",
                                  "give every record a unique problem_id")
            if check_media and rec.path is not None and not os.path.exists(rec.path):
                raise RecordError(where, "path", f"media file not found: {rec.path}",
                                  "fix the path or remove the record")
        except RecordError as err:
            if not skip_bad:
                raise
            bad.append(err)
            continue
        seen[rec.problem_id] = where
        records.append(rec)
    if report is not None:
        report.skipped += len(bad)
        report.errors.extend(str(e) for e in bad)
    return records


def _starts_with_list(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def write_records(path: str | os.PathLike, records: list[Record]) -> None:
    """Write records as JSONL atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(rec.to_json() + "\n")
    os.replace(tmp, path)
