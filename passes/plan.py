"""The execution plan: how the compact network of a graph runs, decided once for every backend.

Between the IR and the backends (SPEC §9). The PyTorch lowering (training and inference) and the
ONNX emitter translate this plan; neither decides for itself which states a node reads, how it
reads them, where a state lives or which operations merge. numpy only. (ONNX has no writes into
a buffer: the emitter assembles a read's channels, in the plan's order, from the state tensors,
and keeps a conv merge out of onnxruntime's blocked layout where a Split would break it.)

NASNet cells (:func:`nasnet_plan`):

- **States.** A cell's ops read the ReLU'd states ``relu(d_a)``, ``relu(d_b)``, ``relu(z_1)``, ...,
  numbered 0 (d_a), 1 (d_b), k + 1 (z_k) -- every reader of a state starts with a ReLU, so it is
  computed once, where the state is made.
- **Buffers** (the state layout): the states of one resolution sit side by side in one buffer,
  ``[relu(d_a) | relu(d_b) | relu(z_k) of every computed node]``; a reduction cell has two, d at the
  input resolution and the z at the reduced one. A node's input of one stride is then ONE read
  of one buffer -- a view when its channels are one consecutive run, else a gather -- instead of a
  piece per state plus a concatenation. The z of the computed nodes are consecutive, so the
  ReLU'd cell output (all that the next cells read: their preprocessing starts with a ReLU) is
  one range of a buffer.
- **Ops.** Each live op reads its live x in x order (copies of d first, then of z_1, z_2, ...), in
  one part per stride: in a reduction cell the copies of d at stride 2, those of z at stride 1.
  A part's weight columns are a consecutive range of the op's live x.
- **Preprocessing.** A cell computes ``d_a`` and ``d_b`` only where some op reads them
  (``reads_d``): an unread one is dead computation. (In training, the PyTorch path still runs it
  without autograd, for its BatchNorm's running statistics, as the masked module does; its conv
  gets no gradient, as DistributedDataParallel expects of an unused parameter.) The 1x1 convs
  that read one tensor run as one conv with their rows stacked (``stacked``): a cell's d_b and
  the next cell's d_a both read the cell's input b (the next cell's rows are handed on to it
  raw), and in the first cell d_a reads b too (both the stem). One conv reads its input once
  and is wider, which suits the vector units, and in training gives the input one gradient
  instead of two.
- **Merged nodes** (inference): the J ops of a node read as one gather per stride and run as one
  depthwise conv and one pointwise conv with each op's BatchNorm folded into its pointwise
  columns (exact only with BatchNorm's running statistics: eval mode). In training each op
  keeps its own read, depthwise conv, pointwise conv and BatchNorm (batch statistics per op):
  slicing a merged depthwise output per op costs a copy per op in either layout (measured in
  BENCHMARKS.md), more than the per-op reads it would save.

The plan is built from a graph whose mask is closed under folding (``live_closure``) and a
``keep`` mask (the vertices the module holds as weights); the masked mode, which keeps every
vertex, has a plan too: the reference path reads it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cnas_ir.ir import Cell, Edge, Graph, Kind, Op

__all__ = [
    "CellPlan",
    "MergedRead",
    "NodePlan",
    "OpPart",
    "OpPlan",
    "PaddedRead",
    "Read",
    "compact_keep",
    "nasnet_plan",
    "op_computes",
    "read_of",
]


@dataclass(frozen=True, eq=False)
class Read:
    """Channels ``index`` (int64[n]) of state buffer ``buffer``, in that order.

    ``run`` is ``(start, stop)`` when they are one consecutive run (a view, no copy), else None.
    """

    buffer: int
    index: np.ndarray
    run: tuple[int, int] | None

    @property
    def channels(self) -> int:
        return int(self.index.size)


def read_of(buffer: int, index: np.ndarray) -> Read:
    """A :class:`Read`, with ``run`` found."""
    index = np.asarray(index, np.int64)
    lo = int(index[0]) if index.size else 0
    consecutive = index.size > 0 and bool(np.all(np.diff(index) == 1))
    return Read(buffer, index, (lo, lo + int(index.size)) if consecutive else None)


@dataclass(frozen=True, eq=False)
class OpPart:
    """The x of one op at one stride: ``columns`` (start, stop) of the op's live x (its weights'
    DW rows and PW columns), copied from states ``state`` int64[n] at channels ``pos`` int64[n],
    read from the cell's buffers as ``read``."""

    stride: int
    columns: tuple[int, int]
    state: np.ndarray
    pos: np.ndarray
    read: Read


