"""The training path of a compact NASNet cell: the plan's state buffers under autograd.

A cell's ReLU'd states live side by side in one buffer per resolution, as the execution plan lays
them out (:mod:`cnas_ir.passes.plan`), stored as an (N*H*W, channels) matrix: the channels_last
order, in which a channel gather is a gather along rows. Every op reads its live x from the buffer
in one gather per stride, and ``relu(z_k)`` is written into its slot once. Autograd cannot follow
writes into a shared buffer at this cost (``index_select`` over a buffer gives each reader a
buffer-sized gradient, and each in-place write clones it), so three autograd Functions move the
gradients themselves, through one gradient buffer per state buffer:

- :class:`_Write` clamps ``z`` into its slot and returns a *token*, an empty tensor that stands
  for the state in the autograd graph; its backward reads the slot's gradient from the gradient
  buffer and applies the ReLU's mask;
- :class:`_Read` gathers the x of every op of a node (one output per op and stride); its backward
  scatter-adds their gradients into the gradient buffer and returns nothing for the tokens;
- :class:`_Output` returns the ReLU'd cell output (the z slots) for the next cells; its backward
  adds the output's gradient into the gradient buffer.

Order: every read takes the tokens of all the states written before it, and the output takes
them all, so autograd runs the backward of a write only after every reader that could have read
its slot (a token's producer waits for all its consumers): the slot's gradient is complete
when the write reads it. The first backward that needs a gradient buffer starts it: the cell
output's copies its gradient in and zeroes only the other columns (:meth:`_Store.add_grad`).

A node whose ops each read at one stride, the same for all, runs them merged when nothing hooks
them (:class:`~cnas_ir.passes.plan.PaddedRead`): one read of every op's copy, each padded to the
widest with zero-weight channels, one depthwise conv, one pointwise conv with a group per op and
one BatchNorm over all the ops' channels (each op's own batch statistics), then the sum over the
ops; otherwise each op reads, convolves and normalises on its own.

Forward and backward move each live x once (gather, scatter-add) plus the cell output once
(copy, add) and the ReLU'd states once (write, masked read); a per-op path on separate state
tensors adds a concatenation per op and a state-sized zero, scatter and add per (op, state) pair.
Where the buffers are float32 on the CPU, a read and its depthwise conv are one native kernel
call each way (:class:`_ReadConv`, :mod:`.native`): the gathered x and its gradient are never
written, and the training step of the paper config takes 0.89x the time (BENCHMARKS.md).
``cnas-ir train`` runs it in channels_last, which suits the convolutions (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.nn.modules import module as _torch_module

from cnas_ir.passes.plan import CellPlan, NodePlan, PaddedRead, Read

from . import native

__all__ = ["Pool", "conv1x1", "gather_columns", "hooked", "image", "reduce_pixels", "rows", "run_cell"]


def hooked(m: torch.nn.Module) -> bool:
    """Whether calling ``m`` can run a forward hook (its own or a global one)."""
    g = _torch_module
    return bool(m._forward_hooks or m._forward_pre_hooks or g._global_forward_hooks or g._global_forward_pre_hooks)


def conv1x1(conv: torch.nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a 1x1 conv (no padding), also when every input column was pruned.

    PyTorch returns 0 channels for a conv over 0 input channels; the sum over no inputs is 0.
    """
    if x.shape[1]:
        return conv(x)
    (s, _) = conv.stride
    n, _, h, w = x.shape
    # "+ 0 * sum(weight)" keeps the (empty) weight in the autograd graph, so DDP sees it used.
    return x.new_zeros(n, conv.out_channels, (h - 1) // s + 1, (w - 1) // s + 1) + 0 * conv.weight.sum()


def _layout(t: Tensor) -> torch.memory_format:
    """``t``'s memory format: channels_last when it is laid out so and not also channels-first."""
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


class _ReducePixels(Function):
    """What the two convs of a factorized reduce read from ``h`` = ReLU(a), as inputs of 1x1 convs
    of stride 1: the even pixels (conv1: a stride-2 conv of ``h``) and the odd ones (conv2: a
    stride-2 conv of ``h`` shifted up and left by one pixel), the odd zero-padded at the end to
    (ceil(H/2), ceil(W/2)) when H or W is odd. Both are copies in ``h``'s layout.

    A subsample copies a quarter of ``h``; padding ``h`` for the shift wrote all of it, and the
    backward of that pad and slice all of it again. Measured at the paper config's shapes
    (batch 32, channels_last, median of 20 interleaved calls): forward and backward 24.5 against
    44.8 ms at 180 x 32 x 32, 14.2 against 18.4 ms at 360 x 16 x 16; conv2's forward alone in
    eval 0.94 against 3.3 ms.

    The backward writes both gradients into one zeroed tensor in ``h``'s layout (the two pixel
    sets are disjoint). Autograd's own backward of the two slices made two channels-first
    tensors of ``h``'s size and added them: the gradient of a channels_last cell output then
    arrived channels-first, and the other readers' gradients were added to it and the sum
    transposed into the gradient buffer (38-45 ms per add or copy at 180 x 32 x 32, batch 32, in
    one traced step with page faults; the add now 5 ms and no transpose).
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        fmt = _layout(h)
        _, _, height, width = h.shape
        even = h[:, :, ::2, ::2].contiguous(memory_format=fmt)
        odd = h[:, :, 1::2, 1::2]
        if height % 2 or width % 2:
            odd = F.pad(odd, (0, width % 2, 0, height % 2))
        ctx.shape, ctx.fmt = h.shape, fmt
        return even, odd.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx: Any, g_even: Tensor | None, g_odd: Tensor | None) -> Tensor:  # type: ignore[override]
        like = g_even if g_even is not None else g_odd
        assert like is not None
        height, width = ctx.shape[2:]
        g = torch.empty(ctx.shape, dtype=like.dtype, device=like.device, memory_format=ctx.fmt).zero_()
        if g_even is not None:
            g[:, :, ::2, ::2] = g_even
        if g_odd is not None:
            g[:, :, 1::2, 1::2] = g_odd[:, :, : height // 2, : width // 2]
        return g


def reduce_pixels(h: Tensor) -> tuple[Tensor, Tensor]:
    """The inputs of a factorized reduce's two convs from ``h`` = ReLU(a): (even pixels, odd
    pixels), see :class:`_ReducePixels`."""
    even, odd = _ReducePixels.apply(h)
    return even, odd


def rows(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C): a view when ``t`` is channels_last, else a copy."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c)


def image(r: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """(N*H*W, C) -> (N, C, H, W) channels_last view; ``shape`` = (N, H, W)."""
    n, h, w = shape
    return r.view(n, h, w, r.shape[1]).permute(0, 3, 1, 2)


def gather_columns(r: Tensor, index: Tensor) -> Tensor:
    """Columns ``index`` of ``r`` (M, C): ``gather`` with the index broadcast over the rows,
    faster than ``index_select`` along dim 1 (BENCHMARKS.md)."""
    return r.gather(1, index.view(1, -1).expand(r.shape[0], -1))


class Pool:
    """Free buffers by (shape, dtype, device), reused across forward calls.

    A fresh buffer above glibc's mmap threshold (up to 32 MiB) is new memory every time, and the
    first write to each page faults: zeroing a cell's gradient buffer of the paper config
    (32,768 x 252 floats) took 50 ms fresh and 1 ms reused (measured), 13% of a training step in
    all. At most ``per_key`` buffers of one key are kept. Not state: a copy of a module starts
    with an empty pool.
    """

    def __init__(self, per_key: int = 2) -> None:
        self.per_key = per_key
        self._free: dict[tuple[object, ...], list[Tensor]] = {}

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous buffer of ``shape`` with ``like``'s dtype and device."""
        # An inference tensor (made under inference_mode) cannot be written outside it: its own key.
        free = self._free.get((shape, like.dtype, like.device, torch.is_inference_mode_enabled()))
        return free.pop() if free else like.new_empty(shape)

    def give(self, t: Tensor) -> None:
        """Take back ``t`` (contiguous, from :meth:`take`); nothing may use it afterwards."""
        free = self._free.setdefault((tuple(t.shape), t.dtype, t.device, t.is_inference()), [])
        if len(free) < self.per_key:
            free.append(t)

    def __deepcopy__(self, memo: dict[int, object]) -> Pool:
        return Pool(self.per_key)


