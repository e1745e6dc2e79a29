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
  (:class:`_NasnetCell`): in eval mode with autograd off a fused inference path (:class:`_FusedCell`:
  one gather per node and stride, a node's ops as one depthwise + one pointwise conv with the BNs
  folded, preprocessing convs with their BN folded writing into the state buffer, cells handing
  ReLU'd outputs to the next cells); with autograd on (training, saliency) the buffered path of
  :mod:`.buffered` (states in channels_last buffers, a node's ops merged where the plan says,
  gradients moved through gradient buffers); under ``torch.compile``, or with a hook on the
  preprocessing, the per-op path, where each op's gather, BN and tap are separate modules.

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

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnas_ir.ir import Cell, Edge, Graph, Kind, Op
from cnas_ir.passes.fold import live_closure
from cnas_ir.passes.plan import CellPlan, OpPart, OpPlan, Read, compact_keep, nasnet_plan, op_computes
from cnas_ir.weights import WeightInfo, live_index, weight_table

from .buffered import Pool, gather_columns, image, rows, run_cell
from .buffered import conv1x1 as _conv1x1
from .buffered import hooked as _hooked
from .buffered import shifted as _shifted

__all__ = ["CnasModule", "Mode", "lower", "to_graph"]

Mode = Literal["compact", "masked"]

# One piece of an operation's input: (state id within the cell, channel positions in that state).
_Piece = tuple[int, np.ndarray]
# A per-forward cache of gathered inputs shared by the ops of a cell that read the same channels.
_Cache = dict[tuple[object, ...], Tensor]


# ---- gathering ----------------------------------------------------------------------------


class _Gather(nn.Module):
    """Concatenates chosen channels of a cell's states: an op's own copy of its inputs.

    ``pieces`` lists, in x order, (state, positions) pairs; a piece that is a whole state or a
    contiguous range is a view, any other is an ``index_select`` with a stored index.
    Input: the cell's states, each (N, size, H, W) (None for a state nobody reads).
    Output: (N, sum of piece lengths, H, W).
    """

    def __init__(self, pieces: Sequence[_Piece], state_sizes: Sequence[int]) -> None:
        super().__init__()
        # (state, start, stop, index buffer name or "" for a view)
        self._parts: list[tuple[int, int, int, str]] = []
        key: list[object] = []
        for i, (state, pos) in enumerate(pieces):
            lo, hi = int(pos[0]), int(pos[-1]) + 1
            if hi - lo == pos.size:  # positions are sorted and unique, so this means contiguous
                self._parts.append((state, lo, hi, ""))
                key.append((state, lo, hi))
                if lo == 0 and hi == state_sizes[state]:
                    self._parts[-1] = (state, 0, -1, "")  # the whole state: no slicing at all
            else:
                name = f"index{i}"
                self.register_buffer(name, torch.as_tensor(pos, dtype=torch.long), persistent=False)
                self._parts.append((state, 0, 0, name))
                key.append((state, pos.tobytes()))
        self.key: tuple[object, ...] = tuple(key)
        self.channels = int(sum(p.size for _, p in pieces))

    def forward(self, states: Sequence[Tensor | None]) -> Tensor:
        xs: list[Tensor] = []
        for state, lo, hi, name in self._parts:
            t = states[state]
            assert t is not None, "an op reads a state that was not computed"
            if name:
                xs.append(t.index_select(1, getattr(self, name)))
            elif hi < 0:
                xs.append(t)
            else:
                xs.append(t[:, lo:hi])
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)

    def cached(self, states: Sequence[Tensor | None], cache: _Cache) -> Tensor:
        x = cache.get(self.key)
        if x is None:
            x = cache[self.key] = self(states)
        return x


# ---- NASNet building blocks -----------------------------------------------------------------


class _Tap(nn.Module):
    """The op's own copy x of its input channels, as a fresh view: a hook point for saliency.

    Ops reading the same channels may share one gathered tensor; the view gives each op its own
    autograd node, so a tensor hook on this module's output sees that op's own gradient δx.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.view_as(x)


class _Stem(nn.Module):
    """Conv3x3 (pad 1, no bias), then BN(affine) for NASNet. (N, 3, H, W) -> (N, out, H, W)."""

    def __init__(self, cin: int, cout: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


class _ImagenetStem(nn.Module):
    """The ImageNet stem (paper §3.3): three stride-2 Conv3x3 (pad 1, no bias) + BN(affine), a
    ReLU before the second and third. (N, in, H, W) -> (a, b): the second layer's output (the
    first cell's a, at H/4) and the third's (the stem's output, the first cell's b, at H/8)."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        for i, (cin, cout) in enumerate(itertools.pairwise(widths), 1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s1 = self.bn1(self.conv1(x))
        s2 = self.bn2(self.conv2(F.relu(s1)))
        return s2, self.bn3(self.conv3(F.relu(s2)))