@dataclass(frozen=True, eq=False)
class OpPlan:
    """A live op: its name (``cell3.node2.op1``), 1-based ``j``, x group and parts in x order."""

    name: str
    j: int
    x: int
    parts: tuple[OpPart, ...]

    @property
    def channels(self) -> int:
        return sum(p.read.channels for p in self.parts)


@dataclass(frozen=True, eq=False)
class MergedRead:
    """A node's ops merged at one stride: one read, whose channels ``lo:hi`` are part
    ``part`` of op ``ops[op]`` (``spans``: (op position, part position, lo, hi), op after op)."""

    stride: int
    read: Read
    spans: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True, eq=False)
class PaddedRead:
    """A node's ops merged for training at one stride: op after op, each op's part padded to
    ``width`` channels by repeating its first channel (the padding's weights are zeros, so it
    adds nothing and gets no gradient). The ops' DW convs become one over ``read`` and their
    PW convs one conv of ``len(ops)`` groups, whose output one BatchNorm over all the ops'
    channels normalises with each op's own batch statistics: exact."""

    stride: int
    width: int
    read: Read


@dataclass(frozen=True, eq=False)
class NodePlan:
    """Node ``k``: ``computed`` when its z is live; ``slot`` (buffer, offset) of ``relu(z_k)``
    (None when not computed); ``read_later`` when some op of a later node reads it; its live
    ``ops`` (none: z is zero) and their ``merged`` reads (one per stride, stride 2 first).

    ``reads`` are the node's distinct op reads and ``part_reads[o][q]`` the one part q of op o
    reads: ops that copy the same channels share one read (every op of an unpruned node reads
    the same states), each still gets its own copy x in the autograd sense (its own view).
    ``padded`` merges the ops for training when each reads at one stride, the same for all.
    """

    k: int
    name: str
    computed: bool
    read_later: bool
    slot: tuple[int, int] | None
    ops: tuple[OpPlan, ...]
    merged: tuple[MergedRead, ...]
    reads: tuple[Read, ...]
    part_reads: tuple[tuple[int, ...], ...]
    padded: PaddedRead | None


@dataclass(frozen=True, eq=False)
class CellPlan:
    """A NASNet cell: ``buffers`` (channels, resolution) of its state buffers, where each state
    sits (``state_slot[s]`` = (buffer, offset), None for a state not computed), its nodes, and
    ``output`` (buffer, offset, channels): the ReLU'd cell output, the z of the computed nodes.

    ``reads_d``: whether some op reads relu(d_a), relu(d_b) (an unread one is not computed);
    ``stacked``: the preprocessing 1x1 convs of the cell's input b that run as one conv, their
    rows stacked in this order, as (cell offset, d index) pairs: ``(0, 0)`` this cell's d_a (the
    first cell, whose a is b), ``(0, 1)`` its d_b, ``(1, 0)`` the next cell's d_a, whose rows
    are handed on raw; empty when d_b runs alone.
    """

    index: int
    reduction: bool
    factorized: bool
    width: int
    res: int
    buffers: tuple[tuple[int, int], ...]
    state_slot: tuple[tuple[int, int] | None, ...]
    nodes: tuple[NodePlan, ...]
    output: tuple[int, int, int]
    reads_d: tuple[bool, bool]
    stacked: tuple[tuple[int, int], ...] = ()

    @property
    def state_sizes(self) -> list[int]:
        """Channels of each state (0 for one not computed)."""
        return [0 if s is None else self.width for s in self.state_slot]


def op_computes(g: Graph, op: Op, z: int, alive: np.ndarray | None = None) -> bool:
    """An op computes something: a live x, its y live and its node's z live."""
    a = g.alive if alive is None else alive
    return bool(a[g.group_slice(op.x)].any() and a[g.group_slice(op.y)].all() and a[g.group_slice(z)].all())


def compact_keep(g: Graph) -> np.ndarray:
    """bool[V]: the vertices a compact network holds -- the live ones, less the x of an op that
    computes nothing (possible in a graph that is not folded)."""
    keep = g.alive.copy()
    for cell in g.cells:
        for node in cell.nodes:
            for op in node.ops:
                if not op_computes(g, op, node.z):
                    keep[g.group_slice(op.x)] = False
    return keep


