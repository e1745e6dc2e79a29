"""cnas-ir: a declarative graph-IR compiler for channel-level neural architecture search.

Python API::

    graph = cnas_ir.build("examples/tiny.yaml")   # spec (path, mapping or Spec) -> one-shot graph
    cnas_ir.save(graph, "tiny.cnas")
    graph = cnas_ir.load("tiny.cnas")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cnas_ir.ir import Graph
    from cnas_ir.spec import Spec

__all__ = ["__version__", "build", "load", "save"]


def build(spec: Spec | str | Path | dict[str, Any], *, max_memory: int | None = None) -> Graph:
    """The one-shot graph of a spec given as a :class:`Spec`, a YAML path or a mapping.

    Before anything is allocated, the graph's and its weights' size is estimated from the spec
    (:mod:`cnas_ir.estimate`); above ``max_memory`` bytes (default 4 GiB) it raises
    :class:`~cnas_ir.errors.InputError` naming the spec key that contributes most.
    """
    from cnas_ir.estimate import check_size
    from cnas_ir.passes.build import build_graph
    from cnas_ir.spec import Spec, load_spec, parse_spec

    source = None
    if isinstance(spec, dict):
        spec = parse_spec(spec)
    elif not isinstance(spec, Spec):
        source = str(spec)
        spec = load_spec(spec)
    check_size(spec, max_memory, source)
    graph = build_graph(spec)
    graph.verify()
    return graph


def load(path: str | Path) -> Graph:
    """Read a ``.cnas`` artifact (see :mod:`cnas_ir.format`) and hold its graph against the
    one-shot structure of its own spec (:func:`cnas_ir.passes.build.check_one_shot`): a file
    whose checksums were recomputed after damage is refused in one line."""
    from cnas_ir.errors import InputError
    from cnas_ir.format import load as _load
    from cnas_ir.ir import VerifyError
    from cnas_ir.passes.build import check_one_shot

    graph = _load(path)
    try:
        check_one_shot(graph)
    except VerifyError as e:
        raise InputError(f"{path}: corrupt .cnas artifact (invalid graph: {e})") from None
    return graph


def save(graph: Graph, path: str | Path) -> Path:
    """Write a ``.cnas`` artifact atomically."""
    from cnas_ir.format import save as _save

    return _save(graph, path)
