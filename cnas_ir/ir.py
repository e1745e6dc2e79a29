"""The channel-graph IR: vertices are channels, edges are operations (SPEC §3).

Storage is array-based. Channels are numbered 0..V-1 and grouped into *vertex groups*
(contiguous ranges: one group is the x copies of one operation, the z channels of one node,
the d_a channels of one cell, ...). Per-channel data are numpy columns over all V vertices:

- ``alive``    bool[V]     -- the vertex exists in the current (pruned) network
- ``src``      int32[V]    -- for an x vertex the vertex id of the channel it copies; -1 otherwise
- ``saliency`` float32[V]  -- importance of an x vertex (NaN where not computed / not x)

Per-group data are columns over G groups (``kind``, ``cell``, ``node``, ``op``, ``start``,
``size``, ``res``); edges are *bundles* between two groups (``bundle_kind``, ``bundle_src``,
``bundle_dst``), never one object per channel pair: the paper-scale graph has ~9.9 M
channel edges but 1,382 bundles. Cells, nodes and operations (hundreds) are small frozen
Python objects derived from the group columns.

Arrays of a :class:`Graph` are read-only; a pass that changes the graph builds a new one with
:meth:`Graph.replace`, sharing every array it did not change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from cnas_ir.spec import Spec

__all__ = [
    "COST",
    "DENSE",
    "Cell",
    "Cost",
    "Edge",
    "Graph",
    "Kind",
    "Node",
    "Op",
    "VerifyError",
]


class Kind(enum.IntEnum):
    """What a vertex group is, in the paper's words (Figure 1)."""

    INPUT = 0  # image channels
    STEM = 1
    A = 2  # cell input a: output of cell i-2 (or the stem)
    B = 3  # cell input b: output of cell i-1 (or the stem)
    D = 4  # preprocessed cell input (d_a, d_b; DenseNet: the block input after transition)
    X = 5  # one operation's own copies of its input channels: the prunable vertices
    Y = 6  # an operation's output channels (DenseNet: the bottleneck's 4k channels)
    Z = 7  # a node's output channels
    C = 8  # cell output: concat of the z (DenseNet: of d and the z)
    HEAD = 9  # logits


class Edge(enum.IntEnum):
    """The operation a bundle of edges stands for, from a src group to a dst group."""

    STEM_CONV_BN = 0  # NASNet stem: Conv3x3 + BN(affine)
    STEM_CONV = 1  # DenseNet stem: Conv3x3
    PREPROCESS = 2  # BN(Conv1x1(ReLU(.))), BN affine=False
    FACTORIZED_REDUCE = 3  # two stride-2 Conv1x1 of C/2 (second shifted by a pixel), concat, BN
    COPY = 4  # d -> x, z -> x: x[i] is a copy of channel src[i]
    SEPCONV = 5  # x -> y: BN(PW(DW3x3(ReLU(x)))), BN affine=False
    ADD = 6  # y -> z: z = sum over the node's ops of y
    CONCAT = 7  # z -> c (DenseNet also d -> c)
    IDENTITY = 8  # c -> a/b of a later cell, b -> d in the first dense block
    HEAD_LINEAR = 9  # NASNet: global average pool + Linear (bias)
    BOTTLENECK1 = 10  # DenseNet x -> y: Conv1x1(ReLU(BN(x))), BN affine
    BOTTLENECK2 = 11  # DenseNet y -> z: Conv3x3(ReLU(BN(y))), BN affine
    TRANSITION = 12  # DenseNet b -> d: AvgPool2(Conv1x1(ReLU(BN(b))))
    HEAD_BN_LINEAR = 13  # DenseNet: BN + ReLU + global average pool + Linear (bias)
    STEM_RELU_CONV_BN = 14  # ImageNet stem, second and third layers: ReLU, Conv3x3 stride 2, BN(affine)


@dataclass(frozen=True)
class Cost:
    """Parameters and multiply-adds of a bundle as a polynomial in its live sizes.

    With s live source channels and t live destination channels:
    ``params = pair*s*t + per_src*s + per_dst*t`` and
    ``macs = (macs_pair*s*t + macs_src*s) * r*r`` where r is the resolution of the conv
    output (the dst group's, or the src group's for a transition whose pool comes after).
    BatchNorm running statistics are buffers, not parameters; BN/ReLU/pooling are not counted
    as multiply-adds.
    """

    pair: int = 0
    per_src: int = 0
    per_dst: int = 0
    macs_pair: int = 0
    macs_src: int = 0
    macs_at_src: bool = False
    spatial: bool = True


