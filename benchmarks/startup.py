"""Start-up cost of ``python -m veripo.run``: seconds from launching the command to the first stage
starting (the line ``veripo: [iteration 1/N, stage 1/M] ...``), and to the recipe being validated
(the line ``veripo: run NAME in ...``, printed once the config is typed and the records are loaded).

    python benchmarks/startup.py [--repeats 3] [--cwd DIR] [-- key=value ...]

Each run is killed (its whole process group) as soon as the first stage starts, so no training runs.
The run folder goes to a temporary directory. Prints one line per run and the median.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(overrides: list[str], cwd: str | None) -> tuple[float, float]:
    out = tempfile.mkdtemp(prefix="veripo-startup-")
    cmd = [sys.executable, "-u", "-m", "veripo.run", f"output_dir={out}", "logging.progress=false", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd or out,
                            start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    validated = None
    try:
        for line in proc.stdout:
            if validated is None and line.startswith("veripo: run "):
                validated = time.perf_counter() - t0
            if line.startswith("veripo: [iteration 1/"):
                return validated or float("nan"), time.perf_counter() - t0
        raise RuntimeError(f"veripo.run exited ({proc.wait()}) before a stage started")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cwd", default=None, help="folder to run from (default: the run's temporary folder)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. stages=[grpo]")
    args = ap.parse_args()
    firsts = []
    for i in range(args.repeats):
        validated, first = one_run(args.overrides, args.cwd)
        firsts.append(first)
        print(f"run {i + 1}: records loaded and config valid after {validated:.1f} s; first stage after {first:.1f} s",
              flush=True)
    print(f"median time to the first stage: {statistics.median(firsts):.1f} s over {len(firsts)} runs")


if __name__ == "__main__":
    main()
