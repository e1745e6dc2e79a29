"""Emit the ONNX graph of a folded channel graph directly from the IR and its weights.

The emitted network is the *compact* eval-mode network (SPEC §5): only live channels exist.
It is built straight from ``graph.weights`` with :class:`~cnas_ir.backends.onnx.builder.OnnxBuilder`,
applying the inference rewrites of :mod:`cnas_ir.backends.onnx.fusion` on the way:

NASNet
  - stem: Conv3x3 with its BN (affine) folded in (weight scaled, bias added); the ImageNet stem
    three stride-2 ones, a ReLU before the second and third;
  - d_a, d_b: Conv1x1 (factorized reduce: two stride-2 Conv1x1, the second over the input
    shifted by one pixel, i.e. a Slice and an end pad of 1) with the BN (affine=False) folded;
  - ReLU once per state: ``relu(d_a)``, ``relu(d_b)`` and ``relu(z_k)`` are computed once,
    every op gathers from them, and a cell output is the concat of its ``relu(z_k)`` (every
    reader but the head starts with a ReLU), so no cell output is ReLU'd again;
  - a node is ONE depthwise Conv3x3 over the concatenation of its live ops' inputs (two in a
    reduction cell: x copied from d at stride 2, from z at stride 1) and ONE pointwise Conv1x1
    whose columns are the ops' PW columns with each op's BN folded, bias = sum of BN shifts;
  - at most one Gather/Slice/Concat per (node, resolution) to assemble those inputs
    (:func:`~cnas_ir.backends.onnx.builder.plan_gather`), plus the Concat of the states it
    reads when a Gather needs several -- except that a node reading the states an earlier
    node's Gather concatenated plus one more takes its channels in two pieces, a Gather from
    that Concat and one from the new state, then a Concat of the two, so that only every other
    node copies all the states it reads (that copy is the largest data movement of a pruned
    network in onnxruntime, which has no gather over several tensors);
  - optionally (``channel_multiple``) the depthwise input padded with filler channels whose
    weights are zeros made by Pad nodes, for onnxruntime's blocked CPU kernels;
  - head: GlobalAveragePool + Flatten + Gemm.

DenseNet-BC
  - BN1 of a bottleneck and the BN of transitions and head come *before* a ReLU, so they cannot
    fold into the following conv; they are one per-channel Mul + Add (the same number of
    values as gamma/beta). Folding them into the producing conv is not exact either: each x is
    its op's own copy of a state channel that other ops and the concat read unnormalised.
  - BN2 directly follows conv1 and is folded into it (weight scaled, bias added);
  - a transition's AvgPool2 runs before its Conv1x1 (both linear, so they commute exactly; the
    conv then does a quarter of the multiply-adds);
  - the block's states are kept as one running Concat ``[d, z_1, ...]``, which is also the block
    output c, so a bottleneck reads its live x with one Slice/Gather from it.

Vertices with no live input (a preprocessing conv or head whose inputs were all pruned) give
their bias broadcast over the batch (Expand), which is what the conv of zero channels computes.
Finally dead-code elimination drops what no output needs: the IR never prunes preprocessing,
but a d_a/d_b that no live x reads is dead computation (and so, possibly, the cell whose
output only it read). Initializers then hold exactly the parameters the network uses. Last,
the 1x1 convs of one tensor that the plan stacks (a cell's d_b and the next cell's d_a; d_a
and d_b on the stem) become one conv and a Split, where onnxruntime's blocked layout allows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from cnas_ir.backends.onnx.builder import (
    GatherPlan,
    OnnxBuilder,
    concat_index,
    eliminate_dead_code,
    plan_gather,
    stack_convs,
    value_info,
)
from cnas_ir.backends.onnx.fusion import bn_scale_shift, fold_bn_into_conv, merge_node_ops
from cnas_ir.ir import Cell, Edge, Graph, Kind, Op
from cnas_ir.passes.plan import NodePlan, compact_keep, nasnet_plan, op_computes
from cnas_ir.weights import compact, weight_table

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "EmitStats", "emit_model"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class EmitStats:
    """What the inference rewrites did, counted on the final graph (after dead-code elimination).

    ``bn_folded``: BNs folded into the conv before them; ``bn_affine``: BNs emitted as Mul+Add;
    ``nodes_merged`` / ``ops_merged``: live nodes emitted as one DW+PW pair and the live ops
    they hold; ``gathers``: how merged nodes (NASNet) or bottlenecks (DenseNet) assemble their
    input channels, by :class:`~cnas_ir.backends.onnx.builder.GatherPlan` kind, or
    ``"two-piece"`` (from an earlier node's Concat of the states and the newest state);
    ``dead_nodes``: nodes and initializers dead-code elimination removed (preprocessing whose
    output no live x reads, and what only it needed); ``convs_stacked``: preprocessing convs
    merged into another that reads the same tensor (:func:`~cnas_ir.backends.onnx.builder.stack_convs`).
    """

    bn_folded: int = 0
    bn_affine: int = 0
    nodes_merged: int = 0
    ops_merged: int = 0
    gathers: Counter[str] = field(default_factory=Counter)
    dead_nodes: int = 0
    convs_stacked: int = 0


@dataclass(frozen=True)
class _T:
    """A tensor of the emitted graph: (N, channels, res, res); ``name`` None when no channels."""

    name: str | None
    channels: int
    res: int


def _out_res(res: int, stride: int) -> int:
    # Conv3x3 pad 1 and Conv1x1 (stride 2: with an end pad of 1 or on the unshifted input) both
    # give ceil(res / stride).
    return (res + stride - 1) // stride


class _Emitter:
    def __init__(self, g: Graph, channel_multiple: int) -> None:
        self.g = g
        self.channel_multiple = channel_multiple
        # The execution plan decides each node's ops and reads (cnas_ir.passes.plan).
        self.plans = nasnet_plan(g, compact_keep(g)) if g.spec.space == "nasnet" else []
        self.b = OnnxBuilder()
        self.table = weight_table(g)
        # (ONNX node name, EmitStats field, amount): counted only if that node survives.
        self.notes: list[tuple[str, str, int]] = []
        self._relu: dict[str, str] = {}
        self._batch_shape: dict[tuple[int, ...], str] = {}
        # Concats of states made to assemble a node's input: the tensors (in order) -> the Concat.
        self._concats: dict[tuple[str, ...], str] = {}

    # ---- helpers ----------------------------------------------------------------------------

    def w(self, name: str) -> np.ndarray:
        """The live part of weight ``name`` (compacted along every vertex axis), float64."""
        return np.asarray(compact(self.g, self.table[name], self.g.weights[name]), np.float64)

    def bn(self, prefix: str, affine: bool) -> tuple[np.ndarray, np.ndarray]:
        """Live (scale, shift) of the BN at ``prefix`` (float64[n])."""
        gamma = self.w(f"{prefix}.weight") if affine else None
        beta = self.w(f"{prefix}.bias") if affine else None
        return bn_scale_shift(self.w(f"{prefix}.running_mean"), self.w(f"{prefix}.running_var"), gamma, beta)

    def relu(self, x: _T) -> _T:
        """ReLU of ``x``, emitted once per tensor whoever asks."""
        if x.name is None:
            return x
        if x.name not in self._relu:
            self._relu[x.name] = self.b.node("Relu", [x.name], f"{x.name}.relu")
        return _T(self._relu[x.name], x.channels, x.res)

    def conv(
        self,
        x: _T,
        weight: np.ndarray | tuple[str, int, int],
        bias: np.ndarray | None,
        name: str,
        *,
        stride: int = 1,
        pads: tuple[int, int, int, int] | None = None,
        group: int = 1,
    ) -> _T:
        """Conv with an (O, I/group, k, k) weight; pads default to 'same' for odd k.

        ``weight`` is an array (it becomes the initializer ``{name}.weight``) or, for a weight
        computed in the graph, ``(tensor name, O, k)``.
        """
        if isinstance(weight, tuple):
            w_name, out_channels, k = weight
        else:
            w_name, out_channels, k = "", int(weight.shape[0]), int(weight.shape[-1])
        if pads is None:
            pads = (k // 2,) * 4
        out_res = (x.res + pads[0] + pads[2] - k) // stride + 1
        if x.name is None:  # every input channel was pruned: the conv of nothing is its bias
            assert bias is not None, f"{name}: a conv without bias has no input"
            return self.broadcast(bias, out_res, name)
        if not w_name:
            assert isinstance(weight, np.ndarray)
            w_name = self.b.weight(f"{name}.weight", weight)
        inputs = [x.name, w_name]
        if bias is not None:
            inputs.append(self.b.weight(f"{name}.bias", bias))
        attrs: dict[str, object] = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": list(pads)}
        if group != 1:
            attrs["group"] = group
        return _T(self.b.node("Conv", inputs, name, **attrs), out_channels, out_res)

    def zero_padded(self, name: str, array: np.ndarray, pad: int, axis: int) -> str:
        """Initializer ``name`` holding ``array``, then ``pad`` zero slices appended along ``axis``
        by a Pad node: the file stores only the real weights; runtimes fold the Pad at load."""
        init = self.b.weight(name, array)
        if pad == 0:
            return init
        pads = [0] * (2 * array.ndim)
        pads[array.ndim + axis] = pad
        return self.b.node("Pad", [init, self.b.ints(pads, "pads")], f"{name}.padded")

    def batch_shape(self, tail: tuple[int, ...]) -> str:
        """An int64 shape tensor ``[N, *tail]`` with N the input's (dynamic) batch size."""
        if tail not in self._batch_shape:
            n = self.b.node("Shape", [INPUT_NAME], "batch_size", start=0, end=1)
            self._batch_shape[tail] = self.b.node("Concat", [n, self.b.ints(tail, "shape")], "batch_shape", axis=0)
        return self._batch_shape[tail]

    def broadcast(self, value: np.ndarray, res: int, name: str) -> _T:
        """(N, C, res, res) holding ``value`` (C,) at every pixel."""
        c = int(value.shape[0])
        const = self.b.weight(f"{name}.bias", np.asarray(value).reshape(1, c, 1, 1))
        return _T(self.b.node("Expand", [const, self.batch_shape((1, res, res))], name), c, res)

    def concat(self, xs: list[_T], name: str, res: int) -> _T:
        """Channel concat of ``xs`` (all at resolution ``res``), skipping empty ones."""
        live = [x for x in xs if x.name is not None]
        if not live:
            return _T(None, 0, res)
        if len(live) == 1:
            return live[0]
        return _T(
            self.b.node("Concat", [x.name for x in live if x.name], name, axis=1), sum(x.channels for x in live), res
        )

    def note(self, x: _T, **counts: int) -> _T:
        """Add ``counts`` (EmitStats field -> amount) to the stats if the node making ``x`` survives."""
        if x.name is not None:
            self.notes.extend((x.name, what, amount) for what, amount in counts.items())
        return x

    def earlier_concat(self, states: list[_T], state: np.ndarray) -> str | None:
        """The Concat made for an earlier node of every state an input of channels
        ``states[state[i]]`` reads but the newest, if there is one: the input can then come in
        two pieces (:meth:`gather` with ``old``), once its channels are ordered with the
        newest state's last, instead of concatenating all the states again."""
        read = np.unique(state)
        return None if read.size < 2 else self._concats.get(tuple(str(states[s].name) for s in read[:-1]))

    def gather(
        self, states: list[_T], state: np.ndarray, pos: np.ndarray, name: str, pad: int = 0, old: str | None = None
    ) -> tuple[_T, str]:
        """Channels (state[i], pos[i]) of ``states`` as one tensor, in that order, followed by
        ``pad`` filler channels (copies of the last one, or zeros); and the plan kind, or
        ``"two-piece"`` when ``old`` is the :meth:`earlier_concat` of an input so ordered."""
        if old is not None:
            return self._two_pieces(states, state, pos, old, name, pad), "two-piece"
        plan = plan_gather(state, pos, [s.channels for s in states])
        if pad and plan.kind == "gather":
            assert plan.index is not None
            index = np.concatenate([plan.index, np.full(pad, plan.index[-1])])
            plan = GatherPlan("gather", plan.states, index=index)
            return self._gather(plan, states, index.size, name), plan.kind
        x = self._gather(plan, states, state.size, name)
        if pad:
            assert x.name is not None
            pads = self.b.ints([0, 0, 0, 0, 0, pad, 0, 0], "pads")
            x = _T(self.b.node("Pad", [x.name, pads], f"{name}.padded"), x.channels + pad, x.res)
        return x, plan.kind

    def _two_pieces(self, states: list[_T], state: np.ndarray, pos: np.ndarray, src: str, name: str, pad: int) -> _T:
        """Concat(Gather(src, ...), the newest state's channels): ``src`` concatenates the
        states read before the newest in ascending order; ``pad`` copies of the last channel
        end the second piece."""
        newest = state == state.max()
        assert not newest[: int((~newest).sum())].any(), f"{name}: the newest state's channels must come last"
        _, old_index = concat_index(state[~newest], pos[~newest], [s.channels for s in states])
        index = self.b.ints(old_index, f"{name}.index")
        first = self.b.node("Gather", [src, index], f"{name}.old", axis=1)
        new_pos = np.concatenate([pos[newest], np.full(pad, pos[newest][-1])])
        s = int(state[newest][0])
        plan = plan_gather(np.zeros(new_pos.size, np.int64), new_pos, [states[s].channels])
        second = self._gather(plan, [states[s]], new_pos.size, f"{name}.new")
        n = state.size + pad
        return _T(self.b.node("Concat", [first, str(second.name)], name, axis=1), n, states[s].res)

    def concat_states(self, names: list[str], name: str) -> str:
        """Concat of the state tensors ``names`` in that order, made once: another node reading
        the same states (every node's stride-2 part in a reduction cell) reuses it."""
        key = tuple(names)
        if key not in self._concats:
            self._concats[key] = self.b.node("Concat", names, name, axis=1)
        return self._concats[key]

    def _gather(self, plan: GatherPlan, states: list[_T], n: int, name: str) -> _T:
        """The nodes of ``plan``, giving ``n`` channels."""
        names = [str(states[s].name) for s in plan.states]
        assert all(states[s].name for s in plan.states), f"{name} reads a state that was not computed"
        res = states[plan.states[0]].res
        if plan.kind == "identity":
            return states[plan.states[0]]
        if plan.kind == "concat":
            return _T(self.concat_states(names, name), n, res)
        if plan.kind == "slice":
            ints = self.b.ints
            out = self.b.node("Slice", [names[0], ints([plan.start]), ints([plan.stop]), ints([1])], name)
            return _T(out, n, res)
        src = names[0] if len(names) == 1 else self.concat_states(names, f"{name}.src")
        assert plan.index is not None
        index = self.b.ints(plan.index, f"{name}.index")
        return _T(self.b.node("Gather", [src, index], name, axis=1), n, res)

    def affine(self, x: _T, scale: np.ndarray, shift: np.ndarray, name: str) -> _T:
        """``x * scale + shift`` per channel (a BN that cannot be folded), as Mul + Add."""
        assert x.name is not None
        s = self.b.weight(f"{name}.scale", scale.reshape(-1, 1, 1))
        t = self.b.weight(f"{name}.shift", shift.reshape(-1, 1, 1))
        m = self.b.node("Mul", [x.name, s], f"{name}.mul")
        return self.note(_T(self.b.node("Add", [m, t], f"{name}.add"), x.channels, x.res), bn_affine=1)

    def folded_conv(self, x: _T, weight: np.ndarray, bn: tuple[np.ndarray, np.ndarray], name: str, **kw: Any) -> _T:
        """``BN(conv(x))`` emitted as one conv with the BN folded in."""
        return self.note(self.conv(x, *fold_bn_into_conv(weight, *bn), name, **kw), bn_folded=1)

    def head_linear(self, c: _T) -> str:
        """GlobalAveragePool + Flatten + Gemm: (N, n, r, r) -> (N, classes) logits."""
        w, bias = self.w("head.linear.weight"), self.w("head.linear.bias")
        if c.name is None:
            const = self.b.weight("head.linear.bias", bias.reshape(1, -1))
            return self.b.node("Expand", [const, self.batch_shape((1,))], OUTPUT_NAME)
        pooled = self.b.node("GlobalAveragePool", [c.name], "head.pool")
        flat = self.b.node("Flatten", [pooled], "head.flatten", axis=1)
        ws = [self.b.weight("head.linear.weight", w), self.b.weight("head.linear.bias", bias)]
        return self.b.node("Gemm", [flat, *ws], OUTPUT_NAME, transB=1)

    def _edge_into(self, group: int) -> Edge:
        (e,) = np.flatnonzero(self.g.bundle_dst == group)
        return Edge(int(self.g.bundle_kind[e]))

    def _live_x(self, op: Op) -> np.ndarray:
        sl = self.g.group_slice(op.x)
        return sl.start + np.flatnonzero(self.g.alive[sl])

    # ---- NASNet -----------------------------------------------------------------------------

    def stacked_convs(self) -> list[list[str]]:
        """The names of the preprocessing convs the plan runs as one, group by group
        (:attr:`~cnas_ir.passes.plan.CellPlan.stacked`)."""
        cells = self.g.cells
        return [
            [f"{self.g.group_name(cells[i + offset].d[which])}.conv" for offset, which in plan.stacked]
            for i, plan in enumerate(self.plans)
            if plan.stacked
        ]

    def nasnet(self, x: _T) -> str:
        layers = np.flatnonzero(self.g.kind == Kind.STEM)
        if len(layers) == 1:
            stem = self.folded_conv(x, self.w("stem.conv.weight"), self.bn("stem.bn", affine=True), "stem.conv")
            prev_prev = prev = stem
        else:  # ImageNet stem: stride-2 convs, a ReLU before all but the first; the cells read the last two
            outs: list[_T] = []
            for i in range(1, len(layers) + 1):
                h = x if i == 1 else self.relu(outs[-1])
                w, bn = self.w(f"stem.conv{i}.weight"), self.bn(f"stem.bn{i}", affine=True)
                outs.append(self.folded_conv(h, w, bn, f"stem.conv{i}", stride=2))
            prev_prev, prev = outs[-2], outs[-1]
        cells = self.g.cells
        for i, cell in enumerate(cells, 1):
            prev_prev, prev = prev, self.nasnet_cell(cell, prev_prev, prev, relu_out=i < len(cells))
        return self.head_linear(prev)

    def preprocess(self, a: _T, d: int) -> _T:
        """d = BN(Conv1x1(ReLU(a))) with BN folded; factorized reduce when a is twice as big."""
        p = self.g.group_name(d)
        bn = self.bn(f"{p}.bn", affine=False)
        if self._edge_into(d) == Edge.PREPROCESS:
            return self.folded_conv(self.relu(a), self.w(f"{p}.conv.weight"), bn, f"{p}.conv")
        # Factorized reduce: conv1 on the even pixels, conv2 on the odd ones; the BN splits
        # into the two convs' output channels.
        w1, w2 = self.w(f"{p}.conv1.weight"), self.w(f"{p}.conv2.weight")
        half = int(w1.shape[0])
        scale, shift = bn
        w1f, b1 = fold_bn_into_conv(w1, scale[:half], shift[:half])
        w2f, b2 = fold_bn_into_conv(w2, scale[half:], shift[half:])
        h = self.relu(a)
        if h.name is None:
            return self.note(self.broadcast(np.concatenate([b1, b2]), _out_res(a.res, 2), f"{p}.conv"), bn_folded=1)
        o1 = self.conv(h, w1f, b1, f"{p}.conv1", stride=2)
        # PyTorch: pad (0,1,0,1) then drop the first row/column; here: drop them, pad at the end.
        ints = self.b.ints
        shifted = self.b.node("Slice", [h.name, ints([1, 1]), ints([a.res, a.res]), ints([2, 3])], f"{p}.shift")
        o2 = self.conv(_T(shifted, h.channels, a.res - 1), w2f, b2, f"{p}.conv2", stride=2, pads=(0, 0, 1, 1))
        return self.note(self.concat([o1, o2], f"{p}.concat", o1.res), bn_folded=1)

    def nasnet_cell(self, cell: Cell, a: _T, b: _T, relu_out: bool) -> _T:
        """The cell output; ReLU'd if ``relu_out``. Every reader of a cell output but the head
        (the next cells' preprocessing) starts with a ReLU, and relu(concat(z)) is the concat
        of the relu(z) the cell makes anyway: so no ReLU pass over the output, and each z is
        read by its Relu alone, which onnxruntime fuses into the conv that makes it."""
        plan = self.plans[cell.index - 1]
        d_a, d_b = (self.preprocess(x, d) for x, d in zip((a, b), cell.d, strict=True))
        # The plan's states, ReLU'd once each: d_a, d_b, z_1, ..., z_K (separate tensors here:
        # ONNX has no writes into a buffer; a node's read becomes a Gather over their Concat).
        states: list[_T] = [self.relu(d_a), self.relu(d_b)] + [_T(None, 0, 1)] * len(cell.nodes)
        zs: list[_T] = []
        for node in plan.nodes:
            if not node.computed:
                continue
            z = self.nasnet_node(cell, node, states, plan.reduction)
            zs.append(self.relu(z) if relu_out else z)
            if node.read_later:
                states[node.k + 1] = self.relu(z)
        c = self.concat(zs, f"cell{cell.index}.c", cell.res)
        if relu_out and c.name is not None:
            self._relu[c.name] = c.name  # already ReLU'd
        return c

    def nasnet_node(self, cell: Cell, node: NodePlan, states: list[_T], reduction: bool) -> _T:
        """z = sum over the plan's ops of BN(PW(DW(x))) as (one or two) DW convs and one PW conv."""
        p = node.name
        assert node.ops, f"{p}: a live node without a live op (the graph is not folded)"
        folded = [
            fold_bn_into_conv(self.w(f"{op.name}.pw.weight"), *self.bn(f"{op.name}.bn", affine=False))
            for op in node.ops
        ]
        dws = [self.w(f"{op.name}.dw.weight") for op in node.ops]
        # The plan's merged reads, one per stride (stride 2, the copies of d in a reduction
        # cell, first), op after op within each: a segment per op part.
        segments: list[tuple[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]] = []
        for m in node.merged:
            segs = []
            for o, q, _, _ in m.spans:
                part = node.ops[o].parts[q]
                lo, hi = part.columns
                pw, bias = folded[o]
                # The op's bias enters the sum once, with its first part.
                segs.append((part.state, part.pos, dws[o][lo:hi], pw[:, lo:hi], bias if q == 0 else 0 * bias))
            segments.append((m.stride, segs))
        flat = [seg for _, segs in segments for seg in segs]
        merged = merge_node_ops([s[2] for s in flat], [s[3] for s in flat], [s[4] for s in flat])
        dw_rows, pw_cols = merged.dw.copy(), merged.pw.copy()  # reordered below, part by part
        outs, pw_parts, pw_pads = [], [], []
        row = 0
        for stride, segs in segments:
            state = np.concatenate([s[0] for s in segs])
            pos = np.concatenate([s[1] for s in segs])
            n = int(state.size)
            old = self.earlier_concat(states, state)
            if old is not None:  # newest state last; a depthwise channel and its PW column move together
                order = np.argsort(state == state.max(), kind="stable")
                state, pos = state[order], pos[order]
                dw_rows[row : row + n] = dw_rows[row : row + n][order]
                pw_cols[:, row : row + n] = pw_cols[:, row : row + n][:, order]
            # Zero channels up to a multiple of channel_multiple: see emit_model.
            pad = -n % self.channel_multiple
            suffix = "" if not reduction else ("_d" if stride == 2 else "_z")
            x, kind = self.gather(states, state, pos, f"{p}.gather{suffix}", pad=pad, old=old)
            dw_w = self.zero_padded(f"{p}.dw{suffix}.weight", dw_rows[row : row + n], pad, axis=0)
            dw = self.conv(x, (dw_w, n + pad, 3), None, f"{p}.dw{suffix}", stride=stride, group=n + pad)
            outs.append(self.note(dw, **{f"gathers.{kind}": 1}))
            pw_parts.append(pw_cols[:, row : row + n])
            pw_pads.append(pad)
            row += n
        h = self.concat(outs, f"{p}.dw.concat", cell.res)
        # Every op's BN is folded into its PW columns and the J biases are summed into one.
        if not any(pw_pads):
            pw: np.ndarray | tuple[str, int, int] = pw_cols
        else:
            names = [
                self.zero_padded(f"{p}.pw{'' if len(pw_parts) == 1 else ('_d', '_z')[i]}.weight", w, pad, axis=1)
                for i, (w, pad) in enumerate(zip(pw_parts, pw_pads, strict=True))
            ]
            w_name = names[0] if len(names) == 1 else self.b.node("Concat", names, f"{p}.pw.weight", axis=1)
            pw = (w_name, int(merged.pw.shape[0]), 1)
        z = self.conv(h, pw, merged.bias, f"{p}.pw")
        return self.note(z, nodes_merged=1, ops_merged=len(node.ops), bn_folded=len(node.ops))

    # ---- DenseNet-BC --------------------------------------------------------------------------

    def densenet(self, x: _T) -> str:
        s = self.conv(x, self.w("stem.conv.weight"), None, "stem.conv")
        for cell in self.g.cells:
            s = self.dense_block(cell, s)
        c = self.relu(self.affine(s, *self.bn("head.bn", affine=True), "head.bn"))
        return self.head_linear(c)

    def dense_block(self, cell: Cell, b: _T) -> _T:
        g = self.g
        (d_grp,) = cell.d
        if self._edge_into(d_grp) == Edge.TRANSITION:
            p = g.group_name(d_grp)
            h = self.relu(self.affine(b, *self.bn(f"{p}.bn", affine=True), f"{p}.bn"))
            if h.res > 1:  # pool first: AvgPool and Conv1x1 commute, and the conv then costs 1/4
                assert h.name is not None
                pooled = self.b.node("AveragePool", [h.name], f"{p}.pool", kernel_shape=[2, 2], strides=[2, 2])
                h = _T(pooled, h.channels, h.res // 2)
            d = self.conv(h, self.w(f"{p}.conv.weight"), None, f"{p}.conv")
        else:
            d = b
        # The running concat [d, z_1, ...] of live states: what every bottleneck reads from
        # and, at the end, the block output c.
        s = d
        offset = {d_grp: 0}
        for node in cell.nodes:
            if not g.alive[g.group_slice(node.z)].all():
                continue
            (op,) = node.ops
            assert op_computes(g, op, node.z), f"cell{cell.index}.node{node.index}: live z without a live op"
            p = f"cell{cell.index}.node{node.index}.op{op.j}"
            xs = self._live_x(op)
            src = g.src[xs].astype(np.int64)
            sg = g.vertex_group[src]
            pos = np.array([offset[int(v)] for v in sg], np.int64) + src - g.start[sg]
            x, kind = self.gather([s], np.zeros(pos.size, np.int64), pos, f"{p}.gather")
            h = self.relu(
                self.note(self.affine(x, *self.bn(f"{p}.bn1", affine=True), f"{p}.bn1"), **{f"gathers.{kind}": 1})
            )
            h = self.relu(
                self.folded_conv(h, self.w(f"{p}.conv1.weight"), self.bn(f"{p}.bn2", affine=True), f"{p}.conv1")
            )
            z = self.conv(h, self.w(f"{p}.conv2.weight"), None, f"{p}.conv2")
            offset[node.z] = s.channels
            s = self.concat([s, z], f"cell{cell.index}.node{node.index}.concat", s.res)
        return s


def emit_model(
    graph: Graph, *, opset: int = 17, channel_multiple: int = 1, doc: str = ""
) -> tuple[onnx.ModelProto, EmitStats]:
    """The ONNX model of ``graph``'s compact eval-mode network, and what the rewrites did.

    ``graph`` must be folded (:func:`cnas_ir.passes.fold.fold`) and carry every weight of its
    weight table. Input ``input`` float32 (N, C_in, H, W) with a dynamic N; output ``logits``
    float32 (N, classes). Weights are embedded as initializers.

    ``channel_multiple`` > 1 pads the input of every merged NASNet depthwise conv to a multiple
    of that many channels: filler channels whose depthwise filters and pointwise columns are
    zeros made in the graph (Pad nodes on the weights, folded by the runtime at load), so the
    file still stores only live parameters and the function is unchanged. It exists for
    onnxruntime's CPU provider, whose blocked NCHWc kernels take a depthwise conv only when its
    channels are a multiple of the SIMD block (8 with AVX2, 16 with AVX-512) and otherwise fall
    back to one im2col + GEMM per channel, several times slower.
    """
    if channel_multiple < 1:
        raise ValueError(f"channel_multiple must be positive, got {channel_multiple}")
    e = _Emitter(graph, channel_multiple)
    spec = graph.spec
    res = spec.input.size
    x = _T(INPUT_NAME, spec.input.channels, res)
    out = e.nasnet(x) if spec.space == "nasnet" else e.densenet(x)
    assert out == OUTPUT_NAME, out
    model = e.b.model(
        [value_info(INPUT_NAME, ["batch", spec.input.channels, res, res])],
        [value_info(OUTPUT_NAME, ["batch", int(graph.size[graph.head_group])])],
        opset=opset,
        name=spec.name,
        doc=doc,
    )
    # Preprocessing is never pruned in the IR, but a d_a/d_b that no live x reads computes
    # nothing used: drop it, and whatever only it needed (possibly a whole earlier cell).
    stats = EmitStats(dead_nodes=eliminate_dead_code(model))
    survivors = {n.name for n in model.graph.node}
    for name, what, amount in e.notes:
        if name in survivors:
            if what.startswith("gathers."):
                stats.gathers[what.removeprefix("gathers.")] += amount
            else:
                setattr(stats, what, getattr(stats, what) + amount)
    stats.convs_stacked = stack_convs(model, e.stacked_convs())
    return model, stats
