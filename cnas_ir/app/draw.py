"""Drawings and exports of one cell: PNG/SVG (matplotlib, Agg), GraphML (networkx) and DOT.

Everything starts from the networkx view (:func:`cnas_ir.view.cell_view`), built on demand
for one cell.

**Node level** draws the cell as the paper's Figure 1 does, layered left to right: the cell
inputs a and b, the preprocessed d_a and d_b, then node by node the node's J operations (an
op box stands for its x copies and its y outputs; it reads ``x* live/one-shot``) and its z,
and the cell output c at the right. A copy edge from a source (d_a, d_b or an earlier z) into
op (k, j) is labelled with, and as wide as, the number of live x vertices of that op copying
the source's channels (full width = C). d->x copies are blue, z->x copies orange: a top cell
whose nodes sit side by side ("horizontally") shows almost no orange, a bottom cell whose
nodes feed each other ("vertically and horizontally") a lot.

The layout is computed here, deterministic and without graphviz: fixed columns, edges between
neighbouring columns as S-curves, longer edges routed along their own horizontal lane above
or below all boxes (so no edge crosses a box), lanes nested by span and each edge entering its
target at its own port (so labels never collide).

**Channel level** draws every vertex and channel edge of small cells (at most
:data:`MAX_CHANNEL_EDGES`; bigger cells are refused with a hint to use the node level).

Dead ops and nodes (removed by pruning and folding) are drawn faded (``dead="faded"``) or left
out (``dead="omit"``). matplotlib and networkx are imported inside the functions, so importing
this module stays cheap.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cnas_ir.errors import InputError
from cnas_ir.ir import Cell, Graph
from cnas_ir.view import cell_view, channel_edge_count

if TYPE_CHECKING:
    import networkx as nx
    from matplotlib.figure import Figure

__all__ = [
    "MAX_CHANNEL_EDGES",
    "Level",
    "DeadMode",
    "cell_figure",
    "cell_title",
    "check_cell",
    "describe_cell",
    "export_view",
    "render_cell",
    "to_dot",
    "to_graphml",
]

Level = Literal["node", "channel"]
DeadMode = Literal["faded", "omit"]

MAX_CHANNEL_EDGES = 5_000  # the channel level is a hairball past this; the node level is not

# Colours: copies from d (blue) vs from z (orange) carry the paper's §2.3 argument.
_COLOR = {"d": "#1f6fb4", "z": "#e8710a", "fixed": "#7a7a7a", "dead": "#b9b9b9"}
_FILL = {"a": "#e6e6e6", "b": "#e6e6e6", "d": "#d6e6f5", "op": "#ffffff", "z": "#fde3c8", "c": "#d9efd5"}
_CH_COLOR = {"copy_d": _COLOR["d"], "copy_z": _COLOR["z"], "sepconv": "#7b4fa8", "bottleneck1": "#7b4fa8"}

# Node-level geometry, in data units (1 unit = _INCH inches on the figure).
_COL = 1.9  # distance between column centres
_W = {"op": 1.05, "a": 0.85, "b": 0.85, "d": 0.85, "z": 0.8, "c": 0.9}
_PORT = 0.25  # vertical distance between two edges entering one box
_BOX_MIN_H = 0.56
_OP_GAP = 0.4  # between the op boxes of one node
_LANE_GAP = 0.35  # between the boxes and the first lane
_LANE = 0.14  # between two lanes
_INCH = 0.68
_GROUP_GAP = 3.5  # channel level: gap between two groups of a column, in channel pitches (room for a label)


def check_cell(g: Graph, cell: int) -> Cell:
    """The cell with 1-based index ``cell``; a one-line :class:`InputError` naming the valid
    range otherwise."""
    try:
        return g.cell_by_index(cell)
    except KeyError:
        what = "dense blocks" if g.spec.space == "densenet" else "cells"
        raise InputError(f"no cell {cell}: the graph has {what} 1..{len(g.cells)}") from None


def cell_title(g: Graph, cell: int) -> str:
    """One line saying which cell this is and how much of it lives, e.g.
    ``cell 20 of 20: normal, C = 144, 8x8; |X*|/|X| = 795/5,760 (13.8%), ...``."""
    from cnas_ir.passes.stats import compute_stats

    c = check_cell(g, cell)
    row = next(r for r in compute_stats(g).cells if r.index == cell)
    width = f"k = {c.width}" if c.kind == "dense" else f"C = {c.width}"
    frac = row.x_live / row.x if row.x else 1.0
    return (
        f"cell {cell} of {len(g.cells)}: {c.kind}, {width}, {c.res}x{c.res}; "
        f"|X*|/|X| = {row.x_live:,}/{row.x:,} ({frac:.1%}), |d->x| = {row.d_to_x:,}, |z->x| = {row.z_to_x:,}, "
        f"params {row.params_live:,}/{row.params:,}"
    )


# ---- the node-level drawing model -----------------------------------------------------------


@dataclass
class _Box:
    """One box of the node-level drawing: a, b, d_a, d_b, an op (x + y groups), a z or c."""

    name: str  # e.g. "d_a", "op 3.1", "z3", "c"
    kind: str  # a, b, d, op, z, c
    col: int
    node: int  # 1-based node of an op or z; 0 otherwise
    j: int  # 1-based op index; for d: 1 = d_a, 2 = d_b
    size: int  # live channels (for an op: live x)
    full: int  # one-shot channels
    alive: bool
    x: float = 0.0
    y: float = 0.0
    h: float = _BOX_MIN_H
    ins: list[_Arrow] = field(default_factory=list)

    @property
    def w(self) -> float:
        return _W[self.kind]

    @property
    def label(self) -> str:
        if not self.alive:
            return f"{self.name}\ndead"
        if self.kind == "op":
            return f"{self.name}\nx* {self.size:,}/{self.full:,}"
        if self.size == self.full:
            return f"{self.name}\n{self.size:,} ch"
        return f"{self.name}\n{self.size:,}/{self.full:,}"


@dataclass
class _Arrow:
    """One drawn edge between two boxes (the bundle(s) of the view behind it)."""

    src: _Box
    dst: _Box
    kind: str  # "d" or "z" (copies into an op) or "fixed"
    op: str  # the view's edge kind (copy, preprocess, add, concat, ...)
    channels: int  # live x vertices copying (copies) or live channels carried (fixed)
    full: int  # the same in the one-shot network: the source's channels
    alive: bool
    lane: float | None = None  # y of the horizontal run of a long edge
    port: float = 0.0  # y where it enters dst

    @property
    def span(self) -> int:
        return self.dst.col - self.src.col


def _box_name(view_name: str, attrs: dict[str, Any]) -> tuple[str, str]:
    """(box name, box kind) of a view node: x and y of one op share the op's box."""
    kind = str(attrs["kind"])
    if kind in ("x", "y"):
        return f"op {attrs['node']}.{attrs['op']}", "op"
    if kind == "z":
        return f"z{attrs['node']}", "z"
    return view_name.split(".", 1)[1], kind  # "cell3.d_a" -> "d_a"


