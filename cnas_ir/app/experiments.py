"""The paper's experiments (CNAS §2.2, §3.1, §3.2, §3.4), driven by ``experiments/NAME.yaml``.

One YAML per experiment names its ``kind`` (fig2b, fig3, fig2a, densenet), the base spec, the
seeds, the epochs and the budget; a ``smoke`` section overrides any of these for the CI-sized
run. Every arm of an experiment uses the same recipe (the base spec's ``train`` section, the
same epochs, seeds and search settings); only what the experiment varies differs.

The protocol of an arm that searches: train the one-shot model (``epochs``, that seed), prune
it to the budget (``search`` section: criterion, gamma, fine-tuning between iterations), then
train the final sparse model from scratch (``final_epochs``, CNAS-R) and measure its test
error. A dense arm trains its network from scratch for ``final_epochs``. "Same parameter
count" is the whole model's (stem, cells, head): ``Stats.model_params_live``.

Each experiment writes ``NAME.json`` (settings and every measured number), ``NAME.png``
(matplotlib, Agg canvas, no pyplot) and ``NAME.md`` (a Markdown table) into the output folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

import cnas_ir
from cnas_ir.errors import InputError, RunFailure
from cnas_ir.format import atomic_write
from cnas_ir.ir import Graph
from cnas_ir.passes.fold import fold
from cnas_ir.passes.prune import min_feasible_rho, prune_to_rho
from cnas_ir.passes.stats import compute_stats
from cnas_ir.safeyaml import load_yaml
from cnas_ir.spec import SPEC_DEPTH

__all__ = [
    "EXPERIMENTS_DIR",
    "KINDS",
    "Experiment",
    "find_experiment",
    "load_experiment",
    "per_cell_random_saliency",
    "run_experiment",
]

# The experiment files: installed as the package cnas_ir.experiments, or experiments/ at the top
# of a checkout.
_PACKAGE = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = next(
    (d for d in (_PACKAGE / "experiments", _PACKAGE.parent / "experiments") if d.is_dir()), _PACKAGE / "experiments"
)
KINDS = ("fig2b", "fig3", "fig2a", "densenet")
# An experiment file nests: smoke -> arms -> arm -> spec -> section (see experiments/fig3.yaml).
EXPERIMENT_DEPTH = 6

Say = Callable[[str], None]


# ---- configuration ---------------------------------------------------------------------------


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, ``None`` removes the key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Experiment:
    """One experiment file, with ``smoke`` and ``--data`` already applied."""

    name: str
    kind: str
    config: dict[str, Any]  # the merged YAML
    spec: dict[str, Any]  # the base spec as a mapping, overrides applied
    path: Path

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.config.get("seeds", [0])]

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs", self.spec.get("train", {}).get("epochs", 15)))

    @property
    def final_epochs(self) -> int:
        return int(self.config.get("final_epochs", self.epochs))


def find_experiment(name: str) -> Path:
    """``NAME`` (a file ``experiments/NAME.yaml``) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in (Path.cwd() / "experiments", EXPERIMENTS_DIR):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
    raise InputError(f"experiment {name!r}: no experiments/{name}.yaml (known: {', '.join(known) or 'none'})")


def load_experiment(name: str, *, smoke: bool = False, data: str | None = None) -> Experiment:
    """Read ``experiments/NAME.yaml``; ``smoke`` merges its ``smoke`` section; ``data``
    (``NAME[:PATH]``, as ``--data``) replaces the dataset, with ``cifar10`` setting the input to
    3 x 32 x 32 and merging the file's ``cifar10`` section."""
    path = find_experiment(name)
    config = load_yaml(path, EXPERIMENT_DEPTH, "experiment file") or {}
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a mapping")
    kind = config.get("kind")
    if kind not in KINDS:
        raise InputError(f"{path}: kind {kind!r}: expected one of {', '.join(KINDS)}")
    if smoke:
        config = _merge(config, config.get("smoke") or {})
    base = config.get("base")
    if not base:
        raise InputError(f"{path}: 'base' (the base spec, a path relative to the repository) is required")
    base_path = Path(base) if Path(base).is_absolute() else path.parent.parent / base
    spec = load_yaml(base_path, SPEC_DEPTH, "spec file")
    spec = _merge(spec, config.get("spec") or {})
    if data is not None:
        from cnas_ir.backends.pytorch.data import parse_data_option

        dname, dpath = parse_data_option(data)
        spec["data"] = {"name": dname, "path": dpath, "seed": spec.get("data", {}).get("seed", 0)}
        if dname == "cifar10":
            spec["input"] = {"channels": 3, "size": 32}
            config = _merge(config, config.get("cifar10") or {})
            spec = _merge(spec, (config.get("cifar10") or {}).get("spec") or {})
    return Experiment(name=path.stem, kind=str(kind), config=config, spec=spec, path=path)


