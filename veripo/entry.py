"""How every command-line entry point ends on a user error: one message, exit 2, no traceback.

    from veripo.entry import user_errors

    def main(argv=None) -> int:
        with user_errors("veripo.eval"):
            ...

A `veripo.errors.UserError` (a bad recipe value, data line, pair file, template, endpoint) raised inside
the block prints ``PROG: MESSAGE`` on stderr and exits 2; the message already names the file, line or key
and the fix. ``VERIPO_DEBUG=1`` prints the traceback first. A user error that crossed a Ray actor arrives
wrapped in Ray's task error: its cause is printed, not Ray's remote traceback. Any other exception is a bug
in veripo and keeps its traceback.

Torch-free: the CLIs import this before they parse arguments.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator

from veripo.errors import DEBUG_ENV, UserError

EXIT_USER_ERROR = 2


def debug() -> bool:
    """``VERIPO_DEBUG`` set to anything but empty/0/false: show tracebacks of user errors too."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def user_error_of(exc: BaseException) -> UserError | None:
    """The `UserError` behind `exc`: itself, or the cause of a Ray task error wrapping one (Ray's error
    subclasses the cause's class, but its text holds the remote traceback)."""
    seen = 0
    while exc is not None and seen < 8:
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError / RayActorError
        if isinstance(cause, BaseException) and cause is not exc:
            exc, seen = cause, seen + 1
            continue
        return exc if isinstance(exc, UserError) else None
    return None


def report(prog: str, exc: BaseException) -> int:
    """Print user error `exc` as ``PROG: MESSAGE`` (the traceback first under ``VERIPO_DEBUG=1``)."""
    err = user_error_of(exc) or exc
    if debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = str(err).strip() or type(err).__name__
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn a `UserError` raised in the block into ``PROG: MESSAGE`` and ``SystemExit(2)``."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - only user errors are handled; the rest re-raises as is
        if isinstance(exc, (SystemExit, KeyboardInterrupt)) or user_error_of(exc) is None:
            raise
        raise SystemExit(report(prog, exc)) from None


def debug_traceback() -> None:
    """In an ``except`` block that prints a user error itself: the traceback first under ``VERIPO_DEBUG=1``."""
    if debug():
        traceback.print_exc(file=sys.stderr)