def _model(g: Graph, cell: int, dead: DeadMode) -> tuple[dict[str, _Box], list[_Arrow], Cell]:
    """Boxes and arrows of the node-level drawing of ``cell``, laid out."""
    c = check_cell(g, cell)
    view = cell_view(g, cell, "node", dead=True)  # dead parts keep their place in the layout
    nodes = max((n.index for n in c.nodes), default=0)
    boxes: dict[str, _Box] = {}
    of_view: dict[str, _Box] = {}
    for name, a in view.nodes(data=True):
        bname, bkind = _box_name(name, a)
        col = {"a": 0, "b": 0, "d": 1, "c": 2 * nodes + 2}.get(bkind, 0)
        if bkind == "op":
            col = 2 * int(a["node"])
        elif bkind == "z":
            col = 2 * int(a["node"]) + 1
        box = boxes.get(bname)
        if box is None:
            box = boxes[bname] = _Box(
                bname, bkind, col, int(a["node"]), int(a["op"]), int(a["size"]), int(a["full"]), bool(a["alive"])
            )
        if a["kind"] == "x":  # an op box counts its x vertices; its y live or die with them
            box.size, box.full, box.alive = int(a["size"]), int(a["full"]), bool(a["alive"])
        of_view[name] = box
    arrows: list[_Arrow] = []
    for u, v, e in view.edges(data=True):
        s, t = of_view[u], of_view[v]
        if s is t:  # x -> y inside an op box
            continue
        if e["op"] == "copy":
            kind, n, full = str(view.nodes[u]["kind"]), int(e["channels"]), int(e["full"])
        else:  # a fixed edge carries its source's live channels
            kind, full = "fixed", int(view.nodes[u]["full"])
            n = int(view.nodes[u]["size"]) if e["alive"] else 0
        arrow = _Arrow(s, t, kind, str(e["op"]), n, full, bool(e["alive"]) and s.alive and t.alive)
        if arrow.alive or dead == "faded":
            arrows.append(arrow)
    shown = {b.name: b for b in boxes.values() if b.alive or dead == "faded"}
    _layout(shown, arrows, c)
    return shown, arrows, c


