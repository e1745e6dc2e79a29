"""stats: the paper's Table 1 for any graph, plus whole-model params and multiply-adds (SPEC §4.5).

An analysis: it reads the graph and never modifies it. All counts come from the live masks,
vectorised over bundles; nothing is computed per channel pair. Per cell it also counts the
multiply-adds per image at the spec's input size (``macs``, ``macs_live``; their ratio over the
cells is ``rho_macs``), the unit of ``prune --budget macs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cnas_ir.ir import COST, DENSE, Edge, Graph, Kind
from cnas_ir.passes.fold import live_closure

__all__ = ["CellStats", "Stats", "compute_stats", "format_table", "macs_per_src_channel"]


@dataclass(frozen=True)
class CellStats:
    """One row of Table 1. ``params`` counts the cell's operations (preprocessing included);
    ``macs`` their multiply-adds per image at the spec's input size."""

    index: int
    kind: str
    width: int
    x: int
    y: int
    params: int
    x_live: int
    params_live: int
    d_to_x: int
    z_to_x: int
    macs: int
    macs_live: int


@dataclass(frozen=True)
class Stats:
    cells: tuple[CellStats, ...]
    total: CellStats  # index 0, kind "total", width 0
    rho: float  # params_live / params over the cells
    rho_macs: float  # macs_live / macs over the cells
    model_params: int  # stem + cells + head, one-shot
    model_params_live: int
    macs: int  # multiply-adds per image, one-shot
    macs_live: int
    edges: int  # channel-to-channel edges, one-shot
    edges_live: int

    def to_json(self) -> dict[str, object]:
        """The ``--json`` document of SPEC §7 and §9. ``cells``: one row per cell with the keys
        ``index``, ``kind``, ``width``, ``x``, ``y``, ``params``, ``x_live``, ``params_live``,
        ``d_to_x``, ``z_to_x``, ``macs``, ``macs_live``; ``total``: the same keys but the first
        three, plus ``rho`` (cell params live / one-shot) and ``rho_macs`` (cell multiply-adds
        live / one-shot); ``model``: whole-model params, multiply-adds and channel edges."""
        total = asdict(self.total)
        for k in ("index", "kind", "width"):
            total.pop(k)
        total["rho"] = self.rho
        total["rho_macs"] = self.rho_macs
        return {
            "cells": [asdict(c) for c in self.cells],
            "total": total,
            "model": {
                "params": self.model_params,
                "params_live": self.model_params_live,
                "macs": self.macs,
                "macs_live": self.macs_live,
                "edges": self.edges,
                "edges_live": self.edges_live,
            },
        }


_COST_TABLE = np.array(
    [
        [c.pair, c.per_src, c.per_dst, c.macs_pair, c.macs_src, c.macs_at_src, c.spatial]
        for c in (COST[Edge(i)] for i in range(len(Edge)))
    ],
    dtype=np.int64,
)
_DENSE_KINDS = np.array(sorted(DENSE), dtype=np.uint8)


def _pixels(g: Graph, at_src: np.ndarray, spatial: np.ndarray) -> np.ndarray:
    """Per bundle: the output pixels its multiply-adds repeat over (r^2 at the resolution where
    the op runs; 1 for a bundle that is not spatial)."""
    r = np.where(at_src == 1, g.res[g.bundle_src], g.res[g.bundle_dst]).astype(np.int64)
    return np.where(spatial == 1, r * r, 1)


def macs_per_src_channel(g: Graph) -> np.ndarray:
    """int64[bundles]: the multiply-adds per image one src channel costs in each bundle at its
    one-shot dst width t, ``(macs_src + macs_pair * t) * r^2`` -- an x vertex's cost under
    ``prune --budget macs``."""
    _, _, _, m_pair, m_src, at_src, spatial = _COST_TABLE[g.bundle_kind].T
    return (m_src + m_pair * g.size[g.bundle_dst].astype(np.int64)) * _pixels(g, at_src, spatial)


