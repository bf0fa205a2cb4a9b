"""The fault table: feed veripo bad input, kills and damaged run folders, and classify how each case ends.

    python benchmarks/faults.py [--family NAME ...] [--case SUBSTRING] [--out faults.json]

Cases live in ``benchmarks/fault_cases/<family>.py``: each module registers functions with ``@case(family,
name)``; a case gets a fresh temporary folder and returns an `Outcome` (most use `run_cli` and `classify`).

Outcomes, as the closing notes and docs count them:

    clear      the run stopped (non-zero exit) with one message naming the file/line/key, no traceback
    counted    bad records were skipped under a skip flag, and the skip was printed and recorded
    recovered  veripo repaired or worked around the damage and said what it did
    ok         good input that must work (a control case)
    traceback  a raw Python traceback for a user error
    unclear    a non-zero exit whose message names neither the file, line nor key
    silent     exit 0 while input was dropped or bad input was accepted (a silent loss)

The table prints per family: tried, clear, counted, recovered, ok, traceback, unclear, silent, and the
slowest config error in seconds (the target is under 2 s).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = ("clear", "counted", "recovered", "ok", "traceback", "unclear", "silent")


@dataclass
class Outcome:
    result: str
    detail: str = ""
    seconds: float = 0.0
    family: str = ""
    case: str = ""


@dataclass
class Case:
    family: str
    name: str
    fn: Callable[[Path], Outcome]
    config_error: bool = False  # counts toward the "config errors under 2 s" target


CASES: list[Case] = []


def case(family: str, name: str, *, config_error: bool = False):
    def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        CASES.append(Case(family, name, fn, config_error))
        return fn
    return register


@dataclass
class CliResult:
    rc: int
    out: str
    err: str
    seconds: float
    cmd: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.out + self.err


def env_for_cli(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """Run ``python ARGS`` (e.g. ``["-m", "veripo.run", "stages=[sft]"]``) in `cwd`; never raises on a
    non-zero exit or a timeout (a timeout is rc 124)."""
    cmd = [sys.executable, *args]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env or env_for_cli(), capture_output=True, text=True,
                           timeout=timeout, errors="replace")
        return CliResult(p.returncode, p.stdout, p.stderr, time.time() - t0, cmd)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return CliResult(124, out, err + "\n(timed out)", time.time() - t0, cmd)


def classify(res: CliResult, names: list[str] | tuple[str, ...] = ()) -> Outcome:
    """A run that should have failed: `clear` if it exited non-zero without a traceback and its output names
    every string in `names` (the file, line or key); `traceback`, `unclear` or `silent` (exit 0) otherwise."""
    tail = res.text.strip().splitlines()[-3:]
    detail = " | ".join(tail)[-300:]
    if res.rc == 0:
        return Outcome("silent", "exit 0: " + detail, res.seconds)
    if "Traceback (most recent call last)" in res.text:
        return Outcome("traceback", detail, res.seconds)
    missing = [n for n in names if n not in res.text]
    if missing:
        return Outcome("unclear", f"does not name {missing}: {detail}", res.seconds)
    return Outcome("clear", detail, res.seconds)


def load_cases(families: list[str] | None) -> list[Case]:
    sys.path.insert(0, str(HERE))
    sys.modules.setdefault("faults", sys.modules[__name__])  # run as a script: the cases register here
    for path in sorted((HERE / "fault_cases").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        if families and path.stem not in families:
            continue
        importlib.import_module(f"fault_cases.{path.stem}")
    return [c for c in CASES if not families or c.family in families]


def table(outcomes: list[Outcome], config_seconds: list[float]) -> str:
    fams = sorted({o.family for o in outcomes})
    head = ["family", "tried", *RESULTS]
    rows = []
    for fam in [*fams, "all"]:
        sel = [o for o in outcomes if fam == "all" or o.family == fam]
        c = Counter(o.result for o in sel)
        rows.append([fam, str(len(sel)), *(str(c[r]) for r in RESULTS)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(row, widths)) for row in [head, *rows]]
    if config_seconds:
        lines.append(f"config errors: {len(config_seconds)}, slowest {max(config_seconds):.2f} s, "
                     f"median {sorted(config_seconds)[len(config_seconds) // 2]:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", action="append", help="only these families (file names in fault_cases/)")
    ap.add_argument("--case", help="only cases whose name contains this")
    ap.add_argument("--out", type=Path, help="write every outcome as JSON here")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    cases = [c for c in load_cases(args.family) if not args.case or args.case in c.name]
    if args.list:
        for c in cases:
            print(f"{c.family:12s} {c.name}")
        return 0
    outcomes, config_seconds = [], []
    for i, c in enumerate(cases, 1):
        with tempfile.TemporaryDirectory(prefix=f"veripo-fault-{c.family}-") as tmp:
            t0 = time.time()
            try:
                o = c.fn(Path(tmp))
            except Exception as e:  # noqa: BLE001 - a broken case is reported, the table goes on
                o = Outcome("unclear", f"case raised {type(e).__name__}: {e}")
            o.seconds = o.seconds or time.time() - t0
        o.family, o.case = c.family, c.name
        if c.config_error:
            config_seconds.append(o.seconds)
        outcomes.append(o)
        print(f"[{i}/{len(cases)}] {c.family}/{c.name}: {o.result} ({o.seconds:.1f} s) {o.detail[:160]}", flush=True)
    print()
    print(table(outcomes, config_seconds))
    if args.out:
        args.out.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    bad = sum(o.result in ("traceback", "unclear", "silent") for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
