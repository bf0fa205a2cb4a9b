"""Crash injection for resume tests: ``VERIPO_FAULT=POINT[:N]`` kills the run the N-th time (default 1st)
execution reaches ``fault_point(POINT)`` in a process.

The kill is a SIGKILL to the process group in ``VERIPO_FAULT_PGID`` (default: this process's own group),
so the driver, Ray's daemons and every worker die at once, as when a node is lost. Unset (always, outside
tests), a fault point costs one dictionary look-up. Points in the code base:

    sft.step           after an SFT train step returned, before its checkpoint
    grpo.rollout       rollouts generated, nothing trained or written yet
    train.step         the driver waits while the trainer ranks run the step
    checkpoint.write   inside a checkpoint write: state files written, not yet renamed into place
    replace_dir.swap   inside that rename: the old folder moved aside, the new one not yet in place
                       (also an HF export's rename)
    checkpoint.renamed the checkpoint committed (renamed into place), in the trainer rank
    progress.saved     the same window seen from the driver: the save returned, the manifest does not
                       record the step yet (a resume trusts the checkpoint's own step)
    verify.judged      the judge has answered (its cache is on disk), pairs not yet written
    preference.step    after a preference train step returned, before its checkpoint
"""

from __future__ import annotations

import os
import signal

ENV = "VERIPO_FAULT"
PGID_ENV = "VERIPO_FAULT_PGID"
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] < int(count or 1):
        return
    pgid = int(os.environ.get(PGID_ENV) or os.getpgrp())
    try:
        os.killpg(pgid, signal.SIGKILL)
    finally:  # a Ray worker runs in a process group of its own: it goes down with the rest
        os.kill(os.getpid(), signal.SIGKILL)
