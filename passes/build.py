"""build: spec -> one-shot channel graph, every vertex alive (SPEC §1, §2, §4.1)."""

from __future__ import annotations

import numpy as np

from cnas_ir.ir import Edge, Graph, Kind, VerifyError
from cnas_ir.spec import Spec

__all__ = ["build_graph", "check_one_shot"]


class _Builder:
    """Accumulates groups, x sources and bundles; vertex ids are handed out in group order."""

    def __init__(self) -> None:
        self.groups: list[tuple[int, int, int, int, int, int]] = []  # kind, cell, node, op, size, res
        self.bundles: list[tuple[int, int, int]] = []
        self.x_src: dict[int, np.ndarray] = {}
        self.starts: list[int] = []
        self.next_vertex = 0

    def group(self, kind: Kind, size: int, res: int, cell: int = 0, node: int = 0, op: int = 0) -> int:
        self.groups.append((kind, cell, node, op, size, res))
        self.starts.append(self.next_vertex)
        self.next_vertex += size
        return len(self.groups) - 1

    def edge(self, kind: Edge, src: int, dst: int) -> None:
        self.bundles.append((kind, src, dst))

    def size(self, g: int) -> int:
        return self.groups[g][4]

    def res(self, g: int) -> int:
        return self.groups[g][5]

    def x_group(self, sources: list[int], res: int, cell: int, node: int, op: int) -> int:
        """An op's own copy of every channel of ``sources``, with one COPY bundle per source."""
        x = self.group(Kind.X, sum(self.size(s) for s in sources), res, cell, node, op)
        self.x_src[x] = np.concatenate([np.arange(self.starts[s], self.starts[s] + self.size(s)) for s in sources])
        for s in sources:
            self.edge(Edge.COPY, s, x)
        return x

    def finish(self, spec: Spec) -> Graph:
        cols = np.array(self.groups, dtype=np.int64).reshape(-1, 6)
        V = self.next_vertex
        src = np.full(V, -1, dtype=np.int32)
        for g, s in self.x_src.items():
            src[self.starts[g] : self.starts[g] + self.size(g)] = s
        b = np.array(self.bundles, dtype=np.int64).reshape(-1, 3)
        graph = Graph(
            spec=spec,
            kind=cols[:, 0].astype(np.uint8),
            cell=cols[:, 1].astype(np.int16),
            node=cols[:, 2].astype(np.int16),
            op=cols[:, 3].astype(np.int16),
            start=np.array(self.starts, dtype=np.int64),
            size=cols[:, 4].copy(),
            res=cols[:, 5].astype(np.int32),
            alive=np.ones(V, dtype=np.bool_),
            src=src,
            saliency=np.full(V, np.nan, dtype=np.float32),
            bundle_kind=b[:, 0].astype(np.uint8),
            bundle_src=b[:, 1].astype(np.int32),
            bundle_dst=b[:, 2].astype(np.int32),
        )
        return graph.with_event({"pass": "build", "space": spec.space, "name": spec.name})


def _half(res: int) -> int:
    # Stride-2 3x3 (pad 1) and stride-2 1x1 convs both give ceil(res / 2).
    return (res + 1) // 2


