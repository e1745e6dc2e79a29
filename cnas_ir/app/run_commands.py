"""Commands that run a network: ``train``, ``eval`` and ``prune`` (the search), with the torchrun
relaunch of ``--nproc`` and the memory check before training.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from cnas_ir.app.context import (
    DATA_HELP,
    Context,
    check_out,
    echo_json,
    info,
    load_artifact,
    pass_ctx,
    write_artifact,
)
from cnas_ir.errors import CnasError, InputError, RunFailure

__all__ = ["evaluate", "prune", "train"]


def _not_nan(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse nan, which click's FloatRange lets through (every comparison with it is false)."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("nan is not a number", ctx=ctx, param=param)
    return value


_WORKERS_HELP = (
    "DataLoader processes decoding an image folder [default: none for a folder that fits in memory, "
    "up to 8 for one streamed from disk]."
)


def _load_data(graph: Any, data: str | None, workers: int | None = None, *, same_classes: bool = False) -> Any:
    """The data set of ``--data`` or the spec; an image folder is normalised with the statistics
    ``graph`` was trained with and, with ``same_classes``, must have its class names."""
    from cnas_ir.backends.pytorch.data import load_dataset, parse_data_option

    name, path = parse_data_option(data) if data is not None else (None, None)
    classes = graph.data.get("classes") if same_classes else None
    return load_dataset(graph.spec, name, path, stats=graph.data, classes=classes, workers=workers)


_NPROC_HELP = "Run on N processes of this node: relaunches the command under torchrun (one per GPU; gloo on CPU)."
_AMP_HELP = "Mixed precision: bf16 runs forward passes under autocast (weights, optimizer and saliency stay float32)."
_LAYOUT_HELP = (
    "Memory layout of weights and batches. channels-last (NHWC) is faster here for every search space, "
    "on CPU as with tensor cores (BENCHMARKS.md)."
)


def _layout_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--layout``; the flag ``--channels-last`` of earlier releases is still taken (the default now)."""
    f = click.option("--channels-last", "old_channels_last", is_flag=True, hidden=True)(f)
    return click.option(
        "--layout",
        type=click.Choice(["channels-last", "nchw"]),
        default="channels-last",
        show_default=True,
        help=_LAYOUT_HELP,
    )(f)


class _LaunchInterrupted(CnasError):
    exit_code = 130  # the shell's code for SIGINT, as a single process reports it