class _Store:
    """One forward call's state buffers (N*H*W, channels) and their gradient buffers.

    The state buffers go back to the pool when the store dies (with the autograd graph that
    holds it: nothing outside the store sees them, see :class:`_Output`); the gradient buffers
    when the cell's backward is done (:meth:`done`), so cells of one shape share one.
    """

    def __init__(
        self, pool: Pool, shapes: list[tuple[int, int, int]], channels: list[int], like: Tensor, d_writes: int
    ) -> None:
        self.pool = pool
        self.shapes = shapes
        self.buffers = [pool.take((n * h * w, c), like) for (n, h, w), c in zip(shapes, channels, strict=True)]
        self.grads: list[Tensor | None] = [None] * len(self.buffers)
        # The writes of d_a and d_b (those the plan reads): the last backward of the cell. With
        # none, the gradient buffers are freed with the store, not given back to the pool.
        self._d_writes = self._pending = d_writes

    def _start(self, i: int) -> Tensor:
        """Gradient buffer ``i`` from the pool, with whatever it holds."""
        g = self.grads[i] = self.pool.take(tuple(self.buffers[i].shape), self.buffers[i])
        return g

    def grad(self, i: int) -> Tensor:
        """Gradient buffer ``i``, zeroed when this is its first gradient."""
        g = self.grads[i]
        return self._start(i).zero_() if g is None else g

    def add_grad(self, i: int, lo: int, dx: Tensor) -> None:
        """Add ``dx`` (M, c) to columns ``[lo, lo + c)`` of gradient buffer ``i``. The first
        gradient of a buffer (the cell output's, in a network) is copied into a fresh one and
        only the other columns are zeroed. Zeroing whole buffers took 54 ms of a paper-config
        training step at batch 32, now 11 ms; the step 0.95x (``bench_ab.py --train``, 21 rounds)."""
        g, hi = self.grads[i], lo + dx.shape[1]
        if g is not None:
            g[:, lo:hi] += dx
            return
        g = self._start(i)
        g[:, :lo].zero_()
        g[:, lo:hi] = dx
        g[:, hi:].zero_()

    def done(self) -> None:
        """One of the d writes' backward ran; after all, the gradient buffers are free."""
        self._pending -= 1
        if self._pending == 0:
            for g in self.grads:
                if g is not None:
                    self.pool.give(g)
            self.grads = [None] * len(self.buffers)
            self._pending = self._d_writes  # a retained graph may run backward again

    def __del__(self) -> None:
        for b in getattr(self, "buffers", ()):
            self.pool.give(b)


