"""Commands on the graph itself: ``build`` (with ``--dry-run``), ``stats``, ``dump``, ``transfer``
and ``export``.
"""

from __future__ import annotations

from pathlib import Path

import click

from cnas_ir.app.context import (
    Context,
    check_out,
    echo_json,
    info,
    load_artifact,
    pass_ctx,
    write_artifact,
)
from cnas_ir.errors import InputError
from cnas_ir.rundir import check_output_path

__all__ = ["build", "dump", "export", "stats", "transfer"]


def _size(value: str | None) -> int | None:
    from cnas_ir.estimate import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--max-memory'") from None


_MAX_MEMORY_HELP = "Refuse a graph whose IR + weights would exceed SIZE (8G, 500M) [default: 4G]."


@click.command()
@click.argument("spec_path", metavar="SPEC.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False), help="Write the artifact here instead of the run directory."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the stats of the one-shot graph (--dry-run: the estimate) as JSON."
)
@click.option(
    "--dry-run", is_flag=True, help="Print the size estimate (vertices, edges, parameters, memory); build nothing."
)
@click.option("--max-memory", metavar="SIZE", help=_MAX_MEMORY_HELP)
@pass_ctx
def build(ctx: Context, spec_path: Path, out: str | None, as_json: bool, dry_run: bool, max_memory: str | None) -> None:
    """Build the one-shot channel graph of SPEC.yaml and save it as an artifact.

    The size is estimated from the spec first, in closed form; a spec whose graph and weights
    would exceed the memory limit is refused in one line that names the key to change.

    \b
    Examples:
      cnas-ir build examples/nasnet.yaml
      cnas-ir build big.yaml --dry-run          # vertices, edges, parameters, memory; nothing built
      cnas-ir build big.yaml --max-memory 16G
    """
    from cnas_ir import build as build_graph
    from cnas_ir.estimate import estimate, format_size
    from cnas_ir.passes.stats import compute_stats
    from cnas_ir.spec import load_spec

    limit = _size(max_memory)
    if dry_run:
        spec = load_spec(spec_path)
        e = estimate(spec)
        if as_json:
            echo_json(e.to_json())
            return
        at_least = "at least " if e.at_least else ""
        click.echo(
            f"{spec.name} ({spec.space}): {at_least}{e.vertices:,} vertices ({e.x_vertices:,} x), "
            f"{e.channel_edges:,} channel edges, {e.params:,} parameters\n"
            f"IR {format_size(e.ir_bytes)} + weights {format_size(e.weight_bytes)} = {format_size(e.build_bytes)}; "
            f"training step at batch {e.batch_size}, {spec.input.size}x{spec.input.size}: "
            f"{format_size(e.activation_bytes)} of activations"
        )
        return
    graph = build_graph(spec_path, max_memory=limit)
    stats = compute_stats(graph)
    path = write_artifact(ctx, graph, out, "build")
    if as_json:
        echo_json(stats.to_json())
    info(
        f"built {graph.spec.name} ({graph.spec.space}): {len(graph.cells)} cells, {stats.total.x:,} x vertices, "
        f"{stats.total.params:,} cell params, {stats.model_params:,} model params -> {path}"
    )


