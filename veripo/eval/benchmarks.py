"""Public video-reasoning benchmark files: VerIPO's and Video-R1's JSON layouts, and each benchmark's rules.

Two layouts, told apart by their keys:

* VerIPO (``evaluation/json/<name>.json`` in HITsz-TMG/VerIPO): a JSON list of objects with
  ``question_id``, ``video_path`` (relative to the video root), ``question``, ``answer`` (an option
  letter or a number), optional ``options`` and ``processed_question`` (the question with its options,
  what the prompt uses); any other field (``scene_name``, ``question_type``, ``duration``...) is kept.
* Video-R1 (``eval_<name>.json`` of the Video-R1-eval data release): a JSON list (or ``{"results":
  [...]}``) of objects with ``problem_type``, ``problem``, ``options``, ``solution`` (``<answer>X</answer>``),
  ``path`` (``./Benchmark/...``, relative to the video root) and ``data_type``.

`load_benchmark(path)` returns `BenchItem`s in file order; bad files raise `BenchmarkError` (a
`veripo.errors.UserError`) naming the file, the record and the fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veripo.errors import UserError


class BenchmarkError(UserError, ValueError):
    """A benchmark or predictions file that cannot be used (the message names the file, record and fix)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark's rules: which scorer the paper used, whether numbers score by MRA, the category field."""

    name: str
    scorer: str = "verIPO"  # the paper whose prompt and scoring are the default: verIPO | video_r1
    mra: bool = False  # VSI-Bench: numeric answers by mean relative accuracy
    category: str | None = None  # a record field, or "video_dir" (the folder above the clip: MMVU's discipline)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "vsi_bench": BenchmarkSpec("vsi_bench", mra=True, category="question_type"),
    "mmvu": BenchmarkSpec("mmvu", category="video_dir"),
    "tomato": BenchmarkSpec("tomato", category="video_dir"),
    "lvbench": BenchmarkSpec("lvbench", category="question_type"),
    "video_mme": BenchmarkSpec("video_mme", category="duration"),
    # Video-R1's evaluation release names (eval_<name>.json); Video-MMMU is public only in this layout
    "vsibench": BenchmarkSpec("vsibench", scorer="video_r1", category="original_question_type"),
    "videommmu": BenchmarkSpec("videommmu", scorer="video_r1", category="problem_type"),
    "videomme": BenchmarkSpec("videomme", scorer="video_r1", category="duration"),
    "mvbench": BenchmarkSpec("mvbench", scorer="video_r1", category="problem_type"),
    "tempcompass": BenchmarkSpec("tempcompass", scorer="video_r1", category="problem_type"),
}
ALIASES = {"video-mmmu": "videommmu", "video_mmmu": "videommmu", "vsi-bench": "vsi_bench",
           "video-mme": "video_mme"}
CATEGORY_FALLBACK = ("question_type", "discipline", "duration", "category", "task_type")


