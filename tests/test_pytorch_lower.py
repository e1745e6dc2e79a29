"""The PyTorch backend: compact vs masked equivalence, parameter counts, weights both ways (SPEC §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnas_ir.backends.pytorch import CnasModule, lower, to_graph
from cnas_ir.ir import Edge, Graph, Kind
from cnas_ir.passes.build import build_graph
from cnas_ir.passes.stats import compute_stats
from cnas_ir.spec import parse_spec
from cnas_ir.weights import compact, weight_table

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def nasnet_graph(
    channels: int = 4,
    stacks: int = 3,
    cells: int = 1,
    nodes: int = 3,
    ops: int = 2,
    dropout: float = 0.0,
    stem: str = "cifar",
) -> Graph:
    nas = {
        "channels": channels,
        "stacks": stacks,
        "cells_per_stack": cells,
        "nodes_per_cell": nodes,
        "ops_per_node": ops,
        "spatial_dropout": dropout,
        "stem": stem,
    }
    return build_graph(parse_spec({"name": "t", "input": {"size": SIZE}, "nasnet": nas}))


def densenet_graph(depth: int = 10) -> Graph:
    dense = {"growth_rate": 4, "depth": depth}
    return build_graph(parse_spec({"name": "d", "space": "densenet", "input": {"size": SIZE}, "densenet": dense}))


# ---- random pruning that respects the IR invariants -------------------------------------------


def propagate(g: Graph, alive: np.ndarray, fold: bool) -> np.ndarray:
    """Make ``alive`` verify: dead z kill the x copying them, c/a/b mirror their sources.

    With ``fold`` also remove, to a fixpoint, ops with no live x (their y) and nodes with no live
    op (their z), as the fold pass does; without it such ops/nodes stay marked live.
    """
    alive = alive.copy()
    x = g.x_ids
    while True:
        before = alive.copy()
        for cell in g.cells:
            for node in cell.nodes:
                if fold:
                    for op in node.ops:
                        if not alive[g.group_slice(op.x)].any():
                            alive[g.group_slice(op.y)] = False
                    if not any(alive[g.group_slice(op.y)].all() for op in node.ops):
                        alive[g.group_slice(node.z)] = False
        alive[x[~alive[g.src[x]]]] = False  # an x copying a dead channel is dead
        if np.array_equal(before, alive):
            break
    # c mirrors the concat of its parts (in bundle order); then a/b mirror the c they copy.
    for c in np.flatnonzero(g.kind == Kind.C):
        parts = g.bundle_src[(g.bundle_kind == Edge.CONCAT) & (g.bundle_dst == c)]
        alive[g.group_slice(int(c))] = np.concatenate([alive[g.group_slice(int(p))] for p in parts])
    for e in np.flatnonzero(g.bundle_kind == Edge.IDENTITY):
        s, t = int(g.bundle_src[e]), int(g.bundle_dst[e])
        if Kind(int(g.kind[t])) in (Kind.A, Kind.B):
            alive[g.group_slice(t)] = alive[g.group_slice(s)]
    return alive


def random_alive(
    g: Graph, seed: int, p_x: float = 0.4, p_op: float = 0.15, p_node: float = 0.15, fold: bool = True
) -> Graph:
    """``g`` with random x, whole ops and whole nodes removed, invariants restored.

    Without ``fold`` the result keeps unfolded states the verifier allows: ops with no live x
    but a live y, live z whose ops are all dead, dead z whose ops are still marked live.
    """
    rng = np.random.default_rng(seed)
    alive = g.alive.copy()
    x = g.x_ids
    alive[x[rng.random(x.size) < p_x]] = False
    for cell in g.cells:
        for node in cell.nodes:
            if rng.random() < p_node:
                alive[g.group_slice(node.z)] = False
                for op in node.ops:
                    alive[g.group_slice(op.x)] = False
                    alive[g.group_slice(op.y)] = False
            elif not fold and rng.random() < p_node:
                alive[g.group_slice(node.z)] = False  # z dead, ops still marked live: legal, unfolded
            for op in node.ops:
                if rng.random() < p_op:
                    alive[g.group_slice(op.x)] = False
    out = g.replace(alive=propagate(g, alive, fold))
    out.verify()
    return out


def calibrated(g: Graph, seed: int = 0) -> Graph:
    """``g`` with random weights, dead entries included, and calibrated BN statistics.

    Dead entries are nonzero (drawn and calibrated in the unpruned network), so the masks are
    what removes them. Default running statistics (mean 0, var 1) let activations grow cell
    after cell; calibrated ones keep them O(1), so an absolute tolerance on the logits means
    something.
    """
    torch.manual_seed(seed)
    full = g.replace(alive=np.ones_like(g.alive))
    g = g.replace(weights=calibrate(lower(full, "masked")).graph_weights(full))
    return to_graph(g, calibrate(lower(g, "masked")))


def calibrate(m: CnasModule) -> CnasModule:
    """Set BN running statistics to the average over a few random batches."""
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None  # cumulative average
            bn.reset_running_stats()
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 3, SIZE, SIZE))
    return m


def logits(m: CnasModule, x: torch.Tensor) -> torch.Tensor:
    m.eval()
    with torch.no_grad():
        return m(x)


SPACES = {
    "nasnet": lambda: nasnet_graph(),
    "nasnet-2x2": lambda: nasnet_graph(channels=6, stacks=2, cells=2, nodes=2, ops=1),
    # three stride-2 stem layers (8 -> 4 -> 2 -> 1); the first cell's d_a a factorized reduce
    "nasnet-imagenet": lambda: nasnet_graph(channels=6, stacks=2, cells=2, nodes=2, stem="imagenet"),
    "densenet": lambda: densenet_graph(10),
    "densenet-16": lambda: densenet_graph(16),
}


# ---- parameter counts and names ----------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parameter_counts_match_stats(space: str, seed: int) -> None:
    g = random_alive(SPACES[space](), seed)
    stats = compute_stats(g)
    assert lower(g, "masked").num_parameters() == stats.model_params
    assert lower(g, "compact").num_parameters() == stats.model_params_live
    assert stats.model_params_live < stats.model_params


@pytest.mark.parametrize("space", SPACES)
def test_names_are_the_weight_table(space: str) -> None:
    g = random_alive(SPACES[space](), 3)
    table = weight_table(g)
    masked, comp = lower(g, "masked"), lower(g, "compact")
    names = {k for k in masked.state_dict() if not k.endswith("num_batches_tracked")}
    assert names == set(table)
    held = {k: v for k, v in comp.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(held) <= set(table)
    for name, t in held.items():  # compact shapes are the live parts of the one-shot shapes
        assert tuple(t.shape) == compact(g, table[name], np.zeros(table[name].shape)).shape, name


def test_dead_ops_and_nodes_are_not_in_the_compact_module() -> None:
    g = nasnet_graph()
    alive = g.alive.copy()
    cell = g.cells[0]
    alive[g.group_slice(cell.nodes[0].ops[1].x)] = False  # op2 of node1 reads nothing
    g2 = g.replace(alive=propagate(g, alive, fold=False))  # its y and z stay marked live
    g2.verify()
    names = set(lower(g2, "compact").state_dict())
    assert "cell1.node1.op1.pw.weight" in names
    assert not any(n.startswith("cell1.node1.op2.") for n in names)
    assert lower(g2, "compact").num_parameters() == compute_stats(g2).model_params_live


# ---- compact == masked -------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("seed", "fold"), [(0, True), (1, False)])
def test_compact_equals_masked_in_eval(space: str, fold: bool, seed: int) -> None:
    g = calibrated(random_alive(SPACES[space](), seed, fold=fold), seed)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    ref = logits(lower(g, "masked"), x)
    out = logits(lower(g, "compact"), x)
    # Not vacuous: the dead weights are nonzero, so pruning changes the function.
    unpruned = logits(lower(g.replace(alive=np.ones_like(g.alive)), "masked"), x)
    assert (unpruned - ref).abs().max().item() > 1e-3
    assert (out - ref).abs().max().item() < 1e-5
    # In float64 the two differ only by summation order.
    ref64 = logits(lower(g, "masked").double(), x.double())
    out64 = logits(lower(g, "compact").double(), x.double())
    assert (out64 - ref64).abs().max().item() < 1e-10


@pytest.mark.parametrize("space", SPACES)
def test_gradients_and_batch_statistics_agree_in_train_mode(space: str) -> None:
    g = calibrated(random_alive(SPACES[space](), 5), 5)
    x = torch.randn(6, 3, SIZE, SIZE, dtype=torch.float64)
    target = torch.arange(6) % 10
    mods = {}
    for mode in ("masked", "compact"):
        m = lower(g, mode).double().train()  # spatial dropout is 0 in these specs
        torch.nn.functional.cross_entropy(m(x), target).backward()
        mods[mode] = m
    table = weight_table(g)
    masked = dict(mods["masked"].named_parameters()) | dict(mods["masked"].named_buffers())
    for name, p in list(mods["compact"].named_parameters()) + list(mods["compact"].named_buffers()):
        if name not in table:
            continue  # index buffers, num_batches_tracked
        ref = masked[name]
        if isinstance(p, torch.nn.Parameter):
            # No grad: a parameter with no path to the loss (e.g. a conv over 0 live columns).
            got = np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy()
            want = compact(g, table[name], ref.grad.numpy())
            np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12, err_msg=name)
        else:  # running statistics updated from the same batch statistics
            np.testing.assert_allclose(p.numpy(), compact(g, table[name], ref.numpy()), rtol=1e-8, atol=1e-12)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stacks=st.integers(2, 3),
    cells=st.integers(1, 2),
    nodes=st.integers(2, 3),
    ops=st.integers(1, 2),
    channels=st.sampled_from([4, 6, 8]),
    seed=st.integers(0, 2**16),
    fold=st.booleans(),
)
def test_property_small_random_nasnet(
    stacks: int, cells: int, nodes: int, ops: int, channels: int, seed: int, fold: bool
) -> None:
    g = random_alive(nasnet_graph(channels, stacks, cells, nodes, ops), seed, p_x=0.5, fold=fold)
    g = calibrated(g, seed)
    x = torch.randn(2, 3, SIZE, SIZE)
    assert (logits(lower(g, "compact"), x) - logits(lower(g, "masked"), x)).abs().max().item() < 1e-5
    if fold:
        assert lower(g, "compact").num_parameters() == compute_stats(g).model_params_live


@pytest.mark.parametrize("space", ["nasnet", "densenet"])
def test_a_cell_with_every_node_dead(space: str) -> None:
    g = SPACES[space]()
    alive = g.alive.copy()
    for node in g.cells[0].nodes:
        alive[g.group_slice(node.z)] = False
        for op in node.ops:
            alive[g.group_slice(op.x)] = False
            alive[g.group_slice(op.y)] = False
    g = calibrated(g.replace(alive=propagate(g, alive, fold=True)))
    g.verify()
    x = torch.randn(2, 3, SIZE, SIZE)
    comp = lower(g, "compact")
    assert comp.num_parameters() == compute_stats(g).model_params_live
    assert (logits(comp, x) - logits(lower(g, "masked"), x)).abs().max().item() < 1e-5


def test_same_seed_same_initial_function() -> None:
    # Init draws one-shot values in weight-table order, then compacts: modes agree at init.
    g = random_alive(nasnet_graph(), 7)
    torch.manual_seed(3)
    masked = lower(g, "masked")
    torch.manual_seed(3)
    comp = lower(g, "compact")
    torch.manual_seed(3)
    again = lower(g, "compact")
    x = torch.randn(2, 3, SIZE, SIZE)
    for m in (masked, comp, again):  # train mode: batch statistics, so no growth from var = 1
        m.train()
    with torch.no_grad():
        assert torch.equal(comp(x), again(x))
        assert (comp(x) - masked(x)).abs().max().item() < 1e-5


# ---- weights both ways -------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["nasnet", "densenet"])
def test_weights_round_trip(space: str) -> None:
    g = calibrated(random_alive(SPACES[space](), 11))
    x = torch.randn(3, 3, SIZE, SIZE)
    for mode in ("masked", "compact"):
        m1 = lower(g, mode)
        w = m1.graph_weights(g)
        table = weight_table(g)
        assert list(w) == list(table)
        assert all(a.shape == table[n].shape and a.dtype == np.float32 for n, a in w.items())
        g2 = to_graph(g, m1)
        m2 = lower(g2, mode)
        assert torch.equal(logits(m1, x), logits(m2, x))
        # graph -> module -> graph is the identity on the weights: dead entries come from g.
        for name, a in to_graph(g2, m2).weights.items():
            np.testing.assert_array_equal(a, g.weights[name], err_msg=name)


def test_masked_weights_load_into_compact_and_back() -> None:
    g = random_alive(nasnet_graph(), 13)
    torch.manual_seed(0)
    masked = lower(g, "masked", weights=False)
    with torch.no_grad():  # perturb everything, dead entries included
        for p in masked.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    gw = to_graph(g, calibrate(masked))
    comp = lower(gw, "compact")
    x = torch.randn(2, 3, SIZE, SIZE)
    masked.load_graph_weights(gw)
    assert (logits(comp, x) - logits(masked, x)).abs().max().item() < 1e-5
    # compact -> masked: a fresh masked module loading the compact module's weights
    back = lower(to_graph(gw, comp), "masked")
    assert (logits(back, x) - logits(comp, x)).abs().max().item() < 1e-5


def test_dead_entries_come_from_the_graph_or_zero() -> None:
    g = random_alive(nasnet_graph(), 17)
    comp = lower(g, "compact")
    table = weight_table(g)
    w = comp.graph_weights(g)  # g has no weights: dead entries are zero
    info = table["cell1.node1.op1.pw.weight"]
    dead_cols = ~g.alive[g.group_slice(info.axes[1])]
    assert dead_cols.any()
    assert np.all(w["cell1.node1.op1.pw.weight"][:, dead_cols] == 0)
    marked = {n: np.full(i.shape, 7.0, np.float32) for n, i in table.items()}
    w2 = comp.graph_weights(g.replace(weights=marked))
    assert np.all(w2["cell1.node1.op1.pw.weight"][:, dead_cols] == 7.0)
    assert np.all(w2["cell1.node1.op1.pw.weight"][:, ~dead_cols] != 7.0)


def test_load_rejects_bad_weights() -> None:
    g = nasnet_graph()
    m = lower(g, "compact")
    bad = {"stem.conv.weight": np.zeros((1, 1, 3, 3), np.float32)}
    with pytest.raises(ValueError, match="stem.conv.weight"):
        m.load_graph_weights(g.replace(weights=bad))
    with pytest.raises(ValueError, match="structure"):
        m.load_graph_weights(densenet_graph())
    with pytest.raises(ValueError, match="mode"):
        lower(g, "dense")  # type: ignore[arg-type]


def test_spatial_dropout_only_in_training() -> None:
    g = nasnet_graph(dropout=0.5)
    m = lower(g, "compact")
    x = torch.randn(2, 3, SIZE, SIZE)
    m.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = m(x)
        torch.manual_seed(1)
        b = m(x)
    assert not torch.equal(a, b)
    assert torch.equal(logits(m, x), logits(m, x))


# ---- paper scale (a few seconds) ---------------------------------------------------------------


@pytest.mark.slow
def test_paper_config_one_shot_masked_module() -> None:
    g = build_graph(parse_spec({"name": "p"}))
    stats = compute_stats(g)
    assert stats.total.params == 9_880_704  # Table 1: the 20 cells
    m = lower(g, "masked")
    assert m.num_parameters() == stats.model_params == 9_891_046  # cells + stem + head
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.slow
def test_densenet_bc_100_has_the_canonical_parameter_count() -> None:
    # DenseNet-BC-100 with k=12 has 769,162 parameters (Huang et al.; torchvision-style count of
    # conv weights, affine BN and the Linear head): the one-shot lowering must match to the unit.
    g = build_graph(parse_spec({"name": "d", "space": "densenet"}))
    m = lower(g, "compact")
    assert m.num_parameters() == 769_162
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("space", ["nasnet", "densenet"])
@pytest.mark.parametrize("pruned", [True, False])
def test_x_hook_gives_each_op_its_own_gradient(space: str, pruned: bool) -> None:
    # Saliency needs x·δx per op copy: ops sharing a gathered tensor (the unpruned ops of a
    # node all read the same channels) must not share δx.
    g = SPACES[space]()
    g = calibrated(random_alive(g, 19) if pruned else g)
    x = torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64)
    scores: dict[str, dict[str, list[torch.Tensor]]] = {}
    for mode in ("masked", "compact"):
        m = lower(g, mode).double().train()
        seen: dict[str, list[torch.Tensor]] = {}
        for name, mod in m.named_modules():
            if name.endswith(".x"):
                mod.register_forward_hook(
                    lambda _m, _i, out, name=name, seen=seen: seen.setdefault(name, []).append(out)
                )
        out = m(x)
        for ts in seen.values():
            for t in ts:
                t.retain_grad()
        out.square().sum().backward()
        scores[mode] = {k: [(t * t.grad).mean((2, 3)).abs().sum(0).detach() for t in ts] for k, ts in seen.items()}
    for name, parts in scores["compact"].items():
        got = torch.cat(parts).numpy()
        want = torch.cat(scores["masked"][name]).numpy()
        op = next(o for o in g.ops if name == f"cell{o.cell}.node{o.node}.op{o.j}.x")
        np.testing.assert_allclose(got, want[g.alive[g.group_slice(op.x)]], rtol=1e-8, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("space", ["nasnet", "densenet"])
def test_multiply_adds_counted_by_torch_match_stats(space: str) -> None:
    # torch's own FLOP counter (2 FLOPs per multiply-add of every conv and matmul the module
    # runs) against the IR's cost table, on a pruned graph with dead ops and nodes.
    from torch.utils.flop_counter import FlopCounterMode

    from cnas_ir.passes.fold import fold

    g = nasnet_graph() if space == "nasnet" else densenet_graph()
    g = fold(random_alive(g, 3))
    module = lower(g, "compact").eval()
    spec = g.spec
    x = torch.randn(2, spec.input.channels, spec.input.size, spec.input.size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    assert counter.get_total_flops() == 2 * 2 * compute_stats(g).macs_live


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (6, 5)])
def test_factorized_reduce_is_the_shifted_stride_two_pair(size: tuple[int, int]) -> None:
    """The factorized reduce (SPEC §8) against its definition written here: conv1 (1x1, stride 2)
    of ReLU(a), conv2 (1x1, stride 2) of ReLU(a) shifted up and left by one pixel with a zero
    fill, concatenated, then BN; in training (batch statistics) and in its gradients."""
    import torch.nn.functional as F

    from cnas_ir.backends.pytorch.nasnet import FactorizedReduce

    torch.manual_seed(0)
    fr = FactorizedReduce(6, 10).double().train()
    a = torch.randn(3, 6, *size, dtype=torch.float64, requires_grad=True)
    h = F.relu(a)
    shifted = F.pad(h, (0, 1, 0, 1))[:, :, 1:, 1:]
    cat = torch.cat([F.conv2d(h, fr.conv1.weight, stride=2), F.conv2d(shifted, fr.conv2.weight, stride=2)], 1)
    want = F.batch_norm(cat, None, None, training=True, eps=fr.bn.eps)
    got = fr(a)
    assert got.shape == (3, 10, (size[0] + 1) // 2, (size[1] + 1) // 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    g = torch.randn_like(want)
    (ga, gw1, gw2) = torch.autograd.grad(want, (a, fr.conv1.weight, fr.conv2.weight), g)
    (ha, hw1, hw2) = torch.autograd.grad(got, (a, fr.conv1.weight, fr.conv2.weight), g)
    for x, y in ((ga, ha), (gw1, hw1), (gw2, hw2)):
        torch.testing.assert_close(y, x, rtol=0, atol=1e-10)


def test_factorized_reduce_gradient_keeps_the_input_layout() -> None:
    """The factorized reduce of a ReLU'd cell output (``on_relu``, as the buffered path calls it)
    gives a channels_last input a channels_last gradient. Autograd's own backward of the two
    subsampling slices returned a channels-first one, which every later add and the copy into
    the gradient buffer then had to transpose."""
    from cnas_ir.backends.pytorch.nasnet import FactorizedReduce

    torch.manual_seed(0)
    fr = FactorizedReduce(6, 10).train().to(memory_format=torch.channels_last)
    for fmt in (torch.channels_last, torch.contiguous_format):
        for size in ((8, 8), (7, 6)):
            leaf = torch.randn(3, 6, *size).contiguous(memory_format=fmt).requires_grad_()
            h = leaf.clamp_min(0)  # not a leaf: a leaf's .grad is made to follow the leaf's layout
            grads: list[torch.Tensor] = []
            h.register_hook(grads.append)
            fr.on_relu(h).sum().backward()
            assert grads[0].is_contiguous(memory_format=fmt)
