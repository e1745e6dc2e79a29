"""Pass infrastructure, after onnx-ir and xDSL.

A pass is a frozen dataclass whose fields are its options and whose ``name`` is its
command-line name. ``requires`` checks preconditions, ``call`` does the work and returns a
:class:`PassResult`, ``ensures`` checks postconditions. A :class:`PassManager` runs passes in
order, verifies the graph between them and can repeat them to a fixpoint.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cnas_ir.ir import Graph, VerifyError

__all__ = ["Pass", "PassError", "PassManager", "PassResult"]


class PassError(Exception):
    """A pass's pre- or postcondition failed, or the verifier rejected its output."""


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool


@dataclass(frozen=True)
class Pass(abc.ABC):
    name: ClassVar[str] = "pass"

    def requires(self, graph: Graph) -> None:  # noqa: B027 -- optional hook
        """Raise :class:`PassError` if ``graph`` is not a valid input."""

    def ensures(self, graph: Graph) -> None:  # noqa: B027 -- optional hook
        """Raise :class:`PassError` if the output ``graph`` breaks a promise of the pass."""

    @abc.abstractmethod
    def call(self, graph: Graph) -> PassResult: ...

    def __call__(self, graph: Graph) -> PassResult:
        self.requires(graph)
        result = self.call(graph)
        self.ensures(result.graph)
        return result


@dataclass(frozen=True)
class PassManager:
    """Run ``passes`` in order, ``verify`` after each; with ``fixpoint`` repeat the sequence
    until no pass modifies the graph (at most ``max_iterations`` rounds)."""

    passes: Sequence[Pass]
    verify: bool = True
    fixpoint: bool = False
    max_iterations: int = 100

    def __call__(self, graph: Graph) -> PassResult:
        modified_any = False
        for _ in range(self.max_iterations if self.fixpoint else 1):
            modified = False
            for p in self.passes:
                result = p(graph)
                graph = result.graph
                modified |= result.modified
                if self.verify:
                    try:
                        graph.verify()
                    except VerifyError as e:
                        raise PassError(f"after pass {p.name}: {e}") from e
            modified_any |= modified
            if not modified:
                return PassResult(graph, modified_any)
        if self.fixpoint:
            raise PassError(f"no fixpoint after {self.max_iterations} rounds")
        return PassResult(graph, modified_any)
