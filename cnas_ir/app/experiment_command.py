"""``cnas-ir experiment``: run one of the paper's experiments described in ``experiments/``.

Registered on the ``cnas-ir`` group in :mod:`cnas_ir.app.cli`. The work is in
:mod:`cnas_ir.app.experiments`, imported only when the command runs, so
``cnas-ir --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from cnas_ir.app.context import DATA_HELP, info

__all__ = ["experiment"]


@click.command()
@click.argument("name")
@click.option("--data", metavar="NAME[:PATH]", help=DATA_HELP + " cifar10 also sets the input to 3x32x32.")
@click.option("--smoke", is_flag=True, help="The CI-sized run: the file's smoke section (1 seed, 1 epoch, tiny spec).")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for NAME.json, NAME.png and NAME.md [default: experiments-run/NAME].",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run the independent (arm, seed) runs in this many worker processes. Same numbers; on "
    "CPU a digits run uses one core, so --jobs 2 on two cores halves the wall time.",
)
def experiment(name: str, data: str | None, smoke: bool, out: Path | None, device: str, jobs: int) -> None:
    """Run experiment NAME (experiments/NAME.yaml, or a path to such a file), or `all` of them.

    fig2b: no-pruning vs per-cell random pruning vs CNAS at equal parameters (§3.2).
    fig3: vary nodes per cell and operations per node at fixed parameters (§3.1).
    fig2a: one-shot vs final sparse test error over seeds, Pearson r (§2.2).
    densenet: CNAS-R in the DenseNet-BC space vs a dense DenseNet-BC of equal size (§3.4).
    all: the four above, one after the other, each into OUT/NAME.

    Writes the results as JSON, a plot (PNG) and a Markdown table; progress goes to stderr.
    """
    import time

    from cnas_ir.app.experiments import KINDS, find_experiment, run_experiment

    names = list(KINDS) if name == "all" else [name]
    stems = [find_experiment(n).stem for n in names]  # refuse an unknown name before any work
    root = out if out is not None else Path("experiments-run")
    t0 = time.perf_counter()
    for n, stem in zip(names, stems, strict=True):
        folder = root / (stem + ("-smoke" if smoke else "")) if (out is None or name == "all") else root
        run_experiment(n, out=folder, smoke=smoke, data=data, device=device, jobs=jobs, say=info)
    if name == "all":
        info(f"all {len(names)} experiments: {time.perf_counter() - t0:.0f} s with {jobs} job(s)")
