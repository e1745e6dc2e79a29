"""The memory check before training (issue 19): `train` and `prune` refuse, in one line naming
the largest batch that fits, a training step whose estimate exceeds the device's available
memory, unless --force.

The device's available memory is replaced by a fixed number here (the real one is this
machine's); the estimate itself is checked against autograd in test_estimate.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import cnas_ir
import cnas_ir.backends.pytorch.memory as memory
from cnas_ir.errors import InputError
from cnas_ir.estimate import check_training_memory, estimate, live_fraction, training_memory
from cnas_ir.ir import Kind
from cnas_ir.spec import parse_spec
from helpers import TINY_SYNTHETIC, run_cli


def with_batch(doc: dict, batch: int) -> dict:
    return doc | {"train": doc["train"] | {"batch_size": batch}}


@pytest.mark.parametrize("world,processes", [(1, 1), (4, 4), (4, 1)])
def test_largest_batch_is_the_largest_that_fits(world: int, processes: int) -> None:
    # By its definition: the need at that batch fits, at the next multiple of world it does not.
    spec = parse_spec(with_batch(TINY_SYNTHETIC, 64))
    available = 40 * 2**20
    m = training_memory(spec, available, world=world, processes=processes)
    assert m.largest_batch > 0 and m.largest_batch % world == 0

    def need(batch: int) -> int:
        return training_memory(parse_spec(with_batch(TINY_SYNTHETIC, batch)), available, world=world,
                               processes=processes).need  # fmt: skip

    assert need(m.largest_batch) <= available < need(m.largest_batch + world)


def test_need_counts_activations_and_three_copies_of_the_weights() -> None:
    spec = parse_spec(with_batch(TINY_SYNTHETIC, 64))
    e = estimate(spec)
    m = training_memory(spec, 2**40)
    assert m.need == pytest.approx(e.activation_bytes + 3 * e.weight_bytes, abs=1)
    # two CPU processes of one node, each with half the batch, each with its own weights
    m2 = training_memory(spec, 2**40, world=2, processes=2)
    assert m2.need == pytest.approx(e.activation_bytes + 6 * e.weight_bytes, abs=2)


def test_live_fraction_weights_vertices_by_their_pixels(tiny_graph) -> None:
    assert live_fraction(tiny_graph) == 1.0
    g = tiny_graph
    alive = g.alive.copy()
    rng = np.random.default_rng(0)
    x = g.x_ids
    alive[x[rng.random(x.size) < 0.5]] = False
    pruned = g.replace(alive=alive)
    # by hand, group by group
    live = total = 0.0
    for gi in range(len(g.kind)):
        sl = g.group_slice(gi)
        px = float(g.res[gi]) ** 2
        total += px * (sl.stop - sl.start)
        live += px * alive[sl].sum()
    assert live_fraction(pruned) == pytest.approx(live / total)
    assert 0.3 < live_fraction(pruned) < 1.0
    assert int((g.kind == Kind.X).sum()) > 0


def test_refusal_names_the_key_and_the_batch() -> None:
    spec = parse_spec(with_batch(TINY_SYNTHETIC, 4096))
    m = training_memory(spec, 20 * 2**20)
    with pytest.raises(InputError) as e:
        check_training_memory(spec, 20 * 2**20, "GPU 0")
    msg = str(e.value)
    assert "train.batch_size = 4096" in msg and "GPU 0 has 20 MiB available" in msg
    assert f"the largest batch that fits is {m.largest_batch}" in msg and "--force" in msg
    with pytest.raises(InputError, match="not even a batch of 1 fits"):
        check_training_memory(spec, 1000, "GPU 0")


@pytest.fixture
def small_memory(monkeypatch: pytest.MonkeyPatch) -> int:
    available = 24 * 2**20
    monkeypatch.setattr(memory, "available_bytes", lambda device: (available, "this machine's memory"))
    return available


@pytest.mark.usefixtures("one_thread")
def test_cli_train_refuses_then_forces(tmp_path: Path, capsys: pytest.CaptureFixture[str], small_memory: int) -> None:
    doc = with_batch(TINY_SYNTHETIC, 4096) | {"train": TINY_SYNTHETIC["train"] | {"batch_size": 4096, "epochs": 1}}
    cnas_ir.save(cnas_ir.build(doc), tmp_path / "t.cnas")
    code, out, err = run_cli(["train", "t.cnas", "-o", "trained.cnas"], tmp_path, capsys)
    largest = training_memory(parse_spec(doc), small_memory).largest_batch
    assert code == 2 and err.count("\n") == 1 and len(err) <= 301, err
    assert re.search(rf"train.batch_size = 4096 .* the largest batch that fits is {largest} ", err), err
    assert not (tmp_path / "trained.cnas").exists()
    code, out, err = run_cli(["train", "t.cnas", "-o", "trained.cnas", "--force"], tmp_path, capsys)
    assert code == 0 and (tmp_path / "trained.cnas").exists(), err
    # prune: a Taylor search trains (refused); a random one without fine-tuning does not (no check)
    code, _, err = run_cli(["prune", "trained.cnas", "-o", "p.cnas", "--rho", "0.5"], tmp_path, capsys)
    assert code == 2 and "largest batch that fits" in err
    args = ["prune", "trained.cnas", "-o", "p.cnas", "--rho", "0.5", "--criterion", "random", "--finetune-epochs", "0"]
    code, _, err = run_cli(args, tmp_path, capsys)
    assert code == 0, err
