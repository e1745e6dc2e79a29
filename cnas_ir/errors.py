"""Errors a user can cause, each with the exit code the CLI reports.

Everything raised on purpose by cnas-ir derives from :class:`CnasError`; the CLI turns it into
one line on stderr and its ``exit_code``. Anything else is a bug and is reported as such.
"""

from __future__ import annotations

__all__ = ["CnasError", "InputError", "RunFailure"]


class CnasError(Exception):
    """Base of the errors cnas-ir raises on purpose; the message is one line for the user."""

    exit_code = 1


class InputError(CnasError):
    """Bad usage or bad input (a spec, an artifact, a data folder): exit code 2."""

    exit_code = 2


class RunFailure(CnasError):
    """The input was fine but the work failed (disk, numerics, device): exit code 1."""

    exit_code = 1