def _layout(boxes: dict[str, _Box], arrows: list[_Arrow], c: Cell) -> None:
    """Positions of boxes, lanes of long edges and ports; deterministic (sorted keys only)."""
    for a in arrows:
        a.dst.ins.append(a)
    ops_per_node = max((len(n.ops) for n in c.nodes), default=1)
    for b in boxes.values():
        b.x = b.col * _COL
        b.h = max(_BOX_MIN_H, _PORT * len(b.ins) + 0.2)
    # Op boxes of one node stacked top (j = 1) to bottom, centred on 0; z and c on 0.
    columns: dict[int, list[_Box]] = {}
    for b in sorted(boxes.values(), key=lambda b: (b.col, b.j)):
        columns.setdefault(b.col, []).append(b)
    half = 0.0
    for bs in columns.values():
        if bs[0].kind != "op":
            continue
        total = sum(b.h for b in bs) + _OP_GAP * (len(bs) - 1)
        top = total / 2
        for b in bs:
            b.y = top - b.h / 2
            top -= b.h + _OP_GAP
        half = max(half, total / 2)
    # d_a at the top and d_b at the bottom of the ops' band (a and b level with them): their
    # edges to the first node's ops are short, and they sit under/over the lanes they feed.
    spread = max(half - 0.35, 0.55)
    for b in boxes.values():
        if b.kind in ("a", "b", "d"):
            side = b.j if b.kind == "d" else (1 if b.kind == "a" else 2)
            if len(c.d) == 1:  # DenseNet: one input, one d
                b.y = 0.0
            else:
                b.y = spread if side == 1 else -spread
    # Long edges (spanning more than the gap between two columns) get a lane: above the boxes
    # for edges into an upper op or into c, below for edges into a lower op. Nesting lanes by
    # span (shortest innermost) avoids most crossings.
    top = max(b.y + b.h / 2 for b in boxes.values())
    bottom = min(b.y - b.h / 2 for b in boxes.values())
    above, below = [], []
    for a in arrows:
        if a.span <= 1:
            continue
        upper = a.dst.kind != "op" or a.dst.j <= math.ceil(ops_per_node / 2)
        if ops_per_node % 2 and a.dst.kind == "op" and a.dst.j == (ops_per_node + 1) // 2:
            upper = a.src.col % 4 < 2  # a middle op (odd J): alternate by source
        (above if upper else below).append(a)
    for i, a in enumerate(sorted(above, key=lambda a: (a.span, a.src.y, a.dst.col, -a.dst.y))):
        a.lane = top + _LANE_GAP + i * _LANE
    for i, a in enumerate(sorted(below, key=lambda a: (a.span, -a.src.y, a.dst.col, a.dst.y))):
        a.lane = bottom - _LANE_GAP - i * _LANE
    # Ports: the edge arriving from highest up enters at the top of its target.
    for b in boxes.values():
        ins = sorted(b.ins, key=lambda a: (-(a.lane if a.lane is not None else a.src.y), a.src.col, a.src.j))
        for i, a in enumerate(ins):
            a.port = b.y + ((len(ins) - 1) / 2 - i) * _PORT


def _arrow_path(a: _Arrow) -> tuple[list[tuple[float, float]], list[int]]:
    """Vertices and codes of a matplotlib Path: an S-curve between neighbouring columns, or
    rise -> lane -> drop for a long edge, each part leaving and arriving horizontally."""
    from matplotlib.path import Path

    x0, y0 = a.src.x + a.src.w / 2, a.src.y
    x3, y3 = a.dst.x - a.dst.w / 2, a.port
    if a.lane is None:
        k = (x3 - x0) / 2
        return [(x0, y0), (x0 + k, y0), (x3 - k, y3), (x3, y3)], [Path.MOVETO] + [Path.CURVE4] * 3
    # The rise ends, and the drop starts, in the gaps next to the source and target columns.
    x1 = a.src.x + _COL - max(_W.values()) / 2 - 0.08
    x2 = a.dst.x - _COL + max(_W.values()) / 2 + 0.08
    k1, k2 = (x1 - x0) / 2, (x3 - x2) / 2
    verts = [(x0, y0), (x0 + k1, y0), (x1 - k1, a.lane), (x1, a.lane), (x2, a.lane)]
    verts += [(x2 + k2, a.lane), (x3 - k2, y3), (x3, y3)]
    codes = [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4, Path.LINETO, Path.CURVE4, Path.CURVE4, Path.CURVE4]
    return verts, codes


