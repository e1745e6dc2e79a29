"""The compact module's buffered training path (autograd on) against the masked reference.

``lower(graph, "compact")`` runs a NASNet cell through :func:`cnas_ir.backends.pytorch.buffered.run_cell`
whenever autograd is on: the states in the plan's buffers, the gradients moved by three autograd
Functions. Its forward and its gradients must be the masked module's (float64: summation order
only), in either layout, on folded and unfolded graphs, and autograd's usual contracts must hold
(two forwards before one backward, a retained graph run twice, hooks).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_pytorch_lower import SIZE, calibrated, nasnet_graph, random_alive

from cnas_ir.backends.pytorch import lower
from cnas_ir.ir import Graph
from cnas_ir.weights import compact, weight_table

pytestmark = pytest.mark.usefixtures("one_thread")

buffered = importlib.import_module("cnas_ir.backends.pytorch.buffered")

GRAPHS = {
    "nasnet": lambda: nasnet_graph(),
    "nasnet-2x2": lambda: nasnet_graph(channels=6, stacks=2, cells=2, nodes=2, ops=1),
    "nasnet-3ops": lambda: nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3),
}


def _step(m: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out = m(x)
    F.cross_entropy(out, target).backward()
    return out.detach()


def _assert_same_training(g: Graph, masked: torch.nn.Module, comp: torch.nn.Module) -> None:
    """Gradients and running statistics of ``comp`` equal the live part of ``masked``'s."""
    g = comp._graph  # the lowered graph: ``g`` closed under folding, whose live part comp holds
    table = weight_table(g)
    ref = dict(masked.named_parameters()) | dict(masked.named_buffers())
    for name, p in list(comp.named_parameters()) + list(comp.named_buffers()):
        if name not in table:
            continue
        want_t = ref[name].grad if isinstance(p, torch.nn.Parameter) else ref[name]
        assert want_t is not None, name
        want = compact(g, table[name], want_t.detach().numpy())
        got_t = p.grad if isinstance(p, torch.nn.Parameter) else p
        got = np.zeros(tuple(p.shape)) if got_t is None else got_t.detach().contiguous().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("space", GRAPHS)
