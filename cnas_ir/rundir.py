"""The run directory: where commands put artifacts, metrics and checkpoints.

By default ``./cnas-run`` (or ``$CNAS_RUN_DIR``, or ``cnas-ir --run-dir``). Each command that
produces a graph writes a numbered artifact ``NNN-<step>.cnas`` (``001-build.cnas``,
``002-train.cnas``, ``003-prune.cnas``, ...). A command whose ARTIFACT argument is omitted
reads the newest one (highest number), so ``build``, ``prune``, ``export`` chain in a fresh
folder. Long-running commands append JSON lines to ``metrics.jsonl`` and keep resumable state
in ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cnas_ir.errors import InputError, RunFailure

__all__ = ["RunDir", "check_output_path", "default_run_dir"]

_ARTIFACT = re.compile(r"^(\d{3,})-([A-Za-z0-9_.-]+)\.cnas$")


def default_run_dir() -> Path:
    return Path(os.environ.get("CNAS_RUN_DIR", "cnas-run"))


def check_output_path(path: str | Path, suffix: str | None = None, option: str = "the output") -> Path:
    """Refuse an output path before any work is done: a wrong suffix, a folder, a missing folder.

    (A regular file where the folder should be is a write failure, found by :func:`atomic_write`.)
    """
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise InputError(f"{path}: the file name must end in {suffix}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {option} needs a file name")
    if not path.parent.exists():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    return path


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` whole or not at all: on any failure (Ctrl-C included) the
    file is cut back to its earlier length, or removed if this call created it."""
    try:
        size: int | None = path.stat().st_size
    except FileNotFoundError:
        size = None
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:  # a write may stop short (at a file-size limit, before failing)
            view = view[os.write(fd, view) :]
        os.fsync(fd)  # a full disk may only show here, while the line can still be cut
    except BaseException:
        try:
            if size is None:
                path.unlink()
            else:
                os.ftruncate(fd, size)
        except OSError:
            pass  # the append's own error is the one to report
        raise
    finally:
        os.close(fd)


class RunDir:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_run_dir()

    def artifacts(self) -> list[Path]:
        """Artifacts of this run, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := _ARTIFACT.match(p.name))]
        return [p for _, p in sorted(found)]

    def newest(self) -> Path:
        arts = self.artifacts()
        if not arts:
            raise InputError(f"no artifact in {self.path}/: run `cnas-ir build SPEC.yaml` first, or name an ARTIFACT")
        return arts[-1]

    def next_artifact(self, step: str) -> Path:
        """Path for the next artifact of ``step`` (the folder is created)."""
        self.ensure()
        arts = self.artifacts()
        n = int(_ARTIFACT.match(arts[-1].name).group(1)) + 1 if arts else 1  # type: ignore[union-attr]
        return self.path / f"{n:03d}-{step}.cnas"

    def ensure(self) -> Path:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFailure(f"{self.path}: cannot create run directory ({e.strerror or e})") from None
        return self.path

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl``. On an :class:`OSError` (a full disk, a
        file-size limit) the file keeps its earlier lines, no partial one, and
        :class:`RunFailure` names it."""
        self.ensure()
        try:
            _append(self.metrics, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        except OSError as e:
            raise RunFailure(f"{self.metrics}: cannot write ({e.strerror or e})") from None

    def resolve(self, artifact: str | Path | None) -> Path:
        """The artifact a command should read: the one named, the newest in a named folder,
        or the newest of this run directory."""
        if artifact is None:
            return self.newest()
        p = Path(artifact)
        if p.is_dir():
            return RunDir(p).newest()
        return p