class _Write(Function):
    """``relu(z)`` into columns ``[lo, lo + C)`` of buffer ``i``; returns the state's token."""

    @staticmethod
    def forward(ctx: Any, store: _Store, i: int, lo: int, z: Tensor, last: bool) -> Tensor:  # type: ignore[override]
        n, c, h, w = z.shape
        slot = store.buffers[i][:, lo : lo + c]
        torch.clamp_min(z.permute(0, 2, 3, 1), 0, out=slot.view(n, h, w, c))
        ctx.store, ctx.i, ctx.lo, ctx.c, ctx.shape, ctx.last = store, i, lo, c, (n, h, w), last
        return z.new_empty(0)

    @staticmethod
    def backward(ctx: Any, _token: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        store: _Store = ctx.store
        g = store.grads[ctx.i]
        dz = None
        if g is not None:  # else nothing read the buffer
            sl = slice(ctx.lo, ctx.lo + ctx.c)
            dz = image(torch.ops.aten.threshold_backward(g[:, sl], store.buffers[ctx.i][:, sl], 0), ctx.shape)
        if ctx.last:
            store.done()
        return None, None, None, dz, None


class _Read(Function):
    """The channels of ``reads`` [(buffer, Read, index tensor or None)], one output each."""

    @staticmethod
    def forward(
        ctx: Any, store: _Store, reads: list[tuple[Read, Tensor | None]], *tokens: Tensor
    ) -> tuple[Tensor, ...]:  # type: ignore[override]
        outs = []
        for read, index in reads:
            buf = store.buffers[read.buffer]
            if index is None:
                assert read.run is not None
                x = buf[:, read.run[0] : read.run[1]].clone()  # never the pooled buffer itself
            else:
                x = gather_columns(buf, index)
            outs.append(image(x, store.shapes[read.buffer]))
        ctx.store, ctx.reads, ctx.tokens = store, reads, len(tokens)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *dxs: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        store: _Store = ctx.store
        for (read, index), dx in zip(ctx.reads, dxs, strict=True):
            if dx is None:
                continue
            if index is None:
                assert read.run is not None
                store.add_grad(read.buffer, read.run[0], rows(dx))
            else:
                g = store.grad(read.buffer)
                g.scatter_add_(1, index.view(1, -1).expand(g.shape[0], -1), rows(dx))
        return (None, None) + (None,) * ctx.tokens


class _Output(Function):
    """Columns ``[lo, lo + c)`` of buffer ``i``: the ReLU'd cell output."""

    @staticmethod
    def forward(ctx: Any, store: _Store, i: int, lo: int, c: int, *tokens: Tensor) -> Tensor:  # type: ignore[override]
        # A copy, also of a whole buffer (.contiguous() would return the buffer itself): the
        # buffer goes back to the pool, and a view of it could be overwritten.
        out = store.buffers[i][:, lo : lo + c].clone()
        ctx.store, ctx.i, ctx.lo, ctx.c, ctx.tokens = store, i, lo, c, len(tokens)
        return image(out, store.shapes[i])

    @staticmethod
    def backward(ctx: Any, dc: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        store: _Store = ctx.store
        store.add_grad(ctx.i, ctx.lo, rows(dc))
        return (None, None, None, None) + (None,) * ctx.tokens


class _ReadConv(Function):
    """The depthwise 3x3 conv of channels ``index`` (int32) of buffer ``i``, in one native kernel
    call that never makes the gathered x (:func:`.native.gather_depthwise`); its backward adds
    x's gradient straight into the gradient buffer and returns the weight's
    (:func:`.native.gather_depthwise_backward`). Over the 124 reads of a paper-config training
    step at batch 32 (rho 0.46), forward and backward took 0.63-0.77x the time of ``gather``, the
    conv, its backward and ``scatter_add_`` (measured).

    Dropout2d, which the PyTorch path applies to x, goes on the conv's output instead: the conv
    is per channel, so zeroing channel c of x zeroes channel c of the output, and both draw
    one mask of shape (N, channels, 1, 1).
    """

    @staticmethod
    def forward(ctx: Any, store: _Store, i: int, index: Tensor, weight: Tensor, stride: int, *tokens: Tensor) -> Tensor:  # type: ignore[override]
        k = weight.shape[0]
        ctx.store, ctx.i, ctx.index, ctx.stride, ctx.tokens = store, i, index, stride, len(tokens)
        ctx.weight_t = weight.detach().reshape(k, 9).t().contiguous()
        return native.gather_depthwise(image(store.buffers[i], store.shapes[i]), index, ctx.weight_t, stride)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        store: _Store = ctx.store
        x, g = (image(t, store.shapes[ctx.i]) for t in (store.buffers[ctx.i], store.grad(ctx.i)))
        dw_t = native.gather_depthwise_backward(dy, x, ctx.index, ctx.weight_t, ctx.stride, g)
        return (None, None, None, dw_t.t().reshape(-1, 1, 3, 3), None) + (None,) * ctx.tokens


def _per_op_node(
    store: _Store,
    node: NodePlan,
    indices: list[Tensor | None],
    ops: list[Any],
    tokens: list[Tensor],
    index32: list[Tensor | None] | None,
) -> Tensor:
    """z of a node whose ops run one by one: read(s), DW, PW and BN per op. With ``index32``
    (the gathers' channels as int32, where the native kernels take the buffers) and no hooked
    tap, each part's gather and DW conv are one :class:`_ReadConv`; a run (a slice of the
    buffer) is read once for all the ops that share it, as is every read otherwise."""
    # per read: its int32 channels where the kernel runs it, else None (PyTorch reads it)
    gathers: list[Tensor | None] = [None] * len(indices)
    if index32 is not None and not any(hooked(m.x) for m in ops):
        gathers = index32
    mine = [r for r, i32 in enumerate(gathers) if i32 is None]
    xs: dict[int, Tensor] = {}
    if mine:
        xs = dict(zip(mine, _Read.apply(store, [(node.reads[r], indices[r]) for r in mine], *tokens), strict=True))
    z: Tensor | None = None
    for op, m, ids in zip(node.ops, ops, node.part_reads, strict=True):
        hs = []
        for part, r in zip(op.parts, ids, strict=True):
            lo, hi = part.columns
            w = m.dw.weight[lo:hi]
            i32 = gathers[r]
            if i32 is not None:
                hs.append(m.drop(_ReadConv.apply(store, node.reads[r].buffer, i32, w, part.stride, *tokens)))
                continue
            x = xs[r]
            if hooked(m.x):
                x = m.x(x)
            x = m.drop(x)
            hs.append(F.conv2d(x, w, stride=part.stride, padding=1, groups=hi - lo))
        y = m.bn(m.pw(hs[0] if len(hs) == 1 else torch.cat(hs, 1)))
        z = y if z is None else z + y
    assert z is not None
    return z


def _mergeable(ops: list[Any]) -> bool:
    """Whether a node's ops may run merged: no hook waits on a module the merge does not call,
    and their BatchNorms agree on everything but their statistics."""
    if any(hooked(m) or hooked(m.x) or hooked(m.pw) or hooked(m.bn) for m in ops):
        return False
    return _same_batch_norms([m.bn for m in ops])


def _padded_node(
    store: _Store,
    plan: PaddedRead,
    index: Tensor | None,
    ops: list[Any],
    tokens: list[Tensor],
    width: int,
    index32: Tensor | None,
) -> Tensor:
    """z of a node whose ops run merged (:class:`~cnas_ir.passes.plan.PaddedRead`): one read,
    one DW conv (with ``index32``, the gather's channels as int32, one :class:`_ReadConv`), one PW
    conv with a group per op, one BatchNorm, and the sum over the ops."""
    n, j = plan.width, len(ops)
    dw = torch.cat([F.pad(m.dw.weight, (0, 0, 0, 0, 0, 0, 0, n - m.dw.weight.shape[0])) for m in ops])
    pw = torch.cat([F.pad(m.pw.weight, (0, 0, 0, 0, 0, n - m.pw.weight.shape[1])) for m in ops])
    # every op's dropout has the spec's probability; a channel is a channel
    if index32 is not None:  # a gather (a run is a slice, read once)
        h = ops[0].drop(_ReadConv.apply(store, plan.read.buffer, index32, dw, plan.stride, *tokens))
    else:
        (x,) = _Read.apply(store, [(plan.read, index)], *tokens)
        h = F.conv2d(ops[0].drop(x), dw, stride=plan.stride, padding=1, groups=j * n)
    y = F.conv2d(h, pw, groups=j)
    y = _batch_norm([m.bn for m in ops], y)
    if j == 1:
        return y
    nb, _, h, w = y.shape
    return image(_SumParts.apply(rows(y).view(-1, j, width)), (nb, h, w))


class _SumParts(Function):
    """(M, J, C) -> (M, C), the sum over J: the ops' outputs of a merged node, summed.

    As J - 1 adds of column slices: ``sum(1)`` reduces over a middle dimension several times
    slower (0.64 against 0.11 ms at 32,768 x 2 x 36, measured). The backward broadcasts the
    gradient to every part in one copy, contiguous, as the BatchNorm backward wants it.
    """

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:  # type: ignore[override]
        ctx.parts = y.shape[1]
        out = y[:, 0] + y[:, 1]
        for k in range(2, ctx.parts):
            out += y[:, k]
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        return g.unsqueeze(1).expand(-1, ctx.parts, -1).contiguous()


def _batch_norm(bns: list[torch.nn.BatchNorm2d], y: Tensor) -> Tensor:
    """BatchNorm of ``y``, whose channels are those of ``bns`` in order: what each module does
    to its own channels (batch statistics in training, running ones in eval; the running
    statistics and batch counters updated)."""
    bn = bns[0]
    assert bn.running_mean is not None and bn.running_var is not None
    mean = torch.cat([b.running_mean for b in bns])
    var = torch.cat([b.running_var for b in bns])
    factor = 0.0
    if bn.training:
        for b in bns:
            b.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    out = F.batch_norm(y, mean, var, None, None, bn.training, factor, bn.eps)
    if bn.training:
        at = 0
        with torch.no_grad():
            for b in bns:
                c = b.num_features
                b.running_mean.copy_(mean[at : at + c])
                b.running_var.copy_(var[at : at + c])
                at += c
    return out


def _same_batch_norms(bns: list[torch.nn.BatchNorm2d]) -> bool:
    """Whether one ``F.batch_norm`` call can stand for each of ``bns`` on its own channels
    (:func:`_batch_norm`): they agree on everything but their statistics."""
    bn = bns[0]
    if any((b.momentum, b.eps, b.training, b.affine) != (bn.momentum, bn.eps, bn.training, False) for b in bns):
        return False
    # a cumulative average (momentum None) weighs by the number of batches each has seen
    return bn.momentum is not None or not bn.training or len({int(b.num_batches_tracked) for b in bns}) == 1


class _Parts(Function):
    """(N, C_1 + ... + C_k, H, W) -> its channels in k consecutive parts of C_i (views). The
    backward writes the gradients into one tensor in ``y``'s layout; autograd's slice backward
    would make a zero-filled tensor of the whole for each part and add them."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, *sizes: int) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.sizes, ctx.shape, ctx.fmt = sizes, y.shape, _layout(y)
        return tuple(y.split(sizes, 1))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        like = next(gi for gi in grads if gi is not None)
        g = torch.empty(ctx.shape, dtype=like.dtype, device=like.device, memory_format=ctx.fmt)
        for part, gi in zip(g.split(ctx.sizes, 1), grads, strict=True):
            if gi is None:
                part.zero_()
            else:
                part.copy_(gi)
        return (g, *(None for _ in ctx.sizes))


def _stacked_preprocess(cell: Any, after: Any, b: Tensor) -> tuple[Tensor, ...] | None:
    """The 1x1 convs of ``b`` that ``cell``'s plan stacks (:attr:`CellPlan.stacked`; ``after``:
    the next cell) as one conv of their stacked rows and one BatchNorm (each module's own
    statistics): their outputs, in the plan's order. None when their BatchNorms differ in
    anything but their statistics (module state, which a user may change).

    One conv reads ``b`` once and its backward gives ``b`` one gradient, where two convs each
    made one and autograd added them. Forward and backward with the two BatchNorms, batch 32,
    channels_last: 18.5 against 23.3 ms at 180 -> 2 x 36 channels, 32 x 32; 10.2 against 12.9
    ms at 360 -> 2 x 72, 16 x 16 (measured).
    """
    mods = [((cell, after)[offset].d_a, (cell, after)[offset].d_b)[which] for offset, which in cell.plan.stacked]
    if not _same_batch_norms([m.bn for m in mods]):
        return None
    y = F.conv2d(b, torch.cat([m.conv.weight for m in mods]))
    y = _batch_norm([m.bn for m in mods], y)
    return _Parts.apply(y, *(m.conv.out_channels for m in mods))


def run_cell(
    cell: Any, a: Tensor, b: Tensor, relu_out: bool, d_a: Tensor | None = None, next_cell: Any = None
) -> tuple[Tensor, Tensor | None]:
    """A compact NASNet cell (``cell.plan``, its modules) on ReLU'd inputs ``a``, ``b``.

    Returns the cell output ReLU'd (``relu_out``, what the next cells read) or raw (the head,
    or a cell called on its own): (N, channels, H', W'), channels_last; and ``next_cell``'s d_a
    when it was computed here with this cell's d_b (:func:`_stacked_preprocess`), to be passed
    to the next call as ``d_a``. ``next_cell``: the cell after this one in the network's
    dataflow (``a`` and ``b`` then are what the plan says); None for a cell on its own, which
    stacks nothing. Each op's tap is called on its own input (one call per stride,
    in x order) when a hook waits on it.
    """
    plan: CellPlan = cell.plan
    n, _, h, w = b.shape
    shapes = [(n, h, w)] + ([(n, (h + 1) // 2, (w + 1) // 2)] if plan.reduction else [])
    store = _Store(cell.pool, shapes, [channels for channels, _ in plan.buffers], b, sum(plan.reads_d))
    width = plan.width
    # d_a, d_b (raw) where the plan reads them, and the next cell's d_a when stacked with d_b
    d: dict[tuple[int, int], Tensor] = {} if d_a is None else {(0, 0): d_a}
    stacked = _stacked_preprocess(cell, next_cell, b) if next_cell is not None and plan.stacked else None
    if stacked is not None:
        d.update(zip(plan.stacked, stacked, strict=True))
    tokens = []
    for which, (x, module) in enumerate(((a, cell.d_a), (b, cell.d_b))):
        if plan.reads_d[which]:
            raw = d[(0, which)] if (0, which) in d else module.on_relu(x)
            tokens.append(_Write.apply(store, 0, which * width, raw, True))
        elif module.training:  # unread: only its BatchNorm's running statistics move, as in masked mode
            with torch.no_grad():
                module.on_relu(x)
    handoff = d.get((1, 0))
    zs: list[Tensor] = []
    indices = cell.plan_indices(b.device)
    # the reads and DW convs as native kernels where they take the buffers
    indices32 = cell.plan_indices(b.device, torch.int32) if native.trains(b) and native.available() else None
    zshape = shapes[-1]
    for i, (node, node_indices) in enumerate(zip(plan.nodes, indices, strict=True)):
        if not node.computed:
            continue
        assert node.slot is not None
        buf, off = node.slot
        if not node.ops:  # a live z whose ops are all dead is zero
            store.buffers[buf][:, off : off + width].zero_()
            if not relu_out:
                zs.append(b.new_zeros(zshape[0], width, zshape[1], zshape[2]))
            continue
        modules = getattr(cell, f"node{node.k}")
        ops = [modules[f"op{op.j}"] for op in node.ops]
        reads, padded = node_indices
        reads32, padded32 = indices32[i] if indices32 is not None else (None, None)
        if node.padded is not None and _mergeable(ops):
            z = _padded_node(store, node.padded, padded, ops, tokens, width, padded32)
        else:
            z = _per_op_node(store, node, reads, ops, tokens, reads32)
        if node.read_later or relu_out:
            tokens.append(_Write.apply(store, buf, off, z, False))
        if not relu_out:
            zs.append(z)
    if relu_out:
        i, lo, c = plan.output
        return _Output.apply(store, i, lo, c, *tokens), handoff
    if not zs:
        return b.new_zeros(zshape[0], 0, zshape[1], zshape[2]), handoff
    return (zs[0] if len(zs) == 1 else torch.cat(zs, 1)), handoff
