"""The ``cnas-ir`` command line (click).

Every error is one line on stderr (``cnas-ir: error: ...``) with exit code 2 for bad usage or
input and 1 for a runtime failure; a traceback only with ``--debug``. Heavy imports (torch,
onnx) happen inside the commands that need them, so ``cnas-ir --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cnas_ir import __version__
from cnas_ir.app.context import Context
from cnas_ir.app.experiment_command import experiment
from cnas_ir.app.graph_commands import build, dump, export, stats, transfer
from cnas_ir.app.run_commands import evaluate, prune, train
from cnas_ir.app.view_commands import report, show
from cnas_ir.errors import CnasError, one_line, shorten

__all__ = ["cli", "entry", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cnas-ir")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory for artifacts, metrics and checkpoints [default: $CNAS_RUN_DIR or ./cnas-run].",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, run_dir: Path | None, debug: bool) -> None:
    """cnas-ir: channel-level neural architecture search as a graph-IR compiler.

    A search space in YAML becomes a one-shot graph whose vertices are channels and whose
    edges are operations; it is trained, ranked by Taylor saliency, pruned to a parameter
    budget rho, folded and lowered to PyTorch or ONNX.

    \b
    Typical run in a fresh folder:
      cnas-ir build examples/tiny.yaml     # -> cnas-run/001-build.cnas
      cnas-ir train                        # one-shot training -> 002-train.cnas
      cnas-ir prune --rho 0.3              # the search -> 003-prune.cnas
      cnas-ir train                        # CNAS-W (--reinit: CNAS-R) -> 004-train.cnas
      cnas-ir export --onnx --check        # -> cnas-run/004-train.onnx
      cnas-ir stats                        # Table 1 of the newest artifact
      cnas-ir show --cell 3 --png cell3.png
      cnas-ir report                       # cnas-run/report.html
      cnas-ir eval cnas-run/004-train.onnx # the exported model in onnxruntime

    \b
    Elsewhere and at other budgets:
      cnas-ir transfer cnas-run/004-train.cnas examples/nasnet-imagenet.yaml
      cnas-ir prune --rho 0.46 --budget macs   # rho of the cells' multiply-adds
      cnas-ir build big.yaml --dry-run         # sizes and memory; nothing built

    \b
    Your own images (one subfolder per class; data: {name: folder, path: DIR} in the spec):
      cnas-ir train --data folder:photos --workers 8

    ARTIFACT arguments default to the newest artifact of the run directory.
    """
    ctx.obj = Context(run_dir, debug)


for _command in (build, stats, dump, transfer, train, evaluate, prune, export, show, report, experiment):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns every error into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # Not standalone: click returns ctx.exit()'s code instead of calling sys.exit.
        code = cli.main(args=args, prog_name="cnas-ir", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("cnas-ir: interrupted", err=True)
        return 130
    except click.ClickException as e:
        if debug:
            raise
        ctx_hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            ctx_hint = f" (see '{e.ctx.command_path} --help')"
        click.echo(one_line(f"cnas-ir: error: {e.format_message()}{ctx_hint}"), err=True)
        return e.exit_code
    except CnasError as e:
        if debug:
            raise
        click.echo(one_line(f"cnas-ir: error: {e}"), err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("cnas-ir: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: still one line unless --debug
        if debug:
            raise
        what = shorten(f"{e.__class__.__name__}: {e}", 200)
        click.echo(one_line(f"cnas-ir: internal error: {what} (rerun with --debug for the traceback)"), err=True)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