def _torchrun(ctx: Context, nproc: int) -> None:
    """Run the current command again as ``nproc`` processes of this node under torchrun, with
    the same arguments but ``--nproc``; raises a one-line error when it fails.

    The arguments are rebuilt from what was given on the command line (plus the run directory,
    resolved here), so a command reached through ``main(argv)`` relaunches as well as one from
    a shell. ``--standalone`` picks a free local rendezvous port. Ctrl-C reaches torchrun too,
    which stops the workers (the last epoch's checkpoint stays whole); we wait for it. The
    workers print their own errors; torchrun's exit code does not say which, so a failure is
    reported here as exit 1 (130 after Ctrl-C).
    """
    import subprocess

    from click.core import ParameterSource

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise InputError("--nproc: already running under torchrun; leave --nproc out of a torchrun command")
    cc = click.get_current_context()
    args = ["--run-dir", str(ctx.run.path)] + (["--debug"] if ctx.debug else []) + [str(cc.info_name)]
    for param in cc.command.params:
        name = param.name or ""
        if name == "nproc" or cc.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        value = cc.params[name]
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif isinstance(param, click.Option) and param.is_flag:
            args += [param.opts[0]] if value else []
        else:
            args += [param.opts[0], str(value)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    info(f"launching {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m cnas_ir {' '.join(args)}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # cores shared out
    proc = subprocess.Popen([*launcher, "-m", "cnas_ir", *args], env=env)
    interrupted = False
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # torchrun got it as well and is stopping the workers
            interrupted = True
    if interrupted:
        resume = "; `cnas-ir train --resume` continues from the last checkpoint" if cc.info_name == "train" else ""
        raise _LaunchInterrupted(f"interrupted: the {nproc} processes stopped{resume}")
    if code != 0:
        raise RunFailure(f"the {nproc} processes failed (torchrun exit code {code}); their errors are above")


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[bool]:
    """Under torchrun, join the process group for the body (NCCL on CUDA, gloo on CPU) and
    yield whether this is rank 0, the one that writes; elsewhere yield True (torch is not
    imported for it: random pruning runs on the arrays alone)."""
    if not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        yield True
        return
    from cnas_ir.backends.pytorch import distributed
    from cnas_ir.backends.pytorch.train import pick_device

    with distributed.process_group(pick_device(device)):
        yield distributed.is_rank0()


def _prelaunch_checks(
    ctx: Context, artifact: str | None, data: str | None, out: str | None, device: str, force: bool, nproc: int
) -> None:
    """The input errors a relaunched command would meet, found here in one line each: the
    output path, the artifact (read and verified), the data set (its name, a cifar10 folder,
    whether it fits the spec; no data is read) and the memory of a training step."""
    from cnas_ir.backends.pytorch.data import check_data, parse_data_option

    check_out(out)
    name, path = parse_data_option(data) if data is not None else (None, None)
    _, graph = load_artifact(ctx, artifact)
    check_data(graph.spec, name, path)
    _check_memory(graph, device, force, world=nproc)


_FORCE_HELP = "Train even when a training step's estimated memory exceeds what the device has available."


def _check_memory(graph: Any, device: str, force: bool, world: int | None = None) -> None:
    """Refuse, in one line naming the largest batch that fits, a training step whose estimated
    memory (activations at the spec's batch size and input size, weights, gradients, momentum)
    exceeds what the device has available; ``--force`` skips it. ``world``: processes about to
    be launched on this node (default: those of this run)."""
    if force:
        return
    from cnas_ir.backends.pytorch import distributed
    from cnas_ir.backends.pytorch.memory import available_bytes
    from cnas_ir.backends.pytorch.train import pick_device
    from cnas_ir.estimate import check_training_memory, live_fraction

    dev = pick_device(device)
    if world is None:
        world = distributed.world_size() if distributed.launched_by_torchrun() else 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    else:
        local = world
    available, where = available_bytes(dev)
    check_training_memory(
        graph.spec, available, where, fraction=live_fraction(graph), world=world,
        processes=local if dev.type == "cpu" else 1,
    )  # fmt: skip


@click.command()
@click.argument("artifact", required=False)
@click.option("--epochs", type=click.IntRange(min=0), help="Epochs to train [default: the spec's train.epochs].")
@click.option("--data", metavar="NAME[:PATH]", help=DATA_HELP)
@click.option("--reinit", is_flag=True, help="Re-initialise the weights and train from scratch (CNAS-R).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto uses CUDA when present.",
)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the artifact here, not in the run directory.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run from its last checkpoint.")
@click.option("--nproc", type=click.IntRange(min=1), metavar="N", help=_NPROC_HELP)
@click.option("--amp", type=click.Choice(["off", "bf16"]), default="off", show_default=True, help=_AMP_HELP)
@_layout_option
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="Run the training step under torch.compile (minutes of compilation first; BENCHMARKS.md: when it pays).",
)
@click.option("--workers", type=click.IntRange(min=0), metavar="N", help=_WORKERS_HELP)
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@pass_ctx
def train(
    ctx: Context, artifact: str | None, epochs: int | None, data: str | None, reinit: bool, device: str,
    out: str | None, resume: bool, nproc: int | None, amp: str, layout: str, old_channels_last: bool,
    compile_: bool, workers: int | None, force: bool,
) -> None:  # fmt: skip
    """Train ARTIFACT's network with the spec's recipe (SGD, Nesterov, cosine warm restarts).

    Metrics go to the run directory's metrics.jsonl (one line per epoch) and a checkpoint to
    checkpoints/ after every epoch; Ctrl-C stops cleanly (exit 130) and --resume continues.
    Writes NNN-train.cnas holding the trained weights. Under torchrun (or with --nproc N) it
    trains data-parallel; the spec's batch_size is the global batch, split over the processes.
    An image folder's class names and normalisation are kept in the artifact.

    \b
    Example, your own images (photos/<class>/*.jpg, or photos/train/ and photos/val/):
      cnas-ir train --data folder:photos --workers 8
    """
    import time

    from cnas_ir.backends.pytorch.train import train as train_graph

    layout = "channels-last" if old_channels_last else layout

    if nproc is not None and nproc > 1:
        _prelaunch_checks(ctx, artifact, data, out, device, force, nproc)
        _torchrun(ctx, nproc)
        return
    check_out(out)  # before hours of training, not after
    src, graph = load_artifact(ctx, artifact)
    _check_memory(graph, device, force)
    splits = _load_data(graph, data, workers)
    t0 = time.perf_counter()
    with _process_group(device) as rank0:
        # Ctrl-C raises TrainInterrupted (exit 130) with a one-line message on how to resume.
        trained = train_graph(
            graph, epochs=epochs, data=splits, device=device, run=ctx.run, resume=resume, reinit=reinit, amp=amp,
            channels_last=layout == "channels-last", compile=compile_,
        )  # fmt: skip
    if not rank0:
        return  # rank 0 writes the artifact
    path = write_artifact(ctx, trained, out, "train")
    ev = trained.history[-1]
    info(
        f"trained {src.name} for {ev['epochs']} epochs on {ev['data']} in {time.perf_counter() - t0:.1f} s: "
        f"val accuracy {ev['val_acc']:.2%}, test accuracy {ev['test_acc']:.2%} -> {path}"
    )


@click.command("eval")
@click.argument("artifact", required=False)
@click.option("--data", metavar="NAME[:PATH]", help=DATA_HELP)
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document: split, data, n, loss, accuracy.")
@click.option("--workers", type=click.IntRange(min=0), metavar="N", help=_WORKERS_HELP)
@click.option(
    "--cuda-graph",
    is_flag=True,
    help="Replay each batch shape from a CUDA graph instead of launching its kernels one by one "
    "(a CUDA device only; pays at small batches, where eager launches dominate).",
)
@pass_ctx
def evaluate(
    ctx: Context,
    artifact: str | None,
    data: str | None,
    split: str,
    device: str,
    as_json: bool,
    workers: int | None,
    cuda_graph: bool,
) -> None:
    """Loss and accuracy of ARTIFACT's trained network on a split of its dataset.

    ARTIFACT may be an exported MODEL.onnx: it runs in onnxruntime on the data the artifact's
    eval would use (the spec and normalisation are in the model's metadata; a relative data
    path is taken from the current folder; --data overrides).

    \b
    Examples:
      cnas-ir eval --split val --json
      cnas-ir eval cnas-run/004-train.onnx --device cpu
    """
    if artifact is not None and artifact.lower().endswith(".onnx"):
        from cnas_ir.backends.onnx.evaluate import evaluate_onnx

        if cuda_graph:
            raise InputError("--cuda-graph: a PyTorch option; an ONNX model runs in onnxruntime")

        path = Path(artifact)
        name, result, provider = evaluate_onnx(path, split, data=data, device=device, workers=workers)
        if as_json:
            echo_json({"artifact": str(path), "data": name, "split": split, **result, "provider": provider})
        else:
            click.echo(
                f"{path}: {split} accuracy {result['accuracy']:.2%}, loss {result['loss']:.4f} "
                f"({result['n']} images of {name}; onnxruntime {provider})"
            )
        return
    from cnas_ir.backends.pytorch.train import evaluate as evaluate_graph

    path, graph = load_artifact(ctx, artifact)
    if not graph.weights:
        raise InputError(f"{path}: has no weights to evaluate; train it first (`cnas-ir train`)")
    splits = _load_data(graph, data, workers, same_classes=True)
    result = evaluate_graph(graph, split, data=splits, device=device, cuda_graph=cuda_graph)
    if as_json:
        echo_json({"artifact": str(path), "data": splits.name, "split": split, **result})
    else:
        click.echo(
            f"{path}: {split} accuracy {result['accuracy']:.2%}, loss {result['loss']:.4f} "
            f"({result['n']} images of {splits.name})"
        )


@click.command()
@click.argument("artifact", required=False)
@click.option(
    "--rho",
    type=click.FloatRange(0, 1, min_open=True),
    callback=_not_nan,
    help="Budget: cell cost / one-shot cell cost, in the unit of --budget [default: the spec's search.rho].",
)
@click.option(
    "--budget",
    type=click.Choice(["params", "macs"]),
    help="What rho is a fraction of: the cells' parameters (the paper's) or their multiply-adds per image "
    "at the spec's input size [default: search.budget, params].",
)
@click.option(
    "--gamma",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    callback=_not_nan,
    help="Fraction of the remaining x vertices removed per iteration [default: search.gamma].",
)
@click.option(
    "--criterion",
    type=click.Choice(["taylor", "random", "weight"]),
    help="Saliency: Taylor (x * dL/dx), random (the paper's baseline) or weight L1 [default: search.criterion].",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=0,
    show_default=True,
    help="Seed of random scores and fine-tuning.",
)
@click.option(
    "--finetune-epochs",
    type=click.IntRange(min=0),
    help="Epochs of fine-tuning between iterations [default: search.finetune_epochs].",
)
@click.option(
    "--saliency-batches",
    type=click.IntRange(min=1),
    help="Minibatches m of Algorithm 1 [default: search.saliency_batches].",
)
@click.option("--data", metavar="NAME[:PATH]", help=DATA_HELP)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the artifact here, not in the run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats of the pruned graph as JSON on stdout.")
@click.option("--nproc", type=click.IntRange(min=1), metavar="N", help=_NPROC_HELP)
@click.option("--amp", type=click.Choice(["off", "bf16"]), default="off", show_default=True, help=_AMP_HELP)
@_layout_option
@click.option("--workers", type=click.IntRange(min=0), metavar="N", help=_WORKERS_HELP)
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@pass_ctx
def prune(
    ctx: Context, artifact: str | None, rho: float | None, budget: str | None, gamma: float | None,
    criterion: str | None, seed: int, finetune_epochs: int | None, saliency_batches: int | None, data: str | None,
    device: str, out: str | None, as_json: bool, nproc: int | None, amp: str, layout: str, old_channels_last: bool,
    workers: int | None, force: bool,
) -> None:  # fmt: skip
    """Search: prune ARTIFACT's x vertices, least salient first, until the cells fit rho.

    Each iteration scores every live x vertex, removes the fraction gamma of them with the
    lowest saliency (ranked globally across cells), folds away what died and fine-tunes. The
    last iteration is cost-aware, so the result lands on rho within one vertex's cost.
    With the taylor criterion an untrained artifact is first trained (the paper's step 1).
    Then `cnas-ir train` fine-tunes the result (CNAS-W) or `cnas-ir train --reinit`
    retrains it from scratch (CNAS-R). Under torchrun (or with --nproc N) training, fine-tuning
    and saliency run data-parallel, the scores summed over the processes.

    --budget macs makes rho a fraction of the cells' multiply-adds instead of their parameters:
    a kept x then costs its depthwise and pointwise multiply-adds at its op's output resolution,
    so channels of the early, large-resolution cells are dearer. `cnas-ir stats` shows both
    ratios (rho, rho_macs).

    \b
    Example: keep 46% of the one-shot cells' multiply-adds
      cnas-ir prune --rho 0.46 --budget macs --criterion random --finetune-epochs 0
    """
    from cnas_ir.backends.pytorch.search import SearchSettings, search
    from cnas_ir.passes.stats import compute_stats

    layout = "channels-last" if old_channels_last else layout

    if nproc is not None and nproc > 1:
        _prelaunch_checks(ctx, artifact, data, out, device, force, nproc)
        _torchrun(ctx, nproc)
        return
    check_out(out)
    src, graph = load_artifact(ctx, artifact)
    s = graph.spec.search
    settings = SearchSettings(
        rho=s.rho if rho is None else rho,
        budget=s.budget if budget is None else budget,
        gamma=s.gamma if gamma is None else gamma,
        criterion=s.criterion if criterion is None else criterion,
        seed=seed,
        finetune_epochs=s.finetune_epochs if finetune_epochs is None else finetune_epochs,
        saliency_batches=s.saliency_batches if saliency_batches is None else saliency_batches,
        device=device,
        amp=amp,
        channels_last=layout == "channels-last",
    )
    if settings.criterion == "taylor" or settings.finetune_epochs > 0:  # else no training step
        _check_memory(graph, device, force)
    # An image folder is loaded here so that it is normalised as the artifact was trained.
    folder = graph.spec.data.name == "folder" or workers is not None
    splits = _load_data(graph, data, workers) if data is not None or folder else None
    with _process_group(device) as rank0:
        pruned = search(graph, settings, data=splits, run=ctx.run, say=info, progress=sys.stderr.isatty())
    if not rank0:
        return
    stats = compute_stats(pruned)
    path = write_artifact(ctx, pruned, out, "prune")
    if as_json:
        echo_json(stats.to_json())
    macs = f", rho_macs {stats.rho_macs:.6f} ({stats.total.macs_live:,} cell multiply-adds)"
    info(
        f"pruned to rho {stats.rho:.6f}{macs if settings.budget == 'macs' else ''}: {stats.total.x_live:,} of "
        f"{stats.total.x:,} x vertices, {stats.total.params_live:,} cell params, {stats.model_params_live:,} model "
        f"params -> {path}"
    )