@click.command()
@click.argument("artifact", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document: per-cell rows and a total with rho.")
@click.option("--markdown", is_flag=True, help="The paper's Table 1 as a Markdown table.")
@pass_ctx
def stats(ctx: Context, artifact: str | None, as_json: bool, markdown: bool) -> None:
    """Table 1 for ARTIFACT: per cell |X|, |Y|, params, and the live (pruned) columns."""
    from cnas_ir.passes.stats import compute_stats, format_table

    if as_json and markdown:
        raise click.UsageError("--json and --markdown exclude each other")
    _, graph = load_artifact(ctx, artifact)
    s = compute_stats(graph)
    if as_json:
        echo_json(s.to_json())
    else:
        click.echo(format_table(s, markdown=markdown), nl=False)


@click.command()
@click.argument("artifact", required=False)
@pass_ctx
def dump(ctx: Context, artifact: str | None) -> None:
    """Print ARTIFACT's graph as stable text: groups, bundles, masks, saliency, weights, history."""
    from cnas_ir.dump import dump as dump_text

    _, graph = load_artifact(ctx, artifact)
    click.echo(dump_text(graph), nl=False)


@click.command()
@click.argument("searched", metavar="SEARCHED.cnas")
@click.argument("target_path", metavar="TARGET.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--weights",
    type=click.Choice(["init", "keep"]),
    default="init",
    show_default=True,
    help="init: re-initialise every weight (the paper's choice). keep: keep each operation whose weights "
    "have the same names and shapes, initialise the rest (stem, head, a preprocessing that became a "
    "factorized reduce).",
)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the artifact here, not in the run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats of the transferred graph as JSON on stdout.")
@pass_ctx
def transfer(ctx: Context, searched: str, target_path: Path, weights: str, out: str | None, as_json: bool) -> None:
    """Move SEARCHED.cnas's cells into the network TARGET.yaml describes (paper §3.3).

    Each cell keeps its searched topology (the live x of every node and op, channel by
    channel); the target may change the name, input, classes, stem (nasnet.stem: imagenet),
    spatial dropout, data, training recipe and search settings, but not the cell structure.
    Then train the result as any artifact.

    \b
    Example, the paper's ImageNet setting:
      cnas-ir transfer cnas-run/004-train.cnas examples/nasnet-imagenet.yaml
      cnas-ir train --reinit
    """
    from cnas_ir.passes.stats import compute_stats
    from cnas_ir.passes.transfer import keep_weights
    from cnas_ir.passes.transfer import transfer as transfer_graph
    from cnas_ir.spec import load_spec

    check_out(out)
    source_path, source = load_artifact(ctx, searched)
    if weights == "keep" and not source.weights:
        raise InputError(f"{source_path}: no trained weights to keep; train it first or use --weights init")
    target = load_spec(target_path)
    graph = transfer_graph(source, target, where=str(target_path))
    if weights == "keep":
        from cnas_ir.backends.onnx.export import initial_weights

        graph = keep_weights(source, graph, initial_weights(graph, target.train.seed).weights)
    stats = compute_stats(graph)
    path = write_artifact(ctx, graph, out, "transfer")
    if as_json:
        echo_json(stats.to_json())
    if weights == "keep":
        fresh = graph.history[-1]["initialised"]
        info(
            f"kept the weights of {graph.history[-1]['kept']} operations; initialised {len(fresh)}: "
            + (", ".join(fresh[:8]) + (f" and {len(fresh) - 8} more" if len(fresh) > 8 else "") if fresh else "none")
        )
    info(
        f"transferred {source.spec.name}'s {len(graph.cells)} cells into {target.name}: rho {stats.rho:.6f}, "
        f"{stats.total.params_live:,} cell params, {stats.model_params_live:,} model params -> {path}"
    )


@click.command()
@click.argument("artifact", required=False)
@click.option("--onnx", "to_onnx", is_flag=True, required=True, help="Export to ONNX (the deployment target).")
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False),
    help="Output .onnx file [default: the artifact's name with .onnx, beside it].",
)
@click.option(
    "--check", is_flag=True, help="Run onnx.checker (full) and compare onnxruntime with PyTorch at batch 1 and 7."
)
@click.option("--allow-untrained", is_flag=True, help="Export an artifact without weights (its initialisation).")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON on stdout.")
@pass_ctx
def export(
    ctx: Context,
    artifact: str | None,
    to_onnx: bool,
    out: str | None,
    check: bool,
    allow_untrained: bool,
    as_json: bool,
) -> None:
    """Export ARTIFACT's compacted network for inference (eval mode, dynamic batch).

    The graph is folded, BatchNorm folded into the convolutions, the ops of each node merged
    into one pointwise conv, ReLU computed once per state, and only live parameters stored.
    """
    from cnas_ir.backends.onnx import export as export_onnx

    src, graph = load_artifact(ctx, artifact)
    path = check_output_path(out if out else src.with_suffix(".onnx"), ".onnx", "-o")
    report = export_onnx(graph, path, check=check, allow_untrained=allow_untrained)
    if as_json:
        echo_json(report.to_json())
    info(report.summary())
