"""What the commands share: the click context object (the run directory), artifact I/O and
the one-line progress and JSON output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cnas_ir.rundir import RunDir, check_output_path

__all__ = ["DATA_HELP", "Context", "check_out", "echo_json", "info", "load_artifact", "pass_ctx", "write_artifact"]


class Context:
    """The click context object of every command: the run directory (``--run-dir``) and ``--debug``."""

    def __init__(self, run_dir: Path | None, debug: bool) -> None:
        self.run = RunDir(run_dir)
        self.debug = debug


pass_ctx = click.make_pass_decorator(Context)


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=1))


def info(msg: str) -> None:
    """Progress and summaries go to stderr, so ``--json`` output on stdout stays clean."""
    click.echo(msg, err=True)


def load_artifact(ctx: Context, artifact: str | None) -> tuple[Path, Any]:
    """ARTIFACT (default: the run directory's newest), read, verified and held against the
    one-shot structure of its own spec: its path and graph."""
    from cnas_ir import load

    path = ctx.run.resolve(artifact)
    return path, load(path)


def write_artifact(ctx: Context, graph: Any, out: str | None, step: str) -> Path:
    """``graph`` saved to ``-o OUT``, or as the run directory's next artifact ``NNN-STEP.cnas``."""
    from cnas_ir.format import save

    check_out(out)
    return save(graph, Path(out) if out else ctx.run.next_artifact(step))


def check_out(out: str | None) -> None:
    """Refuse a bad ``-o`` before any work is done, not after it."""
    if out is not None:
        check_output_path(out, ".cnas", "-o")


DATA_HELP = (
    "Dataset instead of the spec's: digits, synthetic, cifar10:PATH or folder:DIR (your images, one subfolder "
    "per class; e.g. --data folder:photos). Local folders only; nothing is downloaded."
)
