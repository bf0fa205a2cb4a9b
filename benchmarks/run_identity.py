"""Are two run folders the same run? For refactors that must not change behaviour: run the same recipe
with the old and the new code (same seed, same machine), then

    python benchmarks/run_identity.py runs_old/smollm2_cpu runs_new/smollm2_cpu

compares every metrics row field by field (wall-clock fields ignored), the rollouts, pairs, synthetic
data and eval samples byte for byte (run-folder paths normalised), the eval summaries, and the
manifest's stage order and steps. Exits 1 on the first difference, naming it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _timing(key: str) -> bool:
    return key == "time" or key.startswith("time_") or key.endswith("_s") or "seconds" in key or "per_s" in key


def compare(a: Path, b: Path) -> list[str]:
    problems, notes = [], []
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if len(rows_a) != len(rows_b):
        problems.append(f"metrics.jsonl: {len(rows_a)} rows vs {len(rows_b)}")
    fields = 0
    for i, (x, y) in enumerate(zip(rows_a, rows_b)):
        if x.keys() != y.keys():
            problems.append(f"metrics.jsonl row {i} ({x.get('stage')} step {x.get('step')}): keys {sorted(x.keys() ^ y.keys())}")
        for k in x.keys() & y.keys():
            if not _timing(k):
                fields += 1
                if x[k] != y[k]:
                    problems.append(f"metrics.jsonl row {i} ({x.get('stage')} step {x.get('step')}): {k} {x[k]!r} vs {y[k]!r}")
    notes.append(f"metrics.jsonl: {len(rows_a)} rows, {fields} non-timing fields compared")
    files = sorted({p.relative_to(a) for pat in ("iter*/*/rollouts*.jsonl", "iter*/verify/pairs.jsonl",
                                                 "iter*/eval_*/samples.jsonl", "data/*.jsonl") for p in a.glob(pat)})
    for rel in files:
        if not (b / rel).is_file():
            problems.append(f"{rel}: missing in {b}")
            continue
        ta, tb = (a / rel).read_text().replace(str(a), "RUN"), (b / rel).read_text().replace(str(b), "RUN")
        if ta != tb:
            problems.append(f"{rel}: differs")
        else:
            notes.append(f"{rel}: identical ({len(ta.splitlines())} lines)")
    for res in sorted(a.glob("iter*/eval_*/results.json")):
        rel = res.relative_to(a)
        sa = {k: v for k, v in json.loads(res.read_text())["summary"].items() if not _timing(k)}
        sb = {k: v for k, v in json.loads((b / rel).read_text())["summary"].items() if not _timing(k)}
        if sa != sb:
            problems.append(f"{rel}: summary differs in {sorted(k for k in sa if sa[k] != sb.get(k))}")
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    if ma["order"] != mb["order"]:
        problems.append(f"manifest order {ma['order']} vs {mb['order']}")
    for k, info in ma["stages"].items():
        if info.get("steps_done") != mb["stages"].get(k, {}).get("steps_done"):
            problems.append(f"manifest {k}: steps_done {info.get('steps_done')} vs {mb['stages'].get(k, {}).get('steps_done')}")
    for n in notes:
        print(n)
    return problems


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    problems = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    for p in problems:
        print("DIFFERENT:", p)
    print("same run" if not problems else f"{len(problems)} difference(s)")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
