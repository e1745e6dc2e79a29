"""A stable textual dump of a graph, for humans and golden tests (``cnas-ir dump``).

One line per vertex group and per bundle, dead vertices as index ranges, saliency with six
significant digits, weights as shapes plus one digest of all their bytes. The same graph
always prints the same text; a save/load round trip prints it unchanged.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from cnas_ir.ir import Edge, Graph, Kind

__all__ = ["dump"]


def _ranges(idx: np.ndarray) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2,5,7-8``."""
    if idx.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks], [idx[-1]]])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts.tolist(), stops.tolist(), strict=True))


def _sources(g: Graph, group: int) -> str:
    sl = g.group_slice(group)
    src = g.src[sl]
    if src.size == 0:
        return ""
    owner = g.vertex_group[src]
    parts = []
    cuts = np.flatnonzero(np.diff(owner) != 0) + 1
    for chunk in np.split(np.arange(src.size), cuts):
        s = int(owner[chunk[0]])
        lo, hi = int(src[chunk[0]] - g.start[s]), int(src[chunk[-1]] - g.start[s])
        contiguous = np.array_equal(src[chunk], np.arange(src[chunk[0]], src[chunk[0]] + chunk.size))
        where = f"{lo}:{hi + 1}" if contiguous else _ranges(src[chunk] - g.start[s])
        parts.append(f"{g.group_name(s)}[{where}]")
    return " ".join(parts)


def dump(g: Graph) -> str:
    """The text of ``cnas-ir dump``: header, spec, groups, bundles, saliency, weights, history."""
    lines = [
        "cnas-ir dump v1",
        f"graph {json.dumps(g.spec.name)} space={g.spec.space} vertices={g.num_vertices} "
        f"groups={g.num_groups} bundles={g.num_bundles} live={int(g.alive.sum())}",
        f"spec {g.spec.to_json()}",
        "groups:",
    ]
    for i in range(g.num_groups):
        sl = g.group_slice(i)
        alive = g.alive[sl]
        line = f"  g{i} {g.group_name(i)} {Kind(int(g.kind[i])).name.lower()} res={int(g.res[i])} size={int(g.size[i])}"
        dead = np.flatnonzero(~alive)
        if dead.size:
            line += f" live={int(alive.sum())} dead={_ranges(dead)}"
        if g.kind[i] == Kind.X:
            line += f" src={_sources(g, i)}"
        lines.append(line)
    lines.append("bundles:")
    for e in range(g.num_bundles):
        s, t = int(g.bundle_src[e]), int(g.bundle_dst[e])
        lines.append(f"  e{e} {Edge(int(g.bundle_kind[e])).name.lower()} {g.group_name(s)} -> {g.group_name(t)}")
    scored = g.x_ids[~np.isnan(g.saliency[g.x_ids])]
    lines.append(f"saliency: {scored.size} scored")
    for op in g.ops if scored.size else ():
        vals = g.saliency[g.group_slice(op.x)]
        if not np.all(np.isnan(vals)):
            lines.append(f"  {g.group_name(op.x)} " + " ".join(f"{v:.6g}" for v in vals.tolist()))
    if g.weights:
        digest = hashlib.sha256()
        for name in sorted(g.weights):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(g.weights[name]).tobytes())
        lines.append(f"weights: {len(g.weights)} tensors sha256={digest.hexdigest()[:16]}")
        lines.extend(f"  {name} {list(g.weights[name].shape)}" for name in sorted(g.weights))
    else:
        lines.append("weights: none")
    lines.append("history:")
    lines.extend(f"  {json.dumps(ev, sort_keys=True)}" for ev in g.history)
    return "\n".join(lines) + "\n"