def _width(channels: int, full: int, fixed: bool = False) -> float:
    """Line width in points: proportional to the live share of what an edge carries in the
    one-shot network (for a copy edge: of the source's channels, C in NASNet). Fixed edges
    are drawn narrower, so the copies, which pruning thins, stay the eye-catcher."""
    return 0.6 + (1.6 if fixed else 3.4) * min(1.0, channels / max(full, 1))


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on the Agg canvas, explicitly: no pyplot, no display, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def _node_figure(g: Graph, cell: int, dead: DeadMode) -> Figure:
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path

    boxes, arrows, c = _model(g, cell, dead)
    xs = [b.x - b.w / 2 for b in boxes.values()] + [b.x + b.w / 2 for b in boxes.values()]
    ys = [b.y + s * b.h / 2 for b in boxes.values() for s in (-1, 1)] + [a.lane for a in arrows if a.lane is not None]
    x_lo, x_hi = min(xs) - 0.3, max(xs) + 0.3
    y_lo, y_hi = min(ys) - 0.25, max(ys) + 0.25
    w_in, h_in = (x_hi - x_lo) * _INCH, (y_hi - y_lo) * _INCH
    W = max(w_in + 0.3, 8.0)
    if c.kind == "dense":
        sub = (
            "b = output of the previous block, d = its transition; op k.1 = Conv3x3(Conv1x1(x)) with BN-ReLU "
            "(bottleneck) over its own copies x of d, z1, ..."
        )
        fixed = "fixed: transition, bottleneck, concat"
    else:
        sub = (
            "a, b = outputs of cells i-2, i-1; d = BN(Conv1x1(ReLU(.))); op k.j = BN(PW(DW3x3(ReLU(x)))) over its "
            "own copies x of d_a, d_b, z1, ...; z_k = sum of its ops"
        )
        fixed = "fixed: preprocess, y -> z add, z -> c concat"
    sub += "; edge label = live x copying the source, width = their share of the source's channels"
    # Wrapped to the figure's width (about 17 characters of 7.5 pt text per inch).
    sub = textwrap.fill(sub, width=int(W * 17))
    title_in, legend_in = 0.6 + 0.16 * (sub.count("\n") + 1), 0.55
    H = h_in + title_in + legend_in
    fig = _new_figure(W, H)
    ax = fig.add_axes(((W - w_in) / 2 / W, legend_in / H, w_in / W, h_in / H))
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_aspect("equal")
    ax.axis("off")

    # Limits are fixed above: add_artist skips add_patch's per-patch autoscaling (a third of
    # the drawing time of a paper cell). Thick edges first, so thin ones stay visible on top.
    for a in sorted(arrows, key=lambda a: (a.alive, -a.channels)):
        verts, codes = _arrow_path(a)
        lw = _width(a.channels, a.full, a.kind == "fixed") if a.alive else 0.7
        color = _COLOR[a.kind] if a.alive else _COLOR["dead"]
        ax.add_artist(
            FancyArrowPatch(
                path=Path(verts, codes),
                arrowstyle="-|>,head_length=0.5,head_width=0.25",
                mutation_scale=6 + lw,
                lw=lw,
                color=color,
                alpha=0.85 if a.alive else 0.6,
                linestyle="-" if a.alive else (0, (3, 2)),
                zorder=1 if a.alive else 0.5,
            )
        )
        if a.alive and (a.kind != "fixed" or a.op in ("preprocess", "factorized_reduce", "transition", "identity")):
            ax.text(
                a.dst.x - a.dst.w / 2 - 0.08,
                a.port + 0.035,
                f"{a.channels:,}",
                ha="right",
                va="bottom",
                fontsize=6.6,
                color=color,
                zorder=3,
                bbox={"boxstyle": "square,pad=0.08", "fc": "white", "ec": "none", "alpha": 0.8},
            )
    for b in boxes.values():
        ax.add_artist(
            FancyBboxPatch(
                (b.x - b.w / 2, b.y - b.h / 2),
                b.w,
                b.h,
                boxstyle="round,pad=0,rounding_size=0.07",
                fc=_FILL[b.kind] if b.alive else "#f4f4f4",
                ec="#333333" if b.alive else "#aaaaaa",
                lw=1.0,
                linestyle="-" if b.alive else (0, (3, 2)),
                zorder=2,
            )
        )
        name, detail = b.label.split("\n")
        ax.text(b.x, b.y + 0.07, name, ha="center", va="bottom", fontsize=7.6, weight="bold",
                color="#111111" if b.alive else "#999999", zorder=3)  # fmt: skip
        ax.text(b.x, b.y - 0.04, detail, ha="center", va="top", fontsize=6.8,
                color="#333333" if b.alive else "#999999", zorder=3)  # fmt: skip
    fig.text(0.5, 1 - 0.22 / H, f"{g.spec.name}: {cell_title(g, cell)}", ha="center", va="top", fontsize=10)
    fig.text(0.5, 1 - 0.5 / H, sub, ha="center", va="top", fontsize=7.5, color="#444444", linespacing=1.3)
    handles = [
        Line2D([], [], color=_COLOR["d"], lw=3, label="d -> x copies"),
        Line2D([], [], color=_COLOR["z"], lw=3, label="z -> x copies (between nodes)"),
        Line2D([], [], color=_COLOR["fixed"], lw=3, label=fixed),
    ]
    if not all(a.alive for a in arrows) or not all(b.alive for b in boxes.values()):
        handles.append(Line2D([], [], color=_COLOR["dead"], lw=1, ls="--", label="dead (pruned / folded)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=7.5,
               bbox_to_anchor=(0.5, 0.05 / H))  # fmt: skip
    return fig


# ---- channel level ---------------------------------------------------------------------------


def _channel_figure(g: Graph, cell: int, dead: DeadMode) -> Figure:
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    c = check_cell(g, cell)
    view = cell_view(g, cell, "channel", dead=dead == "faded")
    nodes = max((n.index for n in c.nodes), default=0)
    # Columns: a/b, d, then per node its x groups, y groups and z; c last.
    groups: dict[int, dict[str, Any]] = {}
    for _, a in view.nodes(data=True):
        grp = int(a["group"])
        if grp not in groups:
            kind, node = str(a["kind"]), int(g.node[grp])
            col = {"a": 0, "b": 0, "d": 1, "c": 3 * nodes + 2}.get(kind, 3 * node - 1 + "xyz".find(kind))
            # A channel keeps its one-shot position (n = the group's one-shot size), so the
            # faded and omitted drawings line up.
            groups[grp] = {"kind": kind, "col": col, "key": (col, int(g.op[grp]), int(g.kind[grp])),
                           "n": int(g.size[grp])}  # fmt: skip
    columns: dict[int, list[int]] = {}
    for grp in sorted(groups, key=lambda k: groups[k]["key"]):
        columns.setdefault(groups[grp]["col"], []).append(grp)
    tallest = max(sum(groups[k]["n"] for k in ks) + _GROUP_GAP * (len(ks) - 1) for ks in columns.values())
    pitch = max(min(0.16, 11.0 / max(tallest, 1)), 0.05)  # keeps the figure under ~15 inches high
    col_w = 2.2
    for ks in columns.values():
        total = (sum(groups[k]["n"] for k in ks) + _GROUP_GAP * (len(ks) - 1)) * pitch
        top = total / 2
        for k in ks:
            groups[k]["top"] = top
            top -= (groups[k]["n"] + _GROUP_GAP) * pitch

    def pos(node: str) -> tuple[float, float]:
        a = view.nodes[node]
        grp = groups[int(a["group"])]
        return grp["col"] * col_w, grp["top"] - (int(a["index"]) + 0.5) * pitch

    segs: dict[str, list[tuple[tuple[float, float], tuple[float, float]]]] = {}
    for u, v, e in view.edges(data=True):
        key = str(e["op"])
        if key == "copy":
            key = f"copy_{view.nodes[u]['kind']}"
        if not e["alive"]:
            key = "dead"
        segs.setdefault(key, []).append((pos(u), pos(v)))
    cols = sorted(columns)
    W = max(8.0, (len(cols) * col_w + 1.0) * 0.55)
    H = tallest * pitch * 0.55 + 1.6
    fig = _new_figure(W, H)
    ax = fig.add_axes((0.02, 0.6 / H, 0.96, 1 - 1.5 / H))
    ax.axis("off")
    for key in sorted(segs, key=lambda k: (k != "dead", k)):
        color = _CH_COLOR.get(key, _COLOR["dead"] if key == "dead" else _COLOR["fixed"])
        alpha = {"dead": 0.3, "sepconv": 0.5, "bottleneck1": 0.5, "preprocess": 0.3}.get(key, 0.85)
        ax.add_collection(LineCollection(segs[key], colors=color, linewidths=0.45, alpha=alpha, zorder=1))
    live_of = g.live_counts()
    for grp, info in groups.items():
        members = [n for n, a in view.nodes(data=True) if int(a["group"]) == grp]
        pts = [pos(n) for n in members]
        colors = ["#222222" if view.nodes[n]["alive"] else "#c8c8c8" for n in members]
        x0, top, n = info["col"] * col_w, info["top"], info["n"]
        fill = _FILL["op" if info["kind"] in ("x", "y") else info["kind"]]
        ax.add_patch(Rectangle((x0 - 0.14, top - n * pitch), 0.28, n * pitch, fc=fill, ec="#999999", lw=0.5, zorder=0))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=5, c=colors, zorder=3, linewidths=0)
        name = g.group_name(grp).split(".", 1)[1]
        if info["kind"] in ("x", "y"):
            name = f"op {int(g.node[grp])}.{int(g.op[grp])} {info['kind']}"
        elif info["kind"] == "z":
            name = f"z{int(g.node[grp])}"
        name += f" {int(live_of[grp])}/{int(g.size[grp])}"
        ax.text(x0, top + 0.3 * pitch, name, ha="center", va="bottom", fontsize=6.5, zorder=4)
    ax.autoscale_view()
    ax.margins(0.03, 0.02)
    fig.text(0.5, 1 - 0.2 / H, f"{g.spec.name}: {cell_title(g, cell)}", ha="center", va="top", fontsize=10)
    fig.text(0.5, 1 - 0.5 / H, "channel level: every vertex is a channel, every line a channel edge; "
             "blue d -> x copies, orange z -> x copies, purple x -> y (DW+PW), grey fixed"
             + ("; light grey dead" if dead == "faded" else ""),
             ha="center", va="top", fontsize=7.5, color="#444444")  # fmt: skip
    return fig