# ---- building blocks -------------------------------------------------------------------------


def _build(spec: dict[str, Any], **space: Any) -> Graph:
    """The one-shot graph of ``spec`` with the space section's keys replaced by ``space``."""
    key = spec.get("space", "nasnet")
    return cnas_ir.build(_merge(spec, {key: space}))


def _params(g: Graph) -> int:
    """Whole-model live parameters (stem, cells, head) of the folded graph."""
    return compute_stats(fold(g)).model_params_live


def _rho_for(g: Graph, target_params: int) -> float:
    """The cell budget rho that brings the whole model to ``target_params``: the stem and head
    stay, the cells shrink."""
    st = compute_stats(g)
    fixed = st.model_params - st.total.params
    rho = (target_params - fixed) / st.total.params
    floor = min_feasible_rho(g)
    if not floor <= rho <= 1.0:
        raise InputError(
            f"target of {target_params:,} parameters needs rho {rho:.4f} for a one-shot model of "
            f"{st.model_params:,}, outside [{floor:.4f}, 1]: choose another target"
        )
    return rho


def _target_for_rho(g: Graph, rho: float) -> int:
    """Whole-model parameters after pruning the cells of ``g`` to ``rho``."""
    st = compute_stats(g)
    return st.model_params - st.total.params + math.floor(rho * st.total.params)


def per_cell_random_saliency(g: Graph, seed: int = 0) -> Graph:
    """Random pruning with the same sparsity in every cell (CNAS §3.2's random baseline):
    uniform random scores ranked *within* each cell and replaced by their quantile
    (rank + 1) / n_cell, so the global ranking of :func:`prune_to_rho` removes the same fraction
    of x from every cell at each iteration -- similar topology everywhere.

    The cells' fixed preprocessing differs in share, so each cell lands near, not exactly on,
    rho; the total lands on rho as for any criterion."""
    rng = np.random.default_rng(seed)
    sal = np.full(g.num_vertices, np.nan, dtype=np.float32)
    live = np.flatnonzero(g.alive & (g.src >= 0))
    u = rng.random(live.size)
    cell = g.cell[g.vertex_group[live]]
    for c in np.unique(cell):
        m = cell == c
        rank = np.argsort(np.argsort(u[m], kind="stable"), kind="stable")
        sal[live[m]] = ((rank + 1) / m.sum()).astype(np.float32)
    return g.replace(saliency=sal)


@dataclass(frozen=True)
class _Job:
    """One independent run of an experiment: a :class:`_Runner` method (``cnas``,
    ``random_per_cell`` or ``dense``) on the one-shot graph of the experiment's spec with the
    space section's keys replaced by ``space``. Jobs share nothing, so they run in any order or
    in parallel processes and give the same numbers (each seeds its own training)."""

    method: str
    seed: int
    rho: float | None = None
    space: dict[str, Any] = field(default_factory=dict)
    label: str = ""


# Relative cost of a job: one-shot training + search + final training, or final training only.
_COST = {"cnas": 3, "random_per_cell": 1, "dense": 1}


# A worker process's runner, made once by _init_worker, so its data set is loaded once.
_WORKER: _Runner | None = None


def _init_worker(threads: int, exp: Experiment, device: str) -> None:
    import signal

    import torch

    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    torch.set_num_threads(threads)
    _WORKER = _Runner(exp, device, lambda _: None)


def _run_job(job: _Job) -> dict[str, Any]:
    assert _WORKER is not None, "_run_job runs in a worker started with _init_worker"
    return _WORKER.job(job)


