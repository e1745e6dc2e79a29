"""CUDA graph replay of an eval-mode network: one kernel-launch sequence recorded per input shape.

At small batches an eager network on a GPU is bound by kernel launches, not by its arithmetic: the
compact paper network took 16.5 ms at batch 1 eager and 1.88 ms replayed on an H200
(BENCHMARKS.md, GPU). :class:`CudaGraphReplay` wraps a module in eval mode: the first call with a
new input shape warms the module up on a side stream and captures one forward into a CUDA graph
with a static input and output; every later call of that shape copies its input into the static
one, replays the graph and returns a copy of the static output.

The graph holds what the module computed with at capture: its weights, and the BatchNorm folding
of the fused path. :meth:`CudaGraphReplay.reset` drops the graphs after the weights change. The
state buffers of the network's cells (their :class:`~.buffered.Pool`) are replaced by a pool of
the graph's own during warm-up and capture, so no later eager call can take memory a graph
writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .buffered import Pool

__all__ = ["CudaGraphReplay"]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_in: Tensor
    static_out: Tensor
    pool: Pool  # the cells' buffers while capturing: kept alive with the graph


class CudaGraphReplay(nn.Module):
    """``module`` (on a CUDA device) in eval mode, its forward replayed from a CUDA graph per
    input (shape, dtype, strides). At most ``max_graphs`` shapes are captured (a data set's full
    batch and its last, shorter one, say); another shape runs eagerly. Outputs are new tensors."""

    def __init__(self, module: nn.Module, max_graphs: int = 4, warmup: int = 3) -> None:
        super().__init__()
        params = [*module.parameters(), *module.buffers()]
        if not torch.cuda.is_available() or not params or any(p.device.type != "cuda" for p in params):
            raise ValueError("CUDA graph replay needs the module on a CUDA device")
        self.module = module.eval()
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: dict[tuple[object, ...], _Captured] = {}

    def train(self, mode: bool = True) -> CudaGraphReplay:
        if mode:
            raise ValueError("CUDA graph replay is for eval mode only")
        return super().train(False)

    def reset(self) -> None:
        """Drop the captured graphs (after the module's weights changed)."""
        self._graphs.clear()

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graph replay: the input is on {x.device}, the module on a CUDA device")
        key = (tuple(x.shape), x.dtype, x.device, x.stride())
        captured = self._graphs.get(key)
        if captured is None:
            if len(self._graphs) >= self.max_graphs:
                with torch.inference_mode():
                    return self.module(x)
            captured = self._graphs[key] = self._capture(x)
        with torch.no_grad():
            captured.static_in.copy_(x)
            captured.graph.replay()
            return captured.static_out.clone()

    def _capture(self, x: Tensor) -> _Captured:
        pools = [m for m in self.module.modules() if isinstance(getattr(m, "pool", None), Pool)]
        saved = [m.pool for m in pools]
        pool = Pool()
        for m in pools:
            m.pool = pool
        try:
            static_in = x.clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(self.warmup):
                    self.module(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                static_out = self.module(static_in)
        finally:
            for m, p in zip(pools, saved, strict=True):
                m.pool = p
        return _Captured(graph, static_in, static_out, pool)
