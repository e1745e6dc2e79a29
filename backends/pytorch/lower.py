"""Lower a channel graph to a PyTorch module (SPEC §5).

Two modes compute the same function (eval mode, float32 tolerance):

- ``"masked"``: the dense one-shot network -- every weight in its one-shot shape, exactly the
  names of :func:`cnas_ir.weights.weight_table` -- with 0/1 masks on the x vertices and a 0/1
  factor on every operation. This is the reference semantics.
- ``"compact"``: only live vertices exist as weights. Each operation gathers its live input
  channels from the cell's states (ReLU computed once per state, not once per consumer), runs
  its depthwise conv over them and its pointwise conv to C. Dead operations and dead nodes are
  not in the module at all; preprocessing convs and the head keep only live input columns.
  Its parameter count equals ``compute_stats(graph).model_params_live`` on a folded graph.
  A NASNet cell runs the execution plan of :mod:`cnas_ir.passes.plan` on one of three paths
  (:class:`.nasnet.NasnetCell`): in eval mode with autograd off a fused inference path
  (:class:`.fused.FusedCell`:
  one gather per node and stride, a node's ops as one depthwise + one pointwise conv with the BNs
  folded, preprocessing convs with their BN folded writing into the state buffer, cells handing
  ReLU'd outputs to the next cells); with autograd on (training, saliency) the buffered path of
  :mod:`.buffered` (states in channels_last buffers, a node's ops merged where the plan says,
  gradients moved through gradient buffers); under ``torch.compile``, or with a hook on the
  preprocessing, the per-op path, where each op's gather, BN and tap are separate modules.

This module holds :class:`CnasModule` (the network, and its weights to and from the graph's
one-shot shapes) and the lowering; the blocks are in :mod:`.layers` (gather, tap, stems, head),
:mod:`.nasnet`, :mod:`.fused` and :mod:`.densenet`.

Liveness rules shared by both modes (they make the two agree on any verified graph):

- an operation is *live* when it has a live x, its y is live and its node's z is live; a
  non-live operation contributes exactly zero (not BN of zero);
- a node with a live z but no live operation outputs zeros; a dead z is zero (masked) or not
  computed at all (compact), and so are the c/a/b channels mirroring it.

Module names follow ``weight_table`` (``cell3.node2.op1.pw.weight``), so a state dict minus
``num_batches_tracked`` is a subset of the weight table (all of it in masked mode). Index and
mask tensors are non-persistent buffers: they move with ``.to(device)`` but are not state.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnas_ir.ir import Cell, Edge, Graph, Kind, Op
from cnas_ir.passes.fold import live_closure
from cnas_ir.passes.plan import CellPlan, compact_keep, nasnet_plan, op_computes
from cnas_ir.weights import WeightInfo, live_index, weight_table

from .buffered import Pool, run_cell
from .buffered import hooked as _hooked
from .densenet import Bottleneck, DenseBlock, Transition
from .fused import FusedCell
from .layers import Head, ImagenetStem, Piece, Stem
from .nasnet import FactorizedReduce, NasnetCell, Preprocess, SepConv

__all__ = ["CnasModule", "Mode", "lower", "to_graph"]

Mode = Literal["compact", "masked"]


# ---- the module -------------------------------------------------------------------------------


def _run_fused(cell: NasnetCell, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """:meth:`.fused.FusedCell.run` of ``cell`` (called like :func:`.buffered.run_cell`)."""
    assert cell._fused is not None
    return cell._fused.run(cell, *args, **kwargs)


class CnasModule(nn.Module):
    """A lowered network: forward (N, C_in, H, W) float -> logits (N, classes).

    Parameters and buffers are named as in :func:`cnas_ir.weights.weight_table`; in compact
    mode each holds the live part of its one-shot weight (rows/columns of live vertices).
    """

    def __init__(self, graph: Graph, mode: Mode, keep: np.ndarray) -> None:
        super().__init__()
        self.mode: Mode = mode
        self.space = graph.spec.space
        # The lowered graph's structure and masks say which one-shot entries each tensor holds.
        self._graph = graph
        self._keep = keep  # bool[V]: vertices that exist as weight rows/columns

    def forward(self, x: Tensor) -> Tensor:
        if self.space == "densenet":
            s = self.stem(x)
            for cell in self._cells():
                s = cell(s)
            return self.head(s)
        # The first cell's inputs a and b: both the stem's output, or (ImageNet stem) its last two
        # layers' outputs.
        s = self.stem(x)
        a, b = s if isinstance(s, tuple) else (s, s)
        cells = self._cells()
        if not any(_hooked(c) for c in cells):
            # Each cell's output goes to the next cells' preprocessing, which starts with a ReLU,
            # so the fused and buffered paths hand on ReLU'd outputs; only the head reads raw ones.
            run: Callable[..., tuple[Tensor, Tensor | None]] | None = None
            if all(c.fusable() for c in cells):
                run = _run_fused
            elif all(c.bufferable() for c in cells):
                run = run_cell
            if run is not None:
                # A cell also runs the preprocessing convs its plan stacks with its d_b: the next
                # cell's d_a, handed on raw, and in the first cell its own d_a (a is b: the stem).
                prev = F.relu(b)
                prev_prev = prev if a is b else F.relu(a)
                d_a = None
                for i, cell in enumerate(cells, 1):
                    after = cells[i] if i < len(cells) else None
                    out, d_a = run(cell, prev_prev, prev, relu_out=after is not None, d_a=d_a, next_cell=after)
                    prev_prev, prev = prev, out
                return self.head(prev)
        prev_prev, prev = a, b
        for cell in cells:
            prev_prev, prev = prev, cell(prev_prev, prev)
        return self.head(prev)

    def _cells(self) -> list[nn.Module]:
        return [m for name, m in self.named_children() if name.startswith("cell")]

    def num_parameters(self) -> int:
        """Sum of ``p.numel()`` over parameters (BN running statistics are buffers)."""
        return sum(p.numel() for p in self.parameters())

    # ---- weights <-> graph ---------------------------------------------------------------------

    def _tensors(self) -> dict[str, Tensor]:
        return dict(self.named_parameters()) | dict(self.named_buffers())

    def _check_structure(self, graph: Graph) -> None:
        g = self._graph
        if graph is not g and (
            graph.num_vertices != g.num_vertices
            or not np.array_equal(graph.size, g.size)
            or not np.array_equal(graph.kind, g.kind)
        ):
            raise ValueError("graph does not have the structure of the graph this module was lowered from")

    def _held(self, info: WeightInfo) -> tuple[np.ndarray | None, ...]:
        """Per axis: the one-shot positions this module's tensor holds (None: all of them)."""
        return tuple(None if grp is None else _positions(self._graph, grp, self._keep) for grp in info.axes)

    def reset_parameters(self) -> None:
        """Initialise every parameter deterministically (given ``torch.manual_seed``).

        Values are drawn in one-shot shapes, in weight-table order, and then compacted, so a
        compact and a masked module lowered after the same seed compute the same function.
        Convs: Kaiming normal, fan-out (a depthwise filter's fan is its 9 taps), which does not
        depend on how many input columns survived. Linear: U(+-1/sqrt(fan_in)) of the one-shot
        width, bias 0. BatchNorm: weight 1, bias 0, running mean 0 and var 1.
        """
        tensors = self._tensors()
        with torch.no_grad():
            for name, info in weight_table(self._graph).items():
                if info.buffer:
                    if name in tensors:
                        tensors[name].fill_(0.0 if name.endswith("running_mean") else 1.0)
                    continue
                full = _init_value(name, info.shape)
                if name in tensors:
                    tensors[name].copy_(_take(full, self._held(info)))

    def load_graph_weights(self, graph: Graph) -> None:
        """Copy ``graph.weights`` (one-shot shapes) into the module; absent names keep their values.

        ``graph`` must have the structure of the lowered graph; the module's own masks decide
        which entries it takes, so weights written by a masked module load into a compact one.
        """
        self._check_structure(graph)
        if not graph.weights:
            return
        tensors = self._tensors()
        table = weight_table(self._graph)
        with torch.no_grad():
            for name, array in graph.weights.items():
                info = table.get(name)
                if info is None:
                    raise ValueError(f"graph weight {name!r} is not in the weight table")
                if tuple(array.shape) != info.shape:
                    raise ValueError(f"graph weight {name!r} has shape {array.shape}, expected {info.shape}")
                t = tensors.get(name)
                if t is not None:
                    t.copy_(torch.from_numpy(np.array(_take(array, self._held(info)))))

    def graph_weights(self, graph: Graph) -> dict[str, np.ndarray]:
        """Every weight-table name -> float32 array in its one-shot shape.

        Entries of live vertices come from the module; the others (dead vertices, ops not in a
        compact module) come from ``graph.weights`` when present, else zeros.
        """
        self._check_structure(graph)
        g = self._graph
        tensors = self._tensors()
        out: dict[str, np.ndarray] = {}
        for name, info in weight_table(g).items():
            old = graph.weights.get(name)
            arr = np.zeros(info.shape, np.float32) if old is None else np.array(old, dtype=np.float32)
            t = tensors.get(name)
            if t is not None:
                value = t.detach().to("cpu", torch.float32).numpy()
                live = tuple(None if grp is None else live_index(g, grp) for grp in info.axes)
                # Where the live entries sit in the module's tensor: all of it in compact mode.
                held = tuple(None if grp is None else _positions_within(g, grp, self._keep) for grp in info.axes)
                arr[_ix(live, info.shape)] = value[_ix(held, value.shape)]
            out[name] = arr
        return out