class _Runner:
    """Training, search and evaluation with one experiment's shared settings; :meth:`run`
    executes a list of jobs in this process or in ``jobs`` worker processes."""

    def __init__(self, exp: Experiment, device: str, say: Say, jobs: int = 1) -> None:
        self.exp, self.device, self.say, self.jobs = exp, device, say, jobs
        self._data: Any = None

    def job(self, job: _Job) -> dict[str, Any]:
        """One job's result row, on the one-shot graph of the spec with ``job.space`` applied."""
        g = _build(self.exp.spec, **job.space) if job.space else cnas_ir.build(self.exp.spec)
        if job.method == "dense":
            return self.dense(g, job.seed)
        assert job.rho is not None, job
        return getattr(self, job.method)(g, job.rho, job.seed)

    def run(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """The results of ``jobs``, in their order; progress goes to ``say`` as each finishes."""
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        t0 = time.perf_counter()

        def done(i: int, row: dict[str, Any]) -> None:
            results[i] = row
            n, job = sum(x is not None for x in results), jobs[i]
            self.say(f"[{n}/{len(jobs)}] {job.label or job.method} seed {job.seed}: test error {row['error']:.2%} "
                     f"({row['seconds']:.0f} s; {time.perf_counter() - t0:.0f} s so far)")  # fmt: skip

        if self.jobs <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                done(i, self.job(job))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            workers = min(self.jobs, len(jobs))
            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
            before = set(multiprocessing.active_children())
            pool = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, self.exp, self.device)
            )
            try:
                # Longest first (a search trains twice), so no long job starts last and runs alone.
                order = sorted(range(len(jobs)), key=lambda i: _COST.get(jobs[i].method, 0), reverse=True)
                futures = {pool.submit(_run_job, jobs[i]): i for i in order}
                for fut in as_completed(futures):
                    done(futures[fut], fut.result())
            except BaseException:
                # Ctrl-C or a failed job: stop now. Leaving the pool's context would run every
                # queued job first (minutes each); there is no public terminate before 3.14.
                # The pool's workers are this process's children that were not there before it
                # (terminating those in the pool's private process table, snapshotted here, once
                # left one alive in CI).
                pool.shutdown(wait=False, cancel_futures=True)  # no new job starts
                deadline = time.monotonic() + 30
                while left := [p for p in multiprocessing.active_children() if p not in before]:
                    if time.monotonic() > deadline:
                        break
                    for proc in left:
                        proc.terminate()
                    for proc in left:
                        proc.join(timeout=1)  # gone before the error reaches the caller
                raise
            pool.shutdown()
        return [row for row in results if row is not None]

    def data(self, g: Graph) -> Any:
        if self._data is None:
            from cnas_ir.backends.pytorch.data import load_dataset

            self._data = load_dataset(g.spec)
        return self._data

    def error(self, g: Graph) -> float:
        from cnas_ir.backends.pytorch.train import evaluate

        return 1.0 - float(evaluate(g, "test", data=self.data(g), device=self.device)["accuracy"])

    def train(self, g: Graph, epochs: int, seed: int, reinit: bool = False) -> Graph:
        from cnas_ir.backends.pytorch.train import train

        return train(
            g, epochs=epochs, data=self.data(g), device=self.device, progress=False, seed=seed, reinit=reinit
        )  # fmt: skip

    def search(self, one_shot: Graph, rho: float, seed: int) -> Graph:
        from cnas_ir.backends.pytorch.search import SearchSettings, search

        s = one_shot.spec.search
        settings = SearchSettings(
            rho=rho, gamma=s.gamma, criterion=s.criterion, seed=seed, finetune_epochs=s.finetune_epochs,
            saliency_batches=s.saliency_batches, device=self.device,
        )  # fmt: skip
        return search(one_shot, settings, data=self.data(one_shot))

    def cnas(self, g: Graph, rho: float, seed: int) -> dict[str, Any]:
        """One-shot training, search to rho, final training from scratch (CNAS-R)."""
        t0 = time.perf_counter()
        one_shot = self.train(g, self.exp.epochs, seed)
        one_shot_error = self.error(one_shot)
        pruned = self.search(one_shot, rho, seed)
        final = self.train(pruned, self.exp.final_epochs, seed, reinit=True)
        return {
            "seed": seed,
            "one_shot_error": one_shot_error,
            "error": self.error(final),
            "params": _params(final),
            "rho": compute_stats(fold(final)).rho,
            "seconds": time.perf_counter() - t0,
        }

    def random_per_cell(self, g: Graph, rho: float, seed: int) -> dict[str, Any]:
        """Per-cell random pruning to rho, final training from scratch. Random scores do not
        depend on weights and the final model is re-initialised, so the one-shot model is not
        trained first (its weights would be thrown away)."""
        t0 = time.perf_counter()
        gamma = g.spec.search.gamma
        calls = {"n": 0}

        def score(h: Graph) -> Graph:
            calls["n"] += 1
            return per_cell_random_saliency(h, seed=seed * 100_003 + calls["n"])

        pruned = prune_to_rho(g, rho, gamma=gamma, score=score, criterion="random-per-cell")
        final = self.train(pruned, self.exp.final_epochs, seed, reinit=True)
        return {
            "seed": seed,
            "error": self.error(final),
            "params": _params(final),
            "rho": compute_stats(fold(final)).rho,
            "seconds": time.perf_counter() - t0,
        }

    def dense(self, g: Graph, seed: int) -> dict[str, Any]:
        """A dense network (no pruning) trained from scratch for ``final_epochs``."""
        t0 = time.perf_counter()
        final = self.train(g, self.exp.final_epochs, seed)
        return {"seed": seed, "error": self.error(final), "params": _params(final), "seconds": time.perf_counter() - t0}


