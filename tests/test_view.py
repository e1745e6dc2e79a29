"""Views, drawings and the report (issue 6): the networkx view agrees with the IR arrays and
with stats on pruned graphs with dead ops and nodes; PNG/SVG/GraphML/DOT render; the node
layout is readable by construction (no overlaps); ``show`` and ``report`` work end to end,
offline, with one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import cnas_ir
from cnas_ir.app.draw import (
    MAX_CHANNEL_EDGES,
    _model,
    cell_title,
    check_channel_level,
    describe_cell,
    render_cell,
    to_dot,
    to_graphml,
)
from cnas_ir.app.report import SECTIONS, build_report, pruning_trajectory
from cnas_ir.errors import InputError
from cnas_ir.ir import Graph, Kind
from cnas_ir.passes.fold import fold
from cnas_ir.passes.prune import prune_to_rho, random_saliency
from cnas_ir.passes.stats import compute_stats
from cnas_ir.view import cell_view, channel_edge_count
from helpers import EXAMPLES
from helpers import run_cli as run

# ---- graphs with dead ops and dead nodes ------------------------------------------------------


def _kill_ops(g: Graph, cell: int, ops: list[tuple[int, int]]) -> Graph:
    """Kill every x of the given (node, j) ops of ``cell`` and fold: whole ops die, and a node
    whose ops all die takes its z (and the x copying it) along."""
    c = g.cell_by_index(cell)
    alive = g.alive.copy()
    for k, j in ops:
        alive[g.group_slice(c.nodes[k - 1].ops[j - 1].x)] = False
    out = fold(g.replace(alive=alive))
    out.verify()
    return out


@pytest.fixture(scope="module")
def tiny_pruned() -> Graph:
    """tiny.yaml pruned at random to rho 0.5, then in cell 3 node 2 killed (both ops) and op
    1.2 killed; in cell 5 op 3.1 killed."""
    g = cnas_ir.build(EXAMPLES / "tiny.yaml")
    g = prune_to_rho(g, 0.5, score=lambda h: random_saliency(h, 3), criterion="random")
    g = _kill_ops(g, 3, [(2, 1), (2, 2), (1, 2)])
    return _kill_ops(g, 5, [(3, 1)])


@pytest.fixture(scope="module")
def paper_pruned() -> Graph:
    """The paper config pruned at random to rho 0.46 (acceptance 2)."""
    g = cnas_ir.build({"name": "p"})
    return prune_to_rho(g, 0.46, score=lambda h: random_saliency(h, 0), criterion="random")


def _cell_groups(g: Graph, cell: int) -> list[int]:
    c = g.cell_by_index(cell)
    groups = [*c.inputs, *c.d, c.c]
    for node in c.nodes:
        groups.append(node.z)
        for op in node.ops:
            groups += [op.x, op.y]
    return groups


def _copy_counts(g: Graph, cell: int) -> Counter[tuple[int, int]]:
    """(source group, x group) -> live x vertices, straight from the arrays."""
    x = g.x_ids[g.alive[g.x_ids]]
    x = x[g.cell[g.vertex_group[x]] == cell]
    return Counter(zip(g.vertex_group[g.src[x]].tolist(), g.vertex_group[x].tolist(), strict=True))


# ---- the networkx view against the IR ---------------------------------------------------------


def test_fixture_has_dead_ops_and_nodes(tiny_pruned):
    g = tiny_pruned
    live = g.live_counts()
    c3 = g.cell_by_index(3)
    assert live[c3.nodes[1].z] == 0 and live[c3.nodes[1].ops[0].x] == 0  # dead node
    assert live[c3.nodes[0].ops[1].y] == 0 and live[c3.nodes[0].z] > 0  # dead op, live node
    assert live[g.cell_by_index(5).nodes[2].ops[0].y] == 0


@pytest.mark.parametrize("cell", [1, 2, 3, 4, 5])
def test_node_view_nodes_and_multiplicities_match_ir(tiny_pruned, cell):
    g = tiny_pruned
    live = g.live_counts()
    groups = _cell_groups(g, cell)
    full = cell_view(g, cell, "node", dead=True)
    view = cell_view(g, cell, "node")
    # node count: every group of the cell with dead=True, the live ones otherwise
    assert full.number_of_nodes() == len(groups)
    assert view.number_of_nodes() == sum(1 for v in groups if live[v])
    assert {d["group"] for _, d in full.nodes(data=True)} == set(groups)
    for _, d in full.nodes(data=True):
        assert d["alive"] == bool(live[d["group"]]) and d["size"] == live[d["group"]]
        assert d["full"] == g.size[d["group"]]
    # edge multiplicities: a copy edge stands for exactly the live x copying its source
    copies = _copy_counts(g, cell)
    seen = Counter()
    for _, _, d in view.edges(data=True):
        assert d["alive"] and d["channels"] > 0
    for u, v, d in full.edges(data=True):
        if d["op"] == "copy":
            key = (full.nodes[u]["group"], full.nodes[v]["group"])
            seen[key] = d["channels"]
            assert d["channels"] == copies[key]
            assert d["full"] == int(np.sum(g.vertex_group[g.src[g.group_slice(key[1])]] == key[0]))
            assert view.has_edge(u, v) == (d["channels"] > 0)
    assert +seen == copies
    # the live view is the live part of the full one
    assert set(view.edges) == {(u, v) for u, v, d in full.edges(data=True) if d["alive"]}


@pytest.mark.parametrize("cell", [1, 3, 5])
def test_node_view_recomputes_table1(tiny_pruned, cell):
    g = tiny_pruned
    view = cell_view(g, cell, "node", dead=True)
    row = compute_stats(g).cells[cell - 1]
    kind = {n: d["kind"] for n, d in view.nodes(data=True)}
    d_to_x = sum(d["channels"] for u, _, d in view.edges(data=True) if d["op"] == "copy" and kind[u] == "d")
    z_to_x = sum(d["channels"] for u, _, d in view.edges(data=True) if d["op"] == "copy" and kind[u] == "z")
    x_live = sum(d["size"] for _, d in view.nodes(data=True) if d["kind"] == "x")
    assert (d_to_x, z_to_x, x_live) == (row.d_to_x, row.z_to_x, row.x_live)


def test_node_view_marks_dead_ops_and_nodes(tiny_pruned):
    g = tiny_pruned
    full = cell_view(g, 3, "node", dead=True)
    dead = {n for n, d in full.nodes(data=True) if not d["alive"]}
    assert dead == {"cell3.node1.op2.x", "cell3.node1.op2.y", "cell3.node2.op1.x", "cell3.node2.op1.y",
                    "cell3.node2.op2.x", "cell3.node2.op2.y", "cell3.node2.z"}  # fmt: skip
    # the dead z feeds nothing: its copies into node 3 carry no channel
    for _, v, d in full.out_edges("cell3.node2.z", data=True):
        assert not d["alive"] and d["channels"] == 0 and d["full"] > 0, v
    assert "cell3.node2.z" not in cell_view(g, 3, "node")


@pytest.mark.parametrize("cell", [2, 3, 5])
def test_channel_view_matches_node_view(tiny_pruned, cell):
    g = tiny_pruned
    node = cell_view(g, cell, "node")
    chan = cell_view(g, cell, "channel")
    # every channel-level edge is one of the node level's multiplicities
    per_bundle = Counter((chan.nodes[u]["group"], chan.nodes[v]["group"]) for u, v in chan.edges)
    expected = {(node.nodes[u]["group"], node.nodes[v]["group"]): d["channels"] for u, v, d in node.edges(data=True)}
    assert dict(per_bundle) == expected
    assert chan.number_of_edges() == channel_edge_count(g, cell)
    # live channels: every live vertex of the cell's groups, nothing else
    live = g.live_counts()
    assert chan.number_of_nodes() == sum(int(live[v]) for v in _cell_groups(g, cell))
    full = cell_view(g, cell, "channel", dead=True)
    assert full.number_of_edges() == channel_edge_count(g, cell, dead=True)
    assert full.number_of_nodes() == sum(int(g.size[v]) for v in _cell_groups(g, cell))
    assert {(u, v) for u, v, d in full.edges(data=True) if d["alive"]} == set(chan.edges)


def test_view_keeps_old_signature(tiny_graph):
    # the one-shot graph: dead=True adds nothing, every node and edge is alive
    a, b = cell_view(tiny_graph, 2), cell_view(tiny_graph, 2, "node", dead=True)
    assert set(a.edges) == set(b.edges) and set(a.nodes) == set(b.nodes)
    assert all(d["alive"] for *_, d in b.edges(data=True))


# ---- drawings ---------------------------------------------------------------------------------


def _boxes_overlap(p, q) -> bool:
    return abs(p.x - q.x) * 2 < p.w + q.w and abs(p.y - q.y) * 2 < p.h + q.h


@pytest.mark.parametrize("dead", ["faded", "omit"])
def test_node_layout_is_readable_and_deterministic(tiny_pruned, paper_pruned, dead):
    for g, cell in ((tiny_pruned, 3), (tiny_pruned, 5), (paper_pruned, 20), (paper_pruned, 7)):
        boxes, arrows, _ = _model(g, cell, dead)
        bs = list(boxes.values())
        assert not any(_boxes_overlap(p, q) for i, p in enumerate(bs) for q in bs[i + 1 :])
        # each edge enters its target at its own port, inside the box: labels never collide
        ports = Counter((a.dst.name, round(a.port, 6)) for a in arrows)
        assert max(ports.values()) == 1
        assert all(abs(a.port - a.dst.y) < a.dst.h / 2 for a in arrows)
        # long edges run above or below every box
        top = max(b.y + b.h / 2 for b in bs)
        bottom = min(b.y - b.h / 2 for b in bs)
        for a in arrows:
            assert a.lane is None or a.lane > top or a.lane < bottom
            assert (a.lane is None) == (a.dst.col - a.src.col <= 1)
        # left to right: every edge goes to a later column
        assert all(a.dst.col > a.src.col for a in arrows)
        assert all(b.alive for b in bs) or dead == "faded"
        again, arrows2, _ = _model(g, cell, dead)
        assert [(b.name, b.x, b.y, b.h) for b in again.values()] == [(b.name, b.x, b.y, b.h) for b in bs]
        assert [(a.lane, a.port) for a in arrows2] == [(a.lane, a.port) for a in arrows]


def test_drawn_labels_are_live_copy_counts(paper_pruned):
    _, arrows, _ = _model(paper_pruned, 20, "faded")
    row = compute_stats(paper_pruned).cells[19]
    assert sum(a.channels for a in arrows if a.kind == "d" and a.alive) == row.d_to_x
    assert sum(a.channels for a in arrows if a.kind == "z" and a.alive) == row.z_to_x
    assert sum(1 for a in arrows if a.kind in "dz") == 2 * (2 + 3 + 4 + 5 + 6)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("which", ["tiny", "paper"])
def test_png_and_svg_render(tiny_graph, paper_pruned, which, tmp_path):
    g, cell = (tiny_graph, 3) if which == "tiny" else (paper_pruned, 20)
    w, h = _png_size(render_cell(g, cell, "png"))
    assert 900 < w < 3000 and 400 < h < 1500
    svg = render_cell(g, cell, "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    text = svg.decode()
    assert f"cell {cell} of {len(g.cells)}" in text and "|X*|/|X|" in text  # the title
    assert render_cell(g, cell, "svg") == svg  # reproducible bytes


def test_channel_level_small_and_refused_when_big(tiny_pruned, paper_pruned):
    _png_size(render_cell(tiny_pruned, 2, "png", level="channel"))
    _png_size(render_cell(tiny_pruned, 3, "png", level="channel", dead="omit"))
    with pytest.raises(InputError, match=r"cell 20 has [\d,]+ channel edges, .*use --level node"):
        render_cell(paper_pruned, 20, "png", level="channel")
    assert check_channel_level(tiny_pruned, 1) <= MAX_CHANNEL_EDGES


def test_graphml_round_trips(tiny_pruned):
    for level, cell in (("node", 3), ("channel", 2)):
        for dead in ("faded", "omit"):
            back = nx.read_graphml(io.BytesIO(to_graphml(tiny_pruned, cell, level, dead)))
            view = cell_view(tiny_pruned, cell, level, dead=dead == "faded")
            assert back.number_of_nodes() == view.number_of_nodes()
            assert back.number_of_edges() == view.number_of_edges()
            assert {n for n, d in back.nodes(data=True) if not d["alive"]} == {
                n for n, d in view.nodes(data=True) if not d["alive"]
            }


def test_dot_text(tiny_pruned):
    text = to_dot(tiny_pruned, 3)
    view = cell_view(tiny_pruned, 3, "node", dead=True)
    lines = text.splitlines()
    assert lines[0] == 'digraph "cell3" {' and lines[-1] == "}"
    assert "rankdir=LR" in lines[1] and "cell 3 of 5" in lines[1]
    assert sum(" -> " in ln for ln in lines) == view.number_of_edges()
    assert sum(ln.strip().startswith('"cell3.') and " -> " not in ln for ln in lines) == view.number_of_nodes()
    edge = next(ln for ln in lines if ln.startswith('  "cell3.d_a" -> "cell3.node1.op1.x"'))
    n = view.edges["cell3.d_a", "cell3.node1.op1.x"]["channels"]
    assert f'label="{n}"' in edge and "penwidth=" in edge
    dead = next(ln for ln in lines if ln.startswith('  "cell3.node2.z" ['))
    assert 'alive="false"' in dead and "dashed" in dead
    assert (
        sum(" -> " in ln for ln in to_dot(tiny_pruned, 3, dead="omit").splitlines())
        == cell_view(tiny_pruned, 3).number_of_edges()
    )


def test_describe_and_title(tiny_pruned):
    text = describe_cell(tiny_pruned, 3)
    assert text.splitlines()[0] == cell_title(tiny_pruned, 3)
    assert "op 1.2: x* 0/32 (dead)" in text and "z2: dead" in text
    with pytest.raises(InputError, match=r"no cell 9: the graph has cells 1\.\.5"):
        describe_cell(tiny_pruned, 9)


# ---- pruning trajectory -----------------------------------------------------------------------


def test_trajectory_from_history():
    hist = [
        {"pass": "build"},
        {"pass": "train", "epochs": 10, "val_acc": 0.9},
        {"pass": "prune", "iteration": 1, "rho": 0.8, "x_live": 90, "removed": 10},
        {"pass": "fold"},
        {"pass": "train", "epochs": 1, "val_acc": 0.85},
        {"pass": "prune", "iteration": 2, "rho": 0.6, "x_live": 81, "removed": 9},
        {"pass": "train", "epochs": 1, "val_acc": 0.8},
        {"pass": "prune", "iteration": 3, "rho": 0.5, "x_live": 75, "removed": 6},
        {"pass": "train", "epochs": 50, "val_acc": 0.95},  # retraining, not a fine-tuning step
    ]
    pts = pruning_trajectory(hist)
    assert [(p.iteration, p.rho, p.x_live, p.val_acc) for p in pts] == [
        (0, 1.0, 100, 0.9), (1, 0.8, 90, 0.85), (2, 0.6, 81, 0.8), (3, 0.5, 75, None)]  # fmt: skip
    # a second pruning run: only it, starting from the first run's rho
    hist2 = hist + [{"pass": "prune", "iteration": 1, "rho": 0.4, "x_live": 70, "removed": 5}]
    assert [(p.iteration, p.rho, p.val_acc) for p in pruning_trajectory(hist2)] == [(0, 0.5, 0.95), (1, 0.4, None)]
    assert pruning_trajectory([{"pass": "build"}]) == []


def test_trajectory_from_metrics_when_history_has_none():
    # order as search logs it: fine-tuning lines before the prune line of their iteration
    m = [{"cmd": "train", "epoch": e, "val_acc": 0.5 + e / 10} for e in (1, 2, 3)]
    m += [{"cmd": "train", "epoch": 1, "val_acc": 0.7}, {"cmd": "prune", "iteration": 1, "rho": 0.8, "x_live": 9,
          "removed": 1}, {"cmd": "train", "epoch": 1, "val_acc": 0.6}, {"cmd": "prune", "iteration": 2, "rho": 0.5,
          "x_live": 8, "removed": 1}]  # fmt: skip
    pts = pruning_trajectory([{"pass": "build"}], m)
    assert [(p.iteration, p.rho, p.x_live, p.val_acc) for p in pts] == [
        (0, 1.0, 10, 0.8), (1, 0.8, 9, 0.7), (2, 0.5, 8, 0.6)]  # fmt: skip


# ---- the commands -----------------------------------------------------------------------------


def test_show_writes_every_format(tmp_path, capsys, tiny_pruned):
    cnas_ir.save(tiny_pruned, tmp_path / "p.cnas")
    code, out, err = run(["show", "p.cnas", "--cell", "3", "--png", "c.png", "--svg", "c.svg",
                          "--graphml", "c.graphml", "--dot", "c.dot"], tmp_path, capsys)  # fmt: skip
    assert code == 0 and out == "" and err.count("\n") == 4, err
    _png_size((tmp_path / "c.png").read_bytes())
    ET.parse(tmp_path / "c.svg")
    assert nx.read_graphml(tmp_path / "c.graphml").number_of_nodes() == 20
    assert (tmp_path / "c.dot").read_text().startswith('digraph "cell3"')
    # no output option: the node level as text
    code, out, _ = run(["show", "p.cnas", "--cell", "3", "--dead", "omit"], tmp_path, capsys)
    assert code == 0 and out == describe_cell(tiny_pruned, 3, "omit")
    code, _, err = run(["show", "p.cnas", "--cell", "2", "--level", "channel", "--png", "ch.png"], tmp_path, capsys)
    assert code == 0 and (tmp_path / "ch.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        (["--cell", "6"], 2, "no cell 6: the graph has cells 1..5"),
        (["--cell", "0", "--png", "x.png"], 2, "no cell 0"),
        (["--cell", "1", "--png", "nowhere/x.png"], 2, "folder nowhere does not exist"),
        (["--cell", "1", "--level", "channel"], 2, "needs an output"),
        (["--cell", "1", "--level", "bogus"], 2, "bogus"),
        (["--cell", "1", "--png", "afile/x.png"], 1, "cannot write"),
    ],
)
def test_show_errors_are_one_line(tmp_path, capsys, tiny_graph, args, code, fragment):
    cnas_ir.save(tiny_graph, tmp_path / "t.cnas")
    (tmp_path / "afile").write_text("x")
    got, out, err = run(["show", "t.cnas", *args], tmp_path, capsys)
    assert got == code and out == "" and err.count("\n") == 1 and fragment in err, err


def test_show_channel_level_too_big(tmp_path, capsys, paper_pruned):
    cnas_ir.save(paper_pruned, tmp_path / "p.cnas")
    code, _, err = run(["show", "p.cnas", "--cell", "20", "--level", "channel", "--graphml", "g.xml"], tmp_path, capsys)
    assert code == 2 and "use --level node" in err and err.count("\n") == 1
    assert not (tmp_path / "g.xml").exists()


class _Page(HTMLParser):
    """Collects section ids, image sources and anything that would load from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.tables = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.external.append(tag)
        if tag == "table":
            self.tables += 1
        for k in ("src", "href"):
            if a.get(k) and not a[k].startswith("data:image/png;base64,"):
                self.external.append(a[k])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _metrics(run: Path) -> None:
    """A hand-written metrics.jsonl in the order commands write it: 3 training epochs, then a
    pruning run of 3 iterations with one fine-tuning epoch before each prune line but the last,
    a half-written last line (a crash)."""
    lines = [{"cmd": "train", "epoch": e, "lr": 0.05 / e, "train_loss": 2 / e, "train_acc": 0.3 * e,
              "val_loss": 2.1 / e, "val_acc": 0.28 * e, "seconds": e} for e in (1, 2, 3)]  # fmt: skip
    for it, rho in ((1, 0.8), (2, 0.6), (3, 0.5)):
        if it < 3:
            lines.append({"cmd": "train", "epoch": 1, "lr": 0.05, "train_loss": 0.5, "train_acc": 0.8,
                          "val_loss": 0.6, "val_acc": 0.8 - it / 20, "seconds": 1})  # fmt: skip
        lines.append({"cmd": "prune", "iteration": it, "removed": 10, "x_live": 100 - 10 * it,
                      "params_live": 1000, "rho": rho})  # fmt: skip
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"cmd": "tra'
    (run / "metrics.jsonl").write_text(text)


