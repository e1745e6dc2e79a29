"""Taylor saliency against a network written by hand in this test, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnas_ir
from cnas_ir.backends.pytorch import lower, to_graph
from cnas_ir.backends.pytorch.data import Split
from cnas_ir.backends.pytorch.saliency import raw_taylor_scores, taylor_saliency

ONE_CELL = {
    "name": "s",
    "input": {"channels": 1, "size": 4},
    "classes": 3,
    "nasnet": {"channels": 2, "stacks": 1, "cells_per_stack": 1, "nodes_per_cell": 2, "ops_per_node": 2,
               "stem_multiplier": 1, "spatial_dropout": 0.0},
}  # fmt: skip


def _trained_like(spec, seed=0):
    """A graph with random weights and BN statistics far from the identity."""
    g = cnas_ir.build(spec)
    torch.manual_seed(seed)
    g = to_graph(g, lower(g, "masked"))
    rng = np.random.default_rng(seed)
    w = dict(g.weights)
    for k in w:
        if k.endswith("running_mean"):
            w[k] = rng.normal(0, 0.3, w[k].shape).astype(np.float32)
        elif k.endswith("running_var"):
            w[k] = rng.uniform(0.5, 2.0, w[k].shape).astype(np.float32)
    return g.replace(weights=w)


def _data(n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 4, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen))


def _bn(x, w, name):
    return (x - torch.tensor(w[f"{name}.running_mean"]).view(1, -1, 1, 1)) / torch.sqrt(
        torch.tensor(w[f"{name}.running_var"]).view(1, -1, 1, 1) + 1e-5
    )


def _hand_scores(g, images, labels):
    """The one-cell network of ONE_CELL written out by hand (SPEC §1), eval mode; returns
    {op name: sum over images of |mean_hw(x * dL/dx)|} with x each op's own leaf copy."""
    w = {k: torch.tensor(v) for k, v in g.weights.items()}
    wn = g.weights
    scores = {}
    for i in range(images.shape[0]):
        img = images[i : i + 1]
        s = F.conv2d(img, w["stem.conv.weight"], padding=1)
        s = _bn(s, wn, "stem.bn") * w["stem.bn.weight"].view(1, -1, 1, 1) + w["stem.bn.bias"].view(1, -1, 1, 1)
        d_a = _bn(F.conv2d(F.relu(s), w["cell1.d_a.conv.weight"]), wn, "cell1.d_a.bn")
        d_b = _bn(F.conv2d(F.relu(s), w["cell1.d_b.conv.weight"]), wn, "cell1.d_b.bn")
        states = [d_a, d_b]
        leaves = {}
        zs = []
        for k in (1, 2):
            z = 0
            for j in (1, 2):
                name = f"cell1.node{k}.op{j}"
                # the op's own copy of its inputs: a fresh leaf joined to the graph by addition
                own = torch.zeros_like(torch.cat(states, 1), requires_grad=True)
                x = F.relu(torch.cat(states, 1)) + own
                leaves[name] = (x, own)
                h = F.conv2d(x, w[f"{name}.dw.weight"], padding=1, groups=x.shape[1])
                z = z + _bn(F.conv2d(h, w[f"{name}.pw.weight"]), wn, f"{name}.bn")
            states.append(z)
            zs.append(z)
        c = torch.cat(zs, 1)
        logits = F.linear(c.mean(dim=(2, 3)), w["head.linear.weight"], w["head.linear.bias"])
        loss = F.cross_entropy(logits, labels[i : i + 1], reduction="sum")
        loss.backward()
        for name, (x, own) in leaves.items():
            # d loss / d own == d loss / d x: the gradient of this copy alone
            s_i = (x.detach() * own.grad).mean(dim=(2, 3)).abs().sum(0)
            scores[name] = scores.get(name, 0) + s_i
    return scores


def test_taylor_matches_hand_written_network():
    g = _trained_like(ONE_CELL)
    data = _data()
    raw = raw_taylor_scores(g, data, batches=3, batch_size=2, device="cpu")
    hand = _hand_scores(g, data.images, data.labels)
    for op in g.ops:
        name = f"cell{op.cell}.node{op.node}.op{op.j}"
        np.testing.assert_allclose(raw[g.group_slice(op.x)], hand[name].numpy(), rtol=1e-4, atol=1e-7)
    # the two ops of a node read the same channels, but each has its own gradient
    n1 = g.cell_by_index(1).nodes[0]
    assert not np.allclose(raw[g.group_slice(n1.ops[0].x)], raw[g.group_slice(n1.ops[1].x)])


def test_all_zero_channel_scores_zero():
    g = _trained_like(ONE_CELL, seed=3)
    w = dict(g.weights)
    # d_a channel 0 = BN(conv(.)) with a zero conv row and zero running mean: exactly zero
    conv = w["cell1.d_a.conv.weight"].copy()
    conv[0] = 0
    mean = w["cell1.d_a.bn.running_mean"].copy()
    mean[0] = 0
    w["cell1.d_a.conv.weight"], w["cell1.d_a.bn.running_mean"] = conv, mean
    g = g.replace(weights=w)
    raw = raw_taylor_scores(g, _data(), batches=2, batch_size=3, device="cpu")
    d_a0 = int(g.start[g.cell_by_index(1).d[0]])
    copies = np.flatnonzero(g.src == d_a0)
    assert copies.size == 4 and np.all(raw[copies] == 0)
    assert np.all(raw[np.flatnonzero((g.src >= 0) & (g.src != d_a0))] > 0)


