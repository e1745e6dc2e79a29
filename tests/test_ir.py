"""IR invariants: the verifier catches each broken invariant; the networkx view agrees with
the arrays; the pass manager verifies between passes; the core imports no torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import cnas_ir
from cnas_ir.ir import Edge, Graph, Kind, VerifyError
from cnas_ir.passes.base import Pass, PassError, PassManager, PassResult
from cnas_ir.passes.stats import compute_stats
from cnas_ir.view import cell_view


def _set(g: Graph, column: str, index, value) -> Graph:
    a = getattr(g, column).copy()
    a[index] = value
    return g.replace(**{column: a})


def _first(g, kind):
    return int(np.flatnonzero(g.kind == kind)[0])


def test_built_graphs_verify(tiny_graph, paper_graph):
    tiny_graph.verify()
    paper_graph.verify()
    cnas_ir.build({"name": "d", "space": "densenet"}).verify()


@pytest.mark.parametrize(
    "breakage,fragment",
    [
        (lambda g: _set(g, "src", int(g.x_ids[0]), -1), "copies a vertex that does not exist"),
        (lambda g: _set(g, "src", 0, 3), "not an x has a source"),
        (lambda g: _set(g, "src", int(g.x_ids[0]), int(g.start[_first(g, Kind.Y)])), "neither d nor z"),
        (lambda g: _set(g, "alive", int(g.start[_first(g, Kind.D)]), False), "dead channel|d vertex is dead"),
        (lambda g: _set(g, "alive", int(g.start[_first(g, Kind.Y)]), False), "partly alive"),
        (lambda g: _set(g, "saliency", 0, 1.0), "not an x has a saliency"),
        (lambda g: _set(g, "size", 3, 5), "contiguous"),
        (lambda g: _set(g, "bundle_kind", 0, int(Edge.SEPCONV)), "cannot join"),
        (lambda g: _set(g, "bundle_dst", 0, 10_000), "does not exist"),
        (lambda g: g.replace(alive=g.alive[:-1]), "length"),
        (lambda g: g.replace(src=g.src.astype(np.int64)), "int32"),
    ],
)
def test_verifier_catches(tiny_graph, breakage, fragment):
    with pytest.raises(VerifyError, match=fragment):
        breakage(tiny_graph).verify()


def test_verifier_catches_live_x_of_dead_z(tiny_graph):
    g = tiny_graph
    z = g.cell_by_index(1).nodes[0].z
    alive = g.alive.copy()
    alive[g.group_slice(z)] = False
    with pytest.raises(VerifyError, match="copies a dead channel"):
        g.replace(alive=alive).verify()


def test_verifier_catches_c_not_mirroring_z(tiny_graph):
    g = tiny_graph
    node = g.cell_by_index(2).nodes[-1]  # the last z of cell 2: no x reads it
    alive = g.alive.copy()
    alive[g.group_slice(node.z)] = False
    alive[g.group_slice(node.ops[0].y)] = False
    alive[g.group_slice(node.ops[1].y)] = False
    with pytest.raises(VerifyError, match="cell2.c is not alive exactly where its parts are"):
        g.replace(alive=alive).verify()


def test_arrays_are_read_only_and_replace_shares(tiny_graph):
    with pytest.raises(ValueError):
        tiny_graph.alive[0] = False
    g2 = tiny_graph.replace(saliency=np.full_like(tiny_graph.saliency, np.nan))
    assert g2.src is tiny_graph.src and g2.kind is tiny_graph.kind


def test_structure_objects(paper_graph):
    cells = paper_graph.cells
    assert len(cells) == 20 and len(paper_graph.ops) == 200
    c7 = paper_graph.cell_by_index(7)
    assert c7.kind == "reduction" and c7.width == 72 and c7.res == 16
    op = c7.nodes[2].ops[1]
    assert (op.cell, op.node, op.j) == (7, 3, 2)
    assert [paper_graph.group_name(s) for s in op.sources] == [
        "cell7.d_a", "cell7.d_b", "cell7.node1.z", "cell7.node2.z"]  # fmt: skip
    # a kept x costs 9 + C (SPEC §1)
    assert set(paper_graph.x_cost[paper_graph.x_ids].tolist()) == {45, 81, 153}


def _prune_random(g, frac, seed):
    rng = np.random.default_rng(seed)
    alive = g.alive.copy()
    alive[g.x_ids[rng.random(g.x_ids.size) < frac]] = False
    return g.replace(alive=alive)


@pytest.mark.parametrize("cell", [1, 3, 5])
def test_node_view_matches_stats(tiny_graph, cell):
    g = _prune_random(tiny_graph, 0.4, cell)
    view = cell_view(g, cell, level="node")
    row = compute_stats(g).cells[cell - 1]
    copy = [(u, d["channels"]) for u, _, d in view.edges(data=True) if d["op"] == "copy"]
    assert sum(n for u, n in copy if ".d_" in u) == row.d_to_x
    assert sum(n for u, n in copy if u.endswith(".z")) == row.z_to_x
    xs = [n for n, d in view.nodes(data=True) if d["kind"] == "x"]
    assert sum(view.nodes[n]["size"] for n in xs) == row.x_live


def test_channel_view_counts_edges(tiny_graph):
    g = _prune_random(tiny_graph, 0.5, 7)
    view = cell_view(g, 2, level="channel")
    row = compute_stats(g).cells[1]
    kinds = [d["kind"] for _, d in view.nodes(data=True)]
    assert kinds.count("x") == row.x_live
    copies = sum(1 for *_, d in view.edges(data=True) if d["op"] == "copy")
    assert copies == row.d_to_x + row.z_to_x
    # every x->y edge is a PW weight: |x live of op| * C per op
    c = g.cell_by_index(2)
    sep = sum(1 for *_, d in view.edges(data=True) if d["op"] == "sepconv")
    assert sep == sum(int(g.alive[g.group_slice(op.x)].sum()) * c.width for op in c.ops)


def test_view_unknown_cell(tiny_graph):
    with pytest.raises(KeyError, match="no cell 99"):
        cell_view(tiny_graph, 99)


@dataclass(frozen=True)
class KillFirstX(Pass):
    """Test pass: kills the first live x (fine), or with ``break_it`` a whole d group (invalid)."""

    name = "kill-first-x"
    break_it: bool = False

    def call(self, graph):
        alive = graph.alive.copy()
        if self.break_it:
            alive[graph.group_slice(_first(graph, Kind.D))] = False
            return PassResult(graph.replace(alive=alive), True)
        live = graph.x_ids[graph.alive[graph.x_ids]]
        if live.size <= graph.x_ids.size - 3:
            return PassResult(graph, False)
        alive[live[0]] = False
        return PassResult(graph.replace(alive=alive), True)


def test_pass_manager_fixpoint_and_verification(tiny_graph):
    result = PassManager([KillFirstX()], fixpoint=True)(tiny_graph)
    assert result.modified
    assert int((~result.graph.alive[tiny_graph.x_ids]).sum()) == 3
    with pytest.raises(PassError, match="after pass kill-first-x"):
        PassManager([KillFirstX(break_it=True)])(tiny_graph)


def test_core_imports_no_torch_onnx_networkx():
    code = (
        "import sys, cnas_ir, cnas_ir.app.cli, cnas_ir.format, cnas_ir.passes.stats, cnas_ir.dump;"
        "cnas_ir.build({'name': 'x'});"
        "print(sorted(m for m in ('torch', 'onnx', 'networkx', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
