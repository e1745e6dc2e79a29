"""``cnas-ir report``: one self-contained HTML page that makes a search visible.

Sections (each an element with a fixed id, in this order):

- ``summary``    -- the run directory, its artifacts and what the newest one went through
- ``table1``     -- the paper's Table 1 for the newest artifact (an HTML table)
- ``kept``       -- bar chart: kept input fraction |X*|/|X| per cell
- ``edges``      -- grouped bars: |d->x| versus |z->x| per cell (the paper's §2.3 argument)
- ``trajectory`` -- rho and validation accuracy per pruning iteration
- ``training``   -- loss, accuracy and learning rate per epoch, from ``metrics.jsonl``
- ``cells``      -- node-level drawings of the first cell, a reduction cell and the last cell

Images are PNGs embedded as base64 ``data:`` URIs and the style sheet is inline: the page
opens offline, with no external resource and no script. A section without data (no training
yet, no pruning yet, no artifact) says so instead of failing.

The pruning trajectory comes from the newest artifact's history: iteration i's prune event
gives rho and |X*|; the fine-tuning that follows it (a train event before the next prune event)
gives the validation accuracy after the iteration; the last train event before the first
prune event gives iteration 0. Without prune events in the history it falls back to the
``prune`` lines of ``metrics.jsonl``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnas_ir import __version__
from cnas_ir.errors import InputError
from cnas_ir.rundir import RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnas_ir.ir import Graph
    from cnas_ir.passes.stats import Stats

__all__ = ["SECTIONS", "TrajectoryPoint", "build_report", "pruning_trajectory", "read_metrics", "write_report"]

SECTIONS = ("summary", "table1", "kept", "edges", "trajectory", "training", "cells")

_KIND_COLOR = {"normal": "#1f6fb4", "reduction": "#e8710a", "dense": "#2e8b57"}
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
section { margin-bottom: 2em; } .note { color: #666; font-style: italic; } .small { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; } th { background: #f2f2f2; }
tr.reduction td { background: #fff4e8; } tr.total td { font-weight: bold; background: #f7f7f7; }
td.kind { text-align: left; } img { max-width: 100%; height: auto; }
.wide { overflow-x: auto; } .wide img { max-width: none; } code { background: #f4f4f4; padding: 0 3px; }
"""


# ---- data --------------------------------------------------------------------------------------


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON-object lines of ``metrics.jsonl`` (empty if there is none) and how many lines
    were not JSON objects (a crash can leave a half-written last line: skipped, counted)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


@dataclass
class TrajectoryPoint:
    """The network after pruning iteration ``iteration`` (0: before pruning)."""

    iteration: int
    rho: float
    x_live: int | None
    val_acc: float | None  # after the fine-tuning that followed the iteration


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _last_run(events: Sequence[dict[str, Any]], key: str) -> int:
    """Index in ``events`` where the last pruning run starts (its iteration 1)."""
    starts = [i for i, e in enumerate(events) if e.get(key) == "prune" and e.get("iteration") == 1]
    return starts[-1] if starts else 0


def pruning_trajectory(
    history: Sequence[dict[str, Any]], metrics: Sequence[dict[str, Any]] = ()
) -> list[TrajectoryPoint]:
    """Points of the last pruning run, iteration 0 (before pruning) first; empty without one.

    From the history when it has prune events, else from the ``prune`` lines of ``metrics``.
    """
    events = [e for e in history if isinstance(e, dict) and e.get("pass") in ("train", "prune")]
    if not any(e["pass"] == "prune" for e in events):
        return _trajectory_from_metrics(metrics)
    start = _last_run(events, "pass")
    earlier, run = events[:start], events[start:]
    rho0 = next((_num(e.get("rho")) for e in reversed(earlier) if e["pass"] == "prune"), None)
    val0 = next((_num(e.get("val_acc")) for e in reversed(earlier) if e["pass"] == "train"), None)
    points = [TrajectoryPoint(0, 1.0 if rho0 is None else rho0, _x_before(run[0]), val0)]
    prunes = [i for i, e in enumerate(run) if e["pass"] == "prune"]
    for i, nxt in zip(prunes, prunes[1:] + [None], strict=True):
        # The fine-tuning of iteration i is the training before the next prune event; after
        # the last iteration there is none (a later train event is a retraining).
        tuned = [e for e in run[i + 1 : nxt] if e["pass"] == "train"] if nxt is not None else []
        e = run[i]
        val = _num(tuned[-1].get("val_acc")) if tuned else None
        points.append(TrajectoryPoint(_int(e.get("iteration")) or len(points), _num(e.get("rho")) or 0.0,
                                      _int(e.get("x_live")), val))  # fmt: skip
    return points