@pytest.mark.parametrize(("seed", "fold"), [(0, True), (1, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_buffered_training_equals_masked(space: str, seed: int, fold: bool, channels_last: bool) -> None:
    g = calibrated(random_alive(GRAPHS[space](), seed, fold=fold), seed)
    x = torch.randn(5, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    target = torch.arange(5) % 10
    masked = lower(g, "masked").double().train()
    comp = lower(g, "compact").double().train()
    if channels_last:
        comp = comp.to(memory_format=torch.channels_last)
    calls = []
    real = buffered.run_cell
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            importlib.import_module("cnas_ir.backends.pytorch.lower"),
            "run_cell",
            lambda *a, **k: calls.append(1) or real(*a, **k),
        )
        out = _step(comp, x.contiguous(memory_format=torch.channels_last) if channels_last else x, target)
    assert len(calls) == len(comp._cells())  # the buffered path ran, cell after cell
    ref = _step(masked, x, target)
    assert (out - ref).abs().max().item() < 1e-10
    _assert_same_training(g, masked, comp)


def test_two_forwards_then_one_backward() -> None:
    # Gradient accumulation over two micro-batches: each forward has its own buffers, and the
    # pool must not hand the first forward's buffers to the second.
    g = calibrated(random_alive(nasnet_graph(), 7), 7)
    x = torch.randn(6, 3, SIZE, SIZE, dtype=torch.float64)
    target = torch.arange(6) % 10
    masked = lower(g, "masked").double().train()
    comp = lower(g, "compact").double().train()
    for m in (masked, comp):
        loss = F.cross_entropy(m(x[:3]), target[:3]) + F.cross_entropy(m(x[3:]), target[3:])
        loss.backward()
    _assert_same_training(g, masked, comp)


def test_a_retained_graph_runs_backward_twice() -> None:
    g = calibrated(random_alive(nasnet_graph(), 8), 8)
    x = torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64)
    target = torch.arange(4) % 10
    mods = {}
    for mode in ("masked", "compact"):
        m = lower(g, mode).double().train()
        loss = F.cross_entropy(m(x), target)
        loss.backward(retain_graph=True)
        loss.backward()
        mods[mode] = m
    _assert_same_training(g, mods["masked"], mods["compact"])


def test_buffered_equals_per_op_and_taps_see_their_own_gradient() -> None:
    # Saliency's hook point: each op's tap sees its own copy x and, through a retained grad,
    # its own dL/dx -- the same on the buffered path and on the per-op path.
    g = calibrated(random_alive(nasnet_graph(), 9), 9)
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    scores = {}
    for path in ("buffered", "per-op"):
        m = lower(g, "compact").double().eval()
        seen: dict[str, list[torch.Tensor]] = {}

        def keep(_m: torch.nn.Module, _inp: object, out: torch.Tensor, name: str, seen: dict = seen) -> None:
            out.retain_grad()
            seen.setdefault(name, []).append(out)

        for name, mod in m.named_modules():
            if name.endswith(".x"):
                mod.register_forward_hook(lambda mm, i, o, name=name: keep(mm, i, o, name))
        if path == "per-op":  # a hook on the preprocessing sends every cell down the per-op path
            for cell in m._cells():
                cell.d_b.register_forward_hook(lambda *_: None)
        m(x.requires_grad_(True)).square().sum().backward()
        scores[path] = {k: [(t * t.grad).mean((2, 3)).abs().sum(0) for t in ts] for k, ts in seen.items()}
    assert scores["buffered"].keys() == scores["per-op"].keys() and scores["buffered"]
    for name, parts in scores["buffered"].items():
        for a, b in zip(parts, scores["per-op"][name], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_unpruned_ops_of_a_node_share_one_read() -> None:
    g = nasnet_graph()
    m = lower(g, "compact")
    for cell in m._cells():
        for node in cell.plan.nodes:
            assert len(node.reads) == len(node.ops[0].parts)  # every op reads the same channels
            assert all(r.run is not None for r in node.reads)


def test_pool_reuses_buffers_across_steps() -> None:
    g = calibrated(random_alive(nasnet_graph(), 10), 10)
    m = lower(g, "compact").train()
    x = torch.randn(4, 3, SIZE, SIZE)
    target = torch.arange(4) % 10
    F.cross_entropy(m(x), target).backward()
    pool = m._cells()[0].pool
    assert all(c.pool is pool for c in m._cells())  # one pool for the network
    kept = {id(t) for free in pool._free.values() for t in free}
    assert kept
    F.cross_entropy(m(x), target).backward()
    again = {id(t) for free in pool._free.values() for t in free}
    assert kept & again  # the second step took buffers from the pool and gave them back


def test_a_gradient_buffer_starts_from_its_first_gradient_on_a_dirty_pooled_buffer() -> None:
    """_Store.add_grad: the first gradient of a buffer is copied into a pooled buffer (here full
    of NaN, as a reused buffer holds old values) and every other column is zeroed, before and
    after it; later gradients add. The reference is a zero matrix with the slices added."""
    pool = buffered.Pool()
    like = torch.zeros(1, dtype=torch.float64)
    rows, cols = 2 * 3 * 3, 7
    store = buffered._Store(pool, [(2, 3, 3)], [cols], like, 0)
    dirty = torch.full((rows, cols), float("nan"), dtype=torch.float64)
    pool.give(dirty)  # the gradient buffer's turn
    first, second = torch.randn(rows, 3, dtype=torch.float64), torch.randn(rows, 2, dtype=torch.float64)
    store.add_grad(0, 2, first)
    store.add_grad(0, 4, second)
    expected = torch.zeros(rows, cols, dtype=torch.float64)
    expected[:, 2:5] += first
    expected[:, 4:6] += second
    assert store.grads[0] is dirty
    torch.testing.assert_close(dirty, expected, rtol=0, atol=0)


def test_ops_of_a_node_train_merged_unless_a_tap_is_hooked(monkeypatch: pytest.MonkeyPatch) -> None:
    g = calibrated(random_alive(nasnet_graph(), 11), 11)
    m = lower(g, "compact").train()
    x = torch.randn(4, 3, SIZE, SIZE)
    calls = []
    real = buffered._padded_node
    monkeypatch.setattr(buffered, "_padded_node", lambda *a: calls.append(1) or real(*a))
    m(x)
    merged = len(calls)
    assert merged == sum(n.padded is not None for c in m._cells() for n in c.plan.nodes) > 0
    tap = next(mod for name, mod in m.named_modules() if name.endswith(".x"))
    tap.register_forward_hook(lambda *_: None)
    calls.clear()
    m(x)
    assert len(calls) == merged - 1  # that op's node runs op by op, its tap called


def test_a_cell_runs_the_next_cells_d_a_with_its_d_b(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's stacked preprocessing (one 1x1 conv for a cell's d_b and the next cell's d_a,
    both of the same input; in the first cell its d_a too) runs in the specs that
    test_buffered_training_equals_masked checks, also where the widths differ (the next cell a
    reduction cell): that test covers it."""
    stacked: list[tuple[int, ...]] = []
    real = buffered._stacked_preprocess

    def spy(cell, after, b):  # noqa: ANN001, ANN202
        out = real(cell, after, b)
        if out is not None:
            stacked.append(tuple(t.shape[1] for t in out))
        return out

    monkeypatch.setattr(buffered, "_stacked_preprocess", spy)
    g = calibrated(random_alive(GRAPHS["nasnet-2x2"](), 0, fold=True), 0)
    lower(g, "compact").double().train()(torch.randn(5, 3, SIZE, SIZE, dtype=torch.float64))
    assert (6, 6, 6) in stacked and (6, 12) in stacked


def test_an_unread_d_b_is_skipped_in_eval_and_only_normalised_in_training() -> None:
    """Where no op reads d_b, the fused eval path does not compute it and the buffered training
    path runs it only for its BatchNorm's running statistics: both still equal the masked module
    (eval output; training output, gradients and running statistics), and d_b's conv gets no
    gradient."""
    from test_plan import _unread_d_b

    g = calibrated(_unread_d_b(GRAPHS["nasnet-2x2"]()), 3)
    x = torch.randn(5, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    masked = lower(g, "masked").double().eval()
    comp = lower(g, "compact").double().eval()
    with torch.no_grad():
        assert all(c.fusable() for c in comp._cells())
        assert (comp(x) - masked(x)).abs().max().item() < 1e-10
    masked.train()
    comp.train()
    target = torch.arange(5) % 10
    assert (_step(comp, x, target) - _step(masked, x, target)).abs().max().item() < 1e-10
    _assert_same_training(g, masked, comp)
    assert all(c.d_b.conv.weight.grad is None for c in comp._cells())
