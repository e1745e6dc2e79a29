"""The native gather + depthwise kernels (backends/pytorch/native.py) and their use by the fused
inference path and the buffered training path.

The reference for the kernels is written here: ``index_select`` of the channels, then
``F.conv2d`` with ``groups`` = the channel count, in float64, and autograd's gradients of that.
The training path's reference is the masked module in float64 (its gradients on the live weights).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_pytorch_lower import SIZE, calibrated, logits, nasnet_graph, random_alive
from test_training_path import GRAPHS

from cnas_ir.backends.pytorch import lower, native
from cnas_ir.weights import compact, weight_table

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kernel() -> None:
    # The project's set-up has a C++ compiler and ninja (README): the build must succeed here.
    assert native.available(), "the native kernel did not build (see the warning above)"


def reference(x: torch.Tensor, index: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    gathered = x.double().index_select(1, index.long())
    return F.conv2d(gathered, w.double(), stride=stride, padding=1, groups=w.shape[0])


CASES = [  # (N, C, H, W, K, stride)
    (2, 20, 8, 8, 7, 1),
    (3, 40, 7, 5, 17, 1),  # odd sizes, K past one block of 16
    (1, 33, 9, 9, 33, 2),  # stride 2 over odd sizes
    (2, 16, 6, 10, 16, 2),  # K exactly one block
    (1, 64, 1, 1, 40, 1),  # one pixel: every tap but the centre reads padding
    (2, 8, 2, 3, 1, 2),  # one channel
    (4, 50, 5, 4, 70, 1),  # more channels than the buffer: repeats
]


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize(("n", "c", "h", "w", "k", "stride"), CASES)
def test_kernel_equals_gather_then_depthwise(n: int, c: int, h: int, w: int, k: int, stride: int) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + c + k)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    # any order, repeats allowed (a merged read lists each op's channels in turn)
    index = torch.randint(0, c, (k,), generator=gen, dtype=torch.int32)
    weight = torch.randn(k, 1, 3, 3, generator=gen)
    got = native.gather_depthwise(x, index, weight.reshape(k, 9).t().contiguous(), stride)
    want = reference(x, index, weight, stride)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got.double() - want).abs().max().item() < 1e-5


@pytest.mark.usefixtures("kernel")
def test_kernel_refuses_what_it_cannot_read() -> None:
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(9, 2)
    for bad_index in ([0, 8], [-1, 0]):  # out of range: would read outside x
        with pytest.raises(RuntimeError, match="index out of range"):
            native.gather_depthwise(x, torch.tensor(bad_index, dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="channels_last"):
        native.gather_depthwise(torch.randn(2, 8, 4, 4), torch.tensor([0, 1], dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="float32"):
        native.gather_depthwise(x.double(), torch.tensor([0, 1], dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="weight_t"):
        native.gather_depthwise(x, torch.tensor([0, 1, 2], dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="stride"):
        native.gather_depthwise(x, torch.tensor([0, 1], dtype=torch.int32), wt, 3)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize(("n", "c", "h", "w", "k", "stride"), CASES)
def test_backward_adds_the_input_gradient_and_returns_the_weight_gradient(
    n: int, c: int, h: int, w: int, k: int, stride: int
) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + c + k + 7)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    index = torch.randint(0, c, (k,), generator=gen, dtype=torch.int32)  # repeats: their sum
    weight = torch.randn(k, 1, 3, 3, generator=gen)
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    y = reference(x64, index, w64, stride)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    want_x, want_w = torch.autograd.grad(y, (x64, w64), dy)
    start = torch.randn(x.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    grad_x = start.clone(memory_format=torch.channels_last)
    dy32 = dy.float().contiguous(memory_format=torch.channels_last)
    got_w = native.gather_depthwise_backward(dy32, x, index, weight.reshape(k, 9).t().contiguous(), stride, grad_x)
    assert (grad_x.double() - start.double() - want_x).abs().max().item() < 1e-5  # added, not written
    assert got_w.shape == (9, k)
    assert (got_w.t().reshape(k, 1, 3, 3).double() - want_w).abs().max().item() < 1e-4


@pytest.mark.usefixtures("kernel")
def test_backward_weight_gradient_does_not_depend_on_thread_timing() -> None:
    # The chunks' partial sums are added in row order; added as threads finished, 5 threads
    # gave 17 different results in 30 calls (measured).
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 100, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    index = torch.randperm(100, generator=gen)[:60].int()
    wt = torch.randn(9, 60, generator=gen)
    dy = torch.randn(8, 60, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(5)
    try:
        got = {
            native.gather_depthwise_backward(dy, x, index, wt, 1, torch.zeros_like(x)).numpy().tobytes()
            for _ in range(30)
        }
    finally:
        torch.set_num_threads(threads)
    assert len(got) == 1


@pytest.mark.usefixtures("kernel")
def test_backward_refuses_what_it_cannot_write() -> None:
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    index, wt = torch.tensor([0, 5], dtype=torch.int32), torch.randn(9, 2)
    dy = torch.randn(2, 2, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="grad_x"):
        native.gather_depthwise_backward(dy, x, index, wt, 1, torch.zeros(2, 8, 4, 4))  # channels-first
    with pytest.raises(RuntimeError, match="grad_x"):
        narrow = torch.zeros(2, 8, 4, 3).contiguous(memory_format=torch.channels_last)
        native.gather_depthwise_backward(dy, x, index, wt, 1, narrow)
    with pytest.raises(RuntimeError, match="dy"):
        native.gather_depthwise_backward(dy, x, index, wt, 2, torch.zeros_like(x))  # stride 2 outputs 2 x 2
    with pytest.raises(RuntimeError, match="index out of range"):
        native.gather_depthwise_backward(dy, x, torch.tensor([0, 8], dtype=torch.int32), wt, 1, torch.zeros_like(x))


def _train_step(m: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients and running statistics after one cross-entropy backward, by weight-table name."""
    m.zero_grad()
    F.cross_entropy(m(x), target).backward()
    out = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    return out | {n: b.clone() for n, b in m.named_buffers() if b.is_floating_point()}


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("space", GRAPHS)
@pytest.mark.parametrize("seed", [0, 1])
def test_training_path_runs_the_kernels_and_equals_masked(
    space: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = calibrated(random_alive(GRAPHS[space](), seed, fold=True), seed)
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    target = torch.arange(5) % 10
    comp = lower(g, "compact").train()
    calls: dict[str, int] = {"forward": 0, "backward": 0}
    for name, fn in (("forward", native.gather_depthwise), ("backward", native.gather_depthwise_backward)):
        monkeypatch.setattr(
            native, fn.__name__, lambda *a, fn=fn, name=name: calls.__setitem__(name, calls[name] + 1) or fn(*a)
        )
    got = _train_step(comp, x, target)
    assert calls["forward"] == calls["backward"] > 0  # every read of the step, both ways
    monkeypatch.setattr(native, "available", lambda: False)
    without = _train_step(lower(g, "compact").train(), x, target)
    assert calls["forward"] == calls["backward"]  # the PyTorch gathers ran
    masked = lower(g, "masked").double().train()
    want = _train_step(masked, x.double(), target)
    table, lowered = weight_table(comp._graph), comp._graph
    checked = 0
    for name, t in got.items():
        if name not in table or not t.numel():
            continue
        torch.testing.assert_close(t, without[name], rtol=1e-4, atol=1e-5, msg=name)
        ref = compact(lowered, table[name], want[name].detach().numpy())
        scale = max(float(abs(ref).max()), 1e-3)
        assert abs(t.double().numpy() - ref).max() < 1e-4 * scale, name
        checked += 1
    assert checked > 10


@pytest.mark.usefixtures("kernel")
def test_training_path_reads_runs_as_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    # An unpruned network reads only runs, each shared by a node's ops: through the kernel every
    # op would gather its own copy (the one-shot's step took 1.13x the time, measured).
    m = lower(calibrated(nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3), 0), "compact").train()
    assert all(r.run for c in m._cells() for node in c.plan.nodes for r in node.reads)
    calls = []
    run = native.gather_depthwise
    monkeypatch.setattr(native, "gather_depthwise", lambda *a: calls.append(a) or run(*a))
    F.cross_entropy(m(torch.randn(2, 3, SIZE, SIZE)), torch.arange(2)).backward()
    assert not calls


