"""transfer: a searched network's cells inside another macro-architecture (paper §3.3).

The paper moves its CIFAR-10 sparse model to ImageNet by keeping the searched cells and
changing what surrounds them: the input, the classes, the stem (two more stride-2 convolutions)
and the classifier. Here the target is a spec; everything that shapes a cell must be the same
as in the source (:data:`CELL_KEYS`), everything around the cells may differ.

The topology travels vertex by vertex: a cell's groups (a, b, d, x, y, z, c) have the same
sizes and the same source channels in both graphs, only their vertex ids move (a different
stem comes first), so each group's ``alive`` and ``saliency`` slice is copied to the group
with the same (kind, cell, node, op) in the target. Weights are a backend's business (a fresh
initialisation needs one); :func:`keep_weights` merges the source's with one by operation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnas_ir.errors import InputError
from cnas_ir.estimate import check_size
from cnas_ir.ir import Edge, Graph, Kind
from cnas_ir.passes.build import build_graph
from cnas_ir.spec import Spec
from cnas_ir.weights import weight_table

__all__ = ["CELL_KEYS", "check_transferable", "keep_weights", "transfer"]

# The keys of each space that shape a cell: a transfer keeps them. The rest of the spec (name,
# input, classes, data, train, search, nasnet.stem, spatial_dropout) may change.
CELL_KEYS: dict[str, tuple[str, ...]] = {
    "nasnet": ("channels", "stacks", "cells_per_stack", "nodes_per_cell", "ops_per_node", "stem_multiplier"),
    "densenet": ("growth_rate", "depth", "bottleneck_width", "compression"),
}

_CELL_KINDS = (Kind.A, Kind.B, Kind.D, Kind.X, Kind.Y, Kind.Z, Kind.C)


def check_transferable(source: Spec, target: Spec, where: str = "target spec") -> None:
    """Raise a one-line :class:`InputError` naming the first cell key the two specs disagree on."""
    if source.space != target.space:
        raise InputError(f"{where}: space is {target.space!r}, the searched network's is {source.space!r}")
    a, b = getattr(source, source.space), getattr(target, target.space)
    for key in CELL_KEYS[source.space]:
        if getattr(a, key) != getattr(b, key):
            raise InputError(
                f"{where}: {target.space}.{key} is {getattr(b, key)!r}, the searched network's is "
                f"{getattr(a, key)!r}; a transfer keeps the cell structure (only the input, classes, stem, "
                "data, train, search and spatial_dropout may change)"
            )


def _groups(g: Graph) -> dict[tuple[int, int, int, int], int]:
    cells = np.flatnonzero(np.isin(g.kind, _CELL_KINDS))
    return {(int(g.kind[i]), int(g.cell[i]), int(g.node[i]), int(g.op[i])): int(i) for i in cells}


def transfer(source: Graph, target: Spec, where: str = "target spec", max_memory: int | None = None) -> Graph:
    """The one-shot graph of ``target`` with ``source``'s live cell vertices and saliency.

    The result has no weights (train it, as the paper does, or see :func:`keep_weights`); its
    history is the source's followed by one ``transfer`` event.
    """
    check_transferable(source.spec, target, where)
    check_size(target, max_memory, where)  # a new input size or class count can make it huge
    g = build_graph(target)
    src_groups, dst_groups = _groups(source), _groups(g)
    assert src_groups.keys() == dst_groups.keys(), "same cell keys, different cell groups"
    alive, saliency = g.alive.copy(), g.saliency.copy()
    for key, s in src_groups.items():
        t = dst_groups[key]
        assert source.size[s] == g.size[t], f"{g.group_name(t)}: sizes differ"
        alive[g.group_slice(t)] = source.alive[source.group_slice(s)]
        saliency[g.group_slice(t)] = source.saliency[source.group_slice(s)]
    out = g.replace(alive=alive, saliency=saliency, history=source.history)
    out.verify()
    return out.with_event({"pass": "transfer", "from": source.spec.name, "to": target.name, "weights": "init"})


def keep_weights(source: Graph, graph: Graph, initial: dict[str, np.ndarray]) -> Graph:
    """``graph`` (a :func:`transfer` of ``source``) with the source's weights where they carry
    over and ``initial`` (a backend's fresh initialisation of ``graph``) elsewhere, by operation.

    An operation (bundle) keeps its weights when the source has every one of them under the
    same name and shape: a cell's convolutions and BatchNorms, and the head when the classes
    are the same. Otherwise (a new stem, a new classifier, a 1x1 preprocessing conv that became
    a factorized reduce) all of its weights come from ``initial``, its BatchNorm statistics too,
    since they describe the old operation's output. The transfer event records both lists.
    """
    if not source.weights:
        raise InputError(f"{source.spec.name}: the searched network has no trained weights to keep")
    by_bundle: dict[int, list[Any]] = {}
    for info in weight_table(graph).values():
        by_bundle.setdefault(info.bundle, []).append(info)
    weights = dict(initial)
    kept: list[str] = []
    fresh: list[str] = []
    for e, infos in sorted(by_bundle.items()):
        name = _operation_name(graph, e)
        if all(i.name in source.weights and source.weights[i.name].shape == i.shape for i in infos):
            weights.update({i.name: source.weights[i.name] for i in infos})
            kept.append(name)
        else:
            fresh.append(name)
    event = graph.history[-1] | {"weights": "keep", "kept": len(kept), "initialised": fresh}
    return graph.replace(weights=weights, history=graph.history[:-1] + (event,))


def _operation_name(g: Graph, e: int) -> str:
    """``stem.conv2``, ``cell1.d_a``, ``cell3.node2.op1``, ``head``: an operation, for messages."""
    kind, s, t = Edge(int(g.bundle_kind[e])), int(g.bundle_src[e]), int(g.bundle_dst[e])
    if Kind(int(g.kind[t])) == Kind.STEM:
        layer = int(g.op[t])
        return f"stem.conv{layer}" if layer else "stem"
    if kind in (Edge.HEAD_LINEAR, Edge.HEAD_BN_LINEAR):
        return "head"
    if Kind(int(g.kind[s])) == Kind.X:
        return g.group_name(s).removesuffix(".x")
    return g.group_name(t)
