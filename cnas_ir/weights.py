"""Names and one-shot shapes of every weight a graph's network holds.

This is the contract between the IR, the ``.cnas`` file and the backends: a weight is stored
under its name in its one-shot (dense) shape, whatever is pruned; ``axes`` says which vertex
group indexes each axis, so a backend compacts a weight by taking the live indices of those
groups, and writes a compact weight back by scattering into the one-shot array.
Conv weights use PyTorch's layout (out, in, kh, kw); linear weights (out, in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnas_ir.ir import Edge, Graph, Kind

__all__ = ["WeightInfo", "compact", "live_index", "weight_table"]


@dataclass(frozen=True)
class WeightInfo:
    name: str
    shape: tuple[int, ...]
    axes: tuple[int | None, ...]  # per axis: the group whose vertices index it, or None
    buffer: bool  # BatchNorm running statistics: state, not parameters
    bundle: int  # the bundle (operation) the weight belongs to


def _op_prefix(g: Graph, group: int) -> str:
    return f"cell{int(g.cell[group])}.node{int(g.node[group])}.op{int(g.op[group])}"


def weight_table(g: Graph) -> dict[str, WeightInfo]:
    """Every parameter and buffer of the network, in a fixed order (bundle order)."""
    out: dict[str, WeightInfo] = {}
    size = g.size

    def add(name: str, shape: tuple[int, ...], axes: tuple[int | None, ...], e: int, buffer: bool = False) -> None:
        out[name] = WeightInfo(name, tuple(int(n) for n in shape), axes, buffer, e)

    def bn(prefix: str, group: int, e: int, affine: bool) -> None:
        n = size[group]
        if affine:
            add(f"{prefix}.weight", (n,), (group,), e)
            add(f"{prefix}.bias", (n,), (group,), e)
        add(f"{prefix}.running_mean", (n,), (group,), e, buffer=True)
        add(f"{prefix}.running_var", (n,), (group,), e, buffer=True)

    for e in range(g.num_bundles):
        kind, s, t = Edge(int(g.bundle_kind[e])), int(g.bundle_src[e]), int(g.bundle_dst[e])
        if kind in (Edge.STEM_CONV_BN, Edge.STEM_CONV, Edge.STEM_RELU_CONV_BN):
            layer = int(g.op[t]) or ""  # stem.conv (one layer), stem.conv1..3 (ImageNet stem)
            add(f"stem.conv{layer}.weight", (size[t], size[s], 3, 3), (t, s, None, None), e)
            if kind != Edge.STEM_CONV:
                bn(f"stem.bn{layer}", t, e, affine=True)
        elif kind == Edge.PREPROCESS:
            p = g.group_name(t)
            add(f"{p}.conv.weight", (size[t], size[s], 1, 1), (t, s, None, None), e)
            bn(f"{p}.bn", t, e, affine=False)
        elif kind == Edge.FACTORIZED_REDUCE:
            p = g.group_name(t)
            half = int(size[t]) // 2
            add(f"{p}.conv1.weight", (half, size[s], 1, 1), (None, s, None, None), e)
            add(f"{p}.conv2.weight", (size[t] - half, size[s], 1, 1), (None, s, None, None), e)
            bn(f"{p}.bn", t, e, affine=False)
        elif kind == Edge.SEPCONV:
            p = _op_prefix(g, s)
            add(f"{p}.dw.weight", (size[s], 1, 3, 3), (s, None, None, None), e)
            add(f"{p}.pw.weight", (size[t], size[s], 1, 1), (t, s, None, None), e)
            bn(f"{p}.bn", t, e, affine=False)
        elif kind == Edge.BOTTLENECK1:
            p = _op_prefix(g, s)
            bn(f"{p}.bn1", s, e, affine=True)
            add(f"{p}.conv1.weight", (size[t], size[s], 1, 1), (t, s, None, None), e)
        elif kind == Edge.BOTTLENECK2:
            p = _op_prefix(g, s)
            bn(f"{p}.bn2", s, e, affine=True)
            add(f"{p}.conv2.weight", (size[t], size[s], 3, 3), (t, s, None, None), e)
        elif kind == Edge.TRANSITION:
            p = g.group_name(t)
            bn(f"{p}.bn", s, e, affine=True)
            add(f"{p}.conv.weight", (size[t], size[s], 1, 1), (t, s, None, None), e)
        elif kind in (Edge.HEAD_LINEAR, Edge.HEAD_BN_LINEAR):
            if kind == Edge.HEAD_BN_LINEAR:
                bn("head.bn", s, e, affine=True)
            add("head.linear.weight", (size[t], size[s]), (t, s), e)
            add("head.linear.bias", (size[t],), (t,), e)
        else:
            assert Kind(int(g.kind[t])) in (Kind.X, Kind.Z, Kind.C, Kind.A, Kind.B, Kind.D), kind
    return out


def live_index(g: Graph, group: int, alive: np.ndarray | None = None) -> np.ndarray:
    """int64[k]: positions (within the group) of the group's live vertices."""
    a = g.alive if alive is None else alive
    return np.flatnonzero(a[g.group_slice(group)])


def compact(g: Graph, info: WeightInfo, array: np.ndarray) -> np.ndarray:
    """The live part of a one-shot weight: ``array`` indexed by live vertices along each axis."""
    out = array
    for axis, group in enumerate(info.axes):
        if group is not None:
            out = np.take(out, live_index(g, group), axis=axis)
    return out
