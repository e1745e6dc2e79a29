"""Training (SPEC §8): the recipe, reproducibility, checkpoints and resume, the CLI."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import cnas_ir
from cnas_ir.app.cli import main
from cnas_ir.backends.pytorch import train as train_mod
from cnas_ir.backends.pytorch.data import Splits, load_dataset
from cnas_ir.backends.pytorch.train import TrainInterrupted, cosine_lr, evaluate, train
from cnas_ir.errors import InputError
from cnas_ir.ir import Graph
from cnas_ir.rundir import RunDir
from cnas_ir.spec import TrainSpec
from helpers import TINY_SYNTHETIC

TINY = TINY_SYNTHETIC


@pytest.fixture(scope="module")
def graph() -> Graph:
    return cnas_ir.build(TINY)


@pytest.fixture(scope="module")
def data(graph: Graph) -> Splits:
    return load_dataset(graph.spec)


def _same_weights(a: Graph, b: Graph) -> bool:
    return a.weights.keys() == b.weights.keys() and all(
        a.weights[k].tobytes() == b.weights[k].tobytes() for k in a.weights
    )


def test_cosine_lr_matches_torch_warm_restarts() -> None:
    recipe = TrainSpec(lr=0.05, lr_min=1e-4, t0=10, t_mul=2)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2, eta_min=1e-4)
    for t in (0.0, 0.5, 3.25, 9.99, 10.0, 17.5, 29.9, 30.0, 69.0, 70.0, 149.5):
        sched.step(t)
        assert math.isclose(cosine_lr(t, recipe), opt.param_groups[0]["lr"], rel_tol=1e-9), t
    assert cosine_lr(0, recipe) == recipe.lr and cosine_lr(150, recipe) == recipe.lr  # restart at 150


def test_short_run_lowers_the_loss_and_logs(graph: Graph, data: Splits, tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    out = train(graph, epochs=3, data=data, device="cpu", run=run, progress=False)
    # process-wide settings the run changes are restored
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)
    assert torch.equal(torch.get_rng_state(), rng)
    lines = [json.loads(s) for s in run.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert set(lines[0]) == {"cmd", "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["val_acc"] > 0.5  # 4 classes: chance is 0.25
    ev = out.history[-1]
    assert ev["pass"] == "train" and ev["epochs"] == 3 and ev["data"] == "synthetic"
    assert ev["test_acc"] == pytest.approx(evaluate(out, "test", data, device="cpu")["accuracy"], abs=1e-6)
    assert (tmp_path / "checkpoints" / "train.safetensors").is_file()
    # The returned graph is a valid artifact.
    cnas_ir.save(out, tmp_path / "t.cnas")
    assert _same_weights(cnas_ir.load(tmp_path / "t.cnas"), out)


def test_fixed_seed_reproduces_bit_for_bit(graph: Graph, data: Splits) -> None:
    a = train(graph, epochs=2, data=data, device="cpu", progress=False)
    b = train(graph, epochs=2, data=data, device="cpu", progress=False)
    c = train(graph, epochs=2, data=data, device="cpu", progress=False, seed=1)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_interrupted_and_resumed_equals_uninterrupted(graph: Graph, data: Splits, tmp_path: Path) -> None:
    straight = train(graph, epochs=3, data=data, device="cpu", run=RunDir(tmp_path / "a"), progress=False)

    def interrupt(epoch: int, it: int) -> None:
        if epoch == 1 and it == 3:  # Ctrl-C in the middle of the second epoch
            signal.raise_signal(signal.SIGINT)

    run = RunDir(tmp_path / "b")
    with pytest.raises(TrainInterrupted, match=r"after epoch 1/3.*--resume") as e:
        train(graph, epochs=3, data=data, device="cpu", run=run, progress=False, on_step=interrupt)
    assert e.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert [json.loads(s)["epoch"] for s in run.metrics.read_text().splitlines()] == [1]
    resumed = train(graph, epochs=3, data=data, device="cpu", run=run, progress=False, resume=True)
    assert _same_weights(straight, resumed)
    assert [json.loads(s)["epoch"] for s in run.metrics.read_text().splitlines()] == [1, 2, 3]
    # A finished shorter run extended with resume equals the longer straight run too: the
    # schedule depends on the epoch, not on the planned length.
    short = RunDir(tmp_path / "c")
    train(graph, epochs=2, data=data, device="cpu", run=short, progress=False)
    extended = train(graph, epochs=3, data=data, device="cpu", run=short, progress=False, resume=True)
    assert _same_weights(straight, extended)


def test_resume_refuses_another_run(graph: Graph, data: Splits, tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(InputError, match="no checkpoint to resume"):
        train(graph, epochs=1, data=data, device="cpu", run=run, progress=False, resume=True)
    train(graph, epochs=1, data=data, device="cpu", run=run, progress=False)
    with pytest.raises(InputError, match="another graph, spec, dataset or seed"):
        train(graph, epochs=2, data=data, device="cpu", run=run, progress=False, resume=True, seed=7)
    other = cnas_ir.build({**TINY, "nasnet": {**TINY["nasnet"], "nodes_per_cell": 1}})  # type: ignore[dict-item]
    with pytest.raises(InputError, match="another graph"):
        train(other, epochs=2, data=data, device="cpu", run=run, progress=False, resume=True)


def test_reinit_ignores_the_weights(graph: Graph, data: Splits) -> None:
    trained = train(graph, epochs=1, data=data, device="cpu", progress=False)
    fresh = train(graph, epochs=0, data=data, device="cpu", progress=False)
    again = train(trained, epochs=0, data=data, device="cpu", progress=False, reinit=True)
    kept = train(trained, epochs=0, data=data, device="cpu", progress=False)
    assert _same_weights(fresh, again) and _same_weights(kept, trained)


# ---- CLI -------------------------------------------------------------------------------------


def _spec_file(tmp_path: Path) -> Path:
    import yaml

    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_cli_train_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd = str(tmp_path / "run")
    assert main(["--run-dir", rd, "build", str(_spec_file(tmp_path))]) == 0
    assert main(["--run-dir", rd, "train", "--epochs", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "test accuracy" in err and "002-train.cnas" in err
    g = cnas_ir.load(tmp_path / "run" / "002-train.cnas")
    assert g.weights and g.history[-1]["pass"] == "train"
    assert main(["--run-dir", rd, "eval", "--json", "--split", "val"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["split"] == "val" and doc["n"] == 160 and 0 <= doc["accuracy"] <= 1
    # eval refuses an untrained artifact, one line, exit 2
    assert main(["--run-dir", rd, "eval", str(tmp_path / "run" / "001-build.cnas")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no weights" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "imagenet"], "unknown dataset 'imagenet'"),
        (["--data", "cifar10:/no/such/folder"], "no CIFAR-10 folder here"),
        (["--data", "digits"], "classes is 4, digits has 10"),
        (["--resume"], "no checkpoint to resume"),
        (["-o", "x.txt"], "must end in .cnas"),
    ],
)
def test_cli_train_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    rd = str(tmp_path / "run")
    assert main(["--run-dir", rd, "build", str(_spec_file(tmp_path))]) == 0
    capsys.readouterr()
    assert main(["--run-dir", rd, "train", "--epochs", "1", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnas-ir: error:") and needle in err


def test_cli_ctrl_c_exits_130_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rd = str(tmp_path / "run")
    assert main(["--run-dir", rd, "build", str(_spec_file(tmp_path))]) == 0
    real = train_mod.evaluate_module
    calls = []

    def ctrl_c_in_first_validation(*a: object, **k: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "evaluate_module", ctrl_c_in_first_validation)
    capsys.readouterr()
    assert main(["--run-dir", rd, "train", "--epochs", "2", "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "after epoch 1/2" in err and "cnas-ir train --resume" in err
    assert not list((tmp_path / "run").glob("002-*"))
    monkeypatch.setattr(train_mod, "evaluate_module", real)
    assert main(["--run-dir", rd, "train", "--epochs", "2", "--device", "cpu", "--resume"]) == 0
    assert (tmp_path / "run" / "002-train.cnas").is_file()
    epochs = [json.loads(s)["epoch"] for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    np.testing.assert_equal(len(cnas_ir.load(tmp_path / "run" / "002-train.cnas").history), 2)
