"""fold and prune on the arrays (no torch): fixpoint, idempotence, monotone parameters,
exact landing on rho, the feasibility floor, and the numpy criteria."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnas_ir
from cnas_ir.errors import InputError
from cnas_ir.ir import Kind
from cnas_ir.passes.fold import Fold, fold, live_closure
from cnas_ir.passes.prune import (
    PruneStep,
    min_feasible_rho,
    normalize_per_op,
    prune_to_rho,
    random_saliency,
    weight_saliency,
)
from cnas_ir.passes.stats import compute_stats
from cnas_ir.weights import weight_table


def small_spec(C, stacks, N, K, J, space="nasnet"):
    if space == "densenet":
        return {"name": "d", "space": "densenet", "input": {"channels": 1, "size": 8},
                "densenet": {"growth_rate": C, "depth": 6 * N + 4}}  # fmt: skip
    return {"name": "p", "input": {"channels": 1, "size": 8},
            "nasnet": {"channels": C, "stacks": stacks, "cells_per_stack": N, "nodes_per_cell": K,
                       "ops_per_node": J, "stem_multiplier": 1}}  # fmt: skip


def kill(g, frac, seed):
    rng = np.random.default_rng(seed)
    alive = g.alive.copy()
    alive[g.x_ids[rng.random(g.x_ids.size) < frac]] = False
    return g.replace(alive=alive)


@settings(max_examples=30, deadline=None)
@given(
    C=st.integers(1, 4), stacks=st.integers(1, 3), N=st.integers(1, 2), K=st.integers(1, 3), J=st.integers(1, 2),
    frac=st.floats(0.0, 1.0), seed=st.integers(0, 10), space=st.sampled_from(["nasnet", "densenet"]),
)  # fmt: skip
def test_fold_is_idempotent_verified_and_never_adds(C, stacks, N, K, J, frac, seed, space):
    g = kill(cnas_ir.build(small_spec(C, stacks, N, K, J, space)), frac, seed)
    g.verify()
    f = Fold()(g).graph
    f.verify()
    assert not np.any(f.alive & ~g.alive)  # only removes
    assert fold(f) is f  # idempotent
    assert compute_stats(f).model_params_live <= compute_stats(g).model_params_live
    # every op left has a live x, every live z is fed by a live op
    for op in f.ops:
        has_x = f.alive[f.group_slice(op.x)].any()
        assert has_x == f.alive[f.group_slice(op.y)].all()


def test_fold_removes_a_dead_node_and_its_consumers(tiny_graph):
    g = tiny_graph
    node = g.cell_by_index(1).nodes[0]
    alive = g.alive.copy()
    for op in node.ops:
        alive[g.group_slice(op.x)] = False
    f = fold(g.replace(alive=alive))
    assert not f.alive[f.group_slice(node.z)].any()
    zsl = f.group_slice(node.z)
    copies = (f.src >= zsl.start) & (f.src < zsl.stop)
    assert copies.sum() == 2 * 2 * 8 and not f.alive[copies].any()  # nodes 2, 3; 2 ops; 8 channels
    # cell 2's b and cell 3's a mirror cell 1's c: its first 8 channels (node 1's z) are dead
    c2, c3 = f.cell_by_index(2), f.cell_by_index(3)
    assert f.alive[f.group_slice(c2.inputs[1])].tolist() == [False] * 8 + [True] * 16
    assert f.alive[f.group_slice(c3.inputs[0])].tolist() == [False] * 8 + [True] * 16
    # preprocessing columns removed: cell 2's d_b conv loses 8 columns of width 8
    before, after = compute_stats(g).cells, compute_stats(f).cells
    assert before[1].params - after[1].params_live == 8 * 8
    # cell 1 itself: node 1's x (2 ops x 16) and the x copying z_1 (32), each 9 + 8
    assert before[0].params - after[0].params_live == (2 * 16 + 32) * (9 + 8)
    assert len(f.history) == len(g.history) + 1 and f.history[-1]["pass"] == "fold"


def test_live_closure_of_a_closed_mask_is_itself(paper_graph):
    g = kill(paper_graph, 0.3, 1)
    assert np.array_equal(live_closure(fold(g)), fold(g).alive)


def test_prune_lands_on_rho_paper_config(paper_graph):
    seeds = iter(range(1000))
    p = prune_to_rho(paper_graph, 0.46, score=lambda g: random_saliency(g, next(seeds)), criterion="random")
    p.verify()
    s = compute_stats(p)
    # SPEC §4.3: within one vertex's cost (9 + 144 in the widest cells) below rho
    assert 0.46 - 153 / 9_880_704 <= s.rho <= 0.46
    for c in s.cells:
        assert c.d_to_x + c.z_to_x == c.x_live
    events = [e for e in p.history if e["pass"] == "prune"]
    # 0.9^k of the x parameters plus fixed preprocessing reaches 0.46 after 10 steps
    assert len(events) == 10
    assert [e["iteration"] for e in events] == list(range(1, len(events) + 1))


def test_each_step_removes_gamma_of_the_remaining(tiny_graph):
    g = random_saliency(tiny_graph, 0)
    n = g.x_ids.size
    out = PruneStep(gamma=0.1)(g).graph
    assert int(out.alive[out.x_ids].sum()) <= n - math.ceil(0.1 * n)
    # the removed ones are exactly the lowest scores (before fold)
    removed = g.x_ids[~out.alive[g.x_ids]]
    kept = g.x_ids[out.alive[g.x_ids]]
    assert g.saliency[removed].min() <= g.saliency[kept].min()
    lowest = g.x_ids[np.argsort(g.saliency[g.x_ids], kind="stable")[: math.ceil(0.1 * n)]]
    assert set(lowest.tolist()) <= set(removed.tolist())


@settings(max_examples=15, deadline=None)
@given(rho=st.floats(0.35, 0.95), gamma=st.sampled_from([0.05, 0.1, 0.3]), seed=st.integers(0, 5))
def test_prune_never_increases_params_and_reaches_rho(rho, gamma, seed):
    g = cnas_ir.build(small_spec(4, 2, 1, 3, 2))
    rho = max(rho, min_feasible_rho(g) + 0.05)
    seen = []
    rng_seeds = iter(range(seed * 1000, seed * 1000 + 1000))
    p = prune_to_rho(g, rho, gamma=gamma, score=lambda h: random_saliency(h, next(rng_seeds)),
                     on_iteration=lambda it, h: seen.append(it.params_live))  # fmt: skip
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)
    assert compute_stats(p).rho <= rho


def test_rho_below_preprocessing_is_refused(paper_graph):
    floor = min_feasible_rho(paper_graph)
    # preprocessing of the paper config: 9,880,704 - sum of x * (9 + C) over the cells
    x_cost = 6 * 1440 * 45 + 7 * 2880 * 81 + 7 * 5760 * 153
    assert floor == pytest.approx((9_880_704 - x_cost) / 9_880_704)
    with pytest.raises(InputError, match=r"smallest feasible rho is 0\.171039"):
        prune_to_rho(paper_graph, 0.1, score=random_saliency)


def test_weight_criterion_is_l1_of_dw_and_pw_column(tiny_graph):
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(i.shape).astype(np.float32) for n, i in weight_table(tiny_graph).items()}
    g = weight_saliency(tiny_graph.replace(weights=w))
    op = g.ops[0]
    pre = f"cell{op.cell}.node{op.node}.op{op.j}"
    raw = np.abs(w[f"{pre}.dw.weight"]).sum(axis=(1, 2, 3)) + np.abs(w[f"{pre}.pw.weight"]).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(g.saliency[g.group_slice(op.x)], raw / np.linalg.norm(raw), rtol=1e-5)
    with pytest.raises(InputError, match="needs trained weights"):
        weight_saliency(tiny_graph)


def test_normalize_per_op_unit_norm(tiny_graph):
    g = kill(tiny_graph, 0.5, 3)
    s = normalize_per_op(g, np.random.default_rng(0).random(g.num_vertices))
    for op in g.ops:
        v = s[g.group_slice(op.x)]
        live = g.alive[g.group_slice(op.x)]
        assert np.all(np.isnan(v[~live]))
        if live.any():
            assert np.linalg.norm(v[live]) == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.isnan(s[g.kind[g.vertex_group] != Kind.X]))


def test_prune_step_requires_saliency(tiny_graph):
    from cnas_ir.passes.base import PassError

    with pytest.raises(PassError, match="needs a saliency"):
        PruneStep()(tiny_graph)
