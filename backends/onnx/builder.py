"""A small ONNX graph builder, the channel-gather planner and dead-code elimination.

:class:`OnnxBuilder` accumulates nodes and numpy initializers and turns them into a
``ModelProto`` with :mod:`onnx.helper`; it knows nothing of the channel graph. Two passes that
the exporter relies on live here so that they can be tested alone:

- :func:`plan_gather`: how a merged node reads its input channels from the cell's states with
  *one* data-movement node (or none): the states themselves, a Concat of whole states, one
  Slice of a contiguous range, or one Gather on axis 1 (over a Concat of the states it reads).
- :func:`eliminate_dead_code`: drop nodes whose outputs reach no graph output and
  initializers that no remaining node reads, so the file holds no dead weights.
- :func:`stack_convs`: named convs that read the same tensor with the same attributes become
  one conv with their output channels stacked, and a Split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GatherPlan", "OnnxBuilder", "eliminate_dead_code", "plan_gather", "stack_convs", "value_info"]


# ---- gather planning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GatherPlan:
    """How to assemble channels ``(state[i], pos[i])``, i = 0..n-1, into one (N, n, H, W) tensor.

    - ``"identity"``: the input is exactly ``states[0]``;
    - ``"concat"``: ``Concat(states...)`` -- each piece is a whole state (repeats allowed);
    - ``"slice"``: ``states[0][:, start:stop]``;
    - ``"gather"``: ``Gather(Concat(states...), index, axis=1)`` (no Concat for one state),
      ``index`` int64[n] into the concatenation of ``states`` (distinct, in ascending order).
    """

    kind: Literal["identity", "concat", "slice", "gather"]
    states: tuple[int, ...]
    start: int = 0
    stop: int = 0
    index: np.ndarray | None = None


def plan_gather(state: np.ndarray, pos: np.ndarray, sizes: Sequence[int]) -> GatherPlan:
    """Plan the channel gather of ``n`` inputs in their given order (the weights follow it).

    ``state`` int[n]: which state each input channel copies; ``pos`` int[n]: its channel within
    that state; ``sizes[s]``: channels of state s. Emits at most one data-movement node: no
    node when the input is one whole state, one Concat when it is whole states only, one
    Slice for one contiguous run, else one Gather (plus the Concat of the states it reads when
    there are several -- a Gather has one data input).
    """
    state = np.asarray(state, np.int64)
    pos = np.asarray(pos, np.int64)
    if state.size == 0:
        raise ValueError("plan_gather needs at least one input channel")
    starts, stops = channel_runs(state, pos)
    run_state = state[starts]
    run_lo, run_len = pos[starts], stops - starts
    whole = (run_lo == 0) & (run_len == np.asarray(sizes, np.int64)[run_state])
    if whole.all():
        states = tuple(int(s) for s in run_state)
        return GatherPlan("identity" if len(states) == 1 else "concat", states)
    if starts.size == 1:
        lo = int(run_lo[0])
        return GatherPlan("slice", (int(run_state[0]),), lo, lo + int(run_len[0]))
    read, index = concat_index(state, pos, sizes)
    return GatherPlan("gather", read, index=index)


def channel_runs(state: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of the runs of channels ``(state[i], pos[i])``: maximal stretches of
    consecutive channels of one state."""
    breaks = np.flatnonzero((np.diff(state) != 0) | (np.diff(pos) != 1)) + 1
    return np.concatenate([[0], breaks]), np.concatenate([breaks, [state.size]])


def concat_index(state: np.ndarray, pos: np.ndarray, sizes: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray]:
    """The states read (ascending) and, for each channel ``(state[i], pos[i])``, its index
    into the Concat of those states in that order (``sizes[s]``: channels of state s)."""
    read = np.unique(state)
    offset = np.zeros(int(read.max()) + 1, np.int64)
    offset[read] = np.concatenate([[0], np.cumsum(np.asarray(sizes, np.int64)[read])[:-1]])
    return tuple(int(s) for s in read), offset[state] + pos


# ---- the builder ----------------------------------------------------------------------------------


