"""Taylor saliency (CNAS Algorithm 1, after Molchanov et al. 2017) on the compact module.

For every live x vertex -- one channel of one operation's *own* copy of its inputs -- and every
image, take the spatial mean of ``x * dL/dx`` over that copy, its magnitude, and sum over the
``batches`` minibatches (float32, whatever the module's precision). The weights are frozen and
the module is in eval mode (BN running statistics, no dropout), so the scores are a function
of the weights and the data. Then each operation's scores are L2-normalised (the paper's
layer-wise normalisation).

The paper ranks by ``1 / (x * dx)`` after the reduction and zeroes the *largest*; we keep the
importance ``|mean(x * dx)|`` and zero the *smallest*: the same order, without dividing by zero
(a vertex whose channel is all zero scores 0, the least important, instead of infinity).

Per-copy gradients: ops of a node may share one gathered tensor in the forward pass; each
op's probe takes a view of it (``view_as``), and autograd gives each view only the gradient of
its own consumer -- so dL/dx is that op's copy's gradient, not the sum over the copies.
x is the ReLU'd copy: since dL/dx = 0 where the pre-activation is negative and relu(x) = x
elsewhere, ``x * dx`` is the same before or after the ReLU.

Distributed (torchrun): each minibatch is a *global* batch of ``batch_size`` images, and every
rank takes every ``world``-th image of it. In eval mode an image's score does not depend on the
other images of its batch and the loss is a sum over images, so the rank sums, added up by an
all-reduce before normalisation, are the single-process scores (to float rounding): every rank
holds the same saliency and prunes the same vertices. With ``amp="bf16"`` the forward runs
under autocast; the products and sums stay float32.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cnas_ir.ir import Graph
from cnas_ir.passes.fold import fold
from cnas_ir.passes.prune import normalize_per_op

from . import distributed
from .data import Split
from .layers import Tap
from .lower import CnasModule, lower
from .train import autocast, cpu_threads, pick_device

__all__ = ["TaylorAccumulator", "raw_taylor_scores", "taylor_saliency"]


class _Recorder:
    """Forward hook on an op's x tap: keeps each x view (one per stride group, in x order) and
    accumulates its score after the backward pass."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.views: list[Tensor] = []
        self.score = torch.zeros(n, dtype=torch.float32, device=device)

    def __call__(self, module: torch.nn.Module, inputs: object, out: Tensor) -> None:
        out.retain_grad()
        self.views.append(out)

    def collect(self) -> None:
        parts = []
        for v in self.views:
            g = v.grad if v.grad is not None else torch.zeros_like(v)
            # (N, n, H, W) -> per image and channel the spatial mean of x * dx, magnitude, summed
            parts.append((v.detach().float() * g.float()).mean(dim=(2, 3)).abs().sum(0))
        if parts:
            self.score += torch.cat(parts)
        self.views.clear()


def _taps(module: CnasModule) -> dict[str, torch.nn.Module]:
    """The ``cellI.nodeK.opJ.x`` tap of every op in the module, by op name."""
    return {name.removesuffix(".x"): m for name, m in module.named_modules() if isinstance(m, Tap)}


class TaylorAccumulator:
    """Algorithm 1's loop body on a lowered module: ``step`` runs one minibatch forward and
    backward with the weights frozen and adds its scores; ``scores`` maps them to vertices.

    ``graph`` must be folded and ``module`` its compact lowering (in eval mode).
    """

    def __init__(self, graph: Graph, module: CnasModule) -> None:
        self.graph = graph
        self.module = module
        for p in module.parameters():
            p.requires_grad_(False)
        dev = next(module.parameters()).device
        self._ops = {f"cell{op.cell}.node{op.node}.op{op.j}": op for op in graph.ops}
        self._recorders: dict[str, _Recorder] = {}
        self._handles = []
        for name, tap in _taps(module).items():
            n = int(graph.alive[graph.group_slice(self._ops[name].x)].sum())
            rec = self._recorders[name] = _Recorder(n, dev)
            self._handles.append(tap.register_forward_hook(rec))

    def step(self, images: Tensor, labels: Tensor) -> None:
        """images (N, C, H, W) float, labels (N,) int64, on the module's device (N = 0: nothing)."""
        if len(labels) == 0:
            return
        images = images.requires_grad_(True)  # lets autograd reach the x taps
        F.cross_entropy(self.module(images).float(), labels, reduction="sum").backward()
        for rec in self._recorders.values():
            rec.collect()

    def all_reduce(self) -> None:
        """Sum the accumulated scores over the ranks of the process group (every rank must
        call it); nothing in a single process."""
        if not distributed.is_distributed() or not self._recorders:
            return
        recs = list(self._recorders.values())
        flat = distributed.all_reduce_sum(torch.cat([r.score for r in recs]))
        for rec, part in zip(recs, flat.split([r.score.numel() for r in recs]), strict=True):
            rec.score.copy_(part)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def scores(self) -> np.ndarray:
        """float32[V]: accumulated scores of the live x vertices, NaN elsewhere."""
        g = self.graph
        out = np.full(g.num_vertices, np.nan, dtype=np.float32)
        for name, rec in self._recorders.items():
            sl = g.group_slice(self._ops[name].x)
            out[np.flatnonzero(g.alive[sl]) + sl.start] = rec.score.cpu().numpy()
        return out


def raw_taylor_scores(
    graph: Graph,
    data: Split,
    *,
    batches: int,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    amp: str = "off",
    channels_last: bool = True,
) -> np.ndarray:
    """float32[V]: the accumulated ``|mean_hw(x * dL/dx)|`` of every live x vertex of the folded
    graph (NaN elsewhere), before normalisation, over the first ``batches`` minibatches of a
    seeded shuffle of ``data`` (``batch_size`` defaults to the spec's). Needs weights.

    In a process group every rank must call it with the same arguments; each scores its share
    of every minibatch and all return the sum (module docstring)."""
    g = fold(graph)
    dev = pick_device(device)
    batch_size = batch_size or g.spec.train.batch_size
    module = lower(g, "compact").to(dev)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    acc = TaylorAccumulator(g, module.eval())
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_batches = min(batches, max(1, (len(data) + batch_size - 1) // batch_size))
    rank, world = distributed.rank(), distributed.world_size()
    try:
        with cpu_threads(dev, g, None), autocast(dev, amp):  # the trainer's thread policy
            for b in range(n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size][rank::world]
                images = data.images[idx].to(dev)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                acc.step(images, data.labels[idx].to(dev))
        acc.all_reduce()
    finally:
        acc.close()
    return acc.scores()


def taylor_saliency(
    graph: Graph,
    data: Split,
    *,
    batches: int,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    amp: str = "off",
    channels_last: bool = True,
) -> Graph:
    """``graph`` (folded) with the L2-normalised Taylor saliency of every live x vertex."""
    if not graph.weights:
        raise ValueError("taylor saliency needs trained weights")
    g = fold(graph)
    raw = raw_taylor_scores(
        g, data, batches=batches, batch_size=batch_size, device=device, seed=seed, amp=amp, channels_last=channels_last
    )
    return g.replace(saliency=normalize_per_op(g, np.nan_to_num(raw)))
