"""Errors a user can cause, each with the exit code the CLI reports.

Everything raised on purpose by cnas-ir derives from :class:`CnasError`; the CLI turns it into
one line on stderr and its ``exit_code``. Anything else is a bug and is reported as such.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CnasError", "InputError", "RunFailure", "one_line", "reading", "shorten"]


class CnasError(Exception):
    """Base of the errors cnas-ir raises on purpose; the message is one line for the user."""

    exit_code = 1


class InputError(CnasError):
    """Bad usage or bad input (a spec, an artifact, a data folder): exit code 2."""

    exit_code = 2


class RunFailure(CnasError):
    """The input was fine but the work failed (disk, numerics, device): exit code 1."""

    exit_code = 1


MAX_LINE = 300  # characters of one error line
MAX_VALUE = 80  # characters of one value or path quoted in it


def shorten(text: str, limit: int = MAX_VALUE) -> str:
    """``text`` cut to ``limit`` characters: its start, an ellipsis and its end; a path keeps
    its last components (``.../run/003-prune.cnas``)."""
    if len(text) <= limit:
        return text
    if "/" in text and " " not in text:
        tail = text[-(limit - 4) :]
        cut = tail.find("/")
        return ".../" + (tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail)
    head = limit * 2 // 3
    return f"{text[:head]}...{text[-(limit - head - 3) :]}"


_TOKEN = re.compile(rf"\S{{{MAX_VALUE + 1},}}")


def one_line(message: str, limit: int = MAX_LINE) -> str:
    """An error message as the CLI prints it: one line (newlines and tabs become spaces), every
    run of more than :data:`MAX_VALUE` non-blank characters shortened, at most ``limit``
    characters in all."""
    text = " ".join(message.split())
    text = _TOKEN.sub(lambda m: shorten(m.group(0)), text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turn an :class:`OSError` raised while reading ``path`` (a ``what``: "artifact", "ONNX
    model", "spec file") into a one-line :class:`InputError`: no such file, a folder, or why
    it cannot be read."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise InputError(f"{path}: is a folder, not {article} {what}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror or e})") from None
