"""prune: zero out the least salient x vertices until the cells fit the budget rho (SPEC §4.3).

Each iteration removes the fraction ``gamma`` of the *remaining* x vertices with the lowest
saliency, ranked globally across cells, then folds. The loop stops when
``cost(cells) / cost(one-shot cells) <= rho``. The step that would cross the budget is
cost-aware: it removes the shortest prefix of the ranking whose cost covers what is left to
cut, and lands on rho with less than one vertex's cost to spare (a fold cascade -- a node
losing its last input -- can remove more; that is counted, never hidden).

The cost is chosen once per search, the *budget* (SPEC §9):

- ``params`` (the paper's): a kept x in a cell of width C costs 9 + C parameters (its 3x3
  depthwise filter and its pointwise column; 2 + 4k in DenseNet: its BN pair and 1x1 column);
- ``macs``: the multiply-adds per image of the same weights at the resolution where the op
  runs, (9 + C) r^2 with r the op's output size -- a stride-2 depthwise conv in a reduction cell
  counts at its output resolution -- and 4k r^2 in DenseNet (BatchNorm is not a multiply-add).
  On the paper config a kept x of the first stack (C = 36 at 32x32) then costs 4.7 times one of
  the last (C = 144 at 8x8), where in parameters it costs 0.29 times as much: the ranking is the
  same saliency, but the stopping rule and the cost-aware last step count multiply-adds.

Saliency (SPEC §4.2) is *importance*: larger means keep. The paper ranks by the reciprocal
``1 / (x * dx)`` and removes the largest; ranking by ``|x * dx|`` and removing the smallest is the
same order without dividing by zero. The ``taylor`` criterion needs the PyTorch backend
(``cnas_ir.backends.pytorch.saliency``); ``random`` and ``weight`` are here, numpy only.

The driver :func:`prune_to_rho` takes the scoring and fine-tuning steps as callables, so this
module stays free of torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from cnas_ir.errors import InputError
from cnas_ir.ir import Graph, Kind
from cnas_ir.passes.base import Pass, PassError, PassResult
from cnas_ir.passes.fold import fold
from cnas_ir.passes.stats import CellStats, compute_stats, macs_per_src_channel
from cnas_ir.weights import weight_table

__all__ = [
    "BUDGETS",
    "Budget",
    "Iteration",
    "PruneStep",
    "cell_cost",
    "cell_params",
    "check_budget",
    "check_rho",
    "min_feasible_rho",
    "normalize_per_op",
    "prune_to_rho",
    "random_saliency",
    "weight_saliency",
    "x_cost",
]

Budget = Literal["params", "macs"]
BUDGETS: tuple[str, ...] = get_args(Budget)
_UNIT = {"params": "parameters", "macs": "multiply-adds"}


def check_budget(budget: str) -> None:
    """Refuse an unknown budget in one line naming it."""
    if budget not in BUDGETS:
        raise InputError(f"budget {budget!r}: choose params or macs")


def x_cost(g: Graph, budget: str = "params") -> np.ndarray:
    """int64[V]: what one live x vertex costs under ``budget``; 0 for other vertices.

    ``params``: :attr:`Graph.x_cost` (9 + C, or 2 + 4k). ``macs``: the multiply-adds per image
    of the bundle it feeds -- ``(macs_src + macs_pair * t) * r^2`` of :class:`cnas_ir.ir.Cost`
    with t the op's output channels and r the op's output resolution: (9 + C) r^2, or 4k r^2.
    Per x group, not per vertex: a few hundred bundles, broadcast to the vertices.
    """
    check_budget(budget)
    if budget == "params":
        return g.x_cost
    feeds = np.flatnonzero(g.kind[g.bundle_src] == Kind.X)
    per_group = np.zeros(g.num_groups, dtype=np.int64)
    per_group[g.bundle_src[feeds]] = macs_per_src_channel(g)[feeds]
    out = per_group[g.vertex_group]
    out[g.kind[g.vertex_group] != Kind.X] = 0
    return out


def _live_and_full(total: CellStats, budget: str) -> tuple[int, int]:
    """(live, one-shot) of a stats row in the ``budget``'s unit."""
    return (total.params_live, total.params) if budget == "params" else (total.macs_live, total.macs)


