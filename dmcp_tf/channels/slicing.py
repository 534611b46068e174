"""Run a sub-network of a gated supernet at its real width, by slicing weights.

Masking a sub-network (zeroing pruned channels) computes every channel of every
layer; slicing takes the first `c` channels of each kernel instead, so a small
sub-network costs little. Widths are tensors, so one traced step serves every
sub-network. Outputs and gradients equal the masked ones; batch norm moving
statistics are updated for the kept channels only.

Each layer on pruned channels runs its rule's `LayerRule.sliced_call` (the rules
in `layer_rules.py` slice Conv2D, DepthwiseConv2D with multiplier 1, Dense, batch
norm and gates; layers and keras operations that act channel by channel or merge
element-wise, and reshapes that only add or drop axes of size 1, run as they are).
Graphs with other layers on pruned channels (concatenations, flattening into a dense
layer, separable or transposed convs) fall back to masking: `SlicedForward.supported`
is False and `reason` says why.
"""

import contextlib

import keras
from keras.src.backend import AutocastScope

from dmcp_tf.channels import layer_rules as rules
from dmcp_tf.channels.walk import walk


class SlicedForward:
    """Evaluates a gated model's sub-networks at real width.

    Args:
        graph: the `ChannelGraph` of the gated model.

    Example:
        forward = SlicedForward(graph)
        if forward.supported:
            logits = forward(x, {gate: 12 for gate in graph.gates}, training=True)
    """

    def __init__(self, graph):
        self.graph = graph
        self.reason = self._unsupported_reason()
        self.supported = self.reason is None

    def _pruned(self, record):
        return any(self.graph.space(s).gate is not None for s in record.in_layout + record.out_layout)

    def _unsupported_reason(self):
        for r in self.graph.records:
            if not self._pruned(r):
                continue
            if len(r.in_layout) != 1 or len(r.out_layout) != 1:
                return f"layer {r.layer.name!r} sees concatenated or flattened channels"
            reason = r.rule.check(r.layer, r.in_shape) or r.rule.slice_reason(r.layer)
            if reason:
                return f"layer {r.layer.name!r} ({type(r.layer).__name__}) is not sliced: {reason}"
        return None

    def _width(self, layout, by_gate):
        space = self.graph.space(layout[0])
        return by_gate.get(id(space.gate), space.size) if space.gate is not None else space.size

    def __call__(self, inputs, widths, training=True):
        """The model's outputs for the sub-network `widths` (gate -> channels, tensors or ints)."""
        if not self.supported:
            raise ValueError(f"Sub-networks of {self.graph.model.name!r} cannot be sliced: {self.reason}.")
        by_gate = {id(g): w for g, w in widths.items()}
        records = iter(self.graph.records)

        def visit(layer, args, kwargs, node):
            if rules.rule_for(layer) is None:  # an unknown layer or operation: a boundary, its channels whole
                return layer(*args, **kwargs)
            record = next(records)
            if record.layer is not layer:
                raise ValueError(f"Layer {layer.name!r} does not follow the channel graph's order.")
            args, kwargs = _in_compute_dtype(layer, args, kwargs)
            with _autocast(layer):
                if not self._pruned(record):
                    return rules.call_as_is(layer, args, kwargs, training)
                cin, cout = self._width(record.in_layout, by_gate), self._width(record.out_layout, by_gate)
                return record.rule.sliced_call(layer, args, kwargs, cin, cout, training)

        outputs = walk(self.graph.model, keras.tree.flatten(inputs), visit)
        return outputs[0] if len(outputs) == 1 else outputs


def _in_compute_dtype(layer, args, kwargs):
    """The call's float inputs cast to the layer's compute dtype, as `Layer.__call__` casts them."""
    if not isinstance(layer, keras.layers.Layer):
        return args, kwargs  # a keras operation computes in its inputs' dtype

    def convert(x):
        return layer.dtype_policy.convert_input(x, layer.autocast, layer.input_dtype)

    return keras.tree.map_structure(convert, (args, kwargs))


def _autocast(layer):
    """Reads the layer's variables in its compute dtype under a mixed policy, as `Layer.__call__` does."""
    mixed = isinstance(layer, keras.layers.Layer) and layer.autocast and layer.compute_dtype != layer.variable_dtype
    return AutocastScope(layer.compute_dtype) if mixed else contextlib.nullcontext()