class _Preprocess(nn.Module):
    """d = BN(Conv1x1(ReLU(a))), BN affine=False. (N, cin, H, W) -> (N, C, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=False)

    def forward(self, a: Tensor) -> Tensor:
        return self.on_relu(F.relu(a))

    def on_relu(self, h: Tensor) -> Tensor:
        """d from ``h`` = ReLU(a), for a caller that has it already (the buffered path)."""
        return self.bn(_conv1x1(self.conv, h))


class _FactorizedReduce(nn.Module):
    """d = BN(concat(conv1(relu a), conv2(relu a shifted by a pixel))), both 1x1 stride 2.

    (N, cin, H, W) -> (N, C, ceil(H/2), ceil(W/2)); conv1 has C//2 outputs, conv2 C - C//2.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(cin, cout - cout // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=False)

    def forward(self, a: Tensor) -> Tensor:
        return self.on_relu(F.relu(a))

    def on_relu(self, h: Tensor) -> Tensor:
        """d from ``h`` = ReLU(a), for a caller that has it already (the buffered path)."""
        return self.bn(torch.cat([_conv1x1(self.conv1, h), _conv1x1(self.conv2, _shifted(h))], 1))


def _pieces(part: OpPart, width: int) -> list[_Piece]:
    """An op part as pieces of the per-op path's states: [relu(d_a | d_b), relu(z_1), ...]."""
    state = np.where(part.state <= 1, 0, part.state - 1)
    pos = np.where(part.state == 1, part.pos + width, part.pos)
    return [(int(s), pos[state == s]) for s in np.unique(state)]


class _SepConv(nn.Module):
    """y = BN(PW(DW3x3(x))) over the op's gathered (already ReLU'd) input channels.

    ``plan`` has one part per stride group: in a reduction cell the channels copied from d come
    first with stride 2, those copied from z follow with stride 1; the DW outputs are concatenated
    in that order, which is the x order the PW columns follow. ``mask`` (masked mode): float 0/1
    per x in x order; ``alive``: the op's 0/1 factor. ``x`` is a hook point that sees each stride
    group of ReLU(x) after the mask, before dropout (x·δx is the same before and after the ReLU).
    :meth:`forward` is the per-op reference path; the compact cell's other paths use the
    parameters directly (see :class:`_NasnetCell`). Output: (N, C, H_out, W_out).
    """

    def __init__(
        self,
        plan: OpPlan,
        state_sizes: Sequence[int],
        width: int,
        dropout: float,
        mask: np.ndarray | None,
        alive: bool,
    ) -> None:
        super().__init__()
        self.gathers = nn.ModuleList(_Gather(_pieces(p, width), state_sizes) for p in plan.parts)
        self.strides = tuple(p.stride for p in plan.parts)
        self._spans = [p.columns for p in plan.parts]
        n = plan.channels
        self.x = _Tap()
        self.dw = nn.Conv2d(n, n, 3, padding=1, groups=n, bias=False)
        self.pw = nn.Conv2d(n, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, affine=False)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.masked = mask is not None
        if mask is not None:
            for i, (a, b) in enumerate(self._spans):
                m = torch.tensor(mask[a:b], dtype=torch.float32).view(1, -1, 1, 1)
                self.register_buffer(f"mask{i}", m, persistent=False)
            self.register_buffer("alive", torch.tensor(float(alive)), persistent=False)

    def forward(self, states: Sequence[Tensor | None], cache: _Cache) -> Tensor:
        outs = []
        for i, (gather, stride, (a, b)) in enumerate(zip(self.gathers, self.strides, self._spans, strict=True)):
            x = gather.cached(states, cache)
            if self.masked:
                x = x * getattr(self, f"mask{i}")
            x = self.drop(self.x(x))
            outs.append(F.conv2d(x, self.dw.weight[a:b], stride=stride, padding=1, groups=b - a))
        h = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        y = self.bn(self.pw(h))
        # Multiply after BN: a dead op contributes exactly zero, not BN of zero.
        return y * self.alive if self.masked else y


