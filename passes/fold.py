"""fold: remove what pruning made dead, to a fixpoint (SPEC §4.4).

- an operation with no live x is removed with its y vertices: it contributes nothing (by the
  IR's semantics an op without input is absent, not ``BN(0)``);
- a node whose operations are all removed has z = 0: its z vertices die, and so do every x
  that copies them, the c channels that concatenate them and the a/b channels of later cells
  that mirror those c channels -- which removes the matching input columns of the consuming
  preprocessing convs (and of the head);
- and again, until nothing changes.

:func:`live_closure` is that fixpoint on a mask. The backends lower a graph with the closure
of its mask, so a graph and its folded graph compute the same function by construction;
the fold pass only makes the closure explicit in the arrays (and in the counts of ``stats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cnas_ir.ir import Edge, Graph, Kind
from cnas_ir.passes.base import Pass, PassError, PassResult

__all__ = ["Fold", "fold", "live_closure"]


@dataclass(frozen=True)
class _Wiring:
    """Index arrays the closure needs, derived once per graph structure."""

    op_x: np.ndarray  # int64[ops]: x group of each op
    op_y: np.ndarray  # int64[ops]: y group of each op
    y_z: np.ndarray  # int64[ops]: z group each op's y feeds
    z_groups: np.ndarray  # int64[nodes]
    mirror: np.ndarray  # int64[V]: for a c/a/b vertex the vertex it mirrors, else -1


def _wiring(g: Graph) -> _Wiring:
    # Cached on the (shared, read-only) structure columns: replace() keeps them, so every
    # pruned variant of one build reuses the same wiring.
    return _wiring_cached(_Key(g))


class _Key:
    """Hashable by identity of the structure arrays (they are shared between variants)."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.ids = (id(g.start), id(g.src), id(g.bundle_kind), id(g.bundle_src), id(g.bundle_dst))

    def __hash__(self) -> int:
        return hash(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self.ids == other.ids


@lru_cache(maxsize=8)
def _wiring_cached(key: _Key) -> _Wiring:
    g = key.g
    bk, bs, bd = g.bundle_kind, g.bundle_src.astype(np.int64), g.bundle_dst.astype(np.int64)
    to_y = np.flatnonzero(np.isin(bk, (Edge.SEPCONV, Edge.BOTTLENECK1)))
    op_x, op_y = bs[to_y], bd[to_y]
    y_to_z = np.flatnonzero(np.isin(bk, (Edge.ADD, Edge.BOTTLENECK2)))
    z_of_y = dict(zip(bs[y_to_z].tolist(), bd[y_to_z].tolist(), strict=True))
    y_z = np.array([z_of_y[int(y)] for y in op_y], dtype=np.int64)
    mirror = np.full(g.num_vertices, -1, dtype=np.int64)
    for e in np.flatnonzero(np.isin(bk, (Edge.CONCAT, Edge.IDENTITY))):
        s, t = int(bs[e]), int(bd[e])
        if g.kind[t] == Kind.D:  # b -> d of the first dense block: d never dies
            continue
        if bk[e] == Edge.CONCAT:
            offset = sum(int(g.size[p]) for p in bs[(bk == Edge.CONCAT) & (bd == t)] if p < s)
        else:
            offset = 0
        dst = g.group_slice(t)
        n = int(g.size[s])
        mirror[dst.start + offset : dst.start + offset + n] = np.arange(g.start[s], g.start[s] + n)
    return _Wiring(op_x, op_y, y_z, np.flatnonzero(g.kind == Kind.Z), mirror)


def live_closure(g: Graph, alive: np.ndarray | None = None) -> np.ndarray:
    """bool[V]: the mask after folding ``alive`` (default the graph's) to a fixpoint.

    Only removes vertices; a mask that is already closed is returned unchanged (equal).
    """
    w = _wiring(g)
    a = (g.alive if alive is None else alive).copy()
    is_x = g.src >= 0
    x_ids = np.flatnonzero(is_x)
    mirrored = np.flatnonzero(w.mirror >= 0)
    # A mirror chain z -> c -> a/b of a later cell takes a round per link: the loop runs to
    # the fixpoint anyway.
    vg = g.vertex_group
    while True:
        before = a.copy()
        a[x_ids] &= a[g.src[x_ids]]
        live = g.live_counts(a)
        op_alive = live[w.op_x] > 0
        group_alive = np.ones(g.num_groups, dtype=bool)
        group_alive[w.op_y] = op_alive
        z_alive = np.zeros(g.num_groups, dtype=bool)
        np.logical_or.at(z_alive, w.y_z, op_alive)
        group_alive[w.z_groups] = z_alive[w.z_groups]
        kill = ~group_alive[vg]
        a &= ~kill
        a[mirrored] &= a[w.mirror[mirrored]]
        if np.array_equal(a, before):
            return a


def fold(g: Graph) -> Graph:
    """``g`` with its mask folded to the fixpoint (a new graph; ``g`` if nothing changes)."""
    closed = live_closure(g)
    if np.array_equal(closed, g.alive):
        return g
    removed = int(g.alive.sum() - closed.sum())
    return g.replace(alive=closed).with_event({"pass": "fold", "removed_vertices": removed})


@dataclass(frozen=True)
class Fold(Pass):
    """The fold pass (see module docstring); idempotent."""

    name = "fold"

    def call(self, graph: Graph) -> PassResult:
        out = fold(graph)
        return PassResult(out, out is not graph)

    def ensures(self, graph: Graph) -> None:
        if not np.array_equal(live_closure(graph), graph.alive):
            raise PassError("fold did not reach a fixpoint")