# ---- public API ------------------------------------------------------------------------------


def check_channel_level(g: Graph, cell: int, dead: DeadMode = "faded") -> int:
    """Channel edges the channel level would draw; a one-line :class:`InputError` above
    :data:`MAX_CHANNEL_EDGES`."""
    check_cell(g, cell)
    n = channel_edge_count(g, cell, dead=dead == "faded")
    if n > MAX_CHANNEL_EDGES:
        raise InputError(
            f"cell {cell} has {n:,} channel edges, more than the channel level shows "
            f"({MAX_CHANNEL_EDGES:,}): use --level node"
        )
    return n


def cell_figure(g: Graph, cell: int, level: Level = "node", dead: DeadMode = "faded") -> Figure:
    """A matplotlib figure (on the Agg canvas) of cell ``cell`` at ``level``."""
    check_cell(g, cell)
    if level == "channel":
        check_channel_level(g, cell, dead)
        return _channel_figure(g, cell, dead)
    return _node_figure(g, cell, dead)


def render_cell(
    g: Graph, cell: int, fmt: Literal["png", "svg"] = "png", level: Level = "node", dead: DeadMode = "faded",
    dpi: int = 120,
) -> bytes:  # fmt: skip
    """The drawing of cell ``cell`` as PNG or SVG bytes (reproducible: no dates in them)."""
    import matplotlib

    fig = cell_figure(g, cell, level, dead)
    return _figure_bytes(fig, fmt, dpi, matplotlib)