class _NasnetCell(nn.Module):
    """One NASNet cell: (a, b) -> c = concat of the computed z (live ones in compact mode).

    The cell runs its execution plan (:mod:`cnas_ir.passes.plan`) on one of three paths, the same
    function on each:

    - *fused* (compact, eval, autograd off): :class:`_FusedCell`, the ops of a node merged with
      their BNs folded;
    - *buffered* (compact, autograd on: training and saliency): :func:`.buffered.run_cell`, the
      states in buffers, one read per node or per op and stride, the gradients moved through
      gradient buffers;
    - *per op* (masked mode, the reference semantics; under ``torch.compile``, which traces it as
      plain tensor code -- the other paths keep eager state, autograd Functions and weight caches;
      or when a hook waits on the preprocessing modules, which the other paths do not call): each
      op gathers its pieces from separate state tensors.
    """

    def __init__(
        self, plan: CellPlan, d_a: nn.Module, d_b: nn.Module, ops: dict[int, dict[str, _SepConv]], masked: bool
    ) -> None:
        super().__init__()
        self.plan = plan
        self.d_a = d_a
        self.d_b = d_b
        for k, node_ops in ops.items():
            if node_ops:
                self.add_module(f"node{k}", nn.ModuleDict(node_ops))
        self.width = plan.width
        self.reduction = plan.reduction
        self.masked = masked
        self._fused = None if masked else _FusedCell(plan)
        self.pool = Pool()  # buffers of the buffered and fused paths; a network gives its cells one
        self._watched: list[nn.Module] | None = None
        # Index tensors of the plan's reads per device (not buffers: they are not state, and a
        # module moved with .to() finds them on its new device by this key).
        self._indices: dict[torch.device, list[tuple[list[Tensor | None], Tensor | None]]] = {}

    def plan_indices(self, device: torch.device) -> list[tuple[list[Tensor | None], Tensor | None]]:
        """Per node, on ``device``: the indices of its distinct reads and of its padded read
        (None for a run, which is a view, or for no padded read)."""
        found = self._indices.get(device)
        if found is None:

            def index(r: Read | None) -> Tensor | None:
                return None if r is None or r.run else torch.as_tensor(r.index, device=device)

            found = [
                ([index(r) for r in node.reads], index(node.padded.read if node.padded else None))
                for node in self.plan.nodes
            ]
            self._indices[device] = found
        return found

    def _preprocessing_hooked(self) -> bool:
        if self._watched is None:
            self._watched = [*self.d_a.modules(), *self.d_b.modules()]
        return any(_hooked(m) for m in self._watched)

    def fusable(self) -> bool:
        """Whether this call can take the fused inference path (compact, eval, autograd off)."""
        return (
            self._fused is not None
            and not self.training
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()  # its cache of folded weights is eager state
            and not self._preprocessing_hooked()
        )

    def bufferable(self) -> bool:
        """Whether this call can take the buffered path (compact, not compiling, no hook on the
        preprocessing)."""
        return not self.masked and not torch.compiler.is_compiling() and not self._preprocessing_hooked()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.fusable():
            assert self._fused is not None
            return self._fused.run(self, F.relu(a), F.relu(b), relu_out=False)[0]
        if self.bufferable():
            return run_cell(self, F.relu(a), F.relu(b), relu_out=False)
        return self.per_op(a, b)

    def per_op(self, a: Tensor, b: Tensor) -> Tensor:
        """The per-op path on the raw inputs: the raw cell output."""
        d = torch.cat([self.d_a(a), self.d_b(b)], 1)
        # State 0 is ReLU(d_a | d_b), state k is ReLU(z_k): each computed once for all readers.
        states: list[Tensor | None] = [F.relu(d)]
        cache: _Cache = {}
        zs: list[Tensor] = []
        for node in self.plan.nodes:
            if not node.computed:
                states.append(None)
                continue
            z: Tensor | None = None
            if node.ops:
                modules = getattr(self, f"node{node.k}")
                for op in node.ops:
                    y = modules[f"op{op.j}"](states, cache)
                    z = y if z is None else z + y
            if z is None:  # a live z whose ops are all dead is zero
                z = self._zeros(d, self.width)
            zs.append(z)
            states.append(F.relu(z) if node.read_later else None)
        if not zs:
            return self._zeros(d, 0)
        return zs[0] if len(zs) == 1 else torch.cat(zs, 1)

    def _zeros(self, d: Tensor, channels: int) -> Tensor:
        """Zeros at the cell's output size: d's size, halved (rounding up) in a reduction cell."""
        n, _, h, w = d.shape
        if self.reduction:
            h, w = (h + 1) // 2, (w + 1) // 2
        return d.new_zeros(n, channels, h, w)


