"""networkx views of one cell, built on demand from the arrays (SPEC §3: networkx is a view).

``level="node"``: one networkx node per vertex group of the cell (a, b, d_a, d_b, each op's x
and y, each z, c), edges weighted by live channel counts (``channels``). ``level="channel"``:
one networkx node per live channel vertex and one edge per live channel-to-channel edge; use
it on small cells (a paper-scale top cell has ~1 M channel edges).

``dead=True`` also keeps what pruning and folding removed -- dead groups, dead channels and
bundles that carry no live channel -- marked ``alive=False``, so a drawing can fade them and
keep the one-shot layout. networkx is imported inside the functions: ``cnas_ir`` stays fast to
import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np

from cnas_ir.ir import DENSE, Edge, Graph, Kind

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["cell_view", "channel_edge_count"]


def _cell_bundles(g: Graph, cell: int) -> np.ndarray:
    return np.flatnonzero(g.cell[g.bundle_dst] == cell)


def _check_cell(g: Graph, cell: int) -> None:
    if cell not in {c.index for c in g.cells}:
        raise KeyError(f"no cell {cell}: the graph has cells 1..{len(g.cells)}")


def _copies(g: Graph, s: int, t: int, alive: bool) -> np.ndarray:
    """Indices (within x group ``t``) of the x vertices copying a channel of group ``s``;
    only the live ones when ``alive``."""
    x = g.group_slice(t)
    mine = g.vertex_group[g.src[x]] == s
    return np.flatnonzero(mine & g.alive[x] if alive else mine)


def _bundle_count(g: Graph, e: int, live: np.ndarray | None) -> int:
    """Channel edges bundle ``e`` stands for: live ones with ``live`` (int64[G], the live
    counts), one-shot ones with ``None``."""
    s, t = int(g.bundle_src[e]), int(g.bundle_dst[e])
    kind = Edge(int(g.bundle_kind[e]))
    sizes = g.size if live is None else live
    if kind == Edge.COPY:
        return int(_copies(g, s, t, alive=live is not None).size)
    if kind in DENSE:
        return int(sizes[s] * sizes[t])
    if kind == Edge.CONCAT:
        return int(sizes[s])
    return int(min(sizes[s], sizes[t]))  # 1:1; a dead op's y adds nothing to its live z


def _node_attrs(g: Graph, v: int, live: np.ndarray) -> dict[str, object]:
    return {
        "kind": Kind(int(g.kind[v])).name.lower(),
        "group": v,
        "size": int(live[v]),
        "full": int(g.size[v]),
        "node": int(g.node[v]),
        "op": int(g.op[v]),
        "alive": bool(live[v]),
    }


def cell_view(g: Graph, cell: int, level: Literal["node", "channel"] = "node", *, dead: bool = False) -> nx.DiGraph:
    """The live part of cell ``cell`` (1-based) as a ``networkx.DiGraph``.

    Node attributes: ``kind`` (a, b, d, x, y, z, c), ``group`` (group id), ``alive``, and at
    node level ``size`` (live channels), ``full`` (one-shot channels), ``node`` and ``op``
    (1-based node and op index, 0 where not applicable; for a d group ``op`` is 1 for d_a and
    2 for d_b), at channel level ``index`` (channel within its group). Edge attributes: ``op``
    (the edge kind's name), ``alive`` and, at node level, ``channels`` (the number of live
    channel edges the bundle stands for) and ``full`` (the one-shot number).

    ``dead=True`` keeps dead groups, channels and empty bundles too, with ``alive=False``;
    the default gives only what lives. Raises ``KeyError`` for a cell that does not exist.
    """
    import networkx as nx

    _check_cell(g, cell)
    out = nx.DiGraph(cell=cell, level=level)
    live = g.live_counts()
    bundles = _cell_bundles(g, cell)
    if level == "node":
        for e in bundles:
            s, t = int(g.bundle_src[e]), int(g.bundle_dst[e])
            kind = Edge(int(g.bundle_kind[e]))
            if kind == Edge.IDENTITY and g.kind[t] != Kind.D:
                s = t  # a/b mirror another cell's c: the cell view starts at a/b
            for v in (s, t):
                if (live[v] or dead) and v not in out:
                    out.add_node(g.group_name(v), **_node_attrs(g, v, live))
            if s == t:
                continue
            n = _bundle_count(g, int(e), live) if live[s] and live[t] else 0
            if n or dead:
                full = _bundle_count(g, int(e), None)
                out.add_edge(g.group_name(s), g.group_name(t), op=kind.name.lower(), channels=n, full=full, alive=n > 0)
        return out

    def channels(group: int) -> np.ndarray:
        sl = g.group_slice(group)
        return np.arange(sl.stop - sl.start) if dead else np.flatnonzero(g.alive[sl])

    def vid(group: int, i: int) -> str:
        return f"{g.group_name(group)}[{i}]"

    added: set[int] = set()
    for e in bundles:
        s, t = int(g.bundle_src[e]), int(g.bundle_dst[e])
        kind = Edge(int(g.bundle_kind[e]))
        if kind == Edge.IDENTITY and g.kind[t] != Kind.D:
            continue
        for v in (s, t):
            if v in added:
                continue
            added.add(v)
            base = g.start[v]
            kname = Kind(int(g.kind[v])).name.lower()
            for i in channels(v).tolist():
                out.add_node(vid(v, i), kind=kname, group=v, index=i, alive=bool(g.alive[base + i]))
        name = kind.name.lower()
        for i, j in _channel_pairs(g, s, t, kind, channels):
            a = bool(g.alive[g.start[s] + i] and g.alive[g.start[t] + j])
            out.add_edge(vid(s, i), vid(t, j), op=name, alive=a)
    return out


def _channel_pairs(
    g: Graph, s: int, t: int, kind: Edge, channels: Callable[[int], np.ndarray]
) -> Iterator[tuple[int, int]]:
    """(src channel, dst channel) index pairs of one bundle over the channels ``channels``
    lists per group (the live ones, or all of them for ``dead=True``)."""
    if kind == Edge.COPY:
        sl = g.group_slice(t)
        xs = channels(t)
        xs = xs[g.vertex_group[g.src[sl][xs]] == s]
        yield from zip((g.src[sl][xs] - g.start[s]).tolist(), xs.tolist(), strict=True)
    elif kind in DENSE:
        dst = channels(t).tolist()
        yield from ((i, j) for i in channels(s).tolist() for j in dst)
    elif kind == Edge.CONCAT:
        offset = _concat_offset(g, s, t)
        yield from ((i, i + offset) for i in channels(s).tolist())
    else:  # 1:1 (add, identity): a dead op's y feeds a live z, so both ends must be listed
        yield from ((i, i) for i in np.intersect1d(channels(s), channels(t)).tolist())


def channel_edge_count(g: Graph, cell: int, *, dead: bool = False) -> int:
    """Channel-to-channel edges ``cell_view(g, cell, "channel", dead=dead)`` would hold,
    counted from the bundles without building it (to refuse a view too big to draw)."""
    _check_cell(g, cell)
    live = g.live_counts()
    total = 0
    for e in _cell_bundles(g, cell):
        if Edge(int(g.bundle_kind[e])) == Edge.IDENTITY and g.kind[g.bundle_dst[e]] != Kind.D:
            continue
        total += _bundle_count(g, int(e), None if dead else live)
    return total


def _concat_offset(g: Graph, part: int, c: int) -> int:
    offset = 0
    for e in np.flatnonzero((g.bundle_kind == Edge.CONCAT) & (g.bundle_dst == c)):
        s = int(g.bundle_src[e])
        if s == part:
            return offset
        offset += int(g.size[s])
    raise KeyError(part)