def _x_before(first: dict[str, Any]) -> int | None:
    """|X*| before iteration 1: what it left plus what it removed."""
    x, removed = _int(first.get("x_live")), _int(first.get("removed"))
    return x + removed if x is not None and removed is not None else None


def _train_runs(recs: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive train records split into training runs: a run restarts at epoch 1."""
    runs: list[list[dict[str, Any]]] = []
    for m in recs:
        epoch = _num(m.get("epoch")) or 0
        if not runs or epoch <= (_num(runs[-1][-1].get("epoch")) or 0):
            runs.append([m])
        else:
            runs[-1].append(m)
    return runs


def _trajectory_from_metrics(metrics: Sequence[dict[str, Any]]) -> list[TrajectoryPoint]:
    recs = [m for m in metrics if m.get("cmd") in ("train", "prune")]
    if not any(m["cmd"] == "prune" for m in recs):
        return []
    start = _last_run(recs, "cmd")
    # A prune line is logged after its iteration's fine-tuning: the training lines just before
    # prune line i belong to iteration i. Before line 1 that is the last of two or more runs
    # (the one before it trained the one-shot network).
    k = max((i for i, m in enumerate(recs[:start]) if m["cmd"] == "prune"), default=-1)
    before = _train_runs([m for m in recs[k + 1 : start] if m["cmd"] == "train"])
    tuned1 = before.pop() if len(before) >= 2 else None
    val0 = _num(before[-1][-1].get("val_acc")) if before else None
    rho0 = _num(recs[k].get("rho")) if k >= 0 else None  # a second run starts where the first ended
    points = [TrajectoryPoint(0, 1.0 if rho0 is None else rho0, _x_before(recs[start]), val0)]
    trains: list[dict[str, Any]] = tuned1 or []
    for m in recs[start:]:
        if m["cmd"] == "train":
            trains.append(m)
            continue
        val = _num(trains[-1].get("val_acc")) if trains else None
        points.append(TrajectoryPoint(_int(m.get("iteration")) or len(points), _num(m.get("rho")) or 0.0,
                                      _int(m.get("x_live")), val))  # fmt: skip
        trains = []
    return points


# ---- figures -----------------------------------------------------------------------------------


def _figure(w: float, h: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, explicitly: no display, no pyplot state
    return fig


def _img(fig: Figure, alt: str, dpi: int = 100, wide: bool = False) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    return _img_bytes(buf.getvalue(), alt, wide)


def _img_bytes(png: bytes, alt: str, wide: bool = False) -> str:
    data = base64.b64encode(png).decode("ascii")
    tag = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    return f'<div class="wide">{tag}</div>' if wide else tag


def _cell_axis(ax: Any, stats: Stats) -> None:
    idx = [c.index for c in stats.cells]
    ax.set_xticks(idx, [str(i) for i in idx], fontsize=8)
    ax.set_xlim(min(idx) - 0.7, max(idx) + 0.7)
    ax.set_xlabel("cell")


def _kept_chart(stats: Stats) -> str:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = _figure(9, 3.4)
    ax = fig.add_subplot()
    cells = stats.cells
    frac = [c.x_live / c.x if c.x else 1.0 for c in cells]
    ax.bar([c.index for c in cells], frac, color=[_KIND_COLOR.get(c.kind, "#777") for c in cells], width=0.7)
    for c, f in zip(cells, frac, strict=True):
        ax.text(c.index, f + 0.015, f"{f:.0%}", ha="center", va="bottom", fontsize=7)
    total = stats.total.x_live / stats.total.x if stats.total.x else 1.0
    ax.axhline(total, color="#444", ls="--", lw=1)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("|X*| / |X|")
    _cell_axis(ax, stats)
    kinds = sorted({c.kind for c in cells}, key=list(_KIND_COLOR).index)
    handles = [Patch(color=_KIND_COLOR[k], label=f"{k} cell") for k in kinds]
    handles.append(Line2D([], [], color="#444", ls="--", lw=1, label=f"all cells: {total:.1%}"))
    ax.legend(handles=handles, fontsize=8, loc="upper right", ncol=len(handles), frameon=False)
    ax.set_title(f"Kept input fraction per cell (rho = {stats.rho:.4f})", fontsize=10)
    return _img(fig, "kept input fraction per cell")


def _edges_chart(stats: Stats) -> str:
    fig = _figure(9, 3.4)
    ax = fig.add_subplot()
    idx = [c.index for c in stats.cells]
    ax.bar([i - 0.2 for i in idx], [c.d_to_x for c in stats.cells], width=0.4, color="#1f6fb4", label="|d->x|")
    ax.bar([i + 0.2 for i in idx], [c.z_to_x for c in stats.cells], width=0.4, color="#e8710a", label="|z->x|")
    ax.set_ylabel("live x vertices")
    _cell_axis(ax, stats)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("|d->x| versus |z->x| per cell: copies of the cell inputs vs. of earlier nodes", fontsize=10)
    return _img(fig, "d->x versus z->x per cell")


def _trajectory_chart(points: list[TrajectoryPoint], target: float | None) -> str:
    fig = _figure(9, 3.4)
    ax = fig.add_subplot()
    its = [p.iteration for p in points]
    ax.plot(its, [p.rho for p in points], "o-", color="#1f6fb4", label="rho (cell params / one-shot)")
    if target is not None:
        ax.axhline(target, color="#1f6fb4", ls=":", lw=1, label=f"target rho {target:g}")
    ax.set_xlabel("pruning iteration")
    ax.set_ylabel("rho", color="#1f6fb4")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(its if len(its) <= 30 else its[:: math.ceil(len(its) / 30)])
    handles, labels = ax.get_legend_handles_labels()
    acc = [(p.iteration, p.val_acc) for p in points if p.val_acc is not None]
    if acc:
        ax2 = ax.twinx()
        ax2.plot(
            [a for a, _ in acc], [b for _, b in acc], "s-", color="#c0392b", label="val accuracy after fine-tuning"
        )
        ax2.set_ylabel("validation accuracy", color="#c0392b")
        ax2.set_ylim(0, 1.05)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="lower left", frameon=False)
    ax.set_title("Pruning trajectory", fontsize=10)
    return _img(fig, "pruning trajectory: rho and validation accuracy per iteration")


def _train_segments(metrics: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Training runs in file order, each as (phase, records): "train", "fine-tune" (between
    pruning iterations) or "retrain" (after the last pruning iteration)."""
    blocks: list[tuple[list[dict[str, Any]], dict[str, Any] | None]] = []  # (train lines, next prune line)
    lines: list[dict[str, Any]] = []
    for m in metrics:
        if m.get("cmd") == "prune":
            blocks.append((lines, m))
            lines = []
        elif m.get("cmd") == "train" and _num(m.get("epoch")) is not None:
            lines.append(m)
    blocks.append((lines, None))
    out: list[tuple[str, list[dict[str, Any]]]] = []
    pruned = len(blocks) > 1
    for recs, nxt in blocks:
        runs = _train_runs(recs)
        if nxt is None:
            out += [("retrain" if pruned else "train", r) for r in runs]
        elif nxt.get("iteration") != 1:
            out += [("fine-tune", r) for r in runs]
        else:  # before a run's first prune line: training, then maybe iteration 1's fine-tuning
            phases = ["train"] * len(runs)
            if len(runs) >= 2:
                phases[-1] = "fine-tune"
            out += list(zip(phases, runs, strict=True))
    return out


def _training_chart(metrics: Sequence[dict[str, Any]]) -> tuple[str, str]:
    segments = _train_segments(metrics)
    fig = _figure(10, 5.6)
    axes = fig.subplots(3, 1, sharex=True, height_ratios=(3, 3, 1.4))
    n = 0
    spans: list[tuple[str, int, int]] = []  # (phase, first epoch, last epoch), neighbours merged
    for phase, recs in segments:
        if spans and spans[-1][0] == phase != "train":
            spans[-1] = (phase, spans[-1][1], n + len(recs))
        else:
            spans.append((phase, n + 1, n + len(recs)))
        n += len(recs)
    xs = list(range(1, n + 1))
    recs = [r for _, rs in segments for r in rs]

    def col(key: str) -> list[float]:
        return [v if (v := _num(r.get(key))) is not None else math.nan for r in recs]

    axes[0].plot(xs, col("train_loss"), label="train loss", color="#1f6fb4")
    axes[0].plot(xs, col("val_loss"), label="val loss", color="#c0392b")
    axes[1].plot(xs, col("train_acc"), label="train accuracy", color="#1f6fb4")
    axes[1].plot(xs, col("val_acc"), label="val accuracy", color="#c0392b")
    axes[2].plot(xs, col("lr"), color="#555", label="learning rate")
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("accuracy")
    axes[1].set_ylim(0, 1.02)
    axes[2].set_ylabel("lr")
    axes[2].set_xlabel("epoch (all training runs of the run directory, in order)")
    shade = {"fine-tune": "#fde3c8", "retrain": "#d9efd5"}
    for phase, lo, hi in spans:
        for ax in axes:
            if phase in shade:
                ax.axvspan(lo - 0.5, hi + 0.5, color=shade[phase], lw=0, zorder=0)
            elif lo > 1:
                ax.axvline(lo - 0.5, color="#999", lw=0.8, ls=":")
    from matplotlib.patches import Patch

    phases_shown = [p for p in shade if any(sp[0] == p for sp in spans)]
    extra = [Patch(color=shade[p], label=p) for p in phases_shown]
    for i, ax in enumerate(axes):
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + (extra if i == 0 else []), fontsize=8, frameon=False, loc="best")
    phases = [p for p, _ in segments]
    legend = ", ".join(f"{phases.count(p)} {p} run{'s' if phases.count(p) > 1 else ''}" for p in dict.fromkeys(phases))
    fig.suptitle(f"Training curves: {n} epochs in {legend}", fontsize=10)
    note = (
        "Shaded orange: fine-tuning between pruning iterations; green: training after pruning "
        "(CNAS-W/CNAS-R); dotted lines: a new training run."
    )
    return _img(fig, "training curves"), note