@dataclass
class OnnxBuilder:
    """Nodes and initializers of one ONNX graph, built in topological order.

    Tensor names are strings; :meth:`node` returns the output name(s) it made up from the
    node's name. Float initializers are parameters; int64 ones are indices and shapes
    (:meth:`ints` shares equal constants).
    """

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    _names: set[str] = field(default_factory=set)
    _ints: dict[tuple[int, ...], str] = field(default_factory=dict)

    def fresh(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``... if already taken."""
        out, i = name, 1
        while out in self._names:
            i += 1
            out = f"{name}_{i}"
        self._names.add(out)
        return out

    def node(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        """Append a one-output node; returns its output tensor name (== the node name)."""
        out = self.fresh(name)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add a float32 initializer named ``name``; returns its name."""
        out = self.fresh(name)
        self.initializers[out] = np.ascontiguousarray(array, dtype=np.float32)
        return out

    def ints(self, values: Sequence[int], name: str = "const") -> str:
        """An int64 initializer holding ``values`` (shared between equal requests)."""
        key = tuple(int(v) for v in values)
        if key not in self._ints:
            out = self.fresh(name)
            self.initializers[out] = np.asarray(key, dtype=np.int64)
            self._ints[key] = out
        return self._ints[key]

    def model(
        self,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        *,
        opset: int,
        name: str,
        doc: str = "",
        metadata: dict[str, str] | None = None,
    ) -> onnx.ModelProto:
        """The ``ModelProto``: weights embedded (raw data, no external files)."""
        graph = helper.make_graph(
            self.nodes,
            name,
            list(inputs),
            list(outputs),
            initializer=[numpy_helper.from_array(a, n) for n, a in self.initializers.items()],
            doc_string=doc,
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="cnas-ir")
        # The oldest IR version that carries this opset: runtimes older than onnx itself load it.
        model.ir_version = helper.find_min_ir_version_for(opsets)
        for k, v in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        return model


def value_info(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    """A float32 graph input/output; a str dimension is symbolic (the dynamic batch)."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# ---- dead-code elimination ----------------------------------------------------------------------


def eliminate_dead_code(model: onnx.ModelProto) -> int:
    """Remove, in place, nodes that no graph output depends on and unread initializers.

    Works on the main graph (the exporter emits no subgraphs). Returns how many nodes and
    initializers were removed.
    """
    g = model.graph
    needed = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    removed = len(g.node) - len(keep)
    if removed:
        del g.node[:]
        g.node.extend(reversed(keep))
    dead = [i for i, t in enumerate(g.initializer) if t.name not in needed]
    for i in reversed(dead):
        del g.initializer[i]
    return removed + len(dead)


def stack_convs(model: onnx.ModelProto, groups: list[list[str]]) -> int:
    """Rewrite, in place, each group of Conv nodes (by name; the execution plan's stacked
    preprocessing convs, which read one tensor with the same attributes and constant weights
    and biases) as ONE Conv whose output channels are theirs stacked, followed by a Split that
    gives back their outputs under their names. A name no longer in the graph (dead code) is
    skipped.

    But a Split cannot run in onnxruntime's blocked NCHWc layout, so a conv output that stays
    blocked up to the next conv (through Relu and Concat) would be reordered out and back for
    it: the one-shot paper config went from 2,395 to 2,623 ms of kernel time at batch 32, most
    of it new ReorderInput nodes. So of each group only the convs whose outputs leave that
    layout anyway are stacked: every reader, through Relu and Concat, is a Gather or Slice (a
    channel gather of a pruned network) or a graph output. When each output is read by one Relu
    and nothing else, the Relu moves before the Split. Run it after
    :func:`eliminate_dead_code`. Returns how many convs were merged into another.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in g.output}
    by_name = {node.name: node for node in g.node}

    def leaves_layout(tensor: str) -> bool:
        for node in readers.get(tensor, []):
            if node.op_type in ("Relu", "Concat"):
                if not leaves_layout(node.output[0]):
                    return False
            elif node.op_type not in ("Gather", "Slice"):
                return False
        return bool(readers.get(tensor)) or tensor in outputs

    def signature(node: onnx.NodeProto) -> tuple[object, ...]:
        attrs = tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute))
        biased = len(node.input) > 2 and bool(node.input[2])
        return node.op_type, node.input[0], attrs, tuple(inits[node.input[1]].dims[1:]), biased

    stacks = []
    for names in groups:
        nodes = [by_name[n] for n in names if n in by_name and leaves_layout(by_name[n].output[0])]
        if len(nodes) > 1:
            assert len({signature(n) for n in nodes}) == 1, f"{names}: not convs of one input alike"
            stacks.append(nodes)
    merged = 0
    for nodes in stacks:
        biased = len(nodes[0].input) > 2 and bool(nodes[0].input[2])
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        name = "+".join(n.name for n in nodes)
        stacked = [numpy_helper.from_array(np.concatenate(weights), f"{name}.weight")]
        if biased:
            biases = [numpy_helper.to_array(inits[n.input[2]]) for n in nodes]
            stacked.append(numpy_helper.from_array(np.concatenate(biases), f"{name}.bias"))
        sizes = numpy_helper.from_array(np.array([w.shape[0] for w in weights], np.int64), f"{name}.sizes")
        conv = helper.make_node("Conv", [nodes[0].input[0], *(t.name for t in stacked)], [name], name=name)
        conv.attribute.extend(nodes[0].attribute)
        new = [conv]
        parts = [n.output[0] for n in nodes]
        relus = [readers.get(out, []) for out in parts]
        if all(len(r) == 1 and r[0].op_type == "Relu" for r in relus) and not outputs & set(parts):
            # Each part is only ReLU'd: one Relu before the Split (which onnxruntime fuses
            # into the conv) instead of one per part.
            new.append(helper.make_node("Relu", [name], [f"{name}.relu"], name=f"{name}.relu"))
            for (r,) in relus:
                g.node.remove(r)
            parts = [r[0].output[0] for r in relus]
        new.append(helper.make_node("Split", [new[-1].output[0], sizes.name], parts, name=f"{name}.split", axis=1))
        # In place of the first: the input exists by then, and each output only gets earlier.
        at = min(list(g.node).index(n) for n in nodes)
        for n in nodes:
            g.node.remove(n)
        for n in reversed(new):
            g.node.insert(at, n)
        g.initializer.extend([*stacked, sizes])
        merged += len(nodes) - 1
    if merged:
        eliminate_dead_code(model)  # the parts' weights
    return merged