def nasnet_plan(g: Graph, keep: np.ndarray) -> list[CellPlan]:
    """The plan of every NASNet cell of ``g``; ``keep`` bool[V]: the x vertices that exist.

    An op is in the plan when it computes something (:func:`op_computes`) or, for the masked
    reference (``keep`` all true), always; a node is computed when its z is live (masked: always).
    """
    masked = bool(keep.all())
    vg = g.vertex_group
    plans = [_cell_plan(g, cell, keep, masked, vg) for cell in g.cells]
    nexts: list[tuple[Cell, CellPlan] | None] = [*zip(g.cells[1:], plans[1:], strict=True), None]
    return [
        replace(plan, stacked=_stacked(g, cell, plan, after))
        for cell, plan, after in zip(g.cells, plans, nexts, strict=True)
    ]


def _stacked(g: Graph, cell: Cell, plan: CellPlan, after: tuple[Cell, CellPlan] | None) -> tuple[tuple[int, int], ...]:
    """:attr:`CellPlan.stacked` of ``cell``; ``after``: the next cell and its plan, if any."""

    def source(group: int) -> int:  # the tensor a cell input is: its IDENTITY bundle's source
        (e,) = np.flatnonzero(g.bundle_dst == group)
        return int(g.bundle_src[e]) if Edge(int(g.bundle_kind[e])) == Edge.IDENTITY else group

    def pointwise(d: int) -> bool:
        (e,) = np.flatnonzero(g.bundle_dst == d)
        return Edge(int(g.bundle_kind[e])) == Edge.PREPROCESS

    b = source(cell.inputs[1])
    if not (plan.reads_d[1] and pointwise(cell.d[1]) and g.alive[g.group_slice(b)].any()):
        return ()
    out: tuple[tuple[int, int], ...] = ((0, 1),)
    if plan.reads_d[0] and pointwise(cell.d[0]) and source(cell.inputs[0]) == b:
        out = ((0, 0), *out)
    if after is not None:
        cell_after, plan_after = after
        if plan_after.reads_d[0] and pointwise(cell_after.d[0]) and source(cell_after.inputs[0]) == b:
            out = (*out, (1, 0))
    return out if len(out) > 1 else ()


def _cell_plan(g: Graph, cell: Cell, keep: np.ndarray, masked: bool, vg: np.ndarray) -> CellPlan:
    width = cell.width
    reduction = cell.kind == "reduction"
    (e,) = np.flatnonzero(g.bundle_dst == cell.d[0])
    factorized = Edge(int(g.bundle_kind[e])) == Edge.FACTORIZED_REDUCE
    computed = [masked or bool(g.alive[g.group_slice(node.z)].all()) for node in cell.nodes]
    # Buffer 0: d_a | d_b (| the z in a normal cell); buffer 1: the z of a reduction cell.
    zbuf = 1 if reduction else 0
    offsets = [2 * width, 0]
    slots: list[tuple[int, int] | None] = [(0, 0), (0, width)]
    z_start = offsets[zbuf]
    for c in computed:
        slots.append((zbuf, offsets[zbuf]) if c else None)
        if c:
            offsets[zbuf] += width
    in_res = int(g.res[cell.inputs[1]])
    buffers: tuple[tuple[int, int], ...] = ((offsets[0], in_res),)
    if reduction:
        buffers += ((offsets[1], cell.res),)
    state_of = {grp: s for s, grp in enumerate([*cell.d, *(node.z for node in cell.nodes)])}
    group_state = np.full(g.num_groups, -1, np.int64)
    for grp, s in state_of.items():
        group_state[grp] = s
    slot_buf = np.array([-1 if s is None else s[0] for s in slots], np.int64)
    slot_off = np.array([0 if s is None else s[1] for s in slots], np.int64)

    read_later = np.zeros(len(slots), dtype=bool)
    nodes: list[tuple[int, str, bool, tuple[OpPlan, ...]]] = []
    for node, comp in zip(cell.nodes, computed, strict=True):
        ops: list[OpPlan] = []
        for op in node.ops:
            if not (masked or op_computes(g, op, node.z)):
                continue
            sl = g.group_slice(op.x)
            xv = sl.start + np.flatnonzero(keep[sl])
            src = g.src[xv].astype(np.int64)
            sg = vg[src]
            state = group_state[sg]
            pos = src - g.start[sg]
            # x copies its sources in order (d_a, d_b, z_1, ...), so states never go back.
            assert np.all(np.diff(state) >= 0), "x order"
            read_later[np.unique(state)] = True
            from_d = g.kind[sg] == Kind.D
            bounds = [(2, 0, int(from_d.sum())), (1, int(from_d.sum()), xv.size)] if reduction else [(1, 0, xv.size)]
            parts = []
            for stride, lo, hi in bounds:
                if hi > lo:
                    s, p = state[lo:hi], pos[lo:hi]
                    assert (slot_buf[s] >= 0).all(), "an op reads a state that is not computed"
                    (buf,) = np.unique(slot_buf[s])
                    parts.append(OpPart(stride, (lo, hi), s, p, read_of(int(buf), slot_off[s] + p)))
            ops.append(OpPlan(f"cell{cell.index}.node{node.index}.op{op.j}", op.j, op.x, tuple(parts)))
        nodes.append((node.index, f"cell{cell.index}.node{node.index}", comp, tuple(ops)))
    node_plans = tuple(
        NodePlan(
            k,
            name,
            comp,
            bool(read_later[k + 1]) and comp,
            slots[k + 1],
            ops,
            _merge(ops) if comp else (),
            *_shared(ops),
            _padded(ops) if comp else None,
        )
        for k, name, comp, ops in nodes
    )
    return CellPlan(
        index=cell.index,
        reduction=reduction,
        factorized=factorized,
        width=width,
        res=cell.res,
        buffers=buffers,
        state_slot=tuple(slots),
        nodes=node_plans,
        output=(zbuf, z_start, offsets[zbuf] - z_start),
        reads_d=(bool(read_later[0]), bool(read_later[1])),
    )


