"""The DenseNet-BC blocks as PyTorch modules: transition, bottleneck layer and dense block."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Cache, Gather, Piece, Tap, channel_mask

__all__ = ["Bottleneck", "DenseBlock", "Transition"]


class Transition(nn.Module):
    """d = AvgPool2(Conv1x1(ReLU(BN(b)))), BN affine. (N, cin, H, W) -> (N, cout, H//2, W//2)."""

    def __init__(self, cin: int, cout: int, mask: np.ndarray | None) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.register_buffer("mask", None if mask is None else channel_mask(mask), persistent=False)

    def forward(self, b: Tensor) -> Tensor:
        h = F.relu(self.bn(b))
        if self.mask is not None:  # BN maps a dead (zero) channel to a constant: cut it again
            h = h * self.mask
        h = self.conv(h)
        return F.avg_pool2d(h, 2) if h.shape[-1] > 1 else h


class Bottleneck(nn.Module):
    """z = Conv3x3(ReLU(BN2(Conv1x1(ReLU(BN1(x)))))): (N, n_x, H, W) -> (N, k, H, W).

    ``x`` is a hook point that sees the op's copy of its input channels (after the mask).
    """

    def __init__(
        self,
        pieces: Sequence[Piece],
        state_sizes: Sequence[int],
        growth: int,
        bottleneck: int,
        dropout: float,
        mask: np.ndarray | None,
        alive: bool,
    ) -> None:
        super().__init__()
        self.gather = Gather(pieces, state_sizes)
        self.x = Tap()
        n = self.gather.channels
        self.bn1 = nn.BatchNorm2d(n)
        self.conv1 = nn.Conv2d(n, bottleneck, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.masked = mask is not None
        if mask is not None:
            self.register_buffer("mask", channel_mask(mask), persistent=False)
            self.register_buffer("alive", torch.tensor(float(alive)), persistent=False)

    def forward(self, states: Sequence[Tensor | None], cache: Cache) -> Tensor:
        x = self.gather.cached(states, cache)
        if self.masked:
            x = x * self.mask
        h = F.relu(self.bn1(self.x(x)))
        if self.masked:  # BN1 maps a dead (zero) x to its bias: cut it again before conv1
            h = h * self.mask
        h = self.conv1(self.drop(h))
        z = self.conv2(F.relu(self.bn2(h)))
        return z * self.alive if self.masked else z


class DenseBlock(nn.Module):
    """One dense block: b -> c = concat(d, z_1, ..., z_n) (computed z only in compact mode)."""

    def __init__(
        self,
        transition: Transition | None,
        nodes: Sequence[tuple[bool, Bottleneck | None]],
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
        cache: Cache = {}
        for k, (computed, has_op) in enumerate(self._nodes, 1):
            if not computed:
                states.append(None)
            elif has_op:
                states.append(getattr(self, f"node{k}")["op1"](states, cache))
            else:
                n, _, h, w = d.shape
                states.append(d.new_zeros(n, self.growth, h, w))
        return torch.cat([s for s in states if s is not None], 1)
