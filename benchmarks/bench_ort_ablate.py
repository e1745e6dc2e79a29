"""What the compact network's batch-1 time in onnxruntime is made of: ablations of its export.

Exports the one-shot and the pruned network of a bench_speed.py configuration (default: the
paper config pruned at random to rho 0.46), then rewrites the compact export into variants
that each remove or restructure one kind of data movement, and races them all in onnxruntime
(CPU provider, 2 threads, no spinning; interleaved rounds, medians; ``--reps`` races):

- ``export``: the model as exported;
- ``no-concat``: every Gather whose data is a Concat of states reads only the Concat's last
  input, its index taken modulo that input's channels -- wrong values, same shapes: the cost
  of the per-node Concat;
- ``slice``: every Gather replaced by a Slice of as many leading channels (where the data has
  that many) -- wrong values, same shapes: the cost of gathering over slicing;
- ``per-state``: a valid rewrite, each Gather over a Concat of states becomes one Gather (or
  Slice, when the run is contiguous) per run of channels of one state, then one Concat of the
  pieces; checked against the export's output;
- ``per-state-sorted``: the same with each index sorted first (one piece per state) -- wrong
  values, same shapes;
- ``split-concat``: a valid rewrite that emulates a gather over several tensors with standard
  operators: each state is Split once, at every boundary of a run of channels that any node
  reads, and every node input is one Concat of those pieces -- no Gather and no Concat of whole
  states; checked against the export's output.

(A ``two-piece`` variant -- every other node keeping its Concat of the states, the node between
gathering from it and from the newest state -- was measured at commit 13c7b5b; the exporter
does this since.)

Prints each model's median and the speedup over the one-shot as a share of the multiply-add
ideal. ``--options`` races the one-shot and the export under other session settings instead
(spinning threads; one intra-op thread; plain NCHW, the blocked-layout transformer disabled),
each also against the one-shot with the default settings. ``--kernels`` times single kernels
in small models of their own instead: depthwise convs in onnxruntime's blocked NCHWc layout
against plain NCHW (the NCHWc transformer disabled), pointwise convs at the one-shot's and the
compact network's channel counts (multiply-adds per second), the fixed cost of a tiny conv, and
a five-node stack-1 cell assembling its inputs with a Concat per node against a
ScatterND-updated buffer. ``--profile`` prints onnxruntime's own profile of the one-shot and the
export instead: kernel time per run and number of kernels, by kind of kernel (the profiler
inflates small kernels)::

    python benchmarks/bench_ort_ablate.py [--config paper-random-0.46] [--rounds 30] [--reps 3]
        [--options | --kernels | --profile]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import CONFIGS, make_config, ort_session, race  # noqa: E402

from cnas_ir.backends.onnx import export  # noqa: E402
from cnas_ir.backends.onnx.builder import channel_runs, eliminate_dead_code  # noqa: E402


class _Model:
    """An exported model with the lookups the rewrites need."""

    def __init__(self, path: Path) -> None:
        self.m = onnx.load(path)
        inferred = shape_inference.infer_shapes(self.m)
        self.channels = {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in inferred.graph.value_info}
        self.inits = {i.name: i for i in self.m.graph.initializer}
        self.producer = {o: n for n in self.m.graph.node for o in n.output}

    def index(self, node: onnx.NodeProto) -> np.ndarray:
        return numpy_helper.to_array(self.inits[node.input[1]])

    def ints(self, name: str, values: object) -> str:
        self.m.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def slice_node(self, data: str, start: int, stop: int, out: str) -> onnx.NodeProto:
        bounds = [self.ints(f"{out}.{what}", [v]) for what, v in (("starts", start), ("ends", stop), ("axes", 1))]
        return helper.make_node("Slice", [data, *bounds], [out], name=out)

    def state_gathers(self) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
        """(Gather, Concat) pairs: the Gathers whose data is a Concat of states."""
        return [
            (n, self.producer[n.input[0]])
            for n in self.m.graph.node
            if n.op_type == "Gather" and n.input[0] in self.producer and self.producer[n.input[0]].op_type == "Concat"
        ]

    def replace(self, nodes: dict[str, list[onnx.NodeProto]], path: Path) -> Path:
        """Save with every node named in ``nodes`` replaced by its list, dead code removed."""
        new = [r for n in self.m.graph.node for r in nodes.get(n.name, [n])]
        del self.m.graph.node[:]
        self.m.graph.node.extend(new)
        eliminate_dead_code(self.m)
        onnx.save(self.m, path)
        return path


def no_concat(src: Path, out: Path) -> Path:
    mo = _Model(src)
    for gather, concat in mo.state_gathers():
        last = concat.input[-1]
        index = mo.index(gather) % mo.channels[last]  # (index initializers may be shared: make a new one)
        gather.input[1] = mo.ints(f"{gather.name}.last_index", index)
        gather.input[0] = last
    return mo.replace({}, out)


def as_slices(src: Path, out: Path) -> Path:
    mo = _Model(src)
    nodes = {}
    for n in mo.m.graph.node:
        if n.op_type == "Gather" and mo.index(n).size <= mo.channels[n.input[0]]:
            nodes[n.name] = [mo.slice_node(n.input[0], 0, mo.index(n).size, n.output[0])]
    return mo.replace(nodes, out)


def per_state(src: Path, out: Path, *, sort: bool = False) -> Path:
    mo = _Model(src)
    nodes = {}
    for gather, concat in mo.state_gathers():
        offsets = np.cumsum([0] + [mo.channels[i] for i in concat.input])
        index = np.sort(mo.index(gather)) if sort else mo.index(gather)
        state = np.searchsorted(offsets, index, side="right") - 1
        bounds = [0, *(np.flatnonzero(np.diff(state)) + 1), index.size]
        pieces = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            s = int(state[a])
            local = index[a:b] - offsets[s]
            name = f"{gather.name}.piece{a}"
            if np.array_equal(local, np.arange(local[0], local[0] + local.size)):
                pieces.append(mo.slice_node(concat.input[s], int(local[0]), int(local[0] + local.size), name))
            else:
                args = [concat.input[s], mo.ints(f"{name}.index", local)]
                pieces.append(helper.make_node("Gather", args, [name], name=name, axis=1))
        parts = [p.output[0] for p in pieces]
        joined = helper.make_node("Concat", parts, list(gather.output), name=gather.name, axis=1)
        nodes[gather.name] = [*pieces, joined]
    return mo.replace(nodes, out)


def _runs(index: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """(state, start, stop): the maximal runs of consecutive channels of one state in ``index``
    (channels of the concatenation whose state s starts at ``offsets[s]``)."""
    state = np.searchsorted(offsets, index, side="right") - 1
    pos = index - offsets[state]
    starts, stops = channel_runs(state, pos)
    return [(int(state[a]), int(pos[a]), int(pos[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def split_concat(src: Path, out: Path) -> Path:
    mo = _Model(src)
    reads: list[tuple[onnx.NodeProto, list[tuple[str, int, int]]]] = []
    for n in mo.m.graph.node:
        if n.op_type != "Gather":
            continue
        src_node = mo.producer.get(n.input[0])
        states = list(src_node.input) if src_node is not None and src_node.op_type == "Concat" else [n.input[0]]
        offsets = np.cumsum([0] + [mo.channels[t] for t in states])
        reads.append((n, [(states[s], a, b) for s, a, b in _runs(mo.index(n), offsets)]))
    cuts: dict[str, set[int]] = {}
    for _, runs in reads:
        for t, a, b in runs:
            cuts.setdefault(t, {0, mo.channels[t]}).update((a, b))
    bounds = {t: np.array(sorted(c)) for t, c in cuts.items()}
    nodes: dict[str, list[onnx.NodeProto]] = {}
    made: set[str] = set()
    pieces_of: dict[str, list[str]] = {}
    for gather, runs in reads:
        new = []
        pieces: list[str] = []
        for t, a, b in runs:
            edges = bounds[t]
            if edges.size == 2:  # the whole state, never cut
                pieces.append(t)
                continue
            if t not in made:  # Split each state once, before its first reader
                made.add(t)
                sizes = mo.ints(f"{t}.split_sizes", np.diff(edges))
                outs = [f"{t}.piece{j}" for j in range(edges.size - 1)]
                new.append(helper.make_node("Split", [t, sizes], outs, name=f"{t}.split", axis=1))
            j0, j1 = np.searchsorted(edges, [a, b])
            pieces += [f"{t}.piece{j}" for j in range(j0, j1)]
        pieces_of[gather.output[0]] = pieces
        nodes[gather.name] = [*new, helper.make_node("Concat", pieces, list(gather.output), name=gather.name, axis=1)]
    # A node input in two pieces (a Concat of two Gathers) becomes one Concat of all their pieces.
    for n in mo.m.graph.node:
        if n.op_type == "Concat" and n.name not in nodes and all(i in pieces_of for i in n.input):
            flat = [p for i in n.input for p in pieces_of[i]]
            nodes[n.name] = [helper.make_node("Concat", flat, list(n.output), name=n.name, axis=1)]
    return mo.replace(nodes, out)


def _graph(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], inputs: dict[str, list[int]], outputs: list[str]):  # noqa: ANN202
    graph = helper.make_graph(
        nodes,
        "kernel",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _convs(count: int, cin: int, cout: int, res: int, *, depthwise: bool, chain: bool, rng: np.random.Generator):  # noqa: ANN202
    """``count`` 1x1 (or depthwise 3x3) convs, chained or all reading the input."""
    nodes, inits, prev = [], {}, "x"
    for i in range(count):
        shape = (cout, 1, 3, 3) if depthwise else (cout, cin, 1, 1)
        inits[f"w{i}"] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        attrs = {"group": cin, "pads": [1, 1, 1, 1]} if depthwise else {}
        nodes.append(helper.make_node("Conv", ["x" if not chain else prev, f"w{i}"], [f"y{i}"], **attrs))
        prev = f"y{i}"
    outputs = [prev] if chain else [f"y{i}" for i in range(count)]
    return _graph(nodes, inits, {"x": [1, cin, res, res]}, outputs)


def _cell(scatter: bool, c: int, res: int, nodes_per_cell: int, rng: np.random.Generator) -> onnx.ModelProto:
    """A cell that only moves data: node k gathers 3/4 of the (k+1) C channels of d (2C) and the
    earlier nodes' outputs, and its first C gathered channels, ReLU'd, are its z. The states are
    a Concat per node, or one buffer padded to (K+2) C channels that ScatterND updates."""
    nodes, inits = [], {}
    buf = "d"
    if scatter:
        inits["pads"] = np.array([0, 0, 0, 0, 0, nodes_per_cell * c, 0, 0], np.int64)
        nodes.append(helper.make_node("Pad", ["d", "pads"], ["b0"]))
        buf = "b0"
    states = ["d"]
    for k in range(nodes_per_cell):
        inits[f"i{k}"] = rng.integers(0, (k + 2) * c, int(0.75 * (k + 2) * c)).astype(np.int64)
        if not scatter:
            nodes.append(helper.make_node("Concat", states, [f"src{k}"], axis=1))
        nodes.append(helper.make_node("Gather", [buf if scatter else f"src{k}", f"i{k}"], [f"g{k}"], axis=1))
        for what, v in (("s", 0), ("e", c), ("a", 1)):
            inits[f"{what}{k}"] = np.array([v], np.int64)
        nodes.append(helper.make_node("Slice", [f"g{k}", f"s{k}", f"e{k}", f"a{k}"], [f"h{k}"]))
        nodes.append(helper.make_node("Relu", [f"h{k}"], [f"z{k}"]))
        states.append(f"z{k}")
        if scatter:
            at = np.stack([np.zeros(c, np.int64), np.arange((k + 2) * c, (k + 3) * c)], 1)[None]
            inits[f"at{k}"] = at
            nodes.append(helper.make_node("ScatterND", [buf, f"at{k}", f"z{k}"], [f"b{k + 1}"]))
            buf = f"b{k + 1}"
    nodes.append(helper.make_node("Concat", states[1:], ["c"], axis=1))
    return _graph(nodes, inits, {"d": [1, 2 * c, res, res]}, ["c"])


def _kind(name: str, op: str) -> str:
    if op != "Conv":
        return op
    if ".dw" in name:
        return "depthwise convs"
    if ".pw" in name:
        return "pointwise convs of the nodes"
    return "preprocessing convs" if ".d_a." in name or ".d_b." in name else "other convs"


def profile(paths: dict[str, Path], runs: int, threads: int) -> None:
    """Kernel time per run by kind, from onnxruntime's profiler, for each model in ``paths``."""
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    per_kind: dict[str, dict[str, float]] = {}
    count: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in paths.items():
            session = ort_session(path, threads, profile_prefix=str(Path(tmp) / name))
            for _ in range(runs):
                session.run(None, {"input": x})
            kinds: dict[str, float] = {}
            counts: dict[str, float] = {}
            for event in json.loads(Path(session.end_profiling()).read_text()):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    kind = _kind(event["name"], event["args"].get("op_name", "?"))
                    kinds[kind] = kinds.get(kind, 0.0) + event["dur"] / runs / 1e3
                    counts[kind] = counts.get(kind, 0.0) + 1 / runs
            per_kind[name], count[name] = kinds, counts
    names = list(paths)
    print(f"kernel time per run, ms ({runs} runs, {threads} threads), [kernels]: " + " / ".join(names))
    for kind in sorted({k for v in per_kind.values() for k in v}, key=lambda k: -per_kind[names[0]].get(k, 0.0)):
        cells = [f"{per_kind[n].get(kind, 0.0):6.2f} [{count[n].get(kind, 0.0):3.0f}]" for n in names]
        print(f"  {kind:30s} " + " / ".join(cells))
    totals = [f"{sum(per_kind[n].values()):6.2f} [{sum(count[n].values()):3.0f}]" for n in names]
    print(f"  {'all kernels':30s} " + " / ".join(totals))