def test_normalised_per_op_and_nan_for_dead():
    g = _trained_like(ONE_CELL, seed=5)
    alive = g.alive.copy()
    op = g.ops[1]
    alive[g.start[op.x] + 1] = False
    g = g.replace(alive=alive)
    s = taylor_saliency(g, _data(), batches=2, batch_size=3, device="cpu")
    assert np.isnan(s.saliency[g.start[op.x] + 1])
    for o in s.ops:
        v = s.saliency[s.group_slice(o.x)]
        assert np.nansum(v**2) == pytest.approx(1.0, rel=1e-5)


def test_batches_partition_does_not_matter():
    # The loss is summed over images, so the scores are a sum over images: the same data in
    # one batch or in three gives the same scores.
    g = _trained_like(ONE_CELL, seed=7)
    data = _data(6)
    a = raw_taylor_scores(g, data, batches=1, batch_size=6, device="cpu")
    b = raw_taylor_scores(g, data, batches=3, batch_size=2, device="cpu")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def _mask_gradient_scores(g, data):
    """Reference by another route: the masked module's 0/1 x masks made differentiable. With
    x' = m * x, dL/dm = sum over h, w of x * dL/dx'; so per image |dL/dm| / (H * W) is the
    Taylor score, H x W the size of that copy (a reduction cell's d copies are at input size)."""
    module = lower(g, "masked").eval()
    masks = {}
    for name, m in module.named_modules():
        if name.endswith(tuple(f"op{j}" for j in range(1, 9))) and hasattr(m, "mask0"):
            for i in range(len(m.gathers)):
                t = getattr(m, f"mask{i}").clone().requires_grad_(True)
                setattr(m, f"mask{i}", t)
                masks[(name, i)] = t
    totals = {}
    for n in range(len(data)):
        for t in masks.values():
            t.grad = None
        x = data.images[n : n + 1]
        sizes = {}
        hooks = [
            m.register_forward_hook(
                lambda mod, inp, out, name=name, sizes=sizes: sizes.setdefault(name, []).append(out.shape[-1])
            )
            for name, m in module.named_modules()
            if name.endswith(".x")
        ]
        F.cross_entropy(module(x), data.labels[n : n + 1], reduction="sum").backward()
        for h in hooks:
            h.remove()
        for (name, i), t in masks.items():
            side = sizes[name + ".x"][i]
            totals[(name, i)] = totals.get((name, i), 0) + t.grad.abs().flatten() / (side * side)
    return totals


def test_reduction_cell_matches_mask_gradient_reference():
    spec = {"name": "r", "input": {"channels": 1, "size": 4}, "classes": 3,
            "nasnet": {"channels": 2, "stacks": 2, "cells_per_stack": 1, "nodes_per_cell": 2, "ops_per_node": 1,
                       "stem_multiplier": 1, "spatial_dropout": 0.0}}  # fmt: skip
    g = _trained_like(spec, seed=2)
    data = _data(4)
    raw = raw_taylor_scores(g, data, batches=2, batch_size=2, device="cpu")
    ref = _mask_gradient_scores(g, data)
    for op in g.ops:
        name = f"cell{op.cell}.node{op.node}.op{op.j}"
        want = torch.cat([ref[(name, i)] for i in range(2) if (name, i) in ref]).numpy()
        np.testing.assert_allclose(raw[g.group_slice(op.x)], want, rtol=1e-4, atol=1e-7)
    assert g.cell_by_index(2).kind == "reduction"


def test_buffered_path_scores_and_prunes_like_the_per_op_path(monkeypatch):
    # Saliency runs the buffered path (autograd on, channels_last). Against the per-op path in
    # NCHW it must agree to float32 rounding and make the same pruning decisions.
    import importlib

    from cnas_ir.passes.prune import prune_to_rho

    nasnet_mod = importlib.import_module("cnas_ir.backends.pytorch.nasnet")
    spec = {**ONE_CELL, "input": {"channels": 1, "size": 8},
            "nasnet": {**ONE_CELL["nasnet"], "channels": 4, "stacks": 2, "nodes_per_cell": 3}}  # fmt: skip
    g = _trained_like(spec, seed=3)
    data = _data(n=12, seed=4)
    data = Split(torch.nn.functional.interpolate(data.images, size=8), data.labels)

    def scores(g_, per_op):
        with monkeypatch.context() as mp:
            if per_op:
                mp.setattr(nasnet_mod.NasnetCell, "bufferable", lambda self: False)
            return raw_taylor_scores(g_, data, batches=3, batch_size=4, device="cpu", channels_last=not per_op)

    buffered, per_op = scores(g, False), scores(g, True)
    live = ~np.isnan(per_op)
    assert live.any() and np.array_equal(live, ~np.isnan(buffered))
    np.testing.assert_allclose(buffered[live], per_op[live], rtol=1e-5, atol=1e-9)

    def pruned(per_op):
        def score(h):
            return taylor_saliency(h, data, batches=3, batch_size=4, device="cpu", channels_last=not per_op)

        with monkeypatch.context() as mp:
            if per_op:
                mp.setattr(nasnet_mod.NasnetCell, "bufferable", lambda self: False)
            return prune_to_rho(g, 0.6, gamma=0.2, score=score, criterion="taylor")

    assert np.array_equal(pruned(False).alive, pruned(True).alive)
