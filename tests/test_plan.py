"""The execution plan (``cnas_ir.passes.plan``) against the IR it is made from.

Each check rebuilds what the plan claims from the graph's own columns (x -> source vertex, groups)
and from a buffer filled with codes ``1000 * state + channel``, so a read is checked by what it
would gather, not by how the plan computed it.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_pytorch_lower import nasnet_graph, random_alive

from cnas_ir.ir import Edge, Graph, Kind
from cnas_ir.passes.fold import live_closure
from cnas_ir.passes.plan import CellPlan, nasnet_plan

GRAPHS = {
    "nasnet": lambda: nasnet_graph(),
    "nasnet-3ops": lambda: nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3),
    "nasnet-2x2": lambda: nasnet_graph(channels=6, stacks=2, cells=2, nodes=2, ops=1),
}


def _closed(g: Graph) -> Graph:
    return g.replace(alive=live_closure(g))


def _coded_buffers(plan: CellPlan) -> list[np.ndarray]:
    """One row per buffer: channel i holds 1000 * state + channel of the state that sits there."""
    bufs = [np.full(channels, -1, np.int64) for channels, _ in plan.buffers]
    for s, slot in enumerate(plan.state_slot):
        if slot is not None:
            b, off = slot
            bufs[b][off : off + plan.width] = 1000 * s + np.arange(plan.width)
    return bufs


@pytest.mark.parametrize("space", GRAPHS)
@pytest.mark.parametrize(("seed", "fold"), [(0, True), (1, False), (2, True)])
def test_op_reads_gather_the_sources_of_its_live_x(space: str, seed: int, fold: bool) -> None:
    g = _closed(random_alive(GRAPHS[space](), seed, fold=fold))
    vg = g.vertex_group
    plans = nasnet_plan(g, g.alive)
    assert len(plans) == len(g.cells)
    for cell, plan in zip(g.cells, plans, strict=True):
        states = [*cell.d, *(node.z for node in cell.nodes)]
        bufs = _coded_buffers(plan)
        for node, node_plan in zip(cell.nodes, plan.nodes, strict=True):
            z_live = bool(g.alive[g.group_slice(node.z)].all())
            assert node_plan.computed == z_live
            for op_plan in node_plan.ops:
                (op,) = [op for op in node.ops if op.j == op_plan.j]
                sl = g.group_slice(op.x)
                src = g.src[sl.start + np.flatnonzero(g.alive[sl])]
                want = np.array([1000 * states.index(int(vg[s])) + s - g.start[vg[s]] for s in src])
                got = np.concatenate([bufs[p.read.buffer][p.read.index] for p in op_plan.parts])
                np.testing.assert_array_equal(got, want)
                # parts tile the op's x in order; a reduction cell reads d at stride 2, z at stride 1
                cols = [c for p in op_plan.parts for c in p.columns]
                assert cols[0] == 0 and cols[-1] == src.size and cols[1:-1:2] == cols[2:-1:2]
                for p in op_plan.parts:
                    from_d = g.kind[vg[src[p.columns[0] : p.columns[1]]]] == Kind.D
                    assert p.stride == (2 if plan.reduction and from_d.all() else 1)
                    assert plan.reduction or p.stride == 1
                    assert (p.read.run is not None) == bool(np.all(np.diff(p.read.index) == 1))
                # shared reads: what the part reads is one of the node's distinct reads
            for op_plan, ids in zip(node_plan.ops, node_plan.part_reads, strict=True):
                for p, r in zip(op_plan.parts, ids, strict=True):
                    np.testing.assert_array_equal(node_plan.reads[r].index, p.read.index)
            assert len({r.index.tobytes() for r in node_plan.reads}) == len(node_plan.reads)


@pytest.mark.parametrize("seed", [0, 3])
def test_merged_reads_are_the_ops_reads_in_order(seed: int) -> None:
    g = _closed(random_alive(nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3), seed))
    for plan in nasnet_plan(g, g.alive):
        for node in plan.nodes:
            strides = [m.stride for m in node.merged]
            assert strides == sorted(set(strides), reverse=True)
            for m in node.merged:
                pieces = [node.ops[o].parts[q] for o, q, _, _ in m.spans]
                assert all(p.stride == m.stride for p in pieces)
                np.testing.assert_array_equal(m.read.index, np.concatenate([p.read.index for p in pieces]))
                assert [hi - lo for _, _, lo, hi in m.spans] == [p.read.channels for p in pieces]


def test_buffers_and_output_of_the_unpruned_network() -> None:
    g = nasnet_graph(channels=4, stacks=3, cells=1, nodes=3, ops=2)
    for cell, plan in zip(g.cells, nasnet_plan(g, g.alive), strict=True):
        w, k = cell.width, len(cell.nodes)
        if plan.reduction:  # d at the input resolution, the z at the reduced one
            assert [c for c, _ in plan.buffers] == [2 * w, k * w]
            assert plan.output == (1, 0, k * w)
        else:
            assert [c for c, _ in plan.buffers] == [(2 + k) * w]
            assert plan.output == (0, 2 * w, k * w)
        assert plan.buffers[-1][1] == cell.res
        # every node reads all earlier states, so each state but the last z is read later
        assert [n.read_later for n in plan.nodes] == [True] * (k - 1) + [False]


def test_masked_plan_keeps_every_op_and_node() -> None:
    g = random_alive(nasnet_graph(), 4)
    keep = np.ones_like(g.alive)
    for cell, plan in zip(g.cells, nasnet_plan(g, keep), strict=True):
        assert all(n.computed for n in plan.nodes)
        assert [len(n.ops) for n in plan.nodes] == [len(n.ops) for n in cell.nodes]
        for node, n in zip(cell.nodes, plan.nodes, strict=True):
            for op, op_plan in zip(node.ops, n.ops, strict=True):
                assert op_plan.channels == int(g.size[op.x])


@pytest.mark.parametrize("seed", [0, 5])
def test_padded_reads_are_the_ops_reads_padded_with_their_first_channel(seed: int) -> None:
    g = _closed(random_alive(nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3), seed))
    merged = 0
    for plan in nasnet_plan(g, g.alive):
        bufs = _coded_buffers(plan)
        for node in plan.nodes:
            one_stride = bool(node.ops) and all(len(op.parts) == 1 for op in node.ops)
            one_stride = one_stride and len({op.parts[0].stride for op in node.ops}) == 1
            shared = len(node.ops) > 1 and len(node.reads) == 1
            assert (node.padded is not None) == (node.computed and one_stride and not shared)
            if node.padded is None:
                continue
            merged += 1
            p = node.padded
            assert p.width == max(op.channels for op in node.ops)
            got = bufs[p.read.buffer][p.read.index].reshape(len(node.ops), p.width)
            for row, op in zip(got, node.ops, strict=True):
                want = bufs[op.parts[0].read.buffer][op.parts[0].read.index]
                np.testing.assert_array_equal(row[: want.size], want)
                assert (row[want.size :] == want[0]).all()
    assert merged


def _unread_d_b(g: Graph) -> Graph:
    """``g`` with every op reading d_a only: no x copies a d_b channel."""
    alive = g.alive.copy()
    for cell in g.cells:
        for node in cell.nodes:
            for op in node.ops:
                sl = g.group_slice(op.x)
                alive[sl] &= g.vertex_group[g.src[sl]] != cell.d[1]
    return g.replace(alive=alive)


def _expected_stacking(g: Graph) -> list[tuple[tuple[bool, bool], tuple[tuple[int, int], ...]]]:
    """Per cell, rebuilt from the graph's columns: whether a live x copies a channel of d_a, of
    d_b; and which 1x1 preprocessing convs read the same tensor as d_b (following the IDENTITY
    bundle into a cell input back to the cell output or stem it copies), where both are read."""
    kind = dict(zip(g.bundle_dst.tolist(), g.bundle_kind.tolist(), strict=True))
    src = dict(zip(g.bundle_dst.tolist(), g.bundle_src.tolist(), strict=True))
    reads = []
    for cell in g.cells:
        x = np.concatenate([np.flatnonzero(g.alive[g.group_slice(op.x)]) + g.start[op.x] for op in cell.ops])
        groups = set(g.vertex_group[g.src[x]].tolist())
        reads.append((cell.d[0] in groups, cell.d[1] in groups))
    out = []
    for i, cell in enumerate(g.cells):
        b = src[cell.inputs[1]]
        pointwise = [kind[d] == Edge.PREPROCESS for d in cell.d]
        stacked: list[tuple[int, int]] = []
        if reads[i][1] and pointwise[1] and g.alive[g.group_slice(b)].any():
            if reads[i][0] and pointwise[0] and src[cell.inputs[0]] == b:
                stacked.append((0, 0))
            stacked.append((0, 1))
            if i + 1 < len(g.cells):
                after = g.cells[i + 1]
                if reads[i + 1][0] and kind[after.d[0]] == Edge.PREPROCESS and src[after.inputs[0]] == b:
                    stacked.append((1, 0))
        out.append((reads[i], tuple(stacked) if len(stacked) > 1 else ()))
    return out


@pytest.mark.parametrize("space", GRAPHS)
@pytest.mark.parametrize("seed", [0, 1])
def test_preprocessing_reads_and_stacking(space: str, seed: int) -> None:
    g = _closed(random_alive(GRAPHS[space](), seed, fold=True))
    plans = nasnet_plan(g, g.alive)
    assert [(p.reads_d, p.stacked) for p in plans] == _expected_stacking(g)
    # The unpruned network: the first cell stacks d_a, d_b and cell 2's d_a (all of the stem);
    # a cell before a reduction cell's successor does not (that d_a is a factorized reduce).
    full = GRAPHS[space]()
    plans = nasnet_plan(full, full.alive)
    assert plans[0].stacked == ((0, 0), (0, 1), (1, 0)) and plans[-1].stacked == ()
    assert [(p.reads_d, p.stacked) for p in plans] == _expected_stacking(full)
    assert any(p.reduction for p in plans) and all(
        p.stacked[-1:] != ((1, 0),) for p, q in zip(plans, plans[1:], strict=False) if q.factorized
    )


def test_an_unread_d_b_is_neither_computed_nor_stacked() -> None:
    g = _closed(_unread_d_b(GRAPHS["nasnet-2x2"]()))
    plans = nasnet_plan(g, g.alive)
    assert all(p.reads_d == (True, False) and p.stacked == () for p in plans)
    assert [(p.reads_d, p.stacked) for p in plans] == _expected_stacking(g)
