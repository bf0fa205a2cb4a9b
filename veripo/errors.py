"""`UserError`: the base of every error that a user's input causes (a recipe value, a data line, a file, an
endpoint), as opposed to a bug in veripo.

Entry points print a `UserError` as one message (it names the file, line or key and the fix) and exit
non-zero, without a traceback; ``VERIPO_DEBUG=1`` shows the traceback too. Any other exception is veripo's
own bug and keeps its traceback.
"""

from __future__ import annotations

DEBUG_ENV = "VERIPO_DEBUG"


class UserError(Exception):
    """Bad input from the user; the message names where (file:line, key) and the fix."""