def _build_nasnet(spec: Spec) -> Graph:
    p = spec.nasnet
    assert p is not None
    gb = _Builder()
    inp = gb.group(Kind.INPUT, spec.input.channels, spec.input.size)
    width = p.stem_multiplier * p.channels
    if p.stem == "imagenet":
        # Three stride-2 3x3 convs, in -> S/2 -> S -> S (paper §3.3); the first cell reads the
        # second layer's output as a (so its d_a is a factorized reduce) and the stem's as b.
        res = _half(spec.input.size)
        s1 = gb.group(Kind.STEM, (width + 1) // 2, res, op=1)
        gb.edge(Edge.STEM_CONV_BN, inp, s1)
        s2 = gb.group(Kind.STEM, width, _half(res), op=2)
        gb.edge(Edge.STEM_RELU_CONV_BN, s1, s2)
        stem = gb.group(Kind.STEM, width, _half(gb.res(s2)), op=3)
        gb.edge(Edge.STEM_RELU_CONV_BN, s2, stem)
        prev_prev, prev = s2, stem
    else:
        stem = gb.group(Kind.STEM, width, spec.input.size)
        gb.edge(Edge.STEM_CONV_BN, inp, stem)
        prev_prev, prev = stem, stem
    cell = 0
    for stack in range(p.stacks):
        width = p.channels * 2**stack
        for reduction in [True] * (stack > 0) + [False] * p.cells_per_stack:
            cell += 1
            res_in = gb.res(prev)
            res = _half(res_in) if reduction else res_in
            a = gb.group(Kind.A, gb.size(prev_prev), gb.res(prev_prev), cell)
            gb.edge(Edge.IDENTITY, prev_prev, a)
            b = gb.group(Kind.B, gb.size(prev), res_in, cell)
            gb.edge(Edge.IDENTITY, prev, b)
            d_a = gb.group(Kind.D, width, res_in, cell, op=1)
            gb.edge(Edge.FACTORIZED_REDUCE if gb.res(a) != res_in else Edge.PREPROCESS, a, d_a)
            d_b = gb.group(Kind.D, width, res_in, cell, op=2)
            gb.edge(Edge.PREPROCESS, b, d_b)
            states = [d_a, d_b]
            zs = []
            for node in range(1, p.nodes_per_cell + 1):
                ops = []
                for j in range(1, p.ops_per_node + 1):
                    x = gb.x_group(states, res, cell, node, j)
                    y = gb.group(Kind.Y, width, res, cell, node, j)
                    gb.edge(Edge.SEPCONV, x, y)
                    ops.append(y)
                z = gb.group(Kind.Z, width, res, cell, node)
                for y in ops:
                    gb.edge(Edge.ADD, y, z)
                states.append(z)
                zs.append(z)
            c = gb.group(Kind.C, width * p.nodes_per_cell, res, cell)
            for z in zs:
                gb.edge(Edge.CONCAT, z, c)
            prev_prev, prev = prev, c
    head = gb.group(Kind.HEAD, spec.classes, 1)
    gb.edge(Edge.HEAD_LINEAR, prev, head)
    return gb.finish(spec)


def _build_densenet(spec: Spec) -> Graph:
    p = spec.densenet
    assert p is not None
    k = p.growth_rate
    gb = _Builder()
    inp = gb.group(Kind.INPUT, spec.input.channels, spec.input.size)
    stem = gb.group(Kind.STEM, 2 * k, spec.input.size)
    gb.edge(Edge.STEM_CONV, inp, stem)
    prev = stem
    for block in range(1, 4):
        b = gb.group(Kind.B, gb.size(prev), gb.res(prev), block)
        gb.edge(Edge.IDENTITY, prev, b)
        if block == 1:
            d = gb.group(Kind.D, gb.size(b), gb.res(b), block, op=1)
            gb.edge(Edge.IDENTITY, b, d)
        else:
            # Transition: BN-ReLU-Conv1x1 (compression) - AvgPool2 (floors odd sizes).
            d = gb.group(Kind.D, int(gb.size(b) * p.compression), max(gb.res(b) // 2, 1), block, op=1)
            gb.edge(Edge.TRANSITION, b, d)
        res = gb.res(d)
        states = [d]
        for layer in range(1, p.layers_per_block + 1):
            x = gb.x_group(states, res, block, layer, 1)
            y = gb.group(Kind.Y, p.bottleneck_width * k, res, block, layer, 1)
            gb.edge(Edge.BOTTLENECK1, x, y)
            z = gb.group(Kind.Z, k, res, block, layer)
            gb.edge(Edge.BOTTLENECK2, y, z)
            states.append(z)
        c = gb.group(Kind.C, sum(gb.size(s) for s in states), res, block)
        for s in states:
            gb.edge(Edge.CONCAT, s, c)
        prev = c
    head = gb.group(Kind.HEAD, spec.classes, 1)
    gb.edge(Edge.HEAD_BN_LINEAR, prev, head)
    return gb.finish(spec)


def build_graph(spec: Spec) -> Graph:
    """The one-shot graph of ``spec``: every vertex alive, no weights, no saliency."""
    return _build_nasnet(spec) if spec.space == "nasnet" else _build_densenet(spec)


# What no pass changes: passes set the alive mask and saliency, training the weights.
_STRUCTURE = ("kind", "cell", "node", "op", "start", "size", "res", "src", "bundle_kind", "bundle_src", "bundle_dst")


def check_one_shot(graph: Graph) -> None:
    """Raise :class:`VerifyError` unless ``graph`` has the structure of its spec's one-shot graph
    (groups, their numbering, sizes and resolutions, the x vertices' sources, the bundles).

    A graph read from a file whose structure differs was damaged in a way the verifier's local
    checks can miss (an op numbered 128, a d group numbered 3), which the backends would meet as
    an index error. The column lengths are compared with the closed-form estimate first, so a
    damaged spec cannot make this build a huge graph.
    """
    from cnas_ir.estimate import estimate

    e = estimate(graph.spec)
    have, want = (graph.num_groups, graph.num_vertices, graph.num_bundles), (e.groups, e.vertices, e.bundles)
    if have != want:
        raise VerifyError(f"{have[0]} groups, {have[1]} vertices, {have[2]} bundles; the spec's one-shot graph "
                          f"has {want[0]}, {want[1]}, {want[2]}")  # fmt: skip
    ref = build_graph(graph.spec)
    for name in _STRUCTURE:
        if not np.array_equal(getattr(graph, name), getattr(ref, name)):
            raise VerifyError(f"column {name} differs from the spec's one-shot graph")