def cell_cost(g: Graph, budget: str = "params") -> tuple[int, int]:
    """(live, one-shot) cost of the cells under ``budget`` (parameters, or multiply-adds per image
    at the spec's input size), after folding ``g``."""
    check_budget(budget)
    return _live_and_full(compute_stats(fold(g)).total, budget)


def cell_params(g: Graph) -> tuple[int, int]:
    """(live, one-shot) parameters of the cells, after folding ``g``."""
    return cell_cost(g, "params")


def min_feasible_rho(g: Graph, budget: str = "params") -> float:
    """The fixed preprocessing share of the one-shot cells' cost: no rho can go below it."""
    check_budget(budget)
    _, full = _live_and_full(compute_stats(g).total, budget)
    prunable = int(x_cost(g, budget)[g.x_ids].sum())
    return (full - prunable) / full


def normalize_per_op(g: Graph, scores: np.ndarray) -> np.ndarray:
    """float32[V]: ``scores`` of live x vertices divided by their op's L2 norm (the paper's
    layer-wise L2 normalisation); NaN for dead and non-x vertices."""
    out = np.full(g.num_vertices, np.nan, dtype=np.float32)
    live = g.alive & (g.src >= 0)
    s = np.where(live, np.abs(scores.astype(np.float64)), 0.0)
    op = g.op_of_vertex
    sq = np.bincount(op[live], weights=s[live] ** 2, minlength=len(g.ops))
    norm = np.sqrt(sq)[op[live]]
    out[live] = np.where(norm > 0, s[live] / np.where(norm > 0, norm, 1.0), 0.0)
    return out


def random_saliency(g: Graph, seed: int = 0) -> Graph:
    """The paper's random-pruning baseline: uniform scores on live x vertices."""
    rng = np.random.default_rng(seed)
    sal = np.full(g.num_vertices, np.nan, dtype=np.float32)
    live = np.flatnonzero(g.alive & (g.src >= 0))
    sal[live] = rng.random(live.size, dtype=np.float32)
    return g.replace(saliency=sal)


def weight_saliency(g: Graph) -> Graph:
    """L1 norm of each live x vertex's own weights (its DW filter and PW column; in DenseNet its
    BN pair and 1x1 column), L2-normalised per op."""
    if not g.weights:
        raise InputError("the weight criterion needs trained weights: run `cnas-ir train` first")
    scores = np.zeros(g.num_vertices, dtype=np.float64)
    for name, info in weight_table(g).items():
        if info.buffer:
            continue
        for axis, group in enumerate(info.axes):
            if group is not None and g.kind[group] == Kind.X:
                w = np.abs(g.weights[name].astype(np.float64))
                per_x = w.sum(axis=tuple(i for i in range(w.ndim) if i != axis))
                scores[g.group_slice(group)] += per_x
    return g.replace(saliency=normalize_per_op(g, scores))


def check_rho(g: Graph, rho: float, budget: str = "params") -> None:
    """Refuse a rho below the fixed preprocessing share, naming the smallest feasible one."""
    floor = min_feasible_rho(g, budget)
    if rho < floor:
        unit = "" if budget == "params" else " (budget macs)"
        raise InputError(
            f"rho {rho} is below the fixed preprocessing share of the cell {_UNIT[budget]}; "
            f"the smallest feasible rho{unit} is {math.ceil(floor * 1e6) / 1e6:.6f}"
        )