@dataclass
class BenchItem:
    """One benchmark question in a layout-neutral form.

    `kind`: the Video-R1 problem type ("multiple choice", "numerical", "regression", "OCR",
    "free-form"); VerIPO records are "multiple choice" when the answer is an uppercase letter, else
    "numerical" ("regression" on an MRA benchmark). `ground_truth`: what the scorer compares with (a
    letter or number for VerIPO, ``<answer>X</answer>`` for Video-R1). `video`: path relative to the
    video root (None: text only). `extra`: every other field of the record.
    """

    index: int
    qid: str
    question: str
    ground_truth: str
    kind: str
    layout: str
    options: list[str] = field(default_factory=list)
    processed_question: str | None = None
    video: str | None = None
    data_type: str = "video"
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The bare answer (no tags)."""
        m = re.search(r"<answer>\s*(.*?)\s*</answer>", self.ground_truth, re.DOTALL)
        return m.group(1).strip() if m else self.ground_truth.strip()


VERIPO_KEYS = ("question_id", "video_path", "question", "answer")
VIDEO_R1_KEYS = ("problem_type", "problem", "solution")


def detect_layout(record: dict) -> str | None:
    if all(k in record for k in VIDEO_R1_KEYS):
        return "video_r1"
    if "question_id" in record and "answer" in record and ("question" in record or "processed_question" in record):
        return "verIPO"
    return None


def resolve_spec(path: str | os.PathLike, rules: str | None = None) -> BenchmarkSpec:
    """The rules for `path`: `rules` when given, else the file's name (``vsi_bench.json``,
    ``eval_vsibench.json``), else defaults for its layout (decided by the caller)."""
    key = rules or Path(path).stem.lower().removeprefix("eval_")
    key = ALIASES.get(key, key)
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    if rules:
        raise BenchmarkError(f"unknown benchmark rules {rules!r}. Fix: one of {', '.join(BENCHMARKS)}")
    return BenchmarkSpec(Path(path).stem, scorer="")


def resolve_benchmark_file(name_or_file: str, bench_dir: str | os.PathLike | None = None) -> Path:
    """A file path as given, or a known benchmark name looked up as ``<bench_dir>/<name>.json`` (then
    ``eval_<name>.json``); `bench_dir` defaults to $VERIPO_BENCH_DIR, else ``./evaluation/json``."""
    p = Path(name_or_file)
    if p.suffix.lower() in (".json", ".jsonl") or p.exists():
        if not p.is_file():
            raise BenchmarkError(f"{p}: benchmark file not found. Fix: give an existing JSON file or a benchmark "
                                 f"name ({', '.join(BENCHMARKS)}) with --bench-dir")
        return p
    name = ALIASES.get(name_or_file.lower(), name_or_file.lower())
    root = Path(bench_dir or os.environ.get("VERIPO_BENCH_DIR") or Path("evaluation") / "json")
    for cand in (root / f"{name}.json", root / f"eval_{name}.json"):
        if cand.is_file():
            return cand
    known = ", ".join(BENCHMARKS)
    raise BenchmarkError(f"benchmark {name_or_file!r}: no {root / (name + '.json')} (nor eval_{name}.json). Fix: "
                         f"put VerIPO's evaluation/json/{name}.json there, pass --bench-dir DIR, or give the FILE "
                         f"itself (known names: {known})")


def _category(rec: dict, spec: BenchmarkSpec, video: str | None) -> str | None:
    if spec.category == "video_dir":
        if rec.get("discipline"):
            return str(rec["discipline"])
        parent = Path(video).parent.name if video else ""
        return parent or None
    if spec.category and rec.get(spec.category) not in (None, ""):
        return str(rec[spec.category])
    for key in CATEGORY_FALLBACK:
        if rec.get(key) not in (None, ""):
            return str(rec[key])
    return None


def _need_str(path: Path, i: int, rec: dict, key: str, qid: str) -> str:
    v = rec.get(key)
    if v is None or (isinstance(v, str) and not v.strip()) or isinstance(v, (dict, list, bool)):
        raise BenchmarkError(f"{path}: record {i} ({qid}): {key!r} is missing or not a string/number "
                             f"(got {v!r}). Fix: correct the record or remove it")
    return str(v)


def _item(path: Path, i: int, rec: dict, layout: str, spec: BenchmarkSpec) -> BenchItem:
    if layout == "verIPO":
        qid = str(rec.get("question_id", i))
        answer = _need_str(path, i, rec, "answer", qid).strip()
        question = str(rec.get("question") or rec.get("processed_question") or "")
        if not question.strip():
            raise BenchmarkError(f"{path}: record {i} ({qid}): no 'question' or 'processed_question'. Fix: add one")
        video = rec.get("video_path") or None
        options = rec.get("options") or []
        if not isinstance(options, list):
            raise BenchmarkError(f"{path}: record {i} ({qid}): 'options' must be a list of strings, got "
                                 f"{type(options).__name__}. Fix: write it as [\"A. ...\", \"B. ...\"]")
        kind = "multiple choice" if answer.isalpha() else ("regression" if spec.mra else "numerical")
        known = {"question_id", "video_path", "question", "answer", "options", "processed_question"}
        return BenchItem(index=i, qid=qid, question=question, ground_truth=answer, kind=kind, layout=layout,
                         options=[str(o) for o in options], processed_question=rec.get("processed_question"),
                         video=video, data_type="image" if "image" in rec else "video",
                         category=_category(rec, spec, video),
                         extra={k: v for k, v in rec.items() if k not in known})
    qid = str(rec.get("problem_id", rec.get("question_id", i)))
    ptype = _need_str(path, i, rec, "problem_type", qid)
    from veripo.eval.scoring import R1_TYPES

    if ptype not in R1_TYPES:
        raise BenchmarkError(f"{path}: record {i} ({qid}): unknown problem_type {ptype!r}. Fix: one of "
                             f"{', '.join(R1_TYPES)}")
    options = rec.get("options") or []
    if not isinstance(options, list):
        raise BenchmarkError(f"{path}: record {i} ({qid}): 'options' must be a list of strings. Fix: correct it")
    raw_path = rec.get("path") or None
    video = str(raw_path)[2:] if raw_path and str(raw_path).startswith("./") else raw_path
    known = {"problem_id", "problem_type", "problem", "options", "solution", "path", "data_type"}
    return BenchItem(index=i, qid=qid, question=_need_str(path, i, rec, "problem", qid),
                     ground_truth=_need_str(path, i, rec, "solution", qid), kind=ptype, layout=layout,
                     options=[str(o) for o in options], video=video,
                     data_type=str(rec.get("data_type") or "video"), category=_category(rec, spec, video),
                     extra={k: v for k, v in rec.items() if k not in known})


def read_json_records(path: str | os.PathLike) -> list[dict]:
    """A JSON list of objects (or ``{"results": [...]}``) or JSONL; BenchmarkError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: file not found. Fix: check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: cannot read ({e.__class__.__name__}: {e}). Fix: give a UTF-8 JSON file") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        data = None
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise BenchmarkError(f"{path}: not JSON (line {e.lineno}: {e.msg}) nor JSONL (line {n}). "
                                     "Fix: repair the file") from None
        data = rows
    if isinstance(data, dict):  # {"results": [...]} (Video-R1's outputs), or a one-line JSONL
        data = data["results"] if isinstance(data.get("results"), list) else [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BenchmarkError(f"{path}: expected a JSON list of objects (or {{\"results\": [...]}}). Fix: give a "
                             "benchmark file in VerIPO's or Video-R1's layout")
    return data


def load_benchmark(path: str | os.PathLike, rules: str | None = None) -> tuple[list[BenchItem], BenchmarkSpec]:
    """The items of a benchmark file and its rules (see the module docstring)."""
    path = Path(path)
    data = read_json_records(path)
    if not data:
        raise BenchmarkError(f"{path}: no records. Fix: give a non-empty benchmark file")
    layout = detect_layout(data[0])
    if layout is None:
        raise BenchmarkError(f"{path}: record 0 has keys {sorted(data[0])[:12]}, neither VerIPO's layout "
                             f"({', '.join(VERIPO_KEYS)}) nor Video-R1's ({', '.join(VIDEO_R1_KEYS)}, path, "
                             "data_type). Fix: convert the file to one of them")
    spec = resolve_spec(path, rules)
    if not spec.scorer:
        spec = BenchmarkSpec(spec.name, scorer=layout)
    items = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(data):
        if detect_layout(rec) != layout:
            raise BenchmarkError(f"{path}: record {i} is not in the {layout} layout of record 0 (keys "
                                 f"{sorted(rec)[:12]}). Fix: correct or remove it")
        item = _item(path, i, rec, layout, spec)
        # resume and merge match answers by id; a repeated id (TOMATO's file has 62: different questions
        # on one clip) gets its occurrence number, "0878-00#1", stable across runs of the same file
        n = seen.get(item.qid, 0)
        seen[item.qid] = n + 1
        if n:
            item.extra["source_question_id"] = item.qid
            item.qid = f"{item.qid}#{n}"
        items.append(item)
    return items, spec
