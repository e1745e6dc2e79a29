"""The NASNet cell as PyTorch modules: preprocessing, the separable conv of one op, and the cell
that runs its execution plan on the fused, buffered or per-op path (:class:`NasnetCell`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnas_ir.passes.plan import CellPlan, OpPart, OpPlan, Read

from .buffered import Pool, run_cell
from .buffered import conv1x1 as _conv1x1
from .buffered import hooked as _hooked
from .buffered import reduce_pixels as _reduce_pixels
from .layers import Cache, Gather, Piece, Tap

__all__ = ["FactorizedReduce", "NasnetCell", "Preprocess", "SepConv", "part_pieces"]


class Preprocess(nn.Module):
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


class FactorizedReduce(nn.Module):
    """d = BN(concat(conv1(relu a), conv2(relu a shifted by a pixel))), both 1x1 stride 2.

    (N, cin, H, W) -> (N, C, ceil(H/2), ceil(W/2)); conv1 has C//2 outputs, conv2 C - C//2. The
    modules' convs have stride 1: each reads its pixels of ReLU(a), subsampled
    (:func:`~.buffered.reduce_pixels`).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=False)

    def forward(self, a: Tensor) -> Tensor:
        return self.on_relu(F.relu(a))

    def on_relu(self, h: Tensor) -> Tensor:
        """d from ``h`` = ReLU(a), for a caller that has it already (the buffered path)."""
        convs = (self.conv1, self.conv2)
        return self.bn(torch.cat([_conv1x1(conv, x) for conv, x in zip(convs, _reduce_pixels(h), strict=True)], 1))


def part_pieces(part: OpPart, width: int) -> list[Piece]:
    """An op part as pieces of the per-op path's states: [relu(d_a | d_b), relu(z_1), ...]."""
    state = np.where(part.state <= 1, 0, part.state - 1)
    pos = np.where(part.state == 1, part.pos + width, part.pos)
    return [(int(s), pos[state == s]) for s in np.unique(state)]


class SepConv(nn.Module):
    """y = BN(PW(DW3x3(x))) over the op's gathered (already ReLU'd) input channels.

    ``plan`` has one part per stride group: in a reduction cell the channels copied from d come
    first with stride 2, those copied from z follow with stride 1; the DW outputs are concatenated
    in that order, which is the x order the PW columns follow. ``mask`` (masked mode): float 0/1
    per x in x order; ``alive``: the op's 0/1 factor. ``x`` is a hook point that sees each stride
    group of ReLU(x) after the mask, before dropout (x·δx is the same before and after the ReLU).
    :meth:`forward` is the per-op reference path; the compact cell's other paths use the
    parameters directly (see :class:`NasnetCell`). Output: (N, C, H_out, W_out).
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
        self.gathers = nn.ModuleList(Gather(part_pieces(p, width), state_sizes) for p in plan.parts)
        self.strides = tuple(p.stride for p in plan.parts)
        self._spans = [p.columns for p in plan.parts]
        n = plan.channels
        self.x = Tap()
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

    def forward(self, states: Sequence[Tensor | None], cache: Cache) -> Tensor:
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


class NasnetCell(nn.Module):
    """One NASNet cell: (a, b) -> c = concat of the computed z (live ones in compact mode).

    The cell runs its execution plan (:mod:`cnas_ir.passes.plan`) on one of three paths, the same
    function on each:

    - *fused* (compact, eval, autograd off): :class:`FusedCell`, the ops of a node merged with
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
        self,
        plan: CellPlan,
        d_a: nn.Module,
        d_b: nn.Module,
        ops: dict[int, dict[str, SepConv]],
        masked: bool,
        fused: Any = None,
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
        self._fused = fused  # the fused path's state (a fused.FusedCell of this plan; None in masked mode)
        self.pool = Pool()  # buffers of the buffered and fused paths; a network gives its cells one
        self._watched: list[nn.Module] | None = None
        # Index tensors of the plan's reads per device and dtype (not buffers: they are not state,
        # and a module moved with .to() finds them on its new device by this key).
        self._indices: dict[tuple[torch.device, torch.dtype], list[tuple[list[Tensor | None], Tensor | None]]] = {}

    def plan_indices(
        self, device: torch.device, dtype: torch.dtype = torch.int64
    ) -> list[tuple[list[Tensor | None], Tensor | None]]:
        """Per node, on ``device``: the indices of its distinct reads and of its padded read
        (None for a run, which is a view, or for no padded read); int32 on the CPU for the
        native kernels (:mod:`.native`)."""
        found = self._indices.get((device, dtype))
        if found is None:

            def index(r: Read | None) -> Tensor | None:
                return None if r is None or r.run else torch.as_tensor(r.index, dtype=dtype, device=device)

            found = [
                ([index(r) for r in node.reads], index(node.padded.read if node.padded else None))
                for node in self.plan.nodes
            ]
            self._indices[(device, dtype)] = found
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
            return run_cell(self, F.relu(a), F.relu(b), relu_out=False)[0]
        return self.per_op(a, b)

    def per_op(self, a: Tensor, b: Tensor) -> Tensor:
        """The per-op path on the raw inputs: the raw cell output."""
        d = torch.cat([self.d_a(a), self.d_b(b)], 1)
        # State 0 is ReLU(d_a | d_b), state k is ReLU(z_k): each computed once for all readers.
        states: list[Tensor | None] = [F.relu(d)]
        cache: Cache = {}
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