@dataclass(frozen=True)
class PruneStep(Pass):
    """One iteration: remove ``gamma`` of the remaining live x (lowest saliency first), but no
    more than needed to reach ``target`` cell cost (in the ``budget``'s unit); then fold."""

    name = "prune"
    gamma: float = 0.1
    target: int = 0  # cell cost to reach (0: no cost-awareness)
    budget: str = "params"  # params | macs: the unit of target

    def requires(self, graph: Graph) -> None:
        live = graph.x_ids[graph.alive[graph.x_ids]]
        if np.any(np.isnan(graph.saliency[live])):
            raise PassError("prune needs a saliency for every live x vertex: run a criterion first")

    def call(self, graph: Graph) -> PassResult:
        live = graph.x_ids[graph.alive[graph.x_ids]]
        if live.size == 0:
            return PassResult(graph, False)
        # Stable sort on (saliency, vertex id): ties break the same way on every machine.
        order = live[np.argsort(graph.saliency[live], kind="stable")]
        count = max(1, math.ceil(self.gamma * live.size))
        if self.target:
            current, _ = cell_cost(graph, self.budget)
            need = current - self.target
            if need <= 0:
                return PassResult(graph, False)
            cum = np.cumsum(x_cost(graph, self.budget)[order])
            count = min(count, int(np.searchsorted(cum, need)) + 1)
        alive = graph.alive.copy()
        alive[order[:count]] = False
        out = fold(graph.replace(alive=alive))
        return PassResult(out, True)

    def ensures(self, graph: Graph) -> None:
        graph.verify()


@dataclass
class Iteration:
    """What one pruning iteration reached (for progress displays and the history). ``rho`` is
    always the parameter ratio (as in ``stats``), ``rho_macs`` the multiply-add ratio; ``budget``
    says which of the two the search drives down."""

    index: int
    removed: int
    x_live: int
    params_live: int
    rho: float
    macs_live: int = 0
    rho_macs: float = 1.0
    budget: str = "params"


def prune_to_rho(
    graph: Graph,
    rho: float,
    *,
    gamma: float = 0.1,
    score: Callable[[Graph], Graph],
    finetune: Callable[[Graph], Graph] | None = None,
    on_iteration: Callable[[Iteration, Graph], None] | None = None,
    criterion: str = "",
    budget: str = "params",
    max_iterations: int = 10_000,
) -> Graph:
    """Iterate score -> prune step -> (fine-tune) until the cells' cost is <= rho of the
    one-shot cells': parameters (``budget="params"``, the paper's) or multiply-adds per image
    (``"macs"``). ``score`` must set the saliency of every live x vertex. Returns the folded,
    pruned graph with one history event per iteration (recording the budget and both ratios)."""
    check_budget(budget)
    check_rho(graph, rho, budget)
    g = fold(graph)
    live, full = _live_and_full(compute_stats(g).total, budget)
    target = math.floor(rho * full)
    for index in range(1, max_iterations + 1):
        if live <= target:
            break
        before = int(g.alive[g.x_ids].sum())
        g = score(g)
        g = PruneStep(gamma=gamma, target=target, budget=budget)(g).graph
        t = compute_stats(g).total  # counts the fold closure of the mask: no fold needed here
        live, _ = _live_and_full(t, budget)
        x_live = int(g.alive[g.x_ids].sum())
        it = Iteration(index, before - x_live, x_live, t.params_live, t.params_live / t.params,
                       t.macs_live, t.macs_live / t.macs, budget)  # fmt: skip
        g = g.with_event(
            {
                "pass": "prune",
                "iteration": index,
                "criterion": criterion,
                "budget": budget,
                "gamma": gamma,
                "rho_target": rho,
                "removed": it.removed,
                "x_live": x_live,
                "params_live": it.params_live,
                "rho": it.rho,
                "macs_live": it.macs_live,
                "rho_macs": it.rho_macs,
            }
        )
        if finetune is not None and live > target:
            g = finetune(g)
        if on_iteration is not None:
            on_iteration(it, g)
    return g.replace(saliency=np.where(g.alive, g.saliency, np.float32(np.nan)).astype(np.float32))
