"""Benchmarks at scale: ``--limit``, ``--shard i/n``, resume from ``samples.jsonl`` and merging shards.

A shard takes every n-th item starting at i (items i, i+n, i+2n... of the file after ``--limit``), so
shards are balanced across a file sorted by length or category. Each sample row carries the item's
``index`` in the file, so `merge_rows` restores file order and a merge of all shards scores exactly
as one process would have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from veripo.eval.benchmarks import BenchmarkError
from veripo.run_dir import truncate_jsonl

T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None for None. BenchmarkError on anything else."""
    if text is None:
        return None
    m = _SHARD.match(text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise BenchmarkError(f"--shard {text!r}: expected i/n with 0 <= i < n (e.g. 0/4 for the first of four "
                             "processes). Fix: pass --shard 0/4 ... --shard 3/4")
    return int(m.group(1)), int(m.group(2))


def select(items: Sequence[T], limit: int | None = None, shard: tuple[int, int] | None = None) -> list[T]:
    """The first `limit` items, then this shard's share (every n-th from i)."""
    chosen = list(items[:limit] if limit is not None else items)
    if shard is not None:
        i, n = shard
        chosen = chosen[i::n]
    return chosen


def load_done(samples: str | Path) -> dict[str, dict]:
    """Rows already answered in `samples` (by ``question_id``), after dropping a torn last line from the
    file (a crash mid-write). Missing file: empty."""
    path = Path(samples)
    if not path.is_file():
        return {}
    dropped = truncate_jsonl(path, lambda row: isinstance(row, dict) and "question_id" in row)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if dropped:
        import sys

        print(f"[eval] {path}: dropped {dropped} torn or foreign line(s) before resuming", file=sys.stderr)
    return {str(r["question_id"]): r for r in rows}


def merge_rows(groups: Iterable[Sequence[dict]]) -> list[dict]:
    """All shards' rows in file order; BenchmarkError when two shards answered the same question
    differently (overlapping shards of different runs)."""
    by_id: dict[str, dict] = {}
    for rows in groups:
        for row in rows:
            qid = str(row["question_id"])
            old = by_id.get(qid)
            if old is not None and old.get("model_output") != row.get("model_output"):
                raise BenchmarkError(f"question {qid!r} is answered differently by two shards. Fix: merge the "
                                     "shards of one run only (same --model, --template and sampling)")
            by_id[qid] = row
    return sorted(by_id.values(), key=lambda r: (r.get("index", 0), str(r["question_id"])))