def _figure_bytes(fig: Figure, fmt: str, dpi: int, matplotlib: Any) -> bytes:
    buf = io.BytesIO()
    # Fixed hash salt and no date: the same graph gives the same bytes.
    with matplotlib.rc_context({"svg.hashsalt": "cnas-ir", "svg.fonttype": "none"}):
        meta = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta, facecolor="white")
    return buf.getvalue()


def export_view(g: Graph, cell: int, level: Level = "node", dead: DeadMode = "faded") -> nx.DiGraph:
    """The networkx view written by :func:`to_graphml` and :func:`to_dot`: ``cell_view`` (dead
    parts kept, ``alive=False``, for ``dead="faded"``) with a ``label`` on every node."""
    check_cell(g, cell)
    if level == "channel":
        check_channel_level(g, cell, dead)
    view = cell_view(g, cell, level, dead=dead == "faded")
    for name, a in view.nodes(data=True):
        short = name.split(".", 1)[1]
        a["label"] = short if level == "channel" else f"{short} {a['size']}/{a['full']}"
    view.graph["title"] = cell_title(g, cell)
    return view


def to_graphml(g: Graph, cell: int, level: Level = "node", dead: DeadMode = "faded") -> bytes:
    """GraphML of :func:`export_view` (networkx's writer)."""
    import networkx as nx

    return "\n".join(nx.generate_graphml(export_view(g, cell, level, dead))).encode() + b"\n"