# ---- fused inference path (compact mode, eval, no autograd) --------------------------------------


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as ``scale * x + shift`` per channel: (float[C], float[C])."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _gather_rows(buf: Tensor, index: Tensor | tuple[int, int]) -> Tensor:
    """Channels ``index`` (a tensor, or a (start, stop) range: a view) of ``buf`` (N, C, H, W).

    A channels_last buffer is gathered on its (N*H*W, C) view: ``index_select`` over dim 1 of
    a channels_last tensor returns a channels-first copy and is several times slower. On that
    view ``gather`` with the index broadcast over the rows beats ``index_select`` (5-11% of the
    whole forward of the paper config at rho 0.46, batch 32; benchmarks in BENCHMARKS.md).
    """
    if isinstance(index, tuple):
        return buf[:, index[0] : index[1]]
    n, c, h, w = buf.shape
    if n * h * w > 1 and buf.is_contiguous(memory_format=torch.channels_last) and not buf.is_contiguous():
        return image(gather_columns(rows(buf), index), (n, h, w))
    return buf.index_select(1, index)


def _version(t: Tensor) -> int:
    """In-place version of ``t``; -1 for an inference tensor (a module moved with ``.to()``
    under ``torch.inference_mode``), which has none: only its data pointer can tell a change."""
    return -1 if t.is_inference() else t._version


