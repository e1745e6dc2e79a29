"""prune: zero out the least salient x vertices until the cells fit the budget rho (SPEC §4.3).

Each iteration removes the fraction ``gamma`` of the *remaining* x vertices with the lowest
saliency, ranked globally across cells, then folds. The loop stops when
``params(cells) / params(one-shot cells) <= rho``. The step that would cross the budget is
cost-aware: a vertex in a cell of width C costs 9 + C parameters (2 + 4k in DenseNet), so it
removes the shortest prefix of the ranking whose cost covers what is left to cut, and lands on
rho with less than one vertex's cost to spare (a fold cascade -- a node losing its last
input -- can remove more; that is counted, never hidden).

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

import numpy as np

from cnas_ir.errors import InputError
from cnas_ir.ir import Graph, Kind
from cnas_ir.passes.base import Pass, PassError, PassResult
from cnas_ir.passes.fold import fold
from cnas_ir.passes.stats import compute_stats
from cnas_ir.weights import weight_table

__all__ = [
    "PruneStep",
    "cell_params",
    "check_rho",
    "min_feasible_rho",
    "normalize_per_op",
    "prune_to_rho",
    "random_saliency",
    "weight_saliency",
]


def cell_params(g: Graph) -> tuple[int, int]:
    """(live, one-shot) parameters of the cells, after folding ``g``."""
    total = compute_stats(fold(g)).total
    return total.params_live, total.params


def min_feasible_rho(g: Graph) -> float:
    """The fixed preprocessing share of the one-shot cell parameters: no rho can go below it."""
    total = compute_stats(g).total
    x_cost = int(g.x_cost[g.x_ids].sum())
    return (total.params - x_cost) / total.params


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


def check_rho(g: Graph, rho: float) -> None:
    """Refuse a rho below the fixed preprocessing share, naming the smallest feasible one."""
    floor = min_feasible_rho(g)
    if rho < floor:
        raise InputError(
            f"rho {rho} is below the fixed preprocessing share of the cell parameters; "
            f"the smallest feasible rho is {math.ceil(floor * 1e6) / 1e6:.6f}"
        )


@dataclass(frozen=True)
class PruneStep(Pass):
    """One iteration: remove ``gamma`` of the remaining live x (lowest saliency first), but no
    more than needed to reach ``target`` cell parameters; then fold."""

    name = "prune"
    gamma: float = 0.1
    target: int = 0  # cell parameters to reach (0: no cost-awareness)

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
            current, _ = cell_params(graph)
            need = current - self.target
            if need <= 0:
                return PassResult(graph, False)
            cum = np.cumsum(graph.x_cost[order])
            count = min(count, int(np.searchsorted(cum, need)) + 1)
        alive = graph.alive.copy()
        alive[order[:count]] = False
        out = fold(graph.replace(alive=alive))
        return PassResult(out, True)

    def ensures(self, graph: Graph) -> None:
        graph.verify()


@dataclass
class Iteration:
    """What one pruning iteration reached (for progress displays and the history)."""

    index: int
    removed: int
    x_live: int
    params_live: int
    rho: float


def prune_to_rho(
    graph: Graph,
    rho: float,
    *,
    gamma: float = 0.1,
    score: Callable[[Graph], Graph],
    finetune: Callable[[Graph], Graph] | None = None,
    on_iteration: Callable[[Iteration, Graph], None] | None = None,
    criterion: str = "",
    max_iterations: int = 10_000,
) -> Graph:
    """Iterate score -> prune step -> (fine-tune) until the cells' parameters are <= rho of the
    one-shot cells'. ``score`` must set the saliency of every live x vertex. Returns the folded,
    pruned graph with one history event per iteration."""
    check_rho(graph, rho)
    g = fold(graph)
    live_params, full = cell_params(g)
    target = math.floor(rho * full)
    for index in range(1, max_iterations + 1):
        if live_params <= target:
            break
        before = int(g.alive[g.x_ids].sum())
        g = score(g)
        g = PruneStep(gamma=gamma, target=target)(g).graph
        live_params, _ = cell_params(g)
        x_live = int(g.alive[g.x_ids].sum())
        it = Iteration(index, before - x_live, x_live, live_params, live_params / full)
        g = g.with_event(
            {
                "pass": "prune",
                "iteration": index,
                "criterion": criterion,
                "gamma": gamma,
                "rho_target": rho,
                "removed": it.removed,
                "x_live": x_live,
                "params_live": live_params,
                "rho": it.rho,
            }
        )
        if finetune is not None and live_params > target:
            g = finetune(g)
        if on_iteration is not None:
            on_iteration(it, g)
    return g.replace(saliency=np.where(g.alive, g.saliency, np.float32(np.nan)).astype(np.float32))
