"""Layers the NASNet and DenseNet lowerings share: the gather of an op's input channels from the
cell's states, the saliency tap, the stems and the classifier head.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Cache", "Gather", "Head", "ImagenetStem", "Piece", "Stem", "Tap", "channel_mask"]

# One piece of an operation's input: (state id within the cell, channel positions in that state).
Piece = tuple[int, np.ndarray]
# A per-forward cache of gathered inputs shared by the ops of a cell that read the same channels.
Cache = dict[tuple[object, ...], Tensor]


class Gather(nn.Module):
    """Concatenates chosen channels of a cell's states: an op's own copy of its inputs.

    ``pieces`` lists, in x order, (state, positions) pairs; a piece that is a whole state or a
    contiguous range is a view, any other is an ``index_select`` with a stored index.
    Input: the cell's states, each (N, size, H, W) (None for a state nobody reads).
    Output: (N, sum of piece lengths, H, W).
    """

    def __init__(self, pieces: Sequence[Piece], state_sizes: Sequence[int]) -> None:
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

    def cached(self, states: Sequence[Tensor | None], cache: Cache) -> Tensor:
        x = cache.get(self.key)
        if x is None:
            x = cache[self.key] = self(states)
        return x


# ---- NASNet building blocks -----------------------------------------------------------------


class Tap(nn.Module):
    """The op's own copy x of its input channels, as a fresh view: a hook point for saliency.

    Ops reading the same channels may share one gathered tensor; the view gives each op its own
    autograd node, so a tensor hook on this module's output sees that op's own gradient δx.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.view_as(x)


class Stem(nn.Module):
    """Conv3x3 (pad 1, no bias), then BN(affine) for NASNet. (N, 3, H, W) -> (N, out, H, W)."""

    def __init__(self, cin: int, cout: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


class ImagenetStem(nn.Module):
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


class Head(nn.Module):
    """[BN(affine) + ReLU +] global average pool + Linear. (N, cin, H, W) -> (N, classes)."""

    def __init__(self, cin: int, classes: int, bn: bool, mask: np.ndarray | None) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin) if bn else None
        self.linear = nn.Linear(cin, classes)
        self.register_buffer("mask", None if mask is None else channel_mask(mask), persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        if self.bn is not None:
            c = F.relu(self.bn(c))
            if self.mask is not None:
                c = c * self.mask
        return self.linear(c.mean((2, 3)))


def channel_mask(mask: np.ndarray) -> Tensor:
    return torch.tensor(mask, dtype=torch.float32).view(1, -1, 1, 1)
