"""Distributed training and saliency (SPEC §8): two CPU processes with gloo under torchrun.

One torchrun job runs this file as its worker script (``_worker`` below): a training run that
loses a rank in its second epoch and is restarted by torchrun, a straight training run, the
saliency of its result, a search, and training with unused parameters. Each rank writes what
it computed to ``<out>/rank<r>.npz``; the tests compare the ranks with each other and with a
single process. With the ``--nproc`` launcher test, the file starts torchrun twice (about a
minute and a half on two busy cores).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cnas_ir
from cnas_ir.app.cli import main
from cnas_ir.backends.pytorch import distributed, lower
from cnas_ir.backends.pytorch.data import Split, load_dataset
from cnas_ir.backends.pytorch.saliency import TaylorAccumulator, raw_taylor_scores
from cnas_ir.backends.pytorch.search import SearchSettings, search
from cnas_ir.backends.pytorch.train import _unused_parameters, train
from cnas_ir.ir import Graph
from cnas_ir.passes.fold import fold
from cnas_ir.rundir import RunDir
from helpers import TINY_SYNTHETIC

SPEC = {**TINY_SYNTHETIC, "name": "tiny-dist", "train": {**TINY_SYNTHETIC["train"], "epochs": 2}}
SALIENCY = {"batches": 3, "batch_size": 45, "seed": 4}  # 45 = 23 + 22 images per rank: uneven
PRUNE = SearchSettings(rho=0.6, gamma=0.3, criterion="taylor", finetune_epochs=1, saliency_batches=2, device="cpu")


def _dead_cell(graph: Graph) -> Graph:
    """``graph`` with every x of cell 1 pruned: the cell computes zeros and its preprocessing
    convs get no gradient (DistributedDataParallel must expect unused parameters)."""
    alive = graph.alive.copy()
    for op in graph.ops:
        if op.cell == 1:
            alive[graph.group_slice(op.x)] = False
    return fold(graph.replace(alive=alive))


def _weights(g: Graph) -> dict[str, np.ndarray]:
    return {f"w.{k}": v for k, v in g.weights.items()}


# ---- the worker: runs under torchrun, one process per rank -------------------------------------


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")):
        r = distributed.rank()
        assert distributed.world_size() == 2
        graph = cnas_ir.build(SPEC)
        data = load_dataset(graph.spec)

        # (4) first, as it restarts the job: rank 1 dies in the second epoch; torchrun
        # restarts both workers (--max-restarts 1), and they resume from the checkpoint of
        # epoch 1 by themselves (TORCHELASTIC_RESTART_COUNT > 0)
        def crash(epoch: int, it: int) -> None:
            if epoch == 1 and it == 2 and r == 1 and not distributed.restarted():
                os._exit(17)

        resumed = train(graph, data=data, device="cpu", run=RunDir(out / "restart"), progress=False, on_step=crash)
        res: dict[str, np.ndarray] = {f"resumed.{k}": v for k, v in _weights(resumed).items()}
        res["restarted"] = np.array(distributed.restarted())
        # (2) training: both ranks end with the same weights
        trained = train(graph, data=data, device="cpu", run=RunDir(out / "straight"), progress=False)
        res |= _weights(trained)
        if r == 0:
            cnas_ir.save(trained, out / "trained.cnas")
        # (1) saliency of the trained graph, summed over the ranks
        res["saliency"] = raw_taylor_scores(trained, data.train, device="cpu", **SALIENCY)
        # (3) the search: the same vertices pruned on every rank
        pruned = search(trained, PRUNE, data=data, run=RunDir(out / "prune"))
        res["alive"] = pruned.alive
        res |= {f"pruned.{k}": v for k, v in _weights(pruned).items()}
        # a cell without live ops trains under DDP (find_unused_parameters)
        dead = train(_dead_cell(graph), epochs=1, data=data, device="cpu", progress=False)
        res |= {f"dead.{k}": v for k, v in _weights(dead).items()}
        np.savez(out / f"rank{r}.npz", **res)


# ---- launching ---------------------------------------------------------------------------------


def _ranks(out: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    a, b = (dict(np.load(out / f"rank{r}.npz")) for r in (0, 1))
    return a, b


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the worker under torchrun (2 processes, gloo, one restart allowed); its folder."""
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
           __file__, str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], prefix: str = "w.") -> None:
    keys = sorted(k for k in a if k.startswith(prefix))
    assert keys and keys == sorted(k for k in b if k.startswith(prefix))
    for k in keys:
        assert a[k].tobytes() == b[k].tobytes(), k


