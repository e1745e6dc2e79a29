"""The search end to end: prune through the CLI and the driver, fold preserving the
function of the lowered network, and the errors of cnas-ir prune."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli import run

import cnas_ir
from cnas_ir.backends.pytorch import lower, to_graph
from cnas_ir.backends.pytorch.data import load_dataset
from cnas_ir.backends.pytorch.search import SearchSettings, search
from cnas_ir.passes.fold import fold
from cnas_ir.passes.stats import compute_stats
from helpers import EXAMPLES

SMALL = {
    "name": "s",
    "input": {"channels": 1, "size": 8},
    "classes": 4,
    "nasnet": {"channels": 4, "stacks": 2, "cells_per_stack": 1, "nodes_per_cell": 2, "ops_per_node": 2,
               "stem_multiplier": 1, "spatial_dropout": 0.0},
    "data": {"name": "synthetic"},
    "train": {"epochs": 1, "batch_size": 32, "t0": 1},
    "search": {"saliency_batches": 2},
}  # fmt: skip


def test_cli_prune_random_lands_on_rho(tmp_path, capsys):
    run(["build", str(EXAMPLES / "tiny.yaml")], tmp_path, capsys)
    code, out, err = run(["prune", "--rho", "0.5", "--criterion", "random", "--finetune-epochs", "0", "--json"],
                         tmp_path, capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    # the widest cost in tiny.yaml: 9 + 16 per x vertex
    assert 0.5 - 25 / doc["total"]["params"] <= doc["total"]["rho"] <= 0.5
    assert "iteration 1:" in err and "cnas-run/002-prune.cnas" in err
    g = cnas_ir.load(tmp_path / "cnas-run" / "002-prune.cnas")
    events = [e for e in g.history if e["pass"] == "prune"]
    assert events and events[-1]["rho"] == pytest.approx(doc["total"]["rho"])
    assert "no trained weights: fine-tuning" not in err  # --finetune-epochs 0 asked for none


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--rho", "0.05", "--criterion", "random"], "smallest feasible rho is"),
        (["--criterion", "weight"], "needs trained weights"),
        (["--rho", "1.5"], "--rho"),
        (["--criterion", "magic"], "--criterion"),
    ],
)
def test_cli_prune_errors(tmp_path, capsys, args, fragment):
    run(["build", str(EXAMPLES / "tiny.yaml")], tmp_path, capsys)
    code, out, err = run(["prune", *args], tmp_path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err
    assert sorted(p.name for p in (tmp_path / "cnas-run").iterdir()) == ["001-build.cnas"]


def test_taylor_search_trains_first_then_prunes_and_finetunes(tmp_path):
    graph = cnas_ir.build(SMALL)
    said = []
    pruned = search(graph, SearchSettings(rho=0.7, criterion="taylor", device="cpu", saliency_batches=2),
                    run=cnas_ir.rundir.RunDir(tmp_path), say=said.append)  # fmt: skip
    assert said[0].startswith("pruning to rho 0.7 (taylor")
    assert said[1].startswith("no trained weights: training the one-shot model first")
    passes = [e["pass"] for e in pruned.history]
    assert passes[:2] == ["build", "train"]
    assert "prune" in passes and passes.count("train") >= 2  # one-shot training + fine-tuning
    assert compute_stats(pruned).rho <= 0.7
    assert pruned.weights and np.all(np.isnan(pruned.saliency[~pruned.alive]))
    assert all("val acc" in line for line in said[2:])


def _random_unfolded(g, seed):
    """Kill random x, every x of a random node (its z then feeds zeros), and a random op."""
    rng = np.random.default_rng(seed)
    alive = g.alive.copy()
    alive[g.x_ids[rng.random(g.x_ids.size) < 0.3]] = False
    cell = g.cells[rng.integers(len(g.cells))]
    for op in cell.nodes[0].ops:
        alive[g.group_slice(op.x)] = False
    op = g.ops[rng.integers(len(g.ops))]
    alive[g.group_slice(op.x)] = False
    return g.replace(alive=alive)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fold_preserves_the_function(seed):
    g = cnas_ir.build(SMALL)
    torch.manual_seed(seed)
    g = to_graph(g, lower(g, "masked"))
    w = {k: (v + 0.3 if k.endswith("running_mean") else v) for k, v in g.weights.items()}  # BN(0) != 0
    g = _random_unfolded(g.replace(weights=w), seed)
    f = fold(g)
    assert not np.array_equal(f.alive, g.alive)  # the fold did remove something
    x = load_dataset(g.spec).test.images[:8]
    with torch.no_grad():
        ref = lower(g, "masked").eval()(x)
        for module in (lower(f, "masked"), lower(f, "compact"), lower(g, "compact")):
            assert torch.allclose(module.eval()(x), ref, atol=1e-5, rtol=0)
    assert lower(f, "compact").num_parameters() == compute_stats(f).model_params_live


def test_cli_export_after_prune(tmp_path, capsys):
    run(["build", str(EXAMPLES / "tiny.yaml")], tmp_path, capsys)
    code, _, err = run(["export", "--onnx"], tmp_path, capsys)
    assert code == 2 and "--allow-untrained" in err and err.count("\n") == 1
    run(["prune", "--rho", "0.6", "--criterion", "random", "--finetune-epochs", "0"], tmp_path, capsys)
    code, out, err = run(["export", "--onnx", "--allow-untrained", "--check", "--json"], tmp_path, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (tmp_path / "cnas-run" / "002-prune.onnx").exists() and report["check"]["passed"]
    code, _, err = run(["export", "--onnx", "-o", "x.txt"], tmp_path, capsys)
    assert code == 2 and "must end in .onnx" in err