def _positions(g: Graph, group: int, keep: np.ndarray) -> np.ndarray | None:
    """Positions (within ``group``) of the kept vertices; None when all are kept."""
    k = keep[g.group_slice(group)]
    return None if k.all() else np.flatnonzero(k)


def _positions_within(g: Graph, group: int, keep: np.ndarray) -> np.ndarray | None:
    """Positions of the group's live vertices among its kept ones (None: all kept are live)."""
    sl = g.group_slice(group)
    k, a = keep[sl], g.alive[sl]
    if np.array_equal(k, a):
        return None
    return np.flatnonzero(a[k])


def _ix(idx: tuple[np.ndarray | None, ...], shape: tuple[int, ...]) -> tuple[object, ...]:
    if all(i is None for i in idx):
        return (slice(None),) * len(shape)
    return np.ix_(*[np.arange(n) if i is None else i for i, n in zip(idx, shape, strict=True)])


def _take(array: np.ndarray | Tensor, idx: tuple[np.ndarray | None, ...]) -> np.ndarray | Tensor:
    """``array`` restricted to positions ``idx`` along each axis (None keeps an axis whole)."""
    out = array
    for axis, i in enumerate(idx):
        if i is not None:
            out = out[(slice(None),) * axis + (torch.as_tensor(i) if isinstance(out, Tensor) else i,)]
    return out