def _counts(g: Graph, alive: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bundle: params, multiply-adds, channel edges; ``alive=None`` counts the one-shot graph."""
    live = g.size.astype(np.int64) if alive is None else g.live_counts(alive)
    s = live[g.bundle_src]
    t = live[g.bundle_dst]
    pair, per_src, per_dst, m_pair, m_src, at_src, spatial = _COST_TABLE[g.bundle_kind].T
    params = pair * s * t + per_src * s + per_dst * t
    macs = (m_pair * s * t + m_src * s) * _pixels(g, at_src, spatial)
    # Dense bundles join every src channel to every dst channel; the others (identities, sums,
    # concatenations: a z is one part of its c) join each src channel to one dst channel.
    edges = np.where(np.isin(g.bundle_kind, _DENSE_KINDS), s * t, s)
    copy = np.flatnonzero(g.bundle_kind == Edge.COPY)
    if copy.size:
        edges[copy] = _copy_edges(g, alive, copy)
    return params, macs, edges


def _copy_edges(g: Graph, alive: np.ndarray | None, bundles: np.ndarray) -> np.ndarray:
    """Live x vertices behind each COPY bundle: those of its dst whose source is in its src."""
    x = g.x_ids if alive is None else g.x_ids[alive[g.x_ids]]
    # A (src group, dst group) pair names one COPY bundle.
    key = g.vertex_group[g.src[x]].astype(np.int64) * g.num_groups + g.vertex_group[x]
    want = g.bundle_src[bundles].astype(np.int64) * g.num_groups + g.bundle_dst[bundles]
    uniq, counts = np.unique(key, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, want), 0, max(uniq.size - 1, 0))
    if uniq.size == 0:
        return np.zeros(want.size, dtype=np.int64)
    return np.where(uniq[pos] == want, counts[pos], 0)


def compute_stats(g: Graph) -> Stats:
    """Table 1 columns per cell and whole-model totals for graph ``g``."""
    # The live columns count what the network computes: the fold closure of the mask (equal to
    # the mask itself on a folded graph), the same closure the backends lower.
    alive = live_closure(g)
    p_full, m_full, e_full = _counts(g, None)
    p_live, m_live, e_live = _counts(g, alive)
    bundle_cell = g.cell[g.bundle_dst].astype(np.int64)
    in_cell = bundle_cell > 0
    ncell = int(g.cell.max()) + 1
    cell_params = np.bincount(bundle_cell[in_cell], weights=p_full[in_cell], minlength=ncell).astype(np.int64)
    cell_params_live = np.bincount(bundle_cell[in_cell], weights=p_live[in_cell], minlength=ncell).astype(np.int64)
    cell_macs = np.bincount(bundle_cell[in_cell], weights=m_full[in_cell], minlength=ncell).astype(np.int64)
    cell_macs_live = np.bincount(bundle_cell[in_cell], weights=m_live[in_cell], minlength=ncell).astype(np.int64)

    vg = g.vertex_group
    x = g.x_ids
    x_cell = g.cell[vg[x]].astype(np.int64)
    x_live_mask = alive[x]
    src_kind = g.kind[vg[g.src[x]]]
    x_count = np.bincount(x_cell, minlength=ncell)
    x_live = np.bincount(x_cell[x_live_mask], minlength=ncell)
    d_to_x = np.bincount(x_cell[x_live_mask & (src_kind == Kind.D)], minlength=ncell)
    z_to_x = np.bincount(x_cell[x_live_mask & (src_kind == Kind.Z)], minlength=ncell)
    ysel = g.kind == Kind.Y
    y_count = np.bincount(g.cell[ysel].astype(np.int64), weights=g.size[ysel], minlength=ncell).astype(np.int64)

    rows = tuple(
        CellStats(
            index=c.index,
            kind=c.kind,
            width=c.width,
            x=int(x_count[c.index]),
            y=int(y_count[c.index]),
            params=int(cell_params[c.index]),
            x_live=int(x_live[c.index]),
            params_live=int(cell_params_live[c.index]),
            d_to_x=int(d_to_x[c.index]),
            z_to_x=int(z_to_x[c.index]),
            macs=int(cell_macs[c.index]),
            macs_live=int(cell_macs_live[c.index]),
        )
        for c in g.cells
    )
    total = CellStats(
        index=0,
        kind="total",
        width=0,
        **{
            k: sum(getattr(r, k) for r in rows)
            for k in ("x", "y", "params", "x_live", "params_live", "d_to_x", "z_to_x", "macs", "macs_live")
        },
    )
    return Stats(
        cells=rows,
        total=total,
        rho=total.params_live / total.params if total.params else 1.0,
        rho_macs=total.macs_live / total.macs if total.macs else 1.0,
        model_params=int(p_full.sum()),
        model_params_live=int(p_live.sum()),
        macs=int(m_full.sum()),
        macs_live=int(m_live.sum()),
        edges=int(e_full.sum()),
        edges_live=int(e_live.sum()),
    )


_COLUMNS = (
    ("cell", "index"),
    ("kind", "kind"),
    ("C", "width"),
    ("|X|", "x"),
    ("|Y|", "y"),
    ("# params", "params"),
    ("|X*|", "x_live"),
    ("# params*", "params_live"),
    ("|d->x|", "d_to_x"),
    ("|z->x|", "z_to_x"),
    ("# MACs", "macs"),
    ("# MACs*", "macs_live"),
)


def _cells_of(row: CellStats) -> list[str]:
    out = []
    for _, key in _COLUMNS:
        v = getattr(row, key)
        if row.kind == "total" and key in ("index", "width"):
            out.append("Total" if key == "index" else "")
        elif row.kind == "total" and key == "kind":
            out.append("")
        else:
            out.append(f"{v:,}" if isinstance(v, int) else str(v))
    return out


def format_table(stats: Stats, markdown: bool = False) -> str:
    """Table 1 of the paper for ``stats``: one row per cell and a total row, then rho and
    whole-model numbers. ``markdown=True`` gives a GitHub-flavoured table."""
    header = [h for h, _ in _COLUMNS]
    rows = [_cells_of(r) for r in (*stats.cells, stats.total)]
    footer = (
        f"rho = {stats.rho:.6f} (cell params live / one-shot); rho_macs = {stats.rho_macs:.6f} (cell "
        f"multiply-adds live / one-shot); model params {stats.model_params_live:,} "
        f"of {stats.model_params:,}; multiply-adds per image {stats.macs_live:,} of {stats.macs:,}"
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n\n" + footer + "\n"
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows), footer]) + "\n"
