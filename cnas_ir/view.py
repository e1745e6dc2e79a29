"""networkx views of one cell, built on demand from the arrays (SPEC §3: networkx is a view).

``level="node"``: one networkx node per vertex group of the cell (a, b, d_a, d_b, each op's x
and y, each z, c), edges weighted by live channel counts (``channels``). ``level="channel"``:
one networkx node per live channel vertex and one edge per live channel-to-channel edge; use
it on small cells (a paper-scale top cell has ~1 M channel edges).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from cnas_ir.ir import DENSE, Edge, Graph, Kind

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["cell_view"]


def _cell_bundles(g: Graph, cell: int) -> np.ndarray:
    return np.flatnonzero(g.cell[g.bundle_dst] == cell)


def cell_view(g: Graph, cell: int, level: Literal["node", "channel"] = "node") -> nx.DiGraph:
    """The live part of cell ``cell`` (1-based) as a ``networkx.DiGraph``.

    Node attributes: ``kind`` (a, b, d, x, y, z, c), ``group`` (group id), ``size`` (live
    channels; node level) or ``index`` (channel within its group; channel level). Edge
    attributes: ``op`` (the edge kind's name) and, at node level, ``channels`` (the number
    of live channel edges the bundle stands for).
    """
    import networkx as nx

    if cell not in {c.index for c in g.cells}:
        raise KeyError(f"no cell {cell}: the graph has cells 1..{len(g.cells)}")
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
                if live[v] and v not in out:
                    out.add_node(g.group_name(v), kind=Kind(int(g.kind[v])).name.lower(), group=v, size=int(live[v]))
            if s == t or not (live[s] and live[t]):
                continue
            if kind == Edge.COPY:
                x = g.group_slice(t)
                n = int(np.sum(g.alive[x] & (g.vertex_group[g.src[x]] == s)))
            elif kind in DENSE:
                n = int(live[s] * live[t])
            else:
                n = int(live[t]) if kind != Edge.CONCAT else int(live[s])
            if n:
                out.add_edge(g.group_name(s), g.group_name(t), op=kind.name.lower(), channels=n)
        return out

    def channels(group: int) -> np.ndarray:
        return np.flatnonzero(g.alive[g.group_slice(group)])

    def vid(group: int, i: int) -> str:
        return f"{g.group_name(group)}[{i}]"

    for e in bundles:
        s, t = int(g.bundle_src[e]), int(g.bundle_dst[e])
        kind = Edge(int(g.bundle_kind[e]))
        if kind == Edge.IDENTITY and g.kind[t] != Kind.D:
            continue
        for v in (s, t):
            for i in channels(v).tolist():
                out.add_node(vid(v, i), kind=Kind(int(g.kind[v])).name.lower(), group=v, index=i)
        name = kind.name.lower()
        if kind == Edge.COPY:
            sl = g.group_slice(t)
            xs = np.flatnonzero(g.alive[sl] & (g.vertex_group[g.src[sl]] == s))
            pairs = zip((g.src[sl][xs] - g.start[s]).tolist(), xs.tolist(), strict=True)
        elif kind in DENSE:
            pairs = ((i, j) for i in channels(s).tolist() for j in channels(t).tolist())
        elif kind == Edge.CONCAT:
            offset = _concat_offset(g, s, t)
            pairs = ((i, i + offset) for i in channels(s).tolist())
        else:
            pairs = ((i, i) for i in channels(t).tolist())
        out.add_edges_from(((vid(s, i), vid(t, j)) for i, j in pairs), op=name)
    return out


def _concat_offset(g: Graph, part: int, c: int) -> int:
    offset = 0
    for e in np.flatnonzero((g.bundle_kind == Edge.CONCAT) & (g.bundle_dst == c)):
        s = int(g.bundle_src[e])
        if s == part:
            return offset
        offset += int(g.size[s])
    raise KeyError(part)