def _dot_id(s: object) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_attrs(attrs: dict[str, Any]) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return _dot_id(str(v).lower())
        if isinstance(v, int | float):
            return str(v)
        return _dot_id(v)

    return ", ".join(f"{k}={value(v)}" for k, v in attrs.items())


def to_dot(g: Graph, cell: int, level: Level = "node", dead: DeadMode = "faded") -> str:
    """Graphviz DOT text of :func:`export_view`, written here (no pydot/pygraphviz needed):
    left-to-right, copies coloured by source as in the drawing, dead parts dashed grey."""
    view = export_view(g, cell, level, dead)
    lines = [
        f"digraph {_dot_id(f'cell{cell}')} {{",
        f"  graph [rankdir=LR, labelloc=t, label={_dot_id(view.graph['title'])}];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8];',
    ]
    for name, a in view.nodes(data=True):
        fill = _FILL.get("op" if a["kind"] in ("x", "y") else str(a["kind"]), "#ffffff")
        style = {"fillcolor": fill if a["alive"] else "#f4f4f4"}
        if not a["alive"]:
            style |= {"style": "rounded,filled,dashed", "fontcolor": "#999999", "color": "#aaaaaa"}
        if level == "channel":
            style |= {"shape": "point", "width": 0.06}
        lines.append(f"  {_dot_id(name)} [{_dot_attrs(dict(a) | style)}];")
    for u, v, e in view.edges(data=True):
        attrs = dict(e)
        src_kind = view.nodes[u]["kind"]
        color = _COLOR[str(src_kind)] if e["op"] == "copy" else _COLOR["fixed"]
        if not e["alive"]:
            attrs |= {"color": _COLOR["dead"], "style": "dashed"}
        else:
            attrs["color"] = color
        if level == "node":
            attrs["penwidth"] = round(_width(int(e["channels"]), int(e["full"]), e["op"] != "copy"), 2)
            if e["op"] == "copy" and e["alive"]:
                attrs["label"] = str(e["channels"])
        lines.append(f"  {_dot_id(u)} -> {_dot_id(v)} [{_dot_attrs(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def describe_cell(g: Graph, cell: int, dead: DeadMode = "faded") -> str:
    """The node level as text: per op its live x and where they copy from (for a terminal)."""
    boxes, arrows, c = _model(g, cell, dead)
    lines = [cell_title(g, cell)]
    ins: dict[str, list[_Arrow]] = {}
    for a in arrows:
        ins.setdefault(a.dst.name, []).append(a)

    def sources(name: str) -> str:
        parts = [f"{a.src.name} {a.channels:,}" for a in sorted(ins.get(name, []), key=_src_key) if a.alive]
        return ", ".join(parts) or "nothing"

    for b in _ordered(boxes.values()):
        if b.kind == "op":
            lines.append(f"  {b.name}: x* {b.size:,}/{b.full:,}" + ("" if b.alive else " (dead)")
                         + f" <- {sources(b.name)}")  # fmt: skip
        elif b.kind == "z":
            lines.append(f"  {b.name}: {'dead' if not b.alive else f'{b.size:,} channels'}")
        elif b.kind == "c":
            lines.append(f"  c: {b.size:,}/{b.full:,} channels <- {sources(b.name).replace(' ' + str(c.width), '')}")
    return "\n".join(lines) + "\n"


def _src_key(a: _Arrow) -> tuple[int, int, int]:
    return a.src.col, a.src.j, a.src.node


def _ordered(boxes: Iterable[_Box]) -> list[_Box]:
    return sorted(boxes, key=lambda b: (b.col, b.j))