COST: dict[Edge, Cost] = {
    Edge.STEM_CONV_BN: Cost(pair=9, per_dst=2, macs_pair=9),
    Edge.STEM_CONV: Cost(pair=9, macs_pair=9),
    Edge.PREPROCESS: Cost(pair=1, macs_pair=1),
    Edge.FACTORIZED_REDUCE: Cost(pair=1, macs_pair=1),  # 2 convs of s x t/2
    Edge.COPY: Cost(),
    Edge.SEPCONV: Cost(pair=1, per_src=9, macs_pair=1, macs_src=9),  # a kept x costs 9 + C
    Edge.ADD: Cost(),
    Edge.CONCAT: Cost(),
    Edge.IDENTITY: Cost(),
    Edge.HEAD_LINEAR: Cost(pair=1, per_dst=1, macs_pair=1, spatial=False),
    Edge.BOTTLENECK1: Cost(pair=1, per_src=2, macs_pair=1),  # a kept x costs 2 + 4k
    Edge.BOTTLENECK2: Cost(pair=9, per_src=2, macs_pair=9),
    Edge.TRANSITION: Cost(pair=1, per_src=2, macs_pair=1, macs_at_src=True),
    Edge.HEAD_BN_LINEAR: Cost(pair=1, per_src=2, per_dst=1, macs_pair=1, spatial=False),
    Edge.STEM_RELU_CONV_BN: Cost(pair=9, per_dst=2, macs_pair=9),
}

# Bundles connecting every live src channel to every live dst channel; the others are 1:1.
DENSE = frozenset(
    {
        Edge.STEM_CONV_BN,
        Edge.STEM_CONV,
        Edge.PREPROCESS,
        Edge.FACTORIZED_REDUCE,
        Edge.SEPCONV,
        Edge.HEAD_LINEAR,
        Edge.BOTTLENECK1,
        Edge.BOTTLENECK2,
        Edge.TRANSITION,
        Edge.HEAD_BN_LINEAR,
        Edge.STEM_RELU_CONV_BN,
    }
)

# The (src kind, dst kind) pairs each edge kind may join: checked by the verifier.
_ENDPOINTS: dict[Edge, frozenset[tuple[Kind, Kind]]] = {
    Edge.STEM_CONV_BN: frozenset({(Kind.INPUT, Kind.STEM)}),
    Edge.STEM_CONV: frozenset({(Kind.INPUT, Kind.STEM)}),
    Edge.PREPROCESS: frozenset({(Kind.A, Kind.D), (Kind.B, Kind.D)}),
    Edge.FACTORIZED_REDUCE: frozenset({(Kind.A, Kind.D)}),
    Edge.COPY: frozenset({(Kind.D, Kind.X), (Kind.Z, Kind.X)}),
    Edge.SEPCONV: frozenset({(Kind.X, Kind.Y)}),
    Edge.ADD: frozenset({(Kind.Y, Kind.Z)}),
    Edge.CONCAT: frozenset({(Kind.Z, Kind.C), (Kind.D, Kind.C)}),
    Edge.IDENTITY: frozenset(
        {(Kind.C, Kind.A), (Kind.C, Kind.B), (Kind.STEM, Kind.A), (Kind.STEM, Kind.B), (Kind.B, Kind.D)}
    ),
    Edge.HEAD_LINEAR: frozenset({(Kind.C, Kind.HEAD)}),
    Edge.BOTTLENECK1: frozenset({(Kind.X, Kind.Y)}),
    Edge.BOTTLENECK2: frozenset({(Kind.Y, Kind.Z)}),
    Edge.TRANSITION: frozenset({(Kind.B, Kind.D)}),
    Edge.HEAD_BN_LINEAR: frozenset({(Kind.C, Kind.HEAD)}),
    Edge.STEM_RELU_CONV_BN: frozenset({(Kind.STEM, Kind.STEM)}),
}

GROUP_COLUMNS = ("kind", "cell", "node", "op", "start", "size", "res")
VERTEX_COLUMNS = ("alive", "src", "saliency")
BUNDLE_COLUMNS = ("bundle_kind", "bundle_src", "bundle_dst")


class VerifyError(Exception):
    """An invariant of the IR does not hold (a bug in a pass, or a corrupt file)."""