def _closest(spec: dict[str, Any], key: str, upper: int, target: int) -> tuple[int, Graph]:
    """The value 1..upper of ``spec[space][key]`` whose one-shot model has the parameter count
    closest to ``target`` (ties: the larger value)."""
    space = spec.get("space", "nasnet")
    best: tuple[int, int, Graph] | None = None
    for v in range(1, upper + 1):
        g = _build(spec, **{key: v})
        gap = abs(compute_stats(g).model_params - target)
        if best is None or gap <= best[0]:
            best = (gap, v, g)
    assert best is not None, f"{space}.{key}: no value below {upper}"
    return best[1], best[2]


def _budget_and_dense(exp: Experiment, key: str) -> tuple[float, int, int, Graph]:
    """The pruned arms' budget and the dense arm matching it: (rho, whole-model parameter
    target of the spec pruned to rho, the width ``key`` (1..the spec's) whose dense model is
    closest to that target, that dense graph)."""
    rho = float(exp.config["rho"])
    space = exp.spec.get("space", "nasnet")
    target = _target_for_rho(cnas_ir.build(exp.spec), rho)
    value, dense = _closest(exp.spec, key, int(exp.spec[space][key]), target)
    return rho, target, value, dense


def _summary(rows: list[dict[str, Any]], key: str = "error") -> dict[str, float]:
    vals = [float(r[key]) for r in rows]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.mean(vals), "sd": sd, "n": len(vals)}


