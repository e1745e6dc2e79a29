"""The fused inference path of a NASNet cell (compact mode, eval, autograd off): one gather per
node and stride, a node's ops as one depthwise and one pointwise conv with their BatchNorms
folded (the gather and the depthwise conv one native kernel on CPU in channels_last float32:
:mod:`.native`), preprocessing convs writing into the state buffer (:class:`FusedCell`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnas_ir.passes.plan import CellPlan

from . import native
from .buffered import Pool, gather_columns, image, rows
from .buffered import hooked as _hooked
from .buffered import reduce_pixels as _reduce_pixels
from .nasnet import Preprocess, SepConv

if TYPE_CHECKING:
    from .nasnet import NasnetCell

__all__ = ["FusedCell", "bn_affine", "gather_rows", "tensor_version"]


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as ``scale * x + shift`` per channel: (float[C], float[C])."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def gather_rows(buf: Tensor, index: Tensor | tuple[int, int]) -> Tensor:
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


def tensor_version(t: Tensor) -> int:
    """In-place version of ``t``; -1 for an inference tensor (a module moved with ``.to()``
    under ``torch.inference_mode``), which has none: only its data pointer can tell a change."""
    return -1 if t.is_inference() else t._version


class FusedCell:
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
      the sum of the BN shifts (the ONNX backend's merge, in eager); on CPU in channels_last
      float32 the merged read and the depthwise conv are one call of the native kernel
      (:func:`.native.gather_depthwise`), which never writes the gathered channels;
    - each op's hooked tap is still called on its own input (a view of the node's gather, made
      with PyTorch ops for a read with a hooked tap), in x order, once per stride group, so
      forward hooks see what the reference path gives them. A hook
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
        # Per node, per merged read: its channels as int32, for the native kernel (CPU only).
        self._native_index = [
            [torch.as_tensor(m.read.index, dtype=torch.int32) for m in node.merged] for node in plan.nodes
        ]
        # The index tensors per device they have been used on: this object is not a module,
        # so ``.to(device)`` does not move them.
        self._indices: dict[torch.device, list[list[Tensor | tuple[int, int]]]] = {}
        self._key: tuple[object, ...] | None = None
        self._weights: tuple[list[list[tuple[Tensor, Tensor]]], list[tuple[list[Tensor], Tensor, Tensor]]] = ([], [])
        self._dw_t: list[list[Tensor]] = []  # per node, per merged read: its DW weight as (9, K), see native
        # Looked up by name on every call (not the tensors themselves): a parameter replaced
        # by assignment is seen too. Walking cell.modules() per call cost 28 ms per forward of
        # the paper config, 13% of a batch-1 forward (measured).
        self._sources: list[tuple[dict[str, Tensor | None], str]] | None = None
        self._stack: tuple[list[Tensor], Tensor, Tensor] | None = None  # see _stacked

    def _folded(
        self, cell: NasnetCell
    ) -> tuple[list[list[tuple[Tensor, Tensor]]], list[tuple[list[Tensor], Tensor, Tensor]]]:
        """Preprocessing (weight, bias) per conv; per node (DW weight per stride group, merged
        PW weight, PW bias)."""
        if self._sources is None:  # where each source tensor lives: (module's dict, name)
            self._sources = [
                (table, name)
                for m in (cell.d_a, cell.d_b, *(m for m in cell.modules() if isinstance(m, SepConv)))
                for sub in m.modules()
                for table in (sub._parameters, sub._buffers)
                for name in table
            ]
        key = tuple(
            ((t := table[name]) is not None and (t.data_ptr(), tensor_version(t))) for table, name in self._sources
        )
        if key == self._key:
            return self._weights
        pre: list[list[tuple[Tensor, Tensor]]] = []  # per preprocessing module, per conv
        for d in (cell.d_a, cell.d_b):
            scale, shift = bn_affine(d.bn)
            convs = [d.conv] if isinstance(d, Preprocess) else [d.conv1, d.conv2]
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
            ops: list[SepConv] = [modules[f"op{op.j}"] for op in node.ops]
            affine = [bn_affine(m.bn) for m in ops]
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
        self._dw_t = [[dw.reshape(dw.shape[0], 9).t().contiguous() for dw in dws] for dws, _, _ in out]
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
        next_cell: NasnetCell | None,
    ) -> Tensor | None:
        """relu(d_a), relu(d_b) of the folded convs ``pre`` into their parts of ``state0``, each
        where the plan reads it (a raw ``d_a`` handed on by the previous cell is only ReLU'd);
        returns the next cell's raw d_a when the plan stacks it with this cell's d_b. The plan's
        stacking holds for the network's dataflow only, so only where ``next_cell`` is given."""
        n_a, n_b = (sum(wt.shape[0] for wt, _ in convs) for convs in pre)
        parts = [state0[:, :n_a], state0[:, n_a : n_a + n_b]]  # where relu(d_a), relu(d_b) go
        stacked = self.plan.stacked if next_cell is not None else ()
        if d_a is not None:  # the previous cell ran this one's d_a with its d_b
            torch.clamp_min(d_a, 0, out=parts[0])
        elif self.plan.reads_d[0] and (0, 0) not in stacked:
            self._convs(pre[0], a, parts[0])
        if not stacked:
            if self.plan.reads_d[1]:
                self._convs(pre[1], b, parts[1])
            return None
        # The plan's 1x1 convs of b as one: this cell's d_a (the first cell), its d_b, and
        # next_cell's d_a, whose rows are handed on raw.
        convs = []
        for cell_offset, which in stacked:
            if cell_offset == 0:
                convs.append(pre[which][0])
            else:
                assert next_cell is not None and next_cell._fused is not None
                convs.append(next_cell._fused._folded(next_cell)[0][0][0])
        wt, bias = self._stacked(convs)
        y, at = F.conv2d(b, wt, bias), 0
        handoff: Tensor | None = None
        for (cell_offset, which), (wi, _) in zip(stacked, convs, strict=True):
            part = y[:, at : at + wi.shape[0]]
            if cell_offset:
                handoff = part
            else:
                torch.clamp_min(part, 0, out=parts[which])
            at += wi.shape[0]
        return handoff

    @staticmethod
    def _convs(convs: list[tuple[Tensor, Tensor]], x: Tensor, out: Tensor) -> None:
        """relu(d) into ``out``: d of one preprocessing module, its folded 1x1 conv of ``x`` or
        (a factorized reduce) its two of x's even and odd pixels."""
        at = 0
        pixels = (x,) if len(convs) == 1 else _reduce_pixels(x)
        for xi, (wt, bias) in zip(pixels, convs, strict=True):
            part = out[:, at : at + wt.shape[0]]
            if x.shape[1]:
                torch.clamp_min(F.conv2d(xi, wt, bias), 0, out=part)
            else:  # no input channel kept: the conv is 0, the output its bias
                torch.clamp_min(bias.view(1, -1, 1, 1).expand_as(part), 0, out=part)
            at += wt.shape[0]

    def run(
        self,
        cell: NasnetCell,
        a: Tensor,
        b: Tensor,
        relu_out: bool,
        d_a: Tensor | None = None,
        next_cell: NasnetCell | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The cell on ReLU'd inputs ``a``, ``b``: its output, ReLU'd if ``relu_out``; and the
        next cell's raw d_a when ``next_cell`` is given and the plan stacks it with this cell's d_b.

        The 1x1 convs of ``b`` that the plan stacks (:attr:`~cnas_ir.passes.plan.CellPlan.stacked`)
        run as one conv: two 1x1 convs 144 -> 36 at 32x32, batch 32, took 18 ms, stacked
        144 -> 72 14 ms (channels_last, measured). ``next_cell``: the cell after this one in the
        network's dataflow (``a`` and ``b`` then are what the plan says); None for a cell on
        its own, which stacks nothing.
        """
        plan = self.plan
        pre, weights = self._folded(cell)
        indices = self._indices_on(b.device)
        n, _, h, w = b.shape
        hz, wz = ((h + 1) // 2, (w + 1) // 2) if plan.reduction else (h, w)
        cl = b.is_contiguous(memory_format=torch.channels_last) and n * h * w > 1
        # the gathers and depthwise convs as one native kernel where it takes the buffers
        kernel = cl and native.takes(b) and native.available()
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
        for node, (dws, pw, bias), wheres, index32, dw_t in zip(
            plan.nodes, weights, indices, self._native_index, self._dw_t, strict=True
        ):
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
            for merged, dw, where, i32, wt in zip(node.merged, dws, wheres, index32, dw_t, strict=True):
                taps = [
                    (tap, lo, hi) for o, _, lo, hi in merged.spans if _hooked(tap := modules[f"op{node.ops[o].j}"].x)
                ]
                if kernel and not taps:
                    outs.append(native.gather_depthwise(bufs[merged.read.buffer], i32, wt, merged.stride))
                    continue
                x = gather_rows(bufs[merged.read.buffer], where)
                for tap, lo, hi in taps:
                    # each hooked op's tap on its own input; a copy when x is a view of a pooled
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