@dataclass(frozen=True)
class Op:
    """Operation j of node k of a cell: its x copies (group ``x``) and outputs (group ``y``)."""

    id: int  # position in Graph.ops
    cell: int  # 1-based cell index
    node: int  # 1-based node index
    j: int  # 1-based op index within the node
    x: int  # group id of the op's x vertices
    y: int  # group id of the op's y vertices
    sources: tuple[int, ...]  # group ids the x copy from, in order (d_a, d_b, z_1, ...)


@dataclass(frozen=True)
class Node:
    cell: int
    index: int  # 1-based
    z: int  # group id
    ops: tuple[Op, ...]


@dataclass(frozen=True)
class Cell:
    """A cell (NASNet) or a dense block (DenseNet)."""

    index: int  # 1-based
    kind: str  # "normal" | "reduction" | "dense"
    width: int  # C (NASNet) / growth rate k (DenseNet)
    res: int  # spatial size of the cell's outputs
    inputs: tuple[int, ...]  # group ids of a, b (NASNet) or b (DenseNet)
    d: tuple[int, ...]  # group ids of d_a, d_b (NASNet) or d (DenseNet)
    c: int  # group id of the cell output
    nodes: tuple[Node, ...]

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(op for node in self.nodes for op in node.ops)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Graph:
    """The channel graph of one network.

    Group columns (length G): ``kind`` uint8 (:class:`Kind`), ``cell``/``node``/``op`` int16
    (1-based, 0 = not applicable; for a D group ``op`` is 1 for d_a, 2 for d_b), ``start``
    int64 and ``size`` int64 (the group's vertex range), ``res`` int32 (spatial size).
    Vertex columns (length V): ``alive``, ``src``, ``saliency`` (see module docstring).
    Bundle columns (length E): ``bundle_kind`` uint8 (:class:`Edge`), ``bundle_src`` and
    ``bundle_dst`` int32 group ids.
    ``weights`` maps parameter/buffer names to float32 arrays in one-shot shapes (empty
    before training); ``history`` is a JSON-able list of what was done to the graph;
    ``data`` describes the data the weights were trained on (JSON-able: ``name``, per-channel
    ``mean`` and ``std`` of the input normalisation, ``classes`` names for an image folder), so
    evaluation and export normalise as training did; empty before training.
    """

    spec: Spec
    kind: np.ndarray
    cell: np.ndarray
    node: np.ndarray
    op: np.ndarray
    start: np.ndarray
    size: np.ndarray
    res: np.ndarray
    alive: np.ndarray
    src: np.ndarray
    saliency: np.ndarray
    bundle_kind: np.ndarray
    bundle_src: np.ndarray
    bundle_dst: np.ndarray
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in GROUP_COLUMNS + VERTEX_COLUMNS + BUNDLE_COLUMNS:
            _readonly(getattr(self, name))
        for a in self.weights.values():
            _readonly(a)

    # ---- construction -------------------------------------------------------------------

    def replace(self, **changes: Any) -> Graph:
        """A new graph with some columns (or weights/history) replaced; the rest is shared."""
        fields = {name: getattr(self, name) for name in ("spec",) + GROUP_COLUMNS + VERTEX_COLUMNS + BUNDLE_COLUMNS}
        fields["weights"] = self.weights
        fields["history"] = self.history
        fields["data"] = self.data
        fields.update(changes)
        return Graph(**fields)

    def with_event(self, event: dict[str, Any]) -> Graph:
        """Append one JSON-able record to the history."""
        return self.replace(history=self.history + (event,))

    # ---- sizes and derived columns ------------------------------------------------------

    @property
    def num_vertices(self) -> int:
        return int(self.alive.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.kind.shape[0])

    @property
    def num_bundles(self) -> int:
        return int(self.bundle_kind.shape[0])

    @cached_property
    def vertex_group(self) -> np.ndarray:
        """int32[V]: the group of every vertex."""
        return _readonly(np.repeat(np.arange(self.num_groups, dtype=np.int32), self.size))

    @cached_property
    def x_ids(self) -> np.ndarray:
        """int64[|X|]: vertex ids of all x vertices, in op order."""
        return _readonly(np.flatnonzero(self.kind[self.vertex_group] == Kind.X))

    def live_counts(self, alive: np.ndarray | None = None) -> np.ndarray:
        """int64[G]: live vertices per group (for ``alive``, default the graph's mask)."""
        a = self.alive if alive is None else alive
        # cumsum rather than reduceat: reduceat mishandles empty groups.
        csum = np.concatenate([[0], np.cumsum(a, dtype=np.int64)])
        return csum[self.start + self.size] - csum[self.start]

    def group_slice(self, g: int) -> slice:
        s = int(self.start[g])
        return slice(s, s + int(self.size[g]))

    def group_name(self, g: int) -> str:
        """Human name of a group, e.g. ``cell3.node2.op1.x`` or ``cell8.d_a``."""
        k = Kind(int(self.kind[g]))
        cell, node, op = int(self.cell[g]), int(self.node[g]), int(self.op[g])
        if k == Kind.STEM and op:  # a layer of a multi-layer (ImageNet) stem
            return f"stem{op}"
        if k in (Kind.INPUT, Kind.STEM, Kind.HEAD):
            return k.name.lower()
        base = f"cell{cell}"
        if k == Kind.D:
            return f"{base}.d_{'ab'[op - 1]}" if self.spec.space == "nasnet" else f"{base}.d"
        if k in (Kind.A, Kind.B, Kind.C):
            return f"{base}.{k.name.lower()}"
        if k == Kind.Z:
            return f"{base}.node{node}.z"
        return f"{base}.node{node}.op{op}.{k.name.lower()}"

    # ---- structure as objects (cells, nodes, ops: hundreds) ------------------------------

    @cached_property
    def _structure(self) -> tuple[tuple[Cell, ...], tuple[Op, ...], int, int, int]:
        kinds = self.kind
        by_key: dict[tuple[int, int, int, int], int] = {}
        for g in range(self.num_groups):
            by_key[(int(kinds[g]), int(self.cell[g]), int(self.node[g]), int(self.op[g]))] = g
        copy_sources: dict[int, list[int]] = {}
        for e in np.flatnonzero(self.bundle_kind == Edge.COPY):
            copy_sources.setdefault(int(self.bundle_dst[e]), []).append(int(self.bundle_src[e]))
        ops: list[Op] = []
        cells: list[Cell] = []
        reduction_edges = self._reduction_cells()
        for ci in sorted({int(c) for c in self.cell[kinds == Kind.C]}):
            nodes = []
            node_ids = sorted({int(n) for n in self.node[(kinds == Kind.Z) & (self.cell == ci)]})
            for ni in node_ids:
                node_ops = []
                op_js = sorted({int(o) for o in self.op[(kinds == Kind.X) & (self.cell == ci) & (self.node == ni)]})
                for j in op_js:
                    xg = by_key[(Kind.X, ci, ni, j)]
                    op = Op(
                        id=len(ops),
                        cell=ci,
                        node=ni,
                        j=j,
                        x=xg,
                        y=by_key[(Kind.Y, ci, ni, j)],
                        sources=tuple(copy_sources.get(xg, ())),
                    )
                    ops.append(op)
                    node_ops.append(op)
                nodes.append(Node(cell=ci, index=ni, z=by_key[(Kind.Z, ci, ni, 0)], ops=tuple(node_ops)))
            inputs = tuple(by_key[(k, ci, 0, 0)] for k in (Kind.A, Kind.B) if (k, ci, 0, 0) in by_key)
            d = tuple(g for side in (1, 2) if (g := by_key.get((Kind.D, ci, 0, side))) is not None)
            c = by_key[(Kind.C, ci, 0, 0)]
            if self.spec.space == "densenet":
                kind, width = "dense", self.spec.densenet.growth_rate  # type: ignore[union-attr]
            else:
                kind = "reduction" if ci in reduction_edges else "normal"
                width = int(self.size[nodes[0].z]) if nodes else 0
            cells.append(
                Cell(
                    index=ci, kind=kind, width=width, res=int(self.res[c]), inputs=inputs, d=d, c=c, nodes=tuple(nodes)
                )
            )
        stem = int(np.flatnonzero(kinds == Kind.STEM)[-1])  # the stem's last layer feeds the cells
        head = by_key[(Kind.HEAD, 0, 0, 0)]
        inp = by_key[(Kind.INPUT, 0, 0, 0)]
        return tuple(cells), tuple(ops), inp, stem, head

    def _reduction_cells(self) -> set[int]:
        # A NASNet cell is a reduction cell when its outputs are smaller than its d inputs.
        out = set()
        for g in np.flatnonzero(self.kind == Kind.Z):
            cell = int(self.cell[g])
            d = np.flatnonzero((self.kind == Kind.D) & (self.cell == cell))
            if d.size and self.res[g] < self.res[d[0]]:
                out.add(cell)
        return out

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self._structure[0]

    @property
    def ops(self) -> tuple[Op, ...]:
        return self._structure[1]

    @property
    def input_group(self) -> int:
        return self._structure[2]

    @property
    def stem_group(self) -> int:
        return self._structure[3]

    @property
    def head_group(self) -> int:
        return self._structure[4]

    def cell_by_index(self, index: int) -> Cell:
        for c in self.cells:
            if c.index == index:
                return c
        raise KeyError(index)

    @cached_property
    def op_of_vertex(self) -> np.ndarray:
        """int32[V]: the op id owning each x vertex, -1 for other vertices."""
        out = np.full(self.num_vertices, -1, dtype=np.int32)
        for op in self.ops:
            out[self.group_slice(op.x)] = op.id
        return _readonly(out)

    @cached_property
    def x_cost(self) -> np.ndarray:
        """int64[V]: parameters one live x vertex costs (9 + C, or 2 + 4k); 0 for others."""
        out = np.zeros(self.num_vertices, dtype=np.int64)
        for e in range(self.num_bundles):
            if Kind(int(self.kind[self.bundle_src[e]])) == Kind.X:
                c = COST[Edge(int(self.bundle_kind[e]))]
                out[self.group_slice(int(self.bundle_src[e]))] = c.per_src + c.pair * int(self.size[self.bundle_dst[e]])
        return _readonly(out)

    # ---- verifier ---------------------------------------------------------------------------

    def verify(self) -> None:
        """Check the IR's invariants; raise :class:`VerifyError` naming the first broken one."""
        _verify(self)