def _stats_table(stats: Stats) -> str:
    from cnas_ir.passes.stats import _COLUMNS, _cells_of

    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in _COLUMNS)
    rows = []
    for r in (*stats.cells, stats.total):
        cells = _cells_of(r)
        tds = "".join(
            f'<td class="kind">{html.escape(v)}</td>' if key == "kind" else f"<td>{html.escape(v)}</td>"
            for v, (_, key) in zip(cells, _COLUMNS, strict=True)
        )
        rows.append(f'<tr class="{html.escape(r.kind)}">{tds}</tr>')
    foot = (
        f"rho = {stats.rho:.6f} (cell parameters live / one-shot); model parameters "
        f"{stats.model_params_live:,} of {stats.model_params:,}; multiply-adds per image "
        f"{stats.macs_live:,} of {stats.macs:,}; channel edges {stats.edges_live:,} of {stats.edges:,}"
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table><p>{html.escape(foot)}</p>"


# ---- page --------------------------------------------------------------------------------------


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _history_summary(events: Sequence[dict[str, Any]]) -> list[str]:
    """One line per build, training and pruning run of the history, in order; the fine-tuning
    steps of a pruning run (train events between two of its iterations) go into its line."""
    prunes = [i for i, e in enumerate(events) if e.get("pass") == "prune"]
    items: list[str] = []
    run: list[dict[str, Any]] = []  # prune events of the current run
    tuned: list[dict[str, Any]] = []  # its fine-tuning train events

    def close() -> None:
        if run:
            last = run[-1]
            line = (f"prune ({last.get('criterion') or '?'} criterion, gamma {last.get('gamma')}): "
                    f"{len(run)} iterations down to rho {_num(last.get('rho')) or 0:.4f}, "
                    f"{_int(last.get('x_live')) or 0:,} x vertices live")  # fmt: skip
            if tuned:
                accs = [v for e in tuned if (v := _num(e.get("val_acc"))) is not None]
                line += f"; {len(tuned)} fine-tuning steps" + (
                    f", val acc {accs[0]:.2%} -> {accs[-1]:.2%}" if accs else ""
                )
            items.append(line)
            run.clear()
            tuned.clear()

    for i, e in enumerate(events):
        p = e.get("pass", "?")
        if p == "prune":
            if e.get("iteration") == 1:
                close()
            run.append(e)
        elif p == "train":
            nxt = next((events[k] for k in prunes if k > i), None)
            if run and nxt is not None and nxt.get("iteration") != 1:
                tuned.append(e)
                continue
            close()
            items.append(
                f"train {e.get('epochs')} epochs on {e.get('data')}"
                + (" (re-initialised)" if e.get("reinit") else "")
                + (f": val acc {v:.2%}" if (v := _num(e.get("val_acc"))) is not None else "")
                + (f", test acc {v:.2%}" if (v := _num(e.get("test_acc"))) is not None else "")
            )
        elif p == "build":
            items.append(f"build {e.get('name')} ({e.get('space')})")
        elif p == "transfer":
            close()
            fresh = e.get("initialised")
            items.append(
                f"transfer the cells of {e.get('from')} into {e.get('to')}"
                + (f": weights kept but for {', '.join(map(str, fresh))}" if isinstance(fresh, list) else "")
            )
        elif p != "fold":  # folds are part of every pruning step
            close()
            items.append(str(p))
    close()
    return items


def _cells_to_draw(graph: Graph) -> tuple[list[tuple[str, int]], str | None]:
    cells = graph.cells
    picks = [("first cell", cells[0].index)]
    reduction = next((c.index for c in cells if c.kind == "reduction"), None)
    note = None
    if reduction is not None:
        picks.append(("a reduction cell", reduction))
    else:
        note = f"This {graph.spec.space} space has no reduction cells."
    if cells[-1].index not in [i for _, i in picks]:
        picks.append(("last cell", cells[-1].index))
    return picks, note


def build_report(run_dir: str | Path, artifact: str | Path | None = None) -> str:
    """The HTML page for run directory ``run_dir`` (its newest artifact, or ``artifact``)."""
    from cnas_ir import load

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise InputError(f"{run.path}: no such run directory")
    arts = run.artifacts()
    art_path = Path(artifact) if artifact is not None else (arts[-1] if arts else None)
    metrics, bad_lines = read_metrics(run.metrics)
    if art_path is None and not metrics:
        raise InputError(f"{run.path}: no artifact and no metrics.jsonl to report on; run `cnas-ir build SPEC.yaml`")
    graph = load(art_path) if art_path is not None else None
    stats = None
    if graph is not None:
        from cnas_ir.passes.stats import compute_stats

        stats = compute_stats(graph)

    name = graph.spec.name if graph is not None else run.path.name
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>cnas-ir report: {html.escape(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>cnas-ir report: {html.escape(name)}</h1>",
        f'<p class="small">Generated by cnas-ir {html.escape(__version__)} from '
        f"<code>{html.escape(str(run.path))}</code>"
        + (f", newest artifact <code>{html.escape(art_path.name)}</code>" if art_path is not None else "")
        + ".</p>",
    ]

    # summary
    body = []
    if graph is not None and stats is not None and art_path is not None:
        body.append(
            f"<p>Spec <b>{html.escape(graph.spec.name)}</b> ({html.escape(graph.spec.space)} space), "
            f"{len(graph.cells)} cells; artifact <code>{html.escape(str(art_path))}</code>: "
            f"{stats.total.x_live:,} of {stats.total.x:,} x vertices live, rho = {stats.rho:.4f}, "
            f"{stats.model_params_live:,} model parameters.</p>"
        )
        items = "".join(f"<li>{html.escape(i)}</li>" for i in _history_summary(graph.history))
        body.append(f"<p>History of the artifact:</p><ul>{items}")
        body.append("</ul>")
    else:
        body.append(_note(f"No artifact in {run.path}: run `cnas-ir build SPEC.yaml` there."))
    if arts:
        body.append("<p>Artifacts: " + ", ".join(f"<code>{html.escape(a.name)}</code>" for a in arts) + "</p>")
    body.append(
        f"<p>metrics.jsonl: {len(metrics):,} records"
        + (f" ({bad_lines} unreadable lines skipped)" if bad_lines else "")
        + "</p>"
        if run.metrics.is_file()
        else _note("No metrics.jsonl in the run directory.")
    )
    parts.append(_section("summary", "Run", "\n".join(body)))

    # Table 1 and the per-cell charts
    if stats is not None:
        parts.append(_section("table1", "Table 1: one-shot and live network per cell", _stats_table(stats)))
        parts.append(_section("kept", "Kept input fraction per cell", _kept_chart(stats)))
        parts.append(
            _section(
                "edges",
                "|d->x| versus |z->x| per cell",
                _edges_chart(stats)
                + _note(
                    "Few z->x copies: the nodes of the cell work side by side ('horizontally'); "
                    "many: they feed each other ('vertically and horizontally'), paper §2.3."
                ),
            )
        )
    else:
        for sid, title in (("table1", "Table 1"), ("kept", "Kept input fraction per cell"),
                           ("edges", "|d->x| versus |z->x| per cell")):  # fmt: skip
            parts.append(_section(sid, title, _note("No artifact yet: nothing to tabulate.")))

    # pruning trajectory
    points = pruning_trajectory(graph.history if graph is not None else (), metrics)
    if len(points) > 1:
        target = next(
            (_num(e.get("rho_target")) for e in reversed(graph.history) if e.get("pass") == "prune"), None
        ) if graph is not None else None  # fmt: skip
        rows = "".join(
            f"<tr><td>{p.iteration}</td><td>{p.rho:.4f}</td><td>{'' if p.x_live is None else f'{p.x_live:,}'}</td>"
            f"<td>{'' if p.val_acc is None else f'{p.val_acc:.2%}'}</td></tr>"
            for p in points
        )
        table = (
            "<details><summary>Iterations as a table</summary><table><thead><tr><th>iteration</th><th>rho</th>"
            f"<th>|X*|</th><th>val accuracy</th></tr></thead><tbody>{rows}</tbody></table></details>"
        )
        missing = "" if any(p.val_acc is not None for p in points) else _note(
            "No validation accuracy recorded (no training before pruning, and no fine-tuning between iterations)."
        )  # fmt: skip
        parts.append(_section("trajectory", "Pruning trajectory", _trajectory_chart(points, target) + missing + table))
    else:
        parts.append(_section("trajectory", "Pruning trajectory", _note("No pruning yet: run `cnas-ir prune`.")))

    # training curves
    if any(m.get("cmd") == "train" and _num(m.get("epoch")) is not None for m in metrics):
        img, note = _training_chart(metrics)
        parts.append(_section("training", "Training curves", img + f'<p class="small">{html.escape(note)}</p>'))
    else:
        parts.append(_section("training", "Training curves", _note("No training yet: metrics.jsonl has no epochs.")))

    # cell drawings
    if graph is not None:
        from cnas_ir.app.draw import cell_figure

        picks, note = _cells_to_draw(graph)
        body = [_note(note)] if note else []
        for what, index in picks:
            fig = cell_figure(graph, index, "node", "faded")
            body.append(f"<h3>{html.escape(what.capitalize())}: cell {index}</h3>")
            body.append(_img(fig, f"node-level drawing of cell {index}", dpi=100, wide=True))
        parts.append(_section("cells", "Cells (node level)", "\n".join(body)))
    else:
        parts.append(_section("cells", "Cells (node level)", _note("No artifact yet: no cell to draw.")))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None, artifact: str | Path | None = None) -> Path:
    """Write :func:`build_report` atomically to ``out`` (default ``RUN_DIR/report.html``)."""
    from cnas_ir.format import atomic_write
    from cnas_ir.rundir import check_output_path

    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    path = check_output_path(out if out is not None else Path(run_dir) / "report.html", option="-o")
    text = build_report(run_dir, artifact)
    atomic_write(path, text.encode("utf-8"))
    return path
