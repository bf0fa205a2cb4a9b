"""Run, score, summarise and merge public-benchmark evaluations (library behind ``python -m veripo.eval
--benchmark``, ``... score`` and ``... merge``).

    items, spec = load_benchmark("evaluation/json/vsi_bench.json")
    summary = run_benchmark(items, spec, generate, make_request, out_dir, template="verIPO")

Output folder: ``samples.jsonl`` (one row per answered item, appended after every batch, so a killed run
resumes where it stopped), ``results.json`` (``{"summary", "meta"}``) and ``run.json`` (the settings
a resume must match). Rows: `ROW_KEYS`. Summary: accuracy (the mean score: 0/1 for choices and math,
MRA in [0, 1] for VSI-Bench numbers and regression) with a 95% interval, per category and per
problem type, plus the missing videos.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veripo.eval.benchmarks import BenchItem, BenchmarkError, BenchmarkSpec, read_json_records, resolve_spec
from veripo.eval.scoring import first_answer_span, r1_answer, score_output
from veripo.eval.shards import load_done, merge_rows
from veripo.run_dir import RESULTS, SAMPLES, append_jsonl, atomic_write_text, write_jsonl
from verifier.pairs import format_table

RUN_FILE = "run.json"
ROW_KEYS = ("index", "question_id", "category", "problem_type", "ground_truth", "model_output", "prediction",
            "score", "finish_reason", "tokens", "scorer")
# settings a resumed or merged run must share with the rows already written
RUN_KEYS = ("benchmark_file", "benchmark", "template", "scorer", "model", "max_tokens", "temperature", "top_p",
            "use_video", "fps", "max_frames", "max_pixels")


# ---- statistics --------------------------------------------------------------------------------
def interval95(scores: Sequence[float]) -> tuple[float, float] | None:
    """95% interval of a mean score: Wilson's score interval when every score is 0 or 1 (a proportion),
    else the normal interval mean +- 1.96 s / sqrt(n) clipped to [0, 1] (MRA scores). None for n = 0."""
    n = len(scores)
    if n == 0:
        return None
    mean = sum(scores) / n
    z = 1.96
    if all(s in (0.0, 1.0) for s in scores):
        denom = 1 + z * z / n
        centre = (mean + z * z / (2 * n)) / denom
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
        return max(0.0, centre - half), min(1.0, centre + half)
    if n < 2:
        return 0.0, 1.0
    var = sum((s - mean) ** 2 for s in scores) / (n - 1)
    half = z * math.sqrt(var / n)
    return max(0.0, mean - half), min(1.0, mean + half)


def _group(rows: Sequence[dict], key: str) -> dict[str, dict]:
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r.get(key) is not None:
            groups.setdefault(str(r[key]), []).append(float(r["score"]))
    return {k: {"n": len(v), "accuracy": sum(v) / len(v), "ci95": interval95(v)} for k, v in sorted(groups.items())}


def summarize(rows: Sequence[dict], *, benchmark: str, scorer: str, missing: Sequence[str] = (),
              total: int | None = None) -> dict[str, Any]:
    """Accuracy (mean score over the answered items) with its 95% interval, per category and per type.
    `missing`: the video paths skipped (counted and listed, never folded into the accuracy)."""
    scores = [float(r["score"]) for r in rows]
    n = len(scores)
    return {
        "benchmark": benchmark, "scorer": scorer, "n": n,
        "total": total if total is not None else n + len(missing),
        "accuracy": sum(scores) / n if n else None, "ci95": interval95(scores),
        "by_category": _group(rows, "category"), "by_type": _group(rows, "problem_type"),
        "missing_videos": len(missing), "missing": list(missing),
        "no_answer_tag": sum(1 for r in rows if "<answer>" not in str(r.get("model_output", ""))),
    }


def format_bench_table(summary: dict[str, Any]) -> str:
    def acc(d: dict | None, a: float | None, ci: Sequence[float] | None) -> str:
        if a is None:
            return "n/a"
        return f"{100 * a:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")

    rows = [(f"{summary['benchmark']} ({summary['scorer']} scoring)", f"n={summary['n']} of {summary['total']}"),
            ("accuracy (95% CI)", acc(None, summary["accuracy"], summary["ci95"]))]
    for title, key in (("type", "by_type"), ("category", "by_category")):
        groups = summary.get(key) or {}
        if len(groups) > 1 or (key == "by_category" and groups):
            for name, g in groups.items():
                rows.append((f"  {title} {name} (n={g['n']})", acc(None, g["accuracy"], g["ci95"])))
    rows.append(("missing videos", str(summary["missing_videos"]) + (" (listed in results.json)"
                                                                    if summary["missing_videos"] else "")))
    rows.append(("outputs without <answer>", str(summary.get("no_answer_tag", 0))))
    return format_table(rows)


# ---- scoring -----------------------------------------------------------------------------------
def score_item(item: BenchItem, output: str, scorer: str, spec: BenchmarkSpec) -> float:
    """`output` scored by `scorer` ("verIPO" | "video_r1" | "veripo") with `spec`'s MRA rule."""
    gt = item.answer if scorer == "verIPO" else item.ground_truth
    return score_output(scorer, output, gt, problem_type=item.kind, mra=spec.mra)