# ---- tests -----------------------------------------------------------------------------------


def test_saliency_of_two_ranks_equals_one_process(job: Path) -> None:
    r0, r1 = _ranks(job)
    np.testing.assert_array_equal(r0["saliency"], r1["saliency"])  # reduced: the same on every rank
    trained = cnas_ir.load(job / "trained.cnas")
    single = raw_taylor_scores(trained, load_dataset(trained.spec).train, device="cpu", **SALIENCY)
    live = ~np.isnan(single)
    assert live.sum() > 100 and np.array_equal(live, ~np.isnan(r0["saliency"]))
    np.testing.assert_allclose(r0["saliency"][live], single[live], rtol=1e-5, atol=1e-7)


def test_training_ends_with_the_same_weights_on_every_rank(job: Path) -> None:
    r0, r1 = _ranks(job)
    _same(r0, r1)
    _same(r0, r1, "dead.w.")  # with unused parameters too
    # rank 0 alone wrote the metrics and the checkpoint: one line per epoch
    run = job / "straight"
    assert [json.loads(s)["epoch"] for s in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["train.safetensors"]
    ev = cnas_ir.load(job / "trained.cnas").history[-1]
    assert ev["ranks"] == 2 and ev["val_acc"] > 0.5  # 4 classes: chance is 0.25


def test_prune_removes_the_same_vertices_on_every_rank(job: Path) -> None:
    r0, r1 = _ranks(job)
    assert r0["alive"].dtype == bool and np.array_equal(r0["alive"], r1["alive"])
    trained = cnas_ir.load(job / "trained.cnas")
    assert r0["alive"].sum() < trained.alive.sum()
    _same(r0, r1, "pruned.w.")  # fine-tuned alike
    lines = [json.loads(s) for s in (job / "prune" / "metrics.jsonl").read_text().splitlines()]
    iterations = [x["iteration"] for x in lines if x["cmd"] == "prune"]
    assert iterations == list(range(1, len(iterations) + 1))  # logged once, by rank 0


def test_restart_under_torchrun_resumes_from_the_checkpoint(job: Path) -> None:
    r0, r1 = _ranks(job)
    assert r0["restarted"] and r1["restarted"]  # rank 1 died once and torchrun restarted both
    epochs = [json.loads(s)["epoch"] for s in (job / "restart" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # the restart began at epoch 2, from epoch 1's checkpoint
    for r in (r0, r1):  # bit for bit the uninterrupted run
        _same({k.removeprefix("resumed."): v for k, v in r.items() if k.startswith("resumed.")}, r0)


def test_cli_nproc_launches_torchrun(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    rd = str(tmp_path / "run")
    assert main(["--run-dir", rd, "build", str(spec)]) == 0
    # bad input is found before anything is launched: one line, exit 2
    capsys.readouterr()
    assert main(["--run-dir", rd, "train", "--nproc", "2", "-o", "x.txt"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["--run-dir", rd, "train", "--nproc", "2", "--data", "digits"]) == 2  # 4 classes, digits has 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "classes is 4, digits has 10" in err and "launching" not in err
    assert main(["--run-dir", rd, "train", "--nproc", "2", "--data", f"cifar10:{tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CIFAR-10 folder here" in err and "launching" not in err
    # An error only the workers find (a damaged CIFAR-10 batch; the launcher reads no data):
    # the first worker to meet it reports it, torchrun stops the others (they may or may not
    # have reported it by then), and the launcher fails with exit 1.
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / f"{b}.bin").write_bytes(bytes(100))  # not a whole 3,073-byte record
    spec32 = tmp_path / "tiny32.yaml"
    spec32.write_text(yaml.safe_dump({**SPEC, "input": {"channels": 3, "size": 32}, "classes": 10}))
    rd32 = str(tmp_path / "run32")
    assert main(["--run-dir", rd32, "build", str(spec32)]) == 0
    r = subprocess.run([sys.executable, "-m", "cnas_ir", "--run-dir", rd32, "train", "--nproc", "2",
                        "--data", f"cifar10:{cifar}"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 1 and "is not a whole number of 3073-byte CIFAR-10 records" in r.stderr, r.stderr[-2000:]
    assert r.stderr.rstrip().splitlines()[-1].startswith("cnas-ir: error: the 2 processes failed")
    assert main(["--run-dir", rd, "train", "--nproc", "2", "--device", "cpu"]) == 0
    arts = sorted(p.name for p in (tmp_path / "run").glob("*.cnas"))
    assert arts == ["001-build.cnas", "002-train.cnas"]  # written once, by rank 0
    straight, _ = _ranks(job)
    _same(_weights(cnas_ir.load(tmp_path / "run" / "002-train.cnas")), straight)


def test_nproc_inside_torchrun_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--run-dir", str(tmp_path), "build", str(Path(__file__).parent.parent / "examples/tiny.yaml")]) == 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    capsys.readouterr()
    assert main(["--run-dir", str(tmp_path), "train", "--nproc", "2"]) == 2
    assert "already running under torchrun" in capsys.readouterr().err


# ---- single-process pieces ---------------------------------------------------------------------


def test_shard_is_distributed_samplers_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(distributed.shard(perm), perm)  # one process: everything
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shards = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(distributed.shard(perm))
    assert [len(s) for s in shards] == [4, 4, 4]
    padded = torch.cat([perm, perm[:1]])
    assert torch.equal(torch.stack(shards, 1).reshape(-1), padded)  # batches of b x 3 = perm's batches
    assert torch.equal(torch.cat(shards).sort().values, padded.sort().values)


def test_unused_parameters_of_a_dead_cell() -> None:
    g = _dead_cell(cnas_ir.build(SPEC))
    module = lower(g, "compact")
    unused = _unused_parameters(module, torch.randn(2, 1, 8, 8))
    assert unused == ["cell1.d_a.conv.weight", "cell1.d_b.conv.weight"]
    assert module.training and _unused_parameters(lower(cnas_ir.build(SPEC)), torch.randn(2, 1, 8, 8)) == []


def test_channels_last_trains_like_contiguous() -> None:
    graph = cnas_ir.build(SPEC)
    data = load_dataset(graph.spec)
    # Two steps: the layouts run different kernels, whose float32 rounding (1e-5 relative on a
    # step's gradients, measured) a whole epoch of this tiny network amplifies to 1e-2.
    n = 2 * graph.spec.train.batch_size
    data = dataclasses.replace(data, train=Split(data.train.images[:n], data.train.labels[:n]))
    a = train(graph, epochs=1, data=data, device="cpu", progress=False)
    b = train(graph, epochs=1, data=data, device="cpu", progress=False, channels_last=True)
    for k, w in a.weights.items():  # the same steps; only the kernels' summation order differs
        np.testing.assert_allclose(b.weights[k], w, rtol=1e-3, atol=1e-5, err_msg=k)


def test_bf16_trains_on_cpu_and_saliency_stays_float32() -> None:
    graph = cnas_ir.build(SPEC)
    data = load_dataset(graph.spec)
    out = train(graph, epochs=2, data=data, device="cpu", progress=False, amp="bf16")
    ev = out.history[-1]
    assert ev["amp"] == "bf16" and ev["val_acc"] > 0.5
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in out.weights.values())
    # saliency under bf16 autocast: the taps see bf16 tensors, the scores are summed in float32
    g = fold(out)
    module = lower(g, "compact").eval()
    seen: list[torch.dtype] = []
    for name, m in module.named_modules():
        if name.endswith(".x"):  # the ops' x taps
            m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    acc = TaylorAccumulator(g, module)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        acc.step(data.train.images[:16].clone(), data.train.labels[:16])
    acc.close()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(rec.score.dtype == torch.float32 and rec.score.sum() > 0 for rec in acc._recorders.values())
    raw = raw_taylor_scores(out, data.train, batches=1, batch_size=32, device="cpu", amp="bf16", channels_last=True)
    ref = raw_taylor_scores(out, data.train, batches=1, batch_size=32, device="cpu")
    live = ~np.isnan(ref)
    assert raw.dtype == np.float32 and np.isfinite(raw[live]).all() and (raw[live] >= 0).all()
    assert np.corrcoef(raw[live], ref[live])[0, 1] > 0.9  # bf16 rounding, not another ranking


def test_bad_amp_is_one_input_error() -> None:
    from cnas_ir.errors import InputError

    g = cnas_ir.build(SPEC)
    with pytest.raises(InputError, match="--amp 'fp8'"):
        train(g, epochs=0, data=load_dataset(g.spec), device="cpu", progress=False, amp="fp8")


def test_split_of_zero_images_scores_nothing() -> None:
    g = fold(cnas_ir.build(SPEC))
    acc = TaylorAccumulator(g, lower(g, "compact").eval())
    acc.step(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))  # a rank's empty share
    assert all(float(r.score.sum()) == 0 for r in acc._recorders.values())
    acc.close()


if __name__ == "__main__":  # torchrun's worker: test_distributed.py OUT
    _worker(Path(sys.argv[1]))