class _FusedCell:
    """A compact NASNet cell for inference: the same function, fewer and larger kernels.

    :meth:`run` takes the cell's inputs already ReLU'd (every reader of a cell output, the next
    cells' preprocessing, starts with a ReLU; the network applies it once, where the output is
    made) and returns the cell output ReLU'd (``relu_out``, for the next cells) or raw (for the
    head, or for a cell called on its own). It translates the cell's plan:

    - the preprocessing convs run with their BN folded in (bias = BN shift) and write
      ``relu(d_a)``, ``relu(d_b)`` straight into the state buffer (no BN pass, no concat of d);
      those that read the same tensor run as one conv (see :meth:`run`);
    - the ReLU'd states are written (by ``clamp_min(out=)``) into the plan's buffers, so a node's
      inputs of one stride are the plan's ONE merged read -- a view when the channels are a
      contiguous run -- and a ReLU'd output is the plan's output range of a buffer;
    - a node's J ops run as one depthwise conv per stride group over the merged read and one
      pointwise conv whose columns are the ops' PW columns with each op's BN folded in, bias =
      the sum of the BN shifts (the ONNX backend's merge, in eager);
    - each op's tap is still called on its own input (a view of the node's gather), in x order,
      once per stride group, so forward hooks see what the reference path gives them. A hook
      on the cell's preprocessing modules sends the cell down the per-op path instead.

    Folded weights are cached and rebuilt when any source tensor changes (data pointer or
    in-place version), so training, ``load_graph_weights`` and ``.to()`` are all seen.
    """

    def __init__(self, plan: CellPlan) -> None:
        self.plan = plan
        # Per node, per merged read: its index tensor or (start, stop) run.
        self._wheres = [
            [m.read.run if m.read.run else torch.as_tensor(m.read.index, dtype=torch.long) for m in node.merged]
            for node in plan.nodes
        ]
        # The index tensors per device they have been used on: this object is not a module,
        # so ``.to(device)`` does not move them.
        self._indices: dict[torch.device, list[list[Tensor | tuple[int, int]]]] = {}
        self._key: tuple[object, ...] | None = None
        self._weights: tuple[list[list[tuple[Tensor, Tensor]]], list[tuple[list[Tensor], Tensor, Tensor]]] = ([], [])
        # Looked up by name on every call (not the tensors themselves): a parameter replaced
        # by assignment is seen too. Walking cell.modules() per call cost 28 ms per forward of
        # the paper config, 13% of a batch-1 forward (measured).
        self._sources: list[tuple[dict[str, Tensor | None], str]] | None = None
        self._stack: tuple[list[Tensor], Tensor, Tensor] | None = None  # see _stacked

    def _folded(
        self, cell: _NasnetCell
    ) -> tuple[list[list[tuple[Tensor, Tensor]]], list[tuple[list[Tensor], Tensor, Tensor]]]:
        """Preprocessing (weight, bias) per conv; per node (DW weight per stride group, merged
        PW weight, PW bias)."""
        if self._sources is None:  # where each source tensor lives: (module's dict, name)
            self._sources = [
                (table, name)
                for m in (cell.d_a, cell.d_b, *(m for m in cell.modules() if isinstance(m, _SepConv)))
                for sub in m.modules()
                for table in (sub._parameters, sub._buffers)
                for name in table
            ]
        key = tuple(((t := table[name]) is not None and (t.data_ptr(), _version(t))) for table, name in self._sources)
        if key == self._key:
            return self._weights
        pre: list[list[tuple[Tensor, Tensor]]] = []  # per preprocessing module, per conv
        for d in (cell.d_a, cell.d_b):
            scale, shift = _bn_affine(d.bn)
            convs = [d.conv] if isinstance(d, _Preprocess) else [d.conv1, d.conv2]
            at, folded = 0, []
            for conv in convs:
                n = conv.out_channels
                folded.append(((conv.weight * scale[at : at + n].view(-1, 1, 1, 1)).contiguous(), shift[at : at + n]))
                at += n
            pre.append(folded)
        out: list[tuple[list[Tensor], Tensor, Tensor]] = []
        for node in self.plan.nodes:
            if not node.merged:
                out.append(([], torch.empty(0), torch.empty(0)))
                continue
            modules = getattr(cell, f"node{node.k}")
            ops: list[_SepConv] = [modules[f"op{op.j}"] for op in node.ops]
            affine = [_bn_affine(m.bn) for m in ops]
            dws, pws = [], []
            for merged in node.merged:
                parts = []
                for o, q, _, _ in merged.spans:
                    lo, hi = node.ops[o].parts[q].columns
                    parts.append(ops[o].dw.weight[lo:hi])
                    pws.append(ops[o].pw.weight[:, lo:hi] * affine[o][0].view(-1, 1, 1, 1))
                dws.append(torch.cat(parts, 0).contiguous())
            bias = affine[0][1]
            for _, shift in affine[1:]:
                bias = bias + shift
            out.append((dws, torch.cat(pws, 1).contiguous(), bias.contiguous()))
        self._key, self._weights = key, (pre, out)
        return self._weights

    def _indices_on(self, device: torch.device) -> list[list[Tensor | tuple[int, int]]]:
        found = self._indices.get(device)
        if found is None:
            found = [[w.to(device) if isinstance(w, Tensor) else w for w in node] for node in self._wheres]
            self._indices[device] = found
        return found

    def _stacked(self, convs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Folded 1x1 convs of one input as one conv, their rows stacked in order; cached while
        they come from the same folded-weight caches (which make new tensors on a change)."""
        sources = [t for conv in convs for t in conv]
        if self._stack is not None:
            found, w, bias = self._stack
            if len(found) == len(sources) and all(x is y for x, y in zip(found, sources, strict=True)):
                return w, bias
        w, bias = torch.cat([wt for wt, _ in convs]), torch.cat([bi for _, bi in convs])
        self._stack = (sources, w, bias)  # a cell stacks one group per call
        return w, bias

    def _preprocess(
        self,
        pre: list[list[tuple[Tensor, Tensor]]],
        a: Tensor,
        b: Tensor,
        state0: Tensor,
        d_a: Tensor | None,
        next_cell: _NasnetCell | None,
    ) -> Tensor | None:
        """d = [d_a | d_b] of the folded 1x1 convs ``pre``, each conv's output ReLU'd into its
        part of ``state0`` (a raw ``d_a`` handed on by the previous cell is only ReLU'd); returns
        the next cell's raw d_a when it was stacked with this cell's d_b (see :meth:`run`)."""
        single = [len(convs) == 1 for convs in pre]  # _Preprocess (else a factorized reduce)
        n_a, n_b = (sum(wt.shape[0] for wt, _ in convs) for convs in pre)
        parts = [state0[:, :n_a], state0[:, n_a : n_a + n_b]]  # where relu(d_a), relu(d_b) go
        # The 1x1 convs of b: this cell's d_b, its d_a too when a is b (the first cell: both
        # read the stem), and the next cell's d_a (None: handed on raw).
        todo, group = [], []
        if d_a is not None:
            torch.clamp_min(d_a, 0, out=parts[0])
        elif a is b and single[0]:
            group.append((0, pre[0][0]))
        else:
            todo.append(0)
        if single[1]:
            group.append((1, pre[1][0]))
            if next_cell is not None:
                assert next_cell._fused is not None
                after = next_cell._fused._folded(next_cell)[0][0]
                if len(after) == 1:  # the next cell's d_a is a 1x1 conv of b too
                    group.append((None, after[0]))
        else:
            todo.append(1)
        handoff: Tensor | None = None
        if len(group) > 1 and b.shape[1]:
            wt, bias = self._stacked([conv for _, conv in group])
            y, at = F.conv2d(b, wt, bias), 0
            for which, (wi, _) in group:
                part = y[:, at : at + wi.shape[0]]
                if which is None:
                    handoff = part
                else:
                    torch.clamp_min(part, 0, out=parts[which])
                at += wi.shape[0]
        else:
            todo += [which for which, _ in group if which is not None]
        for which in sorted(todo):
            x, convs = (a, b)[which], pre[which]
            stride = 1 if single[which] else 2
            at = 0
            for i, (wt, bias) in enumerate(convs):
                xi = x if i == 0 else _shifted(x)  # a factorized reduce's conv2
                part = parts[which][:, at : at + wt.shape[0]]
                if x.shape[1]:
                    torch.clamp_min(F.conv2d(xi, wt, bias, stride=stride), 0, out=part)
                else:  # no input channel kept: the conv is 0, the output its bias
                    torch.clamp_min(bias.view(1, -1, 1, 1).expand_as(part), 0, out=part)
                at += wt.shape[0]
        return handoff

    def run(
        self,
        cell: _NasnetCell,
        a: Tensor,
        b: Tensor,
        relu_out: bool,
        d_a: Tensor | None = None,
        next_cell: _NasnetCell | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The cell on ReLU'd inputs ``a``, ``b``: its output, ReLU'd if ``relu_out``; and the
        next cell's raw d_a when ``next_cell`` is given and can take it.

        The 1x1 convs that read ``b`` run as one with their rows stacked: this cell's d_b,
        ``next_cell``'s d_a (its rows are handed on raw, the ``d_a`` of the next call) and, in
        the first cell, where both read the stem, this cell's d_a. One conv reads its input once
        and is wider, which suits the vector units (two 1x1 convs 144 -> 36 at 32x32, batch 32:
        18 ms, stacked 144 -> 72: 14 ms, channels_last, measured).
        """
        plan = self.plan
        pre, weights = self._folded(cell)
        indices = self._indices_on(b.device)
        n, _, h, w = b.shape
        hz, wz = ((h + 1) // 2, (w + 1) // 2) if plan.reduction else (h, w)
        cl = b.is_contiguous(memory_format=torch.channels_last) and n * h * w > 1
        fmt = torch.channels_last if cl else torch.contiguous_format
        # From the network's pool, given back below: a fresh buffer above glibc's mmap threshold
        # page-faults on its first write (see buffered.Pool).
        pool: Pool = cell.pool
        bufs: list[Tensor] = [
            pool.take((n, hh, ww, size), b).permute(0, 3, 1, 2) if cl else pool.take((n, size, hh, ww), b)
            for (size, _), (hh, ww) in zip(plan.buffers, ((h, w), (hz, wz)), strict=False)
        ]
        handoff = self._preprocess(pre, a, b, bufs[0], d_a, next_cell)
        zs: list[Tensor] = []
        width = plan.width
        for node, (dws, pw, bias), wheres in zip(plan.nodes, weights, indices, strict=True):
            if not node.computed:
                continue
            assert node.slot is not None
            buf, off = node.slot
            state = bufs[buf][:, off : off + width]
            if not node.merged:  # a live z whose ops are all dead is zero
                state.zero_()
                if not relu_out:
                    zs.append(cell._zeros(b, width))
                continue
            modules = getattr(cell, f"node{node.k}")
            outs = []
            for merged, dw, where in zip(node.merged, dws, wheres, strict=True):
                x = _gather_rows(bufs[merged.read.buffer], where)
                for o, _, lo, hi in merged.spans:
                    tap = modules[f"op{node.ops[o].j}"].x
                    if _hooked(tap):
                        # each op's tap on its own input; a copy when x is a view of a pooled
                        # buffer, which a hook may keep beyond this call
                        tap(x[:, lo:hi].clone() if isinstance(where, tuple) else x[:, lo:hi])
                outs.append(F.conv2d(x, dw, stride=merged.stride, padding=1, groups=dw.shape[0]))
            hcat = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
            z = F.conv2d(hcat, pw, bias)
            if relu_out or node.read_later:
                torch.clamp_min(z, 0, out=state)
            if not relu_out:
                zs.append(z)
        kept = -1  # a buffer handed on as the output itself, not given back to the pool
        if relu_out:
            i, lo, c = plan.output
            out = bufs[i][:, lo : lo + c]
            # a view of the buffer unless it is part of it: one copy here, not one per reader
            if c == bufs[i].shape[1]:
                kept = i
            else:
                # clone, not .contiguous(): a slice can be contiguous already (batch 1, NCHW) and
                # would then be the pooled buffer itself
                out = out.clone(memory_format=fmt)
        elif not zs:
            out = cell._zeros(b, 0)
        else:
            out = zs[0] if len(zs) == 1 else torch.cat(zs, 1)
        for i, buf in enumerate(bufs):
            if i != kept:
                pool.give(buf.permute(0, 2, 3, 1) if cl else buf)
        return out, handoff


# ---- DenseNet-BC building blocks -------------------------------------------------------------


class _Transition(nn.Module):
    """d = AvgPool2(Conv1x1(ReLU(BN(b)))), BN affine. (N, cin, H, W) -> (N, cout, H//2, W//2)."""

    def __init__(self, cin: int, cout: int, mask: np.ndarray | None) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.register_buffer("mask", None if mask is None else _channel_mask(mask), persistent=False)

    def forward(self, b: Tensor) -> Tensor:
        h = F.relu(self.bn(b))
        if self.mask is not None:  # BN maps a dead (zero) channel to a constant: cut it again
            h = h * self.mask
        h = self.conv(h)
        return F.avg_pool2d(h, 2) if h.shape[-1] > 1 else h


class _Bottleneck(nn.Module):
    """z = Conv3x3(ReLU(BN2(Conv1x1(ReLU(BN1(x)))))): (N, n_x, H, W) -> (N, k, H, W).

    ``x`` is a hook point that sees the op's copy of its input channels (after the mask).
    """

    def __init__(
        self,
        pieces: Sequence[_Piece],
        state_sizes: Sequence[int],
        growth: int,
        bottleneck: int,
        dropout: float,
        mask: np.ndarray | None,
        alive: bool,
    ) -> None:
        super().__init__()
        self.gather = _Gather(pieces, state_sizes)
        self.x = _Tap()
        n = self.gather.channels
        self.bn1 = nn.BatchNorm2d(n)
        self.conv1 = nn.Conv2d(n, bottleneck, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.masked = mask is not None
        if mask is not None:
            self.register_buffer("mask", _channel_mask(mask), persistent=False)
            self.register_buffer("alive", torch.tensor(float(alive)), persistent=False)

    def forward(self, states: Sequence[Tensor | None], cache: _Cache) -> Tensor:
        x = self.gather.cached(states, cache)
        if self.masked:
            x = x * self.mask
        h = F.relu(self.bn1(self.x(x)))
        if self.masked:  # BN1 maps a dead (zero) x to its bias: cut it again before conv1
            h = h * self.mask
        h = self.conv1(self.drop(h))
        z = self.conv2(F.relu(self.bn2(h)))
        return z * self.alive if self.masked else z


class _DenseBlock(nn.Module):
    """One dense block: b -> c = concat(d, z_1, ..., z_n) (computed z only in compact mode)."""

    def __init__(
        self,
        transition: _Transition | None,
        nodes: Sequence[tuple[bool, _Bottleneck | None]],
        growth: int,
    ) -> None:
        super().__init__()
        self.d = transition
        self._nodes: list[tuple[bool, bool]] = []  # computed, has a live op
        for k, (computed, op) in enumerate(nodes, 1):
            if op is not None:
                self.add_module(f"node{k}", nn.ModuleDict({"op1": op}))
            self._nodes.append((computed, op is not None))
        self.growth = growth

    def forward(self, b: Tensor) -> Tensor:
        d = b if self.d is None else self.d(b)
        states: list[Tensor | None] = [d]  # raw: each op has its own BN1 before the ReLU
        cache: _Cache = {}
        for k, (computed, has_op) in enumerate(self._nodes, 1):
            if not computed:
                states.append(None)
            elif has_op:
                states.append(getattr(self, f"node{k}")["op1"](states, cache))
            else:
                n, _, h, w = d.shape
                states.append(d.new_zeros(n, self.growth, h, w))
        return torch.cat([s for s in states if s is not None], 1)


class _Head(nn.Module):
    """[BN(affine) + ReLU +] global average pool + Linear. (N, cin, H, W) -> (N, classes)."""

    def __init__(self, cin: int, classes: int, bn: bool, mask: np.ndarray | None) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin) if bn else None
        self.linear = nn.Linear(cin, classes)
        self.register_buffer("mask", None if mask is None else _channel_mask(mask), persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        if self.bn is not None:
            c = F.relu(self.bn(c))
            if self.mask is not None:
                c = c * self.mask
        return self.linear(c.mean((2, 3)))


def _channel_mask(mask: np.ndarray) -> Tensor:
    return torch.tensor(mask, dtype=torch.float32).view(1, -1, 1, 1)


# ---- the module -------------------------------------------------------------------------------


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
            if all(c.fusable() for c in cells):
                # A cell also runs the next one's d_a (a 1x1 conv of the same input as its d_b).
                prev = F.relu(b)
                prev_prev = prev if a is b else F.relu(a)  # the fused path shares a's conv with b's
                d_a = None
                for i, cell in enumerate(cells, 1):
                    after = cells[i] if i < len(cells) else None
                    assert cell._fused is not None
                    out, d_a = cell._fused.run(
                        cell, prev_prev, prev, relu_out=after is not None, d_a=d_a, next_cell=after
                    )
                    prev_prev, prev = prev, out
                return self.head(prev)
            if all(c.bufferable() for c in cells):
                prev = F.relu(b)
                prev_prev = prev if a is b else F.relu(a)
                for i, cell in enumerate(cells, 1):
                    prev_prev, prev = prev, run_cell(cell, prev_prev, prev, relu_out=i < len(cells))
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


def _op_pieces(g: Graph, op: Op, keep: np.ndarray, smap: dict[int, tuple[int, int]]) -> list[_Piece]:
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


def _nasnet_cell(g: Graph, cell: Cell, plan: CellPlan, keep: np.ndarray, masked: bool, dropout: float) -> _NasnetCell:
    a_grp, b_grp = cell.inputs
    width = cell.width
    n_a = int(keep[g.group_slice(a_grp)].sum())
    n_b = int(keep[g.group_slice(b_grp)].sum())
    d_a: nn.Module = _FactorizedReduce(n_a, width) if plan.factorized else _Preprocess(n_a, width)
    d_b = _Preprocess(n_b, width)
    # The per-op path's states: relu(d_a | d_b), then relu(z_k) (its channels, computed or not).
    sizes = [2 * width] + [width] * len(cell.nodes)
    ops: dict[int, dict[str, _SepConv]] = {}
    for node, node_plan in zip(cell.nodes, plan.nodes, strict=True):
        by_j = {op.j: op for op in node.ops}
        ops[node.index] = {
            f"op{op.j}": _SepConv(
                op,
                sizes,
                width,
                dropout,
                g.alive[g.group_slice(op.x)] if masked else None,
                op_computes(g, by_j[op.j], node.z),
            )
            for op in node_plan.ops
        }
    return _NasnetCell(plan, d_a, d_b, ops, masked)


def _dense_block(g: Graph, cell: Cell, keep: np.ndarray, masked: bool, dropout: float) -> _DenseBlock:
    p = g.spec.densenet
    assert p is not None
    (b_grp,) = cell.inputs
    (d_grp,) = cell.d
    transition = None
    if _edge_into(g, d_grp) == Edge.TRANSITION:
        n_b = int(keep[g.group_slice(b_grp)].sum())
        mask = g.alive[g.group_slice(b_grp)] if masked else None
        transition = _Transition(n_b, int(g.size[d_grp]), mask)
    smap, sizes = _state_map(g, cell)
    nodes: list[tuple[bool, _Bottleneck | None]] = []
    for node in cell.nodes:
        computed = masked or bool(g.alive[g.group_slice(node.z)].all())
        (op,) = node.ops
        live = op_computes(g, op, node.z)
        bottleneck = None
        if masked or live:
            pieces = _op_pieces(g, op, keep, smap)
            mask = g.alive[g.group_slice(op.x)] if masked else None
            bottleneck = _Bottleneck(pieces, sizes, p.growth_rate, int(g.size[op.y]), dropout, mask, live)
        nodes.append((computed, bottleneck))
    return _DenseBlock(transition, nodes, p.growth_rate)


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
            module.stem = _ImagenetStem([in_ch] + [int(graph.size[t]) for t in np.flatnonzero(graph.kind == Kind.STEM)])
        else:
            module.stem = _Stem(in_ch, stem_ch, bn=True)
        plans = nasnet_plan(graph, keep)
        pool = Pool()
        for cell, plan in zip(graph.cells, plans, strict=True):
            cell_module = _nasnet_cell(graph, cell, plan, keep, masked, spec.nasnet.spatial_dropout)
            cell_module.pool = pool  # cells of one shape share buffers
            module.add_module(f"cell{cell.index}", cell_module)
        module.head = _Head(n_last, classes, bn=False, mask=None)
    else:
        assert spec.densenet is not None
        module.stem = _Stem(in_ch, stem_ch, bn=False)
        for cell in graph.cells:
            module.add_module(
                f"cell{cell.index}", _dense_block(graph, cell, keep, masked, spec.densenet.spatial_dropout)
            )
        head_mask = graph.alive[graph.group_slice(last_c)] if masked else None
        module.head = _Head(n_last, classes, bn=True, mask=head_mask)
    return module


def to_graph(graph: Graph, module: CnasModule) -> Graph:
    """``graph`` with its weights replaced by the module's (:meth:`CnasModule.graph_weights`)."""
    return graph.replace(weights=module.graph_weights(graph))