def prediction(output: str, scorer: str) -> str:
    if scorer == "verIPO":
        return first_answer_span(output)
    return r1_answer(output) or output


def make_row(item: BenchItem, output: str, scorer: str, spec: BenchmarkSpec, finish_reason: str | None = None,
             tokens: int | None = None) -> dict[str, Any]:
    return {"index": item.index, "question_id": item.qid, "category": item.category, "problem_type": item.kind,
            "ground_truth": item.answer if scorer == "verIPO" else item.ground_truth, "model_output": output,
            "prediction": prediction(output, scorer), "score": score_item(item, output, scorer, spec),
            "finish_reason": finish_reason, "tokens": tokens, "scorer": scorer}


# ---- missing videos ----------------------------------------------------------------------------
def video_file(item: BenchItem, video_root: str | os.PathLike | None) -> str | None:
    if not item.video:
        return None
    return str(Path(video_root) / item.video) if video_root is not None else item.video


def split_missing(items: Sequence[BenchItem], video_root: str | os.PathLike | None,
                  skip_missing: bool) -> tuple[list[BenchItem], list[str]]:
    """(items whose video exists, missing paths). Without `skip_missing` the first missing video is an
    error naming it, the count and the flag."""
    present, missing = [], []
    for it in items:
        path = video_file(it, video_root)
        if path is not None and not os.path.isfile(path):
            missing.append(path)
        else:
            present.append(it)
    if missing and not skip_missing:
        raise BenchmarkError(f"video not found: {missing[0]} ({len(missing)} of {len(items)} missing). Fix: point "
                             "--video-root at the folder holding the benchmark's videos, or pass --skip-missing to "
                             "evaluate the rest (the missing ones are counted and listed in results.json)")
    return present, missing


# ---- running -----------------------------------------------------------------------------------
def _check_run(out: Path, run_meta: dict[str, Any]) -> None:
    path = out / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in RUN_KEYS if old.get(k) != run_meta.get(k)]
        if diff:
            k = diff[0]
            raise BenchmarkError(f"{out}: holds answers from another run ({k}: {old.get(k)!r} there, {run_meta.get(k)!r} "
                                 f"now). Fix: use another --out, or delete {out / SAMPLES} to start over")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({k: run_meta.get(k) for k in RUN_KEYS}, indent=2) + "\n")


