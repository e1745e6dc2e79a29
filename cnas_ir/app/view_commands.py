"""``cnas-ir show`` and ``cnas-ir report``: the commands that make a search visible.

Registered on the ``cnas-ir`` group in :mod:`cnas_ir.app.cli`. matplotlib and networkx are imported
only when a command runs (by :mod:`cnas_ir.app.draw` and :mod:`cnas_ir.app.report`), so ``cnas-ir
--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cnas_ir.app.context import Context, info, load_artifact, pass_ctx
from cnas_ir.errors import InputError
from cnas_ir.rundir import check_output_path

if TYPE_CHECKING:
    from cnas_ir.app.draw import DeadMode, Level

__all__ = ["report", "show"]


def _out_path(value: str | None, what: str) -> Path | None:
    """Refuse an output whose folder does not exist before any work is done."""
    return None if value is None else check_output_path(value, option=f"--{what}")


@click.command()
@click.argument("artifact", required=False)
@click.option("--cell", "cell", type=int, required=True, help="The cell to show, 1-based (DenseNet: the dense block).")
@click.option("--png", type=click.Path(dir_okay=False), help="Write the drawing as PNG here.")
@click.option("--svg", type=click.Path(dir_okay=False), help="Write the drawing as SVG here.")
@click.option("--graphml", type=click.Path(dir_okay=False), help="Write the networkx view as GraphML here.")
@click.option("--dot", type=click.Path(dir_okay=False), help="Write the view as Graphviz DOT here.")
@click.option(
    "--level",
    type=click.Choice(["node", "channel"]),
    default="node",
    show_default=True,
    help="node: d_a, d_b, the ops and z of every node, c. channel: every vertex and edge (small cells).",
)
@click.option(
    "--dead",
    type=click.Choice(["faded", "omit"]),
    default="faded",
    show_default=True,
    help="How to show ops, nodes and edges that pruning removed.",
)
@pass_ctx
def show(
    ctx: Context,
    artifact: str | None,
    cell: int,
    png: str | None,
    svg: str | None,
    graphml: str | None,
    dot: str | None,
    level: Level,
    dead: DeadMode,
) -> None:
    """Draw or export one cell of ARTIFACT; with no output option, print it as text.

    The node level draws the cell left to right: the inputs a and b, d_a and d_b, then node
    by node its operations and z, and the output c. Each copy edge into op (k, j) is labelled
    with, and as wide as, the number of live x vertices of that op copying the source: blue
    from d_a/d_b, orange from earlier nodes' z. The channel level draws every channel and
    channel edge; cells with more than 5,000 channel edges are refused (use the node level).
    GraphML and DOT hold the networkx view of the cell (x and y groups apart), with dead
    parts marked alive=false unless --dead omit.
    """
    from cnas_ir.app.draw import check_cell, check_channel_level, describe_cell, render_cell, to_dot, to_graphml
    from cnas_ir.format import atomic_write

    outs = {k: _out_path(v, k) for k, v in (("png", png), ("svg", svg), ("graphml", graphml), ("dot", dot))}
    _, graph = load_artifact(ctx, artifact)
    check_cell(graph, cell)
    if level == "channel":
        check_channel_level(graph, cell, dead)
    if not any(outs.values()):
        if level == "channel":
            raise InputError("--level channel needs an output: --png, --svg, --graphml or --dot")
        click.echo(describe_cell(graph, cell, dead), nl=False)
        return
    for fmt, path in outs.items():
        if path is None:
            continue
        if fmt == "png" or fmt == "svg":
            data = render_cell(graph, cell, fmt, level, dead)
        elif fmt == "graphml":
            data = to_graphml(graph, cell, level, dead)
        else:
            data = to_dot(graph, cell, level, dead).encode()
        atomic_write(path, data)
        info(f"cell {cell} ({level} level) -> {path}")


@click.command()
@click.argument("run_dir", metavar="[RUN_DIR]", required=False, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output HTML file [default: RUN_DIR/report.html].",
)
@pass_ctx
def report(ctx: Context, run_dir: Path | None, out: Path | None) -> None:
    """Write one self-contained HTML page about a run (default: the run directory).

    It holds Table 1 of the newest artifact, the kept input fraction per cell, |d->x| versus
    |z->x| per cell, the pruning trajectory (rho and validation accuracy per iteration), the
    training curves from metrics.jsonl and node-level drawings of the first cell, a reduction
    cell and the last cell. Images are embedded: the page opens offline. RUN_DIR may also be
    an artifact (.cnas): the report is then about it, with its folder's metrics.
    """
    from cnas_ir.app.report import write_report

    path = run_dir if run_dir is not None else ctx.run.path
    artifact = None
    if path.suffix == ".cnas" and not path.is_dir():
        if not path.is_file():
            raise InputError(f"{path}: no such artifact")
        artifact, path = path, path.parent
    if out is not None:
        _out_path(str(out), "out")
    written = write_report(path, out if out is not None else path / "report.html", artifact)
    info(f"report -> {written}")