def _init_value(name: str, shape: tuple[int, ...]) -> Tensor:
    if len(shape) == 1:  # BN weight, BN bias or linear bias
        is_bn_weight = name.endswith(".weight")
        return torch.ones(shape) if is_bn_weight else torch.zeros(shape)
    if len(shape) == 2:  # linear (out, in)
        bound = 1.0 / math.sqrt(shape[1]) if shape[1] else 0.0
        return torch.empty(shape).uniform_(-bound, bound)
    fan = shape[2] * shape[3] if name.endswith("dw.weight") else shape[0] * shape[2] * shape[3]
    return torch.randn(shape) * math.sqrt(2.0 / fan)


# ---- lowering ---------------------------------------------------------------------------------


def _state_map(g: Graph, cell: Cell) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """Group id -> (state, channel offset) for the states a dense block's ops read; and the
    state sizes. State 0 is d; state k is z_k."""
    smap: dict[int, tuple[int, int]] = {}
    offset = 0
    for d in cell.d:
        smap[d] = (0, offset)
        offset += int(g.size[d])
    sizes = [offset]
    for k, node in enumerate(cell.nodes, 1):
        smap[node.z] = (k, 0)
        sizes.append(int(g.size[node.z]))
    return smap, sizes


def _op_pieces(g: Graph, op: Op, keep: np.ndarray, smap: dict[int, tuple[int, int]]) -> list[Piece]:
    """The kept x of a dense block's ``op`` as (state, positions) pieces, in x order."""
    sl = g.group_slice(op.x)
    xv = sl.start + np.flatnonzero(keep[sl])
    src = g.src[xv].astype(np.int64)
    sg = g.vertex_group[src]
    state = np.empty(src.size, np.int64)
    pos = np.empty(src.size, np.int64)
    for grp in np.unique(sg):
        sel = sg == grp
        s, off = smap[int(grp)]
        state[sel] = s
        pos[sel] = src[sel] - int(g.start[grp]) + off
    # x copies its sources in order (d, z_1, ...), so states never go back.
    assert np.all(np.diff(state) >= 0) and np.all(np.diff(pos)[np.diff(state) == 0] > 0), "x order"
    return [(int(s), pos[state == s]) for s in np.unique(state)]