def test_report_on_pruned_run(tmp_path, capsys):
    # the real commands, fast: build, random pruning without fine-tuning, hand-written metrics
    assert run(["build", EXAMPLES / "tiny.yaml"], tmp_path, capsys)[0] == 0
    code, _, err = run(["prune", "--rho", "0.5", "--criterion", "random", "--finetune-epochs", "0"], tmp_path, capsys)
    assert code == 0, err
    _metrics(tmp_path / "cnas-run")
    code, out, err = run(["report"], tmp_path, capsys)
    assert code == 0 and out == "" and "cnas-run/report.html" in err, err
    page = _parse(tmp_path / "cnas-run" / "report.html")
    assert page.sections == list(SECTIONS)
    assert page.external == []  # opens offline: nothing loaded from anywhere else
    # kept fraction, edges, trajectory, training, and three cells (1, reduction cell 3, 5)
    assert len(page.images) == 7 and all(len(src) > 1000 for src in page.images)
    text = " ".join(page.text)
    needles = ("First cell: cell 1", "reduction cell: cell 3", "Last cell: cell 5", "1 unreadable lines skipped",
               "Total", "rho = 0.49")  # fmt: skip
    for needle in needles:
        assert needle in text, needle
    assert "No training yet" not in text and "No pruning yet" not in text
    assert page.tables >= 2  # Table 1 and the iterations


