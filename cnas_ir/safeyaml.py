"""Read a YAML file that a user wrote, refusing what no cnas-ir file needs before parsing it.

PyYAML's ``safe_load`` builds Python objects only from plain data, but it still expands
aliases: a 1 KB file whose anchors nest a list nine levels deep becomes hundreds of megabytes
(the "billion laughs"), and the error message that prints the value is as large. The schemas
here need no anchors, so this reader walks PyYAML's *event stream* first (cheap: no objects,
no expansion) and refuses, in one line naming the file and the line:

- files over :data:`MAX_BYTES` (checked on the size before reading, and on what is read);
- any anchor or alias;
- nesting deeper than the caller's schema allows;
- a value longer than :data:`MAX_SCALAR` characters (PyYAML converts a long integer with a
  quadratic algorithm, and Python refuses one over 4,300 digits with a ValueError).

Only then does it build the Python objects with PyYAML's safe loader (reading ``1e-4`` as a
number, as JSON does).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cnas_ir.errors import InputError, reading, shorten

__all__ = ["MAX_BYTES", "load_yaml", "parse_yaml"]

MAX_BYTES = 1 << 20  # 1 MiB: a spec is a few hundred bytes, an experiment file a few KB
MAX_SCALAR = 4096  # characters of one value: a path fits, a 5,000-digit integer does not


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` as a number as JSON and YAML 1.2 do (YAML 1.1,
    which PyYAML follows, wants a dot, ``1.0e-4``, and reads ``1e-4`` as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _where(event: yaml.Event) -> str:
    mark = event.start_mark
    return f" at line {mark.line + 1}" if mark is not None else ""


def _join_surrogates(value: Any, source: str) -> Any:
    """``value`` with every escaped UTF-16 surrogate pair joined into its character: JSON (which
    is YAML) writes a character beyond U+FFFF as two escapes, ``"\\ud83e\\uddea"``, and PyYAML
    decodes each alone. A surrogate without its pair is refused."""
    if isinstance(value, dict):
        return {_join_surrogates(k, source): _join_surrogates(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_surrogates(v, source) for v in value]
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise InputError(f"{source}: {shorten(ascii(value))} holds half a UTF-16 surrogate pair") from None


def parse_yaml(text: str, source: str, max_depth: int) -> Any:
    """The data of YAML ``text`` (from ``source``, for messages), nested at most ``max_depth``
    collections deep, without anchors or aliases; a one-line :class:`InputError` otherwise."""
    if len(text) > MAX_BYTES:
        raise InputError(f"{source}: larger than {MAX_BYTES // 1024} KiB; a cnas-ir YAML file is a few KB")
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise InputError(f"{source}: YAML anchors and aliases are not accepted{_where(event)}")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise InputError(
                        f"{source}: nested {depth} levels deep{_where(event)}; the schema has at most {max_depth}"
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR:
                raise InputError(
                    f"{source}: a value of {len(event.value):,} characters{_where(event)}; "
                    f"values are at most {MAX_SCALAR:,}"
                )
        return _join_surrogates(yaml.load(text, Loader=_Loader), source)
    except ValueError as e:  # a scalar PyYAML cannot convert (it is not a YAMLError)
        raise InputError(f"{source}: not valid YAML: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise InputError(f"{source}: not valid YAML{at}: {problem}") from None


def load_yaml(path: str | Path, max_depth: int, what: str = "YAML file") -> Any:
    """:func:`parse_yaml` of a file, whose size is checked before it is read."""
    path = Path(path)
    with reading(path, what), open(path, "rb") as f:
        size = f.seek(0, 2)
        if size > MAX_BYTES:
            raise InputError(f"{path}: {size:,} bytes; a cnas-ir {what} is at most {MAX_BYTES // 1024} KiB")
        f.seek(0)
        data = f.read(MAX_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; a {what} is YAML") from None
    return parse_yaml(text, str(path), max_depth)