def kernels(rounds: int) -> None:
    rng = np.random.default_rng(0)
    feed = lambda *shape: {"x": rng.standard_normal(shape).astype(np.float32)}  # noqa: E731
    print("depthwise 3x3 convs, 20 reading one input, per conv: blocked NCHWc / plain NCHW")
    for c, res in ((160, 32), (320, 16), (640, 8)):
        model, x = _convs(20, c, c, res, depthwise=True, chain=False, rng=rng), feed(1, c, res, res)
        s = {nchwc: ort_session(model.SerializeToString(), 2, nchwc=nchwc) for nchwc in (True, False)}
        med = race({k: (lambda v=v, x=x: v.run(None, x)) for k, v in s.items()}, rounds)
        print(f"  {c} channels at {res}x{res}: {1e6 * med[True] / 20:.0f} us / {1e6 * med[False] / 20:.0f} us")
    print("pointwise convs, 20 reading one input: one-shot / compact input channels, GMAC/s")
    for (big, small), cout, res in (((432, 160), 36, 32), ((864, 320), 72, 16), ((1728, 640), 144, 8)):
        rate = []
        for cin in (big, small):
            model, x = _convs(20, cin, cout, res, depthwise=False, chain=False, rng=rng), feed(1, cin, res, res)
            s = ort_session(model.SerializeToString(), 2)
            t = race({"conv": lambda s=s, x=x: s.run(None, x)}, rounds)["conv"]
            rate.append(20 * cin * cout * res * res / t / 1e9)
        print(f"  {big} / {small} -> {cout} at {res}x{res}: {rate[0]:.1f} / {rate[1]:.1f}")
    model, x = _convs(100, 16, 16, 2, depthwise=False, chain=True, rng=rng), feed(1, 16, 2, 2)
    s = ort_session(model.SerializeToString(), 2)
    t = race({"conv": lambda: s.run(None, x)}, rounds)["conv"]
    print(f"fixed cost of a conv: {1e6 * t / 100:.1f} us (a chain of 100 1x1 convs, 16 channels at 2x2)")
    d = {"d": rng.standard_normal((1, 72, 32, 32)).astype(np.float32)}
    s = {scatter: ort_session(_cell(scatter, 36, 32, 5, rng).SerializeToString(), 2) for scatter in (False, True)}
    med = race({k: (lambda v=v: v.run(None, d)) for k, v in s.items()}, 10 * rounds)
    concat, scatter = (1e6 * med[k] for k in (False, True))
    print(f"a stack-1 cell's data movement: Concat per node {concat:.0f} us, ScatterND {scatter:.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper-random-0.46", choices=CONFIGS)
    ap.add_argument("--rounds", type=int, default=30, help="rounds per race (batch 1)")
    ap.add_argument("--reps", type=int, default=3, help="races")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channel-multiple", type=int, default=16)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--options", action="store_true", help="other session settings instead of other models")
    mode.add_argument("--kernels", action="store_true", help="single kernels instead of the network")
    mode.add_argument("--profile", action="store_true", help="onnxruntime's profile of the two models")
    args = ap.parse_args()
    if args.kernels:
        kernels(args.rounds)
        return
    cfg = make_config(args.config, 0)
    ideal = cfg.macs / cfg.macs_live
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        export(cfg.one_shot, tmp / "one-shot.onnx", channel_multiple=args.channel_multiple)
        compact = tmp / "export.onnx"
        export(cfg.pruned, compact, channel_multiple=args.channel_multiple)
        variants: dict[str, Callable[[Path, Path], Path]] = {
            "no-concat": no_concat,
            "slice": as_slices,
            "per-state": per_state,
            "per-state-sorted": lambda s, o: per_state(s, o, sort=True),
            "split-concat": split_concat,
        }
        paths = {"one-shot": tmp / "one-shot.onnx", "export": compact}
        if args.profile:
            profile(paths, args.rounds, args.threads)
            return
        if args.options:
            settings = {
                "": (args.threads, False, True),
                " spinning": (args.threads, True, True),
                " 1 thread": (1, False, True),
                " NCHW": (args.threads, False, False),
            }
            sessions = {
                f"{n}{k}": ort_session(p, threads, spin=spin, nchwc=nchwc)
                for k, (threads, spin, nchwc) in settings.items()
                for n, p in paths.items()
            }
        else:
            paths |= {name: make(compact, tmp / f"{name}.onnx") for name, make in variants.items()}
            sessions = {name: ort_session(p, args.threads) for name, p in paths.items()}
    size, channels = cfg.pruned.spec.input.size, cfg.pruned.spec.input.channels
    x = np.random.default_rng(0).standard_normal((1, channels, size, size)).astype(np.float32)
    feed = {"input": x}
    if not args.options:
        ref = sessions["export"].run(None, feed)[0]
        for valid in ("per-state", "split-concat"):
            diff = float(np.abs(sessions[valid].run(None, feed)[0] - ref).max())
            assert diff < 1e-4, f"the {valid} rewrite changed the output by {diff}"
    print(f"{args.config}: ideal {ideal:.2f}x; onnxruntime, {args.threads} threads, batch 1, {args.rounds} rounds")
    contenders = {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}
    for rep in range(args.reps):
        med = race(contenders, args.rounds)
        cells = []
        for setting in [k.removeprefix("one-shot") for k in med if k.startswith("one-shot")]:
            one = med[f"one-shot{setting}"]
            cells.append(f"one-shot{setting} {1e3 * one:.1f} ms")
            for k, t in med.items():  # this setting's other models: "name" + setting, no other setting
                if not k.startswith("one-shot") and k.endswith(setting) and " " not in k.removesuffix(setting):
                    share = f"{100 * one / t / ideal:.0f}%"
                    if setting:  # also against the one-shot with the default settings
                        share += f", {100 * med['one-shot'] / t / ideal:.0f}% of the default one-shot's"
                    cells.append(f"{k} {1e3 * t:.1f} ms ({share})")
        print(f"race {rep + 1}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