def _arm(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm (or one point of a sweep): its runs and their error and parameter summaries."""
    return {"runs": rows, "error": _summary(rows), "params": _summary(rows, "params")}


def _pct(m: dict[str, float]) -> str:
    return f"{m['mean']:.2%} ± {m['sd']:.2%}"


# ---- the experiments -------------------------------------------------------------------------


def _fig2b(exp: Experiment, r: _Runner) -> dict[str, Any]:
    """§3.2 / Figure 2(b): no-pruning vs per-cell random pruning vs CNAS at equal parameters."""
    rho, target, width, small = _budget_and_dense(exp, "channels")
    r.say(f"target {target:,} parameters (rho {rho}); no-prune: channels {width} ({_params(small):,} parameters)")
    plan = {
        "no-prune": [_Job("dense", s, space={"channels": width}, label="no-prune") for s in exp.seeds],
        "random-per-cell": [_Job("random_per_cell", s, rho, label="random per cell") for s in exp.seeds],
        "cnas": [_Job("cnas", s, rho, label="cnas") for s in exp.seeds],
    }
    return {
        "target_params": target,
        "rho": rho,
        "no_prune_channels": width,
        "arms": {a: _arm(rows) for a, rows in _run_plan(r, plan).items()},
    }


def _run_plan(r: _Runner, plan: dict[str, list[_Job]]) -> dict[str, list[dict[str, Any]]]:
    """Run every job of every arm in one pool (so the workers stay busy across arms); each
    arm's rows in its jobs' order."""
    flat = [job for jobs in plan.values() for job in jobs]
    rows = iter(r.run(flat))
    return {arm: [next(rows) for _ in jobs] for arm, jobs in plan.items()}


def _fig3(exp: Experiment, r: _Runner) -> dict[str, Any]:
    """§3.1 / Figure 3: vary nodes_per_cell, then ops_per_node, at a fixed final parameter count."""
    plan: dict[str, list[_Job]] = {}
    meta = []
    for panel in exp.config["panels"]:
        key, target = str(panel["vary"]), int(panel["target_params"])
        for value in panel["values"]:
            g = _build(exp.spec, **{key: int(value)})
            rho = _rho_for(g, target)
            r.say(f"{key} = {value}: one-shot {compute_stats(g).model_params:,} parameters, rho {rho:.4f}")
            label = f"{key}={value}"
            plan[label] = [_Job("cnas", s, rho, {key: int(value)}, label) for s in exp.seeds]
            meta.append((key, target, int(value), rho, label))
    rows = _run_plan(r, plan)
    panels: list[dict[str, Any]] = []
    for key, target, value, rho, label in meta:
        if not panels or panels[-1]["vary"] != key or panels[-1]["target_params"] != target:
            panels.append({"vary": key, "target_params": target, "points": []})
        panels[-1]["points"].append({"value": value, "rho": rho, **_arm(rows[label])})
        r.say(f"{label}: test error {_pct(panels[-1]['points'][-1]['error'])}")
    return {"panels": panels}


def _pearson(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _fig2a(exp: Experiment, r: _Runner) -> dict[str, Any]:
    """§2.2 / Figure 2(a): one-shot vs final sparse test error over one-shot seeds."""
    rho = float(exp.config["rho"])
    runs = r.run([_Job("cnas", s, rho, label="one-shot + search") for s in exp.seeds])
    one, fin = [x["one_shot_error"] for x in runs], [x["error"] for x in runs]
    pairs = list(combinations(range(len(runs)), 2))
    d_one = [one[i] - one[j] for i, j in pairs]
    d_fin = [fin[i] - fin[j] for i, j in pairs]
    return {
        "rho": rho,
        "runs": runs,
        "pearson_r": _pearson(one, fin),  # over the models, as the paper's scatter
        "pearson_r_differences": _pearson(d_one, d_fin),  # over all pairs of models
        "pairs": len(pairs),
    }


def _densenet(exp: Experiment, r: _Runner) -> dict[str, Any]:
    """§3.4: CNAS-R in the DenseNet-BC space vs a dense DenseNet-BC of equal parameters (the
    dense one's growth rate chosen for the closest parameter count)."""
    rho, target, k, small = _budget_and_dense(exp, "growth_rate")
    r.say(f"target {target:,} parameters (rho {rho}); dense DenseNet-BC: growth rate {k} ({_params(small):,})")
    plan = {
        "densenet-bc": [_Job("dense", s, space={"growth_rate": k}, label="densenet-bc") for s in exp.seeds],
        "cnas-r": [_Job("cnas", s, rho, label="cnas-r") for s in exp.seeds],
    }
    return {
        "target_params": target,
        "rho": rho,
        "dense_growth_rate": k,
        "arms": {a: _arm(rows) for a, rows in _run_plan(r, plan).items()},
    }


_RUNNERS: dict[str, Callable[[Experiment, _Runner], dict[str, Any]]] = {
    "fig2b": _fig2b,
    "fig3": _fig3,
    "fig2a": _fig2a,
    "densenet": _densenet,
}


# ---- outputs ---------------------------------------------------------------------------------


def _markdown(kind: str, res: dict[str, Any]) -> str:
    if kind in ("fig2b", "densenet"):
        lines = ["| arm | test error (mean ± sd) | parameters | seeds |", "|---|---|---|---|"]
        for arm, a in res["arms"].items():
            lines.append(f"| {arm} | {_pct(a['error'])} | {a['params']['mean']:,.0f} | {a['error']['n']} |")
        return "\n".join(lines)
    if kind == "fig3":
        out = []
        for p in res["panels"]:
            out += [f"Varying {p['vary']} at {p['target_params']:,} parameters:", "",
                    f"| {p['vary']} | rho | test error (mean ± sd) | parameters |", "|---|---|---|---|"]  # fmt: skip
            for pt in p["points"]:
                out.append(f"| {pt['value']} | {pt['rho']:.4f} | {_pct(pt['error'])} | {pt['params']['mean']:,.0f} |")
            out.append("")
        return "\n".join(out).rstrip()
    lines = ["| seed | one-shot test error | final test error | parameters |", "|---|---|---|---|"]
    for x in res["runs"]:
        lines.append(f"| {x['seed']} | {x['one_shot_error']:.2%} | {x['error']:.2%} | {x['params']:,} |")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines += ["", f"Pearson r (one-shot vs final error, {len(res['runs'])} models): {fmt(res['pearson_r'])}",
              f"Pearson r (differences, {res['pairs']} pairs): {fmt(res['pearson_r_differences'])}"]  # fmt: skip
    return "\n".join(lines)


def _plot(kind: str, res: dict[str, Any], title: str) -> bytes:
    """The experiment's figure as PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if kind == "fig3":
        fig = Figure(figsize=(4 * len(res["panels"]), 3.2))
        for i, p in enumerate(res["panels"]):
            ax = fig.add_subplot(1, len(res["panels"]), i + 1)
            xs = [pt["value"] for pt in p["points"]]
            ax.errorbar(xs, [100 * pt["error"]["mean"] for pt in p["points"]],
                        yerr=[100 * pt["error"]["sd"] for pt in p["points"]], marker="o", capsize=3)  # fmt: skip
            ax.set_xlabel(p["vary"])
            ax.set_ylabel("test error (%)")
            ax.set_xticks(xs)
            ax.set_title(f"{p['target_params']:,} parameters", fontsize=9)
    elif kind == "fig2a":
        fig = Figure(figsize=(4, 3.6))
        ax = fig.add_subplot(1, 1, 1)
        ax.scatter([100 * x["one_shot_error"] for x in res["runs"]], [100 * x["error"] for x in res["runs"]])
        ax.set_xlabel("one-shot model test error (%)")
        ax.set_ylabel("final sparse model test error (%)")
        rr = res["pearson_r"]
        ax.set_title("r = n/a" if rr is None else f"r = {rr:.3f}", fontsize=9)
    else:
        fig = Figure(figsize=(4, 3.2))
        ax = fig.add_subplot(1, 1, 1)
        names = list(res["arms"])
        ax.bar(names, [100 * res["arms"][a]["error"]["mean"] for a in names],
               yerr=[100 * res["arms"][a]["error"]["sd"] for a in names], capsize=4, color="#4c72b0")  # fmt: skip
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{res['target_params']:,} parameters", fontsize=9)
    fig.suptitle(textwrap.fill(title, 12 * int(fig.get_figwidth())), fontsize=10)  # fits the figure
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def run_experiment(
    name: str,
    *,
    out: Path,
    smoke: bool = False,
    data: str | None = None,
    device: str = "cpu",
    jobs: int = 1,
    say: Say = lambda _: None,
) -> dict[str, Path]:
    """Run experiment ``name``; write ``NAME.json``, ``NAME.png`` and ``NAME.md`` into ``out``.

    ``jobs`` > 1 runs the independent (arm, seed) runs in that many worker processes: the
    numbers are the same, the wall time shorter where cores are idle (a digits run uses one).
    Returns the paths written. Raises :class:`InputError` for a bad experiment file or budget,
    :class:`RunFailure` when ``out`` cannot be made or written (each file is written whole or
    not at all: :func:`~cnas_ir.format.atomic_write`).
    """
    import torch

    exp = load_experiment(name, smoke=smoke, data=data)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFailure(f"{out}: cannot create the results folder ({e.strerror or e})") from None
    t0 = time.perf_counter()
    say(f"experiment {exp.name} ({exp.kind}{', smoke' if smoke else ''}): seeds {exp.seeds}, "
        f"{exp.epochs} one-shot / {exp.final_epochs} final epochs, {jobs} job(s)")  # fmt: skip
    results = _RUNNERS[exp.kind](exp, _Runner(exp, device, say, jobs))
    doc = {
        "experiment": exp.name,
        "kind": exp.kind,
        "smoke": smoke,
        "paper": exp.config.get("paper", ""),
        "seeds": exp.seeds,
        "epochs": exp.epochs,
        "final_epochs": exp.final_epochs,
        "spec": exp.spec,
        "device": device,
        "jobs": jobs,
        "torch": torch.__version__,
        "seconds": time.perf_counter() - t0,
        "results": results,
    }
    title = str(exp.config.get("title", exp.name)) + (" (smoke)" if smoke else "")
    paths = {"json": out / f"{exp.name}.json", "png": out / f"{exp.name}.png", "md": out / f"{exp.name}.md"}
    table = _markdown(exp.kind, results)
    contents = {
        "json": (json.dumps(doc, indent=1) + "\n").encode(),
        "png": _plot(exp.kind, results, title),
        "md": f"# {title}\n\n{exp.config.get('paper', '').strip()}\n\n{table}\n".encode(),
    }
    for key, path in paths.items():  # rendered first, so a rendering error writes nothing
        atomic_write(path, contents[key])
    say(table)
    say(f"{exp.name}: {doc['seconds']:.0f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return paths
