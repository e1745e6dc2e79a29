"""The ``cnas-ir`` command line (click).

Every error is one line on stderr (``cnas-ir: error: ...``) with exit code 2 for bad usage or
input and 1 for a runtime failure; a traceback only with ``--debug``. Heavy imports (torch,
onnx) happen inside the commands that need them, so ``cnas-ir --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cnas_ir import __version__
from cnas_ir.errors import CnasError, InputError
from cnas_ir.rundir import RunDir

__all__ = ["cli", "main"]


class Context:
    def __init__(self, run_dir: Path | None, debug: bool) -> None:
        self.run = RunDir(run_dir)
        self.debug = debug


pass_ctx = click.make_pass_decorator(Context)


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=1))


def _info(msg: str) -> None:
    """Progress and summaries go to stderr, so ``--json`` output on stdout stays clean."""
    click.echo(msg, err=True)


def _load(ctx: Context, artifact: str | None) -> tuple[Path, Any]:
    from cnas_ir.format import load

    path = ctx.run.resolve(artifact)
    return path, load(path)


def _write(ctx: Context, graph: Any, out: str | None, step: str) -> Path:
    from cnas_ir.format import save

    path = Path(out) if out else ctx.run.next_artifact(step)
    if path.suffix != ".cnas":
        raise InputError(f"{path}: an artifact's name must end in .cnas")
    if path.parent and not path.parent.exists():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    return save(graph, path)


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
      cnas-ir stats                        # Table 1 of the newest artifact

    ARTIFACT arguments default to the newest artifact of the run directory.
    """
    ctx.obj = Context(run_dir, debug)


@cli.command()
@click.argument("spec_path", metavar="SPEC.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False), help="Write the artifact here instead of the run directory."
)
@click.option("--json", "as_json", is_flag=True, help="Print the stats of the one-shot graph as JSON on stdout.")
@pass_ctx
def build(ctx: Context, spec_path: Path, out: str | None, as_json: bool) -> None:
    """Build the one-shot channel graph of SPEC.yaml and save it as an artifact."""
    from cnas_ir import build as build_graph
    from cnas_ir.passes.stats import compute_stats

    graph = build_graph(spec_path)
    stats = compute_stats(graph)
    path = _write(ctx, graph, out, "build")
    if as_json:
        _echo_json(stats.to_json())
    _info(
        f"built {graph.spec.name} ({graph.spec.space}): {len(graph.cells)} cells, {stats.total.x:,} x vertices, "
        f"{stats.total.params:,} cell params, {stats.model_params:,} model params -> {path}"
    )


@cli.command()
@click.argument("artifact", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document: per-cell rows and a total with rho.")
@click.option("--markdown", is_flag=True, help="The paper's Table 1 as a Markdown table.")
@pass_ctx
def stats(ctx: Context, artifact: str | None, as_json: bool, markdown: bool) -> None:
    """Table 1 for ARTIFACT: per cell |X|, |Y|, params, and the live (pruned) columns."""
    from cnas_ir.passes.stats import compute_stats, format_table

    if as_json and markdown:
        raise click.UsageError("--json and --markdown exclude each other")
    _, graph = _load(ctx, artifact)
    s = compute_stats(graph)
    if as_json:
        _echo_json(s.to_json())
    else:
        click.echo(format_table(s, markdown=markdown), nl=False)


@cli.command()
@click.argument("artifact", required=False)
@pass_ctx
def dump(ctx: Context, artifact: str | None) -> None:
    """Print ARTIFACT's graph as stable text: groups, bundles, masks, saliency, weights, history."""
    from cnas_ir.dump import dump as dump_text

    _, graph = _load(ctx, artifact)
    click.echo(dump_text(graph), nl=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns every error into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="cnas-ir", standalone_mode=False)
        return 0
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
        click.echo(f"cnas-ir: error: {e.format_message()}{ctx_hint}", err=True)
        return e.exit_code
    except CnasError as e:
        if debug:
            raise
        click.echo(f"cnas-ir: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("cnas-ir: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: still one line unless --debug
        if debug:
            raise
        click.echo(
            f"cnas-ir: internal error: {e.__class__.__name__}: {e} (rerun with --debug for the traceback)", err=True
        )
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