def _fail(msg: str) -> None:
    raise VerifyError(msg)


def _verify(g: Graph) -> None:
    G, V, E = g.num_groups, g.num_vertices, g.num_bundles
    dtypes = {
        "kind": np.uint8, "cell": np.int16, "node": np.int16, "op": np.int16, "start": np.int64,
        "size": np.int64, "res": np.int32, "alive": np.bool_, "src": np.int32, "saliency": np.float32,
        "bundle_kind": np.uint8, "bundle_src": np.int32, "bundle_dst": np.int32,
    }  # fmt: skip
    lengths = dict.fromkeys(GROUP_COLUMNS, G) | dict.fromkeys(VERTEX_COLUMNS, V) | dict.fromkeys(BUNDLE_COLUMNS, E)
    for name, dtype in dtypes.items():
        a = getattr(g, name)
        if a.dtype != dtype or a.ndim != 1:
            _fail(f"column {name}: expected 1-d {np.dtype(dtype).name}, got {a.ndim}-d {a.dtype}")
        if a.shape[0] != lengths[name]:
            _fail(f"column {name}: length {a.shape[0]}, expected {lengths[name]}")
    if G == 0:
        _fail("graph has no vertex groups")
    if np.any(g.kind > max(Kind)) or np.any(g.bundle_kind > max(Edge)):
        _fail("unknown group or edge kind")
    if np.any(g.size < 0) or g.start[0] != 0 or np.any(g.start[1:] != (g.start + g.size)[:-1]):
        _fail("vertex groups are not contiguous ranges")
    if int(g.start[-1] + g.size[-1]) != V:
        _fail(f"vertex groups cover {int(g.start[-1] + g.size[-1])} vertices, columns have {V}")
    if np.any(g.res <= 0):
        _fail("a group has a non-positive resolution")
    for k in (Kind.INPUT, Kind.HEAD):
        if int(np.sum(g.kind == k)) != 1:
            _fail(f"expected exactly one {k.name.lower()} group")
    stem_layers = g.op[g.kind == Kind.STEM].tolist()
    if stem_layers != [0] and stem_layers != list(range(1, len(stem_layers) + 1)):
        _fail(f"stem groups must be one group (layer 0) or layers 1..n in order, got {stem_layers}")
    # Numbering (group_name and the structure read it): one group per (kind, cell, node, op),
    # no negative number, a d group d_a or d_b (op 1 or 2; DenseNet: d, op 1).
    if np.any(g.cell < 0) or np.any(g.node < 0) or np.any(g.op < 0):
        _fail("a group has a negative cell, node or op number")
    d_op = g.op[g.kind == Kind.D]
    if np.any(d_op < 1) or np.any(d_op > (2 if g.spec.space == "nasnet" else 1)):
        _fail("a d group is numbered neither d_a nor d_b")
    if np.unique(np.stack([g.kind, g.cell, g.node, g.op], axis=1).astype(np.int64), axis=0).shape[0] != G:
        _fail("two groups have the same kind, cell, node and op")
    if np.any((g.bundle_src < 0) | (g.bundle_src >= G) | (g.bundle_dst < 0) | (g.bundle_dst >= G)):
        _fail("a bundle references a group that does not exist")
    for e in range(E):
        ek, s, t = Edge(int(g.bundle_kind[e])), int(g.bundle_src[e]), int(g.bundle_dst[e])
        if (Kind(int(g.kind[s])), Kind(int(g.kind[t]))) not in _ENDPOINTS[ek]:
            _fail(f"bundle {e}: {ek.name} cannot join {g.group_name(s)} -> {g.group_name(t)}")
        if ek in (Edge.ADD, Edge.IDENTITY) and g.size[s] != g.size[t]:
            _fail(f"bundle {e}: {ek.name} joins groups of different sizes")
    vk = g.kind[g.vertex_group]
    is_x = vk == Kind.X
    if np.any(g.src[~is_x] != -1):
        _fail("a vertex that is not an x has a source")
    xs = g.src[is_x]
    if np.any((xs < 0) | (xs >= V)):
        _fail("an x vertex copies a vertex that does not exist")
    src_group = g.vertex_group[xs]
    x_group = g.vertex_group[is_x]
    if np.any(~np.isin(g.kind[src_group], (Kind.D, Kind.Z))):
        _fail("an x vertex copies a vertex that is neither d nor z")
    if np.any(g.cell[src_group] != g.cell[x_group]):
        _fail("an x vertex copies a channel of another cell")
    src_is_z = g.kind[src_group] == Kind.Z
    if np.any(src_is_z & (g.node[src_group] >= g.node[x_group])):
        _fail("an x vertex copies the z of its own or a later node")
    # Each COPY bundle must be exactly the set of sources the x group draws from.
    pairs = set(zip(src_group.tolist(), x_group.tolist(), strict=True))
    copies = {
        (int(s), int(t)) for s, t, k in zip(g.bundle_src, g.bundle_dst, g.bundle_kind, strict=True) if k == Edge.COPY
    }
    if pairs != copies:
        _fail("COPY bundles do not match the sources of the x vertices")
    if np.any(g.alive[is_x] & ~g.alive[xs]):
        bad = int(np.flatnonzero(is_x)[np.flatnonzero(g.alive[is_x] & ~g.alive[xs])[0]])
        _fail(f"live x vertex {bad} ({g.group_name(int(g.vertex_group[bad]))}) copies a dead channel")
    for k in (Kind.INPUT, Kind.STEM, Kind.D, Kind.HEAD):
        if not np.all(g.alive[vk == k]):
            _fail(f"a {k.name.lower()} vertex is dead: only x, y, z, c (and a/b) vertices can be removed")
    live = g.live_counts()
    for k in (Kind.Y, Kind.Z):
        sel = g.kind == k
        if np.any((live[sel] != 0) & (live[sel] != g.size[sel])):
            _fail(f"a {k.name.lower()} group is partly alive: they live or die whole")
    # c, a and b channels mirror their sources one to one.
    for e in np.flatnonzero(np.isin(g.bundle_kind, (Edge.CONCAT, Edge.IDENTITY))):
        s, t = int(g.bundle_src[e]), int(g.bundle_dst[e])
        if g.kind[t] == Kind.D:  # b -> d identity of the first dense block: d never dies
            continue
        if g.bundle_kind[e] == Edge.IDENTITY:
            if not np.array_equal(g.alive[g.group_slice(s)], g.alive[g.group_slice(t)]):
                _fail(f"{g.group_name(t)} is not alive exactly where {g.group_name(s)} is")
    for c in np.flatnonzero(g.kind == Kind.C):
        parts = [int(g.bundle_src[e]) for e in np.flatnonzero((g.bundle_kind == Edge.CONCAT) & (g.bundle_dst == c))]
        if sum(int(g.size[p]) for p in parts) != int(g.size[c]):
            _fail(f"{g.group_name(int(c))} is not the concat of its parts")
        mirrored = np.concatenate([g.alive[g.group_slice(p)] for p in parts])
        if not np.array_equal(mirrored, g.alive[g.group_slice(int(c))]):
            _fail(f"{g.group_name(int(c))} is not alive exactly where its parts are")
    if np.any(~np.isnan(g.saliency[~is_x])):
        _fail("a vertex that is not an x has a saliency")
    if np.any(np.isinf(g.saliency)):
        _fail("a saliency is infinite")
    try:
        g._structure  # noqa: B018 -- builds the cell/node/op objects; fails on missing groups
    except KeyError as e:
        _fail(f"structure is incomplete: missing group {e}")
