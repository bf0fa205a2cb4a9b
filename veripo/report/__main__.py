"""``python -m veripo.report RUN_DIR [--out PATH]``: (re)write the run's report.html and print its path.

It needs no `veripo.compat.install()`: the report imports neither transformers nor torchvision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from veripo.report.html import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m veripo.report",
                                     description="(Re)write RUN_DIR/report.html from whatever the run folder holds.")
    parser.add_argument("run_dir", help="the run folder, e.g. runs/NAME")
    parser.add_argument("--out", default=None, help="where to write the report (default: RUN_DIR/report.html)")
    args = parser.parse_args(argv)

    if not Path(args.run_dir).is_dir():
        print(f"veripo.report: {args.run_dir}: no such folder. Fix: pass a run folder such as runs/NAME",
              file=sys.stderr)
        return 2
    print(write_report(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