@pytest.mark.usefixtures("kernel")
def test_training_path_with_dropout_draws_the_masks_of_the_pytorch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernels apply Dropout2d to the depthwise output instead of its input: the same mask,
    # drawn from the same generator state, so the same step.
    g = calibrated(random_alive(nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3, dropout=0.4), 3), 3)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    target = torch.arange(4) % 10
    steps = []
    for kernels in (True, False):
        monkeypatch.setattr(native, "available", (lambda: True) if kernels else (lambda: False))
        torch.manual_seed(11)
        steps.append(_train_step(lower(g, "compact").train(), x, target))
    torch.manual_seed(12)
    other = _train_step(lower(g, "compact").train(), x, target)  # not vacuous: masks matter
    assert any((other[k] - steps[0][k]).abs().max().item() > 1e-3 for k in other)
    for name, t in steps[0].items():
        torch.testing.assert_close(t, steps[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_path_runs_the_kernel_and_equals_the_pytorch_gathers(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    g = calibrated(random_alive(nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3), seed, fold=True), seed)
    m = lower(g, "compact").to(memory_format=torch.channels_last).eval()
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    x = x.contiguous(memory_format=torch.channels_last)
    reads = sum(len(node.merged) for c in m._cells() if c._fused for node in c._fused.plan.nodes if node.computed)
    calls = []
    run = native.gather_depthwise
    monkeypatch.setattr(native, "gather_depthwise", lambda *a: calls.append(a) or run(*a))
    with_kernel = logits(m, x)
    assert len(calls) == reads > 0  # every merged read of every cell
    monkeypatch.setattr(native, "available", lambda: False)
    without = logits(m, x)
    assert len(calls) == reads
    assert (with_kernel - without).abs().max().item() < 1e-5
    ref = logits(lower(g, "masked").double(), x.double())
    assert (with_kernel.double() - ref).abs().max().item() < 1e-5


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("CNAS_IR_NATIVE", "0")
    assert not native.available()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    broken = tmp_path / "gather_depthwise.cpp"
    broken.write_text("#error this source does not compile\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("CNAS_IR_NATIVE_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("CNAS_IR_NATIVE", raising=False)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert native.load() is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.available()  # no second build, no second warning