def _nasnet_cell(g: Graph, cell: Cell, plan: CellPlan, keep: np.ndarray, masked: bool, dropout: float) -> NasnetCell:
    a_grp, b_grp = cell.inputs
    width = cell.width
    n_a = int(keep[g.group_slice(a_grp)].sum())
    n_b = int(keep[g.group_slice(b_grp)].sum())
    d_a: nn.Module = FactorizedReduce(n_a, width) if plan.factorized else Preprocess(n_a, width)
    d_b = Preprocess(n_b, width)
    # The per-op path's states: relu(d_a | d_b), then relu(z_k) (its channels, computed or not).
    sizes = [2 * width] + [width] * len(cell.nodes)
    ops: dict[int, dict[str, SepConv]] = {}
    for node, node_plan in zip(cell.nodes, plan.nodes, strict=True):
        by_j = {op.j: op for op in node.ops}
        ops[node.index] = {
            f"op{op.j}": SepConv(
                op,
                sizes,
                width,
                dropout,
                g.alive[g.group_slice(op.x)] if masked else None,
                op_computes(g, by_j[op.j], node.z),
            )
            for op in node_plan.ops
        }
    return NasnetCell(plan, d_a, d_b, ops, masked, fused=None if masked else FusedCell(plan))


def _dense_block(g: Graph, cell: Cell, keep: np.ndarray, masked: bool, dropout: float) -> DenseBlock:
    p = g.spec.densenet
    assert p is not None
    (b_grp,) = cell.inputs
    (d_grp,) = cell.d
    transition = None
    if _edge_into(g, d_grp) == Edge.TRANSITION:
        n_b = int(keep[g.group_slice(b_grp)].sum())
        mask = g.alive[g.group_slice(b_grp)] if masked else None
        transition = Transition(n_b, int(g.size[d_grp]), mask)
    smap, sizes = _state_map(g, cell)
    nodes: list[tuple[bool, Bottleneck | None]] = []
    for node in cell.nodes:
        computed = masked or bool(g.alive[g.group_slice(node.z)].all())
        (op,) = node.ops
        live = op_computes(g, op, node.z)
        bottleneck = None
        if masked or live:
            pieces = _op_pieces(g, op, keep, smap)
            mask = g.alive[g.group_slice(op.x)] if masked else None
            bottleneck = Bottleneck(pieces, sizes, p.growth_rate, int(g.size[op.y]), dropout, mask, live)
        nodes.append((computed, bottleneck))
    return DenseBlock(transition, nodes, p.growth_rate)