def _shared(ops: Sequence[OpPlan]) -> tuple[tuple[Read, ...], tuple[tuple[int, ...], ...]]:
    """The distinct reads of a node's op parts, and which one each part reads."""
    found: dict[tuple[int, bytes], int] = {}
    reads: list[Read] = []
    part_reads = []
    for op in ops:
        ids = []
        for part in op.parts:
            key = (part.read.buffer, part.read.index.tobytes())
            if key not in found:
                found[key] = len(reads)
                reads.append(part.read)
            ids.append(found[key])
        part_reads.append(tuple(ids))
    return tuple(reads), tuple(part_reads)


def _padded(ops: Sequence[OpPlan]) -> PaddedRead | None:
    """The training merge of a node's ops, when every op reads at one stride, the same for all.

    Measured on the paper config at rho 0.46 (random), batch 32, channels_last: a training step
    5% faster than per-op reads, DW, PW and BN (BENCHMARKS.md). Not when the ops read the same
    channels (the unpruned network): their one shared read then costs less than a padded read
    of every op's copy (the one-shot's step 2.9 s shared, 3.3 s padded).
    """
    if not ops or any(len(op.parts) != 1 for op in ops) or len({op.parts[0].stride for op in ops}) != 1:
        return None
    if len(ops) > 1 and len({op.parts[0].read.index.tobytes() for op in ops}) == 1:
        return None  # the ops share one read (an unpruned node): reading it once is cheaper
    width = max(op.channels for op in ops)
    index = [np.concatenate([i, np.full(width - i.size, i[0])]) for i in (op.parts[0].read.index for op in ops)]
    return PaddedRead(ops[0].parts[0].stride, width, read_of(ops[0].parts[0].read.buffer, np.concatenate(index)))


def _merge(ops: Sequence[OpPlan]) -> tuple[MergedRead, ...]:
    """One read per stride for all the ops of a node, stride 2 (the copies of d) first."""
    merged = []
    for stride in sorted({p.stride for op in ops for p in op.parts}, reverse=True):
        index, spans, at = [], [], 0
        buffer = -1
        for o, op in enumerate(ops):
            for q, part in enumerate(op.parts):
                if part.stride == stride:
                    buffer = part.read.buffer
                    index.append(part.read.index)
                    spans.append((o, q, at, at + part.read.channels))
                    at += part.read.channels
        merged.append(MergedRead(stride, read_of(buffer, np.concatenate(index)), tuple(spans)))
    return tuple(merged)