def run_benchmark(items: Sequence[BenchItem], spec: BenchmarkSpec, generate: Callable[[list, Any], list],
                  make_request: Callable[[BenchItem], Any], out_dir: str | os.PathLike, *, scorer: str,
                  sampling: Any, run_meta: dict[str, Any] | None = None, missing: Sequence[str] = (),
                  batch_size: int = 64, progress: bool = True, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer every item not yet in ``out_dir/samples.jsonl`` (in batches of `batch_size`, each appended
    as soon as it is scored), then write results.json; returns the summary.

    `generate(requests, sampling)` returns one sample (``.text``, ``.finish_reason``, ``.token_ids``)
    per request; `make_request(item)` builds one request. `run_meta`: the settings (`RUN_KEYS`) a resume
    must match.
    """
    out = Path(out_dir)
    run_meta = dict(run_meta or {})
    _check_run(out, run_meta)
    samples_path = out / SAMPLES
    done = load_done(samples_path)
    wanted = {it.qid for it in items}
    todo = [it for it in items if it.qid not in done]
    if progress:
        print(f"[eval] {spec.name}: {len(items)} items, {len(items) - len(todo)} already answered in {samples_path}, "
              f"{len(todo)} to go", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        outs = list(generate([make_request(it) for it in batch], sampling))
        if len(outs) != len(batch):
            raise RuntimeError(f"generate returned {len(outs)} samples for {len(batch)} requests")
        rows = [make_row(it, s.text, scorer, spec, getattr(s, "finish_reason", None),
                         len(getattr(s, "token_ids", None) or ())) for it, s in zip(batch, outs)]
        append_jsonl(samples_path, rows)
        if progress:
            print(f"[eval] {min(start + batch_size, len(todo))}/{len(todo)} answered", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    rows = [r for r in load_done(samples_path).values() if str(r["question_id"]) in wanted]
    rows.sort(key=lambda r: r["index"])
    summary = summarize(rows, benchmark=spec.name, scorer=scorer, missing=missing, total=len(items) + len(missing))
    summary.update(generated=len(todo), resumed=len(items) - len(todo), seconds=seconds,
                   records_per_second=len(todo) / seconds if todo and seconds > 0 else None)
    write_summary(out, summary, {**run_meta, **(meta or {})})
    return summary


def write_summary(out: str | os.PathLike, summary: dict[str, Any], meta: dict[str, Any]) -> Path:
    path = Path(out) / RESULTS
    atomic_write_text(path, json.dumps({"summary": summary, "meta": meta}, indent=2, ensure_ascii=False) + "\n")
    return path


# ---- merge -------------------------------------------------------------------------------------
def merge_dirs(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Combine the shards' samples.jsonl (checked to come from one run) into ``out_dir``: samples.jsonl in
    file order and results.json scored over all of them (missing videos summed)."""
    if not shard_dirs:
        raise BenchmarkError("merge: no shard folders given. Fix: python -m veripo.eval merge DIR... --out DIR")
    runs, groups, missing, metas = [], [], [], []
    for d in shard_dirs:
        d = Path(d)
        if not (d / RUN_FILE).is_file() or not (d / SAMPLES).is_file():
            raise BenchmarkError(f"{d}: no {RUN_FILE} and {SAMPLES}. Fix: give the --out folders of the shard runs")
        runs.append(json.loads((d / RUN_FILE).read_text(encoding="utf-8")))
        groups.append(list(load_done(d / SAMPLES).values()))
        if (d / RESULTS).is_file():
            res = json.loads((d / RESULTS).read_text(encoding="utf-8"))
            missing += res["summary"].get("missing", [])
            metas.append(res.get("meta", {}))
    for k in RUN_KEYS:
        values = {json.dumps(r.get(k)) for r in runs}
        if len(values) > 1:
            raise BenchmarkError(f"merge: the shards differ in {k} ({', '.join(sorted(values))}). Fix: merge the "
                                 "shards of one run only")
    rows = merge_rows(groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / SAMPLES, rows)
    atomic_write_text(out / RUN_FILE, json.dumps(runs[0], indent=2) + "\n")
    summary = summarize(rows, benchmark=runs[0].get("benchmark") or "benchmark", scorer=runs[0].get("scorer"),
                        missing=sorted(set(missing)))
    summary["shards"] = len(shard_dirs)
    write_summary(out, summary, {**runs[0], "merged_from": [str(d) for d in shard_dirs]})
    return summary


# ---- scoring a predictions file ----------------------------------------------------------------
def score_predictions(path: str | os.PathLike, scorer: str | None = None, rules: str | None = None) -> tuple[
        dict[str, Any], list[dict]]:
    """Re-score a predictions file: VerIPO's (a JSON list of ``{"question": {...}, "ground_truth",
    "model_output"}``; VSI-Bench's MRA when the file's path contains ``vsi_bench``, as VerIPO's script
    decides, or with ``rules="vsi_bench"``), Video-R1's (``{"results": [{..., "output", "solution",
    "problem_type"}]}``) or veripo's samples.jsonl (benchmark rows, or ``python -m veripo.eval --data``
    rows with ``response``/``answer``/``problem_type``). Returns (summary, rescored rows)."""
    data = read_json_records(path)
    if not data:
        raise BenchmarkError(f"{path}: no predictions. Fix: give a non-empty predictions file")
    if rules:
        spec = resolve_spec(path, rules)
    else:
        spec = BenchmarkSpec(Path(path).stem, mra="vsi_bench" in str(path))
    rows = []
    for i, rec in enumerate(data):
        if "ground_truth" in rec and "model_output" in rec:
            s = scorer or rec.get("scorer") or ("verIPO" if "problem_type" not in rec else "video_r1")
            q = rec.get("question") if isinstance(rec.get("question"), dict) else {}
            gt = str(rec["ground_truth"])
            ptype = rec.get("problem_type") or ("multiple choice" if gt.isalpha() else
                                                "regression" if spec.mra else "numerical")
            output = str(rec["model_output"])
            qid = rec.get("question_id", q.get("question_id", i))
            category = rec.get("category", q.get("question_type"))
        elif "output" in rec and "solution" in rec and "problem_type" in rec:
            s, gt, ptype, output = scorer or "video_r1", str(rec["solution"]), rec["problem_type"], str(rec["output"])
            qid, category = rec.get("problem_id", i), rec.get("problem_type")
        elif "response" in rec and "answer" in rec and "problem_type" in rec:
            s, gt, ptype, output = scorer or "veripo", str(rec["answer"]), rec["problem_type"], str(rec["response"])
            qid, category = rec.get("problem_id", i), rec.get("problem_type")
        else:
            raise BenchmarkError(f"{path}: record {i} has keys {sorted(rec)[:12]}: not a predictions record (VerIPO: "
                                 "ground_truth + model_output; Video-R1: output + solution + problem_type; veripo: "
                                 "response + answer + problem_type). Fix: give a predictions file in one of these layouts")
        score = score_output(s, output, gt, problem_type=ptype, mra=spec.mra or ptype == "regression")
        rows.append({"index": i, "question_id": qid, "category": category, "problem_type": ptype,
                     "ground_truth": gt, "model_output": output, "prediction": prediction(output, s),
                     "score": score, "scorer": s})
    used = sorted({r["scorer"] for r in rows})
    summary = summarize(rows, benchmark=spec.name, scorer="+".join(used))
    return summary, rows
