"""Budgets in multiply-adds (issue 18): ``prune --budget params|macs`` and ``search.budget``.

Every expected number is computed here from the paper's description of the networks, written
independently of the IR's cost table: a kept x in a NASNet cell of width C costs its depthwise
3x3 filter (9 multiply-adds per output pixel) and its pointwise column (C per output pixel) at
the resolution r where its op writes, (9 + C) r^2 -- a stride-2 depthwise conv of a reduction
cell at its output resolution; preprocessing is a 1x1 conv (or a factorized reduce with the
same count) at the cell's input resolution. In DenseNet a kept x costs its Conv1x1 column, 4k
per pixel at its block's resolution (BatchNorm is not a multiply-add).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import run

import cnas_ir
from cnas_ir.errors import InputError
from cnas_ir.passes.fold import fold
from cnas_ir.passes.prune import (
    PruneStep,
    cell_cost,
    min_feasible_rho,
    prune_to_rho,
    random_saliency,
    x_cost,
)
from cnas_ir.passes.stats import compute_stats
from cnas_ir.spec import parse_spec
from helpers import EXAMPLES

# The paper config: three stacks at 32x32, 16x16 and 8x8; C = 36, 72, 144.
PAPER_X_MACS = {36: (9 + 36) * 32 * 32, 72: (9 + 72) * 16 * 16, 144: (9 + 144) * 8 * 8}
WIDEST_X_MACS = max(PAPER_X_MACS.values())  # one vertex of the first stack: the dearest


def closed_form_cell_macs(C, stacks, N, K, J, m, size):
    """Multiply-adds per image of every one-shot NASNet cell, from SPEC §1 alone."""
    sum_inputs = sum(k + 1 for k in range(1, K + 1))  # node k's op reads d_a, d_b, z_1..z_{k-1}
    outs = [m * C, m * C]  # widths of the outputs of cells i-2, i-1 (the stem where none)
    res = size  # resolution of the cell's input b (a is twice that after a reduction)
    rows = []
    for s in range(stacks):
        Cs = C * 2**s
        for i in range((1 if s else 0) + N):
            r_out = (res + 1) // 2 if s and i == 0 else res  # a reduction cell halves, rounding up
            x = J * Cs * sum_inputs
            pre = (Cs * outs[-2] + Cs * outs[-1]) * res * res  # d_a, d_b: 1x1 convs at b's resolution
            rows.append(pre + x * (9 + Cs) * r_out * r_out)
            outs.append(K * Cs)
            res = r_out
    return rows


def paper_pruned(budget, rho=0.46):
    seeds = iter(range(1000))
    graph = cnas_ir.build(parse_spec({"name": "paper"}))
    return prune_to_rho(graph, rho, score=lambda g: random_saliency(g, next(seeds)), criterion="random",
                        budget=budget)  # fmt: skip


def test_paper_config_cell_macs_match_closed_form(paper_graph):
    stats = compute_stats(paper_graph)
    rows = closed_form_cell_macs(36, 3, 6, 5, 2, 3, 32)
    assert [c.macs for c in stats.cells] == rows
    assert [c.macs_live for c in stats.cells] == rows
    assert stats.total.macs == sum(rows) and stats.rho_macs == 1.0
    # cell 1 by hand: d_a, d_b read the 108-channel stem; 1,440 x at 32x32
    assert stats.cells[0].macs == 2 * 108 * 36 * 32 * 32 + 1440 * 45 * 32 * 32


def test_x_cost_in_macs_paper_config(paper_graph):
    g = paper_graph
    cost = x_cost(g, "macs")
    width = np.array([g.cell_by_index(int(c)).width for c in g.cell[g.vertex_group[g.x_ids]]])
    assert np.array_equal(cost[g.x_ids], np.vectorize(PAPER_X_MACS.get)(width))
    assert cost.sum() == cost[g.x_ids].sum()  # nothing else costs
    # reduction cell 7: x copied from d (stride-2 DW) and from z (stride 1) both write at 16x16
    cell7 = g.cell_by_index(7)
    for op in cell7.ops:
        assert set(cost[g.group_slice(op.x)].tolist()) == {(9 + 72) * 16 * 16}
    assert np.array_equal(x_cost(g, "params"), g.x_cost)


def test_min_feasible_rho_in_macs(paper_graph):
    full = sum(closed_form_cell_macs(36, 3, 6, 5, 2, 3, 32))
    prunable = 6 * 1440 * PAPER_X_MACS[36] + 7 * 2880 * PAPER_X_MACS[72] + 7 * 5760 * PAPER_X_MACS[144]
    assert min_feasible_rho(paper_graph, "macs") == pytest.approx((full - prunable) / full)
    floor = min_feasible_rho(paper_graph, "macs")
    with pytest.raises(InputError, match=r"cell multiply-adds; the smallest feasible rho \(budget macs\) is 0\.18"):
        prune_to_rho(paper_graph, floor - 0.01, score=random_saliency, budget="macs")
    prune_to_rho(paper_graph, 1.0, score=random_saliency, budget="macs")  # rho 1: nothing to do, no error


def test_macs_budget_lands_on_rho_paper_config():
    p = paper_pruned("macs")
    p.verify()
    s = compute_stats(p)
    # acceptance: the cells' multiply-add ratio within one vertex's multiply-adds below rho
    assert 0.46 - WIDEST_X_MACS / s.total.macs <= s.rho_macs <= 0.46
    events = [e for e in p.history if e["pass"] == "prune"]
    assert {e["budget"] for e in events} == {"macs"}
    assert events[-1]["rho_macs"] == s.rho_macs and events[-1]["macs_live"] == s.total.macs_live
    assert events[-1]["rho"] == s.rho and events[-1]["rho_target"] == 0.46
    macs = [e["macs_live"] for e in events]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)


def test_params_budget_unchanged_and_recorded(paper_graph):
    default = prune_to_rho(paper_graph, 0.46, score=lambda g: random_saliency(g, 7))
    explicit = prune_to_rho(paper_graph, 0.46, score=lambda g: random_saliency(g, 7), budget="params")
    assert np.array_equal(default.alive, explicit.alive)
    s = compute_stats(explicit)
    assert 0.46 - 153 / 9_880_704 <= s.rho <= 0.46  # SPEC §4.3, unchanged
    assert {e["budget"] for e in explicit.history if e["pass"] == "prune"} == {"params"}


def test_macs_step_removes_the_shortest_prefix_covering_the_need(paper_graph):
    """The cost-aware step counts each ranked vertex at its own multiply-adds: the hand cost of
    what it removes covers what was left to cut, and the prefix one shorter does not."""
    g = random_saliency(fold(paper_graph), 3)
    live, full = cell_cost(g, "macs")
    target = live - 10 * PAPER_X_MACS[36] - 5  # a bit more than ten first-stack vertices
    out = PruneStep(gamma=0.5, target=target, budget="macs")(g).graph
    removed = g.x_ids[~out.alive[g.x_ids]]
    order = g.x_ids[np.argsort(g.saliency[g.x_ids], kind="stable")]
    assert set(removed.tolist()) == set(order[: removed.size].tolist())  # a prefix of the ranking
    width = np.array([g.cell_by_index(int(c)).width for c in g.cell[g.vertex_group[order[: removed.size]]]])
    hand = np.cumsum([PAPER_X_MACS[int(w)] for w in width])
    assert hand[-1] >= live - target > (hand[-2] if hand.size > 1 else 0)
    assert cell_cost(out, "macs")[0] == live - hand[-1]  # no fold cascade this early


@pytest.mark.parametrize("k", [4, 12])
def test_densenet_x_macs_and_budget(k):
    n, size = 2, 8
    g = cnas_ir.build({"name": "d", "space": "densenet", "input": {"channels": 1, "size": size},
                       "densenet": {"growth_rate": k, "depth": 6 * n + 4}})  # fmt: skip
    cost = x_cost(g, "macs")
    res = {1: size, 2: size // 2, 3: size // 4}  # the transitions pool by 2
    for c in g.cells:
        for op in c.ops:
            assert set(cost[g.group_slice(op.x)].tolist()) == {4 * k * res[c.index] ** 2}
    # rho 0.9: well above the fixed share (3x3 convs, transitions: ~0.8), so no layer loses all
    # its x and the fold cascades nothing more than the ranking removed
    seeds = iter(range(100))
    p = prune_to_rho(g, 0.9, score=lambda h: random_saliency(h, next(seeds)), budget="macs")
    s = compute_stats(p)
    assert 0.9 - 4 * k * size * size / s.total.macs <= s.rho_macs <= 0.9


@settings(max_examples=10, deadline=None)
@given(rho=st.floats(0.5, 0.95), seed=st.integers(0, 5), space=st.sampled_from(["nasnet", "densenet"]))
def test_live_cell_macs_match_hand_count_after_macs_pruning(rho, seed, space):
    """After pruning in macs, every cell's live multiply-adds are, by hand, its preprocessing over
    the live input channels plus (9 + C) r^2 per live x (NASNet)."""
    if space == "densenet":
        spec = {"name": "d", "space": "densenet", "input": {"channels": 1, "size": 8},
                "densenet": {"growth_rate": 3, "depth": 10}}  # fmt: skip
    else:
        spec = {"name": "p", "input": {"channels": 1, "size": 8},
                "nasnet": {"channels": 4, "stacks": 2, "cells_per_stack": 1, "nodes_per_cell": 3,
                           "ops_per_node": 2, "stem_multiplier": 1}}  # fmt: skip
    g = cnas_ir.build(spec)
    rho = max(rho, min_feasible_rho(g, "macs") + 0.05)
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))
    seen = []
    p = prune_to_rho(g, rho, gamma=0.2, score=lambda h: random_saliency(h, next(seeds)), budget="macs",
                     on_iteration=lambda it, h: seen.append(it.macs_live))  # fmt: skip
    s = compute_stats(p)
    assert s.rho_macs <= rho and seen == sorted(seen, reverse=True)
    if space == "densenet":
        return
    live = p.live_counts()
    for c, row in zip(p.cells, s.cells, strict=True):
        r_in = int(p.res[c.d[0]])
        pre = c.width * sum(int(live[i]) for i in c.inputs) * r_in * r_in
        assert row.macs_live == pre + row.x_live * (9 + c.width) * c.res * c.res, c.index


# ---- command line ----------------------------------------------------------------------------


def test_cli_prune_budget_macs_json_stats_history(tmp_path, capsys):
    run(["build", str(EXAMPLES / "tiny.yaml")], tmp_path, capsys)
    code, out, err = run(["prune", "--rho", "0.5", "--budget", "macs", "--criterion", "random",
                          "--finetune-epochs", "0", "--json"], tmp_path, capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    # tiny.yaml: C = 8 at 8x8 (first stack), 16 at 4x4: the dearest x is (9 + 8) * 64
    assert 0.5 - 17 * 64 / doc["total"]["macs"] <= doc["total"]["rho_macs"] <= 0.5
    assert doc["total"]["rho_macs"] == doc["total"]["macs_live"] / doc["total"]["macs"]
    assert all({"macs", "macs_live"} <= set(c) for c in doc["cells"])
    assert doc["total"]["macs"] == sum(closed_form_cell_macs(8, 2, 2, 3, 2, 2, 8))
    assert "rho_macs" in err and "budget macs" in err
    g = cnas_ir.load(tmp_path / "cnas-run" / "002-prune.cnas")
    events = [e for e in g.history if e["pass"] == "prune"]
    assert events and all(e["budget"] == "macs" for e in events)
    assert events[-1]["rho_macs"] == pytest.approx(doc["total"]["rho_macs"])
    code, out, _ = run(["stats", "--json"], tmp_path, capsys)
    assert json.loads(out)["total"]["rho_macs"] == doc["total"]["rho_macs"]
    code, out, _ = run(["stats", "--markdown"], tmp_path, capsys)
    assert code == 0 and out.splitlines()[0].endswith("| # MACs | # MACs* |") and "rho_macs = 0.49" in out
    metrics = [json.loads(line) for line in (tmp_path / "cnas-run" / "metrics.jsonl").read_text().splitlines()]
    assert {m["budget"] for m in metrics if m.get("cmd") == "prune"} == {"macs"}


def test_spec_budget_is_the_default_and_the_option_overrides(tmp_path, capsys):
    text = (EXAMPLES / "tiny.yaml").read_text().replace("finetune_epochs: 1}", "finetune_epochs: 0, budget: macs}")
    assert "budget: macs" in text
    (tmp_path / "t.yaml").write_text(text)
    run(["build", "t.yaml"], tmp_path, capsys)
    code, _, err = run(["prune", "--rho", "0.6", "--criterion", "random", "-o", "m.cnas"], tmp_path, capsys)
    assert code == 0, err
    assert {e["budget"] for e in cnas_ir.load(tmp_path / "m.cnas").history if e["pass"] == "prune"} == {"macs"}
    code, _, err = run(["prune", "cnas-run/001-build.cnas", "--rho", "0.6", "--criterion", "random", "--budget",
                        "params", "-o", "p.cnas"], tmp_path, capsys)  # fmt: skip
    assert code == 0, err
    assert {e["budget"] for e in cnas_ir.load(tmp_path / "p.cnas").history if e["pass"] == "prune"} == {"params"}


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--budget", "flops"], "--budget"),
        (["--rho", "0.05", "--budget", "macs", "--criterion", "random"], "smallest feasible rho (budget macs) is"),
    ],
)
def test_cli_budget_errors(tmp_path, capsys, args, fragment):
    run(["build", str(EXAMPLES / "tiny.yaml")], tmp_path, capsys)
    code, out, err = run(["prune", *args], tmp_path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err


def test_bad_spec_budget_names_the_key(tmp_path, capsys):
    (tmp_path / "b.yaml").write_text("name: x\nsearch: {budget: flops}\n")
    code, out, err = run(["build", "b.yaml"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "search.budget" in err and "'flops'" in err, err


def test_unknown_budget_in_python_is_one_line(paper_graph):
    with pytest.raises(InputError, match="budget 'flops': choose params or macs"):
        prune_to_rho(paper_graph, 0.5, score=random_saliency, budget="flops")


def test_prune_help_explains_budget(tmp_path, capsys):
    code, out, _ = run(["prune", "--help"], tmp_path, capsys)
    assert code == 0 and "--budget [params|macs]" in out
    assert "cnas-ir prune --rho 0.46 --budget macs" in out