def _edge_into(g: Graph, group: int) -> Edge:
    (e,) = np.flatnonzero(g.bundle_dst == group)
    return Edge(int(g.bundle_kind[e]))


def _keep_mask(g: Graph, mode: Mode) -> np.ndarray:
    """bool[V]: vertices that exist as weight rows/columns in the module."""
    return np.ones(g.num_vertices, dtype=bool) if mode == "masked" else compact_keep(g)


def lower(graph: Graph, mode: Mode = "compact", *, weights: bool = True) -> CnasModule:
    """Build the PyTorch module of ``graph`` (SPEC §5).

    ``mode="compact"`` keeps only live vertices; ``mode="masked"`` builds the dense one-shot
    network with 0/1 masks (the reference). Parameters are initialised (deterministically given
    ``torch.manual_seed``), then ``graph.weights`` are loaded when ``weights`` is true; pass
    ``weights=False`` to re-initialise a pruned network (CNAS-R). The module starts in train mode
    as usual; its forward maps (N, C_in, H, W) float32 to logits (N, classes).
    """
    if mode not in ("compact", "masked"):
        raise ValueError(f"mode must be 'compact' or 'masked', got {mode!r}")
    graph.verify()
    # Lower the IR's semantics of a pruned graph: the fold closure of its mask (an op without
    # live input is absent, a node without ops is zero, and what copies it goes too), so a
    # graph and its folded graph lower to the same function.
    graph = graph.replace(alive=live_closure(graph))
    keep = _keep_mask(graph, mode)
    # Layer constructors draw their default init from the global RNG, a number of draws that
    # depends on the mode; fork it so reset_parameters draws the same values in both modes.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # A conv or linear whose inputs were all pruned has zero elements; PyTorch warns on its
        # default init, which reset_parameters overrides anyway.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        module = _build(graph, mode, keep)
    module.reset_parameters()
    if weights:
        module.load_graph_weights(graph)
    return module


def _build(graph: Graph, mode: Mode, keep: np.ndarray) -> CnasModule:
    masked = mode == "masked"
    module = CnasModule(graph, mode, keep)
    spec = graph.spec
    stem_grp, head_grp = graph.stem_group, graph.head_group
    in_ch, stem_ch = int(graph.size[graph.input_group]), int(graph.size[stem_grp])
    last_c = graph.cells[-1].c
    n_last = int(keep[graph.group_slice(last_c)].sum())
    classes = int(graph.size[head_grp])
    if spec.space == "nasnet":
        assert spec.nasnet is not None
        if spec.nasnet.stem == "imagenet":
            module.stem = ImagenetStem([in_ch] + [int(graph.size[t]) for t in np.flatnonzero(graph.kind == Kind.STEM)])
        else:
            module.stem = Stem(in_ch, stem_ch, bn=True)
        plans = nasnet_plan(graph, keep)
        pool = Pool()
        for cell, plan in zip(graph.cells, plans, strict=True):
            cell_module = _nasnet_cell(graph, cell, plan, keep, masked, spec.nasnet.spatial_dropout)
            cell_module.pool = pool  # cells of one shape share buffers
            module.add_module(f"cell{cell.index}", cell_module)
        module.head = Head(n_last, classes, bn=False, mask=None)
    else:
        assert spec.densenet is not None
        module.stem = Stem(in_ch, stem_ch, bn=False)
        for cell in graph.cells:
            module.add_module(
                f"cell{cell.index}", _dense_block(graph, cell, keep, masked, spec.densenet.spatial_dropout)
            )
        head_mask = graph.alive[graph.group_slice(last_c)] if masked else None
        module.head = Head(n_last, classes, bn=True, mask=head_mask)
    return module


def to_graph(graph: Graph, module: CnasModule) -> Graph:
    """``graph`` with its weights replaced by the module's (:meth:`CnasModule.graph_weights`)."""
    return graph.replace(weights=module.graph_weights(graph))
