"""Write errors (issue 19): a full disk or a file-size limit while any writer runs -- artifacts,
checkpoints, metrics.jsonl, ONNX, the report, show's drawings, experiment results -- is one
error line and exit 1, leaves no temp file, and leaves a file already at the target as it was
(metrics.jsonl keeps its earlier lines). A diverging loss stops training the same way.

The failures are injected two ways: in-process, ``os.write`` fails for the files named (a
"full disk": part of the bytes written, then ENOSPC); in a subprocess, a real RLIMIT_FSIZE below
the size of the file written (the acceptance test of the issue)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cnas_ir.errors import MAX_LINE, RunFailure
from cnas_ir.format import atomic_write
from cnas_ir.rundir import RunDir
from helpers import TINY_SYNTHETIC, inside, run_cli

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd; sets RLIMIT_FSIZE")

OLD = b"the file that was here before\n"


def _no_temp(*folders: Path) -> None:
    left = [p for folder in folders for p in folder.rglob("*.tmp")]
    assert not left, left


def _failed(code: int, err: str, *words: str) -> str:
    """The one error line of a failed command (progress lines may precede it), holding ``words``."""
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and [line for line in lines if line.startswith("cnas-ir")] == lines[-1:], err
    line = lines[-1]
    assert line.startswith("cnas-ir: error: ") and len(line) <= MAX_LINE, line
    for w in words:
        assert w in line, line
    return line


def _full_disk(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """From now on a write to a file named one of ``names`` (or a temp file ``.NAME.*.tmp``)
    writes half of what it is asked, down to one byte, which fails with "No space left on
    device"; other files are written as usual."""
    real = os.write

    def write(fd: int, data: bytes) -> int:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if not any(name == n or name.startswith(f".{n}.") for n in names):
            return real(fd, data)
        if len(data) > 1:
            return real(fd, memoryview(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


# ---- atomic_write and the metrics log, with one system call failing ----------------------------


def _fail(exc: BaseException) -> Callable[..., object]:
    def call(*args: object) -> object:
        raise exc

    return call


@pytest.mark.parametrize(
    "call, exc",
    [
        ("write", OSError(errno.EFBIG, os.strerror(errno.EFBIG))),
        ("write", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
        ("fsync", OSError(errno.EIO, os.strerror(errno.EIO))),
        ("replace", OSError(errno.EXDEV, os.strerror(errno.EXDEV))),
        ("fchmod", OSError(errno.EPERM, os.strerror(errno.EPERM))),
        ("write", KeyboardInterrupt()),
    ],
)
def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, call, exc):
    target = tmp_path / "model.cnas"
    target.write_bytes(OLD)
    with monkeypatch.context() as m:
        m.setattr(os, call, _fail(exc))
        with pytest.raises(type(exc) if isinstance(exc, KeyboardInterrupt) else RunFailure) as info:
            atomic_write(target, b"new bytes " * 10_000)
    if isinstance(exc, OSError):
        assert str(info.value) == f"{target}: cannot write ({exc.strerror})"
    assert target.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cnas"]


def test_atomic_write_short_writes_then_a_full_disk(tmp_path, monkeypatch):
    """A file-size limit lets part of the data through before the write fails."""
    target = tmp_path / "model.onnx"
    target.write_bytes(OLD)
    with monkeypatch.context() as m:
        _full_disk(m, "model.onnx")
        with pytest.raises(RunFailure, match="model.onnx: cannot write \\(No space left on device\\)"):
            atomic_write(target, bytes(100_000))
    assert target.read_bytes() == OLD
    _no_temp(tmp_path)
    atomic_write(target, b"x")  # once there is room, it writes
    assert target.read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_atomic_write_close_failure_and_missing_folder(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    target.write_bytes(OLD)
    real_close = os.close

    def close(fd: int) -> None:
        real_close(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as m:
        m.setattr(os, "close", close)
        with pytest.raises(RunFailure, match="Input/output error"):
            atomic_write(target, b"new")
    assert target.read_bytes() == OLD
    _no_temp(tmp_path)
    with pytest.raises(RunFailure, match="nowhere/r.html: cannot write \\(No such file or directory\\)"):
        atomic_write(tmp_path / "nowhere" / "r.html", b"new")


def _metrics(tmp_path: Path) -> tuple[RunDir, bytes]:
    run = RunDir(tmp_path / "run")
    run.log({"epoch": 1, "loss": 2.0})
    run.log({"epoch": 2, "loss": 1.5})
    return run, run.metrics.read_bytes()


@pytest.mark.parametrize("how", ["partial line, then ENOSPC", "fsync fails", "Ctrl-C mid-line"])
def test_metrics_append_failure_keeps_the_earlier_lines(tmp_path, monkeypatch, how):
    run, before = _metrics(tmp_path)
    assert before.count(b"\n") == 2
    with monkeypatch.context() as m:
        if how.startswith("partial"):
            _full_disk(m, "metrics.jsonl")
        elif how.startswith("fsync"):
            m.setattr(os, "fsync", _fail(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
        else:
            real = os.write

            def write(fd: int, data: bytes) -> int:
                real(fd, memoryview(data)[:5])
                raise KeyboardInterrupt

            m.setattr(os, "write", write)
        with pytest.raises(KeyboardInterrupt if how.startswith("Ctrl") else RunFailure) as info:
            run.log({"epoch": 3, "loss": 1.25, "note": "x" * 1000})
    if info.type is RunFailure:
        assert str(info.value) == f"{run.metrics}: cannot write (No space left on device)"
    assert run.metrics.read_bytes() == before
    _no_temp(run.path)
    run.log({"epoch": 3, "loss": 1.25})  # the log goes on where it was
    assert [json.loads(line)["epoch"] for line in run.metrics.read_text().splitlines()] == [1, 2, 3]


def test_metrics_append_failure_on_a_new_file_leaves_none(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    _full_disk(monkeypatch, "metrics.jsonl")
    with pytest.raises(RunFailure, match="metrics.jsonl: cannot write"):
        run.log({"epoch": 1})
    assert list(run.path.iterdir()) == []


def test_run_directory_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "blocker").write_bytes(OLD)  # a file where the run directory's parent should be
    with pytest.raises(RunFailure, match="blocker/run: cannot create run directory"):
        RunDir(tmp_path / "blocker" / "run").ensure()
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SYNTHETIC))
    code, _, err = run_cli(["--run-dir", "blocker/run", "build", spec], tmp_path, capsys)
    _failed(code, err, "blocker/run: cannot create run directory (Not a directory)")
    assert (tmp_path / "blocker").read_bytes() == OLD


# ---- experiment results ------------------------------------------------------------------------


def _fake_fig2a(exp: object, runner: object) -> dict[str, object]:
    runs = [{"seed": s, "one_shot_error": 0.5 - s / 10, "error": 0.4 - s / 10, "params": 1000} for s in (0, 1)]
    return {"runs": runs, "pearson_r": None, "pearson_r_differences": None, "pairs": 1}


def test_experiment_results_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    """A full disk at the plot: the JSON written before it is complete, the plot and the table
    already there are as they were, and no temp file is left."""
    import cnas_ir.app.experiments as ex

    monkeypatch.setitem(ex._RUNNERS, "fig2a", _fake_fig2a)
    out = tmp_path / "results"
    out.mkdir()
    for suffix in (".json", ".png", ".md"):
        (out / f"fig2a{suffix}").write_bytes(OLD)
    with monkeypatch.context() as m:
        _full_disk(m, "fig2a.png")
        code, _, err = run_cli(["experiment", "fig2a", "--smoke", "-o", out], tmp_path, capsys)
    _failed(code, err, "fig2a.png: cannot write (No space left on device)")
    assert json.loads((out / "fig2a.json").read_text())["results"]["pairs"] == 1
    assert (out / "fig2a.png").read_bytes() == (out / "fig2a.md").read_bytes() == OLD
    _no_temp(out)
    # with room on the disk the same run writes all three
    assert run_cli(["experiment", "fig2a", "--smoke", "-o", out], tmp_path, capsys)[0] == 0
    assert (out / "fig2a.png").read_bytes()[:4] == b"\x89PNG" and (out / "fig2a.md").read_bytes() != OLD


def test_experiment_results_folder_that_cannot_be_made(tmp_path, monkeypatch, capsys):
    import cnas_ir.app.experiments as ex

    monkeypatch.setitem(ex._RUNNERS, "fig2a", _fake_fig2a)
    (tmp_path / "blocker").write_bytes(OLD)
    code, _, err = run_cli(["experiment", "fig2a", "--smoke", "-o", "blocker/results"], tmp_path, capsys)
    _failed(code, err, "blocker/results: cannot create the results folder")


# ---- every writer of the CLI, over an existing file, on a full disk -----------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory, one_thread):
    """A folder with a tiny spec, its build, one epoch of training (artifact, checkpoint and
    metrics), the files the tests write over, and an ONNX model and a report of the trained
    artifact written elsewhere (their sizes set the limits)."""
    import matplotlib.font_manager  # noqa: F401 -- its cache is written now, not under a limit

    from cnas_ir.app.cli import main

    folder = tmp_path_factory.mktemp("made")
    spec = {**TINY_SYNTHETIC, "train": {**TINY_SYNTHETIC["train"], "epochs": 1}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(spec))
    with inside(folder):
        assert main(["build", "tiny.yaml"]) == 0
        assert main(["train"]) == 0
        assert main(["export", "--onnx", "-o", "probe.onnx"]) == 0
        assert main(["report", "-o", "probe.html"]) == 0
    run = folder / "cnas-run"
    assert sorted(p.name for p in run.iterdir()) == [
        "001-build.cnas", "002-train.cnas", "checkpoints", "metrics.jsonl"
    ]  # fmt: skip
    (folder / "existing.cnas").write_bytes((run / "001-build.cnas").read_bytes())
    (folder / "existing.png").write_bytes(OLD)
    (run / "002-train.onnx").write_bytes(OLD)
    (run / "report.html").write_bytes(OLD)
    return folder


def _copy(made: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made, tmp_path / "w"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


CHECKPOINT = "cnas-run/checkpoints/train.safetensors"
WRITERS = {  # command, the file it fails to write (over an existing one)
    "build -o": (["build", "tiny.yaml", "-o", "existing.cnas"], "existing.cnas"),
    "train -o": (["train", "cnas-run/001-build.cnas", "--epochs", "1", "-o", "existing.cnas"], "existing.cnas"),
    "train checkpoint": (["train", "cnas-run/001-build.cnas", "--epochs", "2", "--resume"], CHECKPOINT),
    "train metrics": (["train", "cnas-run/001-build.cnas", "--epochs", "2", "--resume"], "cnas-run/metrics.jsonl"),
    "prune -o": (["prune", "--criterion", "random", "--finetune-epochs", "0", "-o", "existing.cnas"], "existing.cnas"),
    "export --onnx": (["export", "--onnx"], "cnas-run/002-train.onnx"),
    "report": (["report"], "cnas-run/report.html"),
    "show --png": (["show", "--cell", "1", "--png", "existing.png"], "existing.png"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_on_a_full_disk(made, tmp_path, monkeypatch, capsys, writer):
    """Every file the command had written before the failing one is complete; the failing one's
    target is byte-identical, no temp file anywhere, and the error names it."""
    args, target = WRITERS[writer]
    w = _copy(made, tmp_path)
    before = _snapshot(w)
    _full_disk(monkeypatch, Path(target).name)
    code, _, err = run_cli(args, w, capsys)
    _failed(code, err, f"{target}: cannot write (No space left on device)")
    after = _snapshot(w)
    assert after[target] == before[target]
    _no_temp(w)
    new = sorted(set(after) - set(before))
    assert not [n for n in new if n.endswith(".cnas") or n.endswith(".onnx")], new  # no artifact appeared
    if writer == "train metrics":  # the resumed epoch 2 is in the checkpoint, not in the log
        assert after[CHECKPOINT] != before[CHECKPOINT]
    for name in set(after) & set(before) - {CHECKPOINT, "cnas-run/metrics.jsonl"}:
        assert after[name] == before[name], name


# ---- the acceptance test: a real file-size limit, in a subprocess ------------------------------


def _under_limit(args: list[str], cwd: Path, limit: int) -> tuple[int, str]:
    """``python -m cnas_ir ARGS`` in ``cwd`` under RLIMIT_FSIZE ``limit`` bytes, SIGXFSZ ignored
    (so a write past the limit fails with EFBIG instead of killing the process)."""
    import resource
    import signal

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "CNAS_RUN_DIR"}
    env |= {"PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "cnas_ir", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limited,
    )  # fmt: skip
    return r.returncode, r.stderr


# command, the file it writes over, a file the size of its output (halved: the limit), the failing file
ACCEPTANCE = {
    "train -o, at the artifact": (
        ["train", "cnas-run/001-build.cnas", "--epochs", "0", "-o", "existing.cnas"], "existing.cnas",
        "cnas-run/002-train.cnas", "existing.cnas",
    ),
    "train -o, at the checkpoint": (
        ["train", "cnas-run/001-build.cnas", "--epochs", "1", "-o", "existing.cnas"], "existing.cnas",
        CHECKPOINT, "train.safetensors",
    ),
    "prune -o": (
        ["prune", "--criterion", "random", "--finetune-epochs", "0", "-o", "existing.cnas"], "existing.cnas",
        "cnas-run/002-train.cnas", "existing.cnas",
    ),
    "export --onnx": (["export", "--onnx"], "cnas-run/002-train.onnx", "probe.onnx", "002-train.onnx"),
    "report": (["report"], "cnas-run/report.html", "probe.html", "report.html"),
}  # fmt: skip


@pytest.mark.parametrize("case", ACCEPTANCE)
def test_file_size_limit_acceptance(made, tmp_path, case):
    args, target, sized, failing = ACCEPTANCE[case]
    w = _copy(made, tmp_path)
    before = _snapshot(w)
    size = (w / sized).stat().st_size  # about what the command writes
    assert (w / "cnas-run" / "metrics.jsonl").stat().st_size < size // 2  # the steps before it fit
    code, err = _under_limit(args, w, size // 2)
    line = _failed(code, err, f"{failing}: cannot write (File too large)")
    assert err == line + "\n" or args[0] == "prune", err  # prune's progress lines come before it
    assert (w / target).read_bytes() == before[target]
    _no_temp(w)


def test_file_size_limit_at_the_metrics_log(made, tmp_path):
    """The log is full: the epoch's line is not appended, the earlier lines are kept exactly."""
    w = _copy(made, tmp_path)
    metrics = w / "cnas-run" / "metrics.jsonl"
    limit = 2 * (w / CHECKPOINT).stat().st_size  # the checkpoint fits, the log's next line not
    first = metrics.read_bytes()
    lines = first * ((limit - 100) // len(first))
    pad = limit - 5 - len(lines) - len(b'{"pad": ""}\n')  # 5 bytes of room left
    metrics.write_bytes(lines + json.dumps({"pad": "x" * pad}).encode() + b"\n")
    before = metrics.read_bytes()
    assert len(before) == limit - 5
    code, err = _under_limit(["train", "cnas-run/001-build.cnas", "--epochs", "1", "-o", "existing.cnas"], w, limit)
    line = _failed(code, err, "metrics.jsonl: cannot write (File too large)")
    assert err == line + "\n"
    assert metrics.read_bytes() == before
    assert (w / "existing.cnas").read_bytes() == (w / "cnas-run" / "001-build.cnas").read_bytes()
    _no_temp(w)


# ---- a diverging loss --------------------------------------------------------------------------


@pytest.mark.parametrize("good_epochs", [0, 1])
def test_diverging_loss_names_the_epoch_and_what_is_kept(made, tmp_path, monkeypatch, capsys, good_epochs):
    """The learning rate explodes after ``good_epochs`` epochs: the error names the epoch and
    the checkpoint holding the last good one; no artifact, metrics line or temp file of the
    diverged epoch is written."""
    from safetensors import safe_open

    from cnas_ir.backends.pytorch import train as train_mod

    w = _copy(made, tmp_path)
    (w / CHECKPOINT).unlink()
    (w / "cnas-run" / "metrics.jsonl").unlink()
    real = train_mod.cosine_lr
    monkeypatch.setattr(train_mod, "cosine_lr", lambda t, recipe: real(t, recipe) if t < good_epochs else 1e30)
    before = sorted(p.name for p in (w / "cnas-run").glob("*.cnas"))
    code, _, err = run_cli(["train", "cnas-run/001-build.cnas", "--epochs", "3"], w, capsys)
    line = _failed(code, err, f"training diverged in epoch {good_epochs + 1}/3", "the input artifact is unchanged")
    assert sorted(p.name for p in (w / "cnas-run").glob("*.cnas")) == before
    _no_temp(w)
    metrics = w / "cnas-run" / "metrics.jsonl"
    if good_epochs == 0:
        assert "no checkpoint" in line
        assert not (w / CHECKPOINT).exists() and not metrics.exists()
    else:
        assert f"checkpoint {CHECKPOINT} holds epoch 1" in line
        with safe_open(str(w / CHECKPOINT), framework="pt") as f:
            assert (f.metadata() or {})["epoch"] == "1"
        assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1]