def test_report_sections_without_data_say_so(tmp_path, capsys, tiny_graph):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    cnas_ir.save(tiny_graph, run_dir / "001-build.cnas")
    code, _, err = run(["report", "r", "-o", "out.html"], tmp_path, capsys)
    assert code == 0, err
    page = _parse(tmp_path / "out.html")
    assert page.sections == list(SECTIONS)
    text = " ".join(page.text)
    assert "No pruning yet" in text and "No training yet" in text and "No metrics.jsonl" in text
    # an artifact as argument: that artifact, its folder's metrics
    code, _, err = run(["report", "r/001-build.cnas", "-o", "a.html"], tmp_path, capsys)
    assert code == 0 and _parse(tmp_path / "a.html").sections == list(SECTIONS)


def test_report_metrics_only(tmp_path):
    _metrics(tmp_path)
    page_text = build_report(tmp_path)
    assert "No artifact" in page_text and 'id="training"' in page_text and 'id="trajectory"' in page_text


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["report", "missing"], "missing: no such run directory"),
        (["report", "empty"], "no artifact and no metrics.jsonl"),
        (["report", "empty", "-o", "nowhere/r.html"], "folder nowhere does not exist"),
        (["report", "gone.cnas"], "gone.cnas: no such artifact"),
    ],
)
def test_report_errors_are_one_line(tmp_path, capsys, args, fragment):
    (tmp_path / "empty").mkdir()
    code, out, err = run(args, tmp_path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err


def test_core_imports_no_plotting():
    code = (
        "import sys, cnas_ir, cnas_ir.app.cli, cnas_ir.view, cnas_ir.app.draw, cnas_ir.app.report,"
        " cnas_ir.app.view_commands;"
        "print(sorted(m for m in ('torch', 'onnx', 'networkx', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_x_groups_are_kind_x(tiny_pruned):
    # guards the drawing's assumption that an op box's size is its x group's live count
    boxes, _, c = _model(tiny_pruned, 5, "faded")
    live = tiny_pruned.live_counts()
    for op in c.ops:
        assert Kind(int(tiny_pruned.kind[op.x])) == Kind.X
        assert boxes[f"op {op.node}.{op.j}"].size == live[op.x]
