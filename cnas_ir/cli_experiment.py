"""``cnas-ir experiment``: run one of the paper's experiments described in ``experiments/``.

Registered on the ``cnas-ir`` group in :mod:`cnas_ir.cli`. The work is in
:mod:`cnas_ir.backends.pytorch.experiments`, imported only when the command runs, so
``cnas-ir --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from cnas_ir.cli import _DATA_HELP, _info

__all__ = ["experiment"]


@click.command()
@click.argument("name")
@click.option("--data", metavar="NAME[:PATH]", help=_DATA_HELP + " cifar10 also sets the input to 3x32x32.")
@click.option("--smoke", is_flag=True, help="The CI-sized run: the file's smoke section (1 seed, 1 epoch, tiny spec).")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for NAME.json, NAME.png and NAME.md [default: experiments-run/NAME].",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
def experiment(name: str, data: str | None, smoke: bool, out: Path | None, device: str) -> None:
    """Run experiment NAME (experiments/NAME.yaml, or a path to such a file).

    fig2b: no-pruning vs per-cell random pruning vs CNAS at equal parameters (§3.2).
    fig3: vary nodes per cell and operations per node at fixed parameters (§3.1).
    fig2a: one-shot vs final sparse test error over seeds, Pearson r (§2.2).
    densenet: CNAS-R in the DenseNet-BC space vs a dense DenseNet-BC of equal size (§3.4).

    Writes the results as JSON, a plot (PNG) and a Markdown table; progress goes to stderr.
    """
    from cnas_ir.backends.pytorch.experiments import find_experiment, run_experiment

    stem = find_experiment(name).stem  # refuse an unknown name before any work
    folder = out if out is not None else Path("experiments-run") / (stem + ("-smoke" if smoke else ""))
    run_experiment(name, out=folder, smoke=smoke, data=data, device=device, say=_info)
