"""Gates for any functional Keras model: find the coupled channels, insert the gates.

`insert_gates(model)` returns a copy of the model with one shared gate per group
of coupled channels (after the batch norm that follows a producing layer, where
there is one; again wherever a layer such as a batch norm would turn pruned
channels non-zero before they are read). `dmcp_tf.search.autogate` wraps that in a
`DMCPModel` (`make_supernet`) and prints the groups (`analyze`).
"""

import keras

from dmcp_tf.channels import layer_rules as rules
from dmcp_tf.channels.gates import check_width_grid, make_gate, split_channels
from dmcp_tf.channels.graph import ChannelGraph, GraphError, whole_groups_reason
from dmcp_tf.channels.walk import as_functional, clone, copy_operation

MAX_PLACEMENT_ROUNDS = 8


def insert_gates(model, *, width=(0.1, 1.0, 0.1), gate_kind="markov", exclude=(), initial_alpha=0.0):
    """A copy of `model` (same weights) with a gate on every prunable group of channels."""
    check_width_grid(width)  # a bad grid is the user's mistake, not a model without prunable layers
    graph = ChannelGraph(model, exclude=exclude, strict=False)
    if graph.gates:
        raise GraphError(
            f"Model {model.name!r} already has gates ({', '.join(g.name for g in graph.gates)}); "
            "pass it to DMCPModel directly."
        )
    prunable = {root for root in produced_spaces(graph) if unprunable_reason(graph.space(root), width) is None}
    placements = _first_placements(graph, prunable)
    for _ in range(MAX_PLACEMENT_ROUNDS):
        gates = {root: make_gate(gate_kind, width=width, name=_gate_name(graph, root), initial_alpha=initial_alpha,
                                 channel_multiple=graph.space(root).conv_group)
                 for root in prunable}
        gated, origin = _clone_with_gates(model, {t: gates[r] for t, r in placements.items() if r in prunable})
        check = ChannelGraph(gated, exclude=exclude, strict=False)
        if not check.violations:
            return gated
        for _, info, gate in check.violations:
            root = next(r for r, g in gates.items() if g is gate)
            tensor = check.tensor_of.get(id(info))
            if len(info.layout) == 1 and id(tensor) in origin:
                placements[origin[id(tensor)]] = root  # gate the tensor the consumer reads
            else:
                prunable.discard(root)  # cannot be masked there: leave these channels whole
    raise GraphError(f"Could not place gates in {model.name!r} so that every consumer reads gated channels.")


def produced_spaces(graph):
    """The root ids of every channel space a producing layer (conv, dense) makes: where gates may go."""
    return {graph.find(s) for r in graph.records if r.rule.role == rules.PRODUCE for s in r.out_layout}


def unprunable_reason(space, width):
    """Why a channel space (`ChannelGraph.space`) cannot carry a gate of `width`'s grid, or None if it can."""
    if space.frozen:
        return space.frozen
    try:
        prefix, step, _ = split_channels(space.size, width=width)
    except ValueError as error:
        return f"too few channels for the width grid ({error})"
    split = whole_groups_reason(space, prefix, step)
    return f"the width grid {tuple(width)} does not fit: {split}" if split else None


def _gate_name(graph, root):
    producer = next(r.layer.name for r in graph.records
                    if r.rule.role == rules.PRODUCE and graph.find(r.out_layout[0]) == root)
    return f"{producer}_gate"


def _first_placements(graph, prunable):
    """Original tensor id -> space root: each producer's output, or the batch norm right after it.

    A grouped convolution on concatenated channels passes several spaces on: no one gate fits its output.
    """
    placements = {}
    for record in graph.records:
        if record.rule.role != rules.PRODUCE or len(record.out_layout) != 1:
            continue
        if graph.find(record.out_layout[0]) not in prunable:
            continue
        info = record.out_info
        readers = graph.readers.get(id(info), [])
        if len(readers) == 1 and isinstance(readers[0], keras.layers.BatchNormalization):
            info = graph.record_reading(readers[0], info).out_info
        placements[id(graph.tensor_of[id(info)])] = graph.find(record.out_layout[0])
    return placements


def _clone_with_gates(model, gates_at):
    """Copies `model` (fresh layers, copied weights) and applies `gates_at[id(tensor)]` after those tensors.

    Returns:
        The gated model, and a map from its tensors' ids to the original tensors' ids.
    """
    origin, copies = {}, {}  # copies: id(original) -> (original, copy)

    def visit(layer, args, kwargs, node):
        if id(layer) not in copies:
            copies[id(layer)] = (layer, copy_operation(layer))
        outputs = copies[id(layer)][1](*args, **kwargs)
        flat = keras.tree.flatten(outputs)
        for i, (old, new) in enumerate(zip(node.outputs, flat)):
            origin[id(new)] = id(old)
            if id(old) in gates_at:
                flat[i] = gates_at[id(old)](new)
                origin[id(flat[i])] = id(old)
        return flat

    gated = clone(model, visit, f"{model.name}_supernet")
    origin.update((id(new), id(old)) for new, old in zip(gated.inputs, as_functional(model).inputs))
    for original, copy in copies.values():
        if isinstance(copy, keras.layers.Layer):  # keras operations that are not layers hold no weights
            copy.set_weights([w.numpy() for w in original.weights])
    return gated, origin
