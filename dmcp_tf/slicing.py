"""Run a sub-network of a gated supernet at its real width, by slicing weights.

Masking a sub-network (zeroing pruned channels) computes every channel of every
layer; slicing takes the first `c` channels of each kernel instead, so a small
sub-network costs little. Widths are tensors, so one traced step serves every
sub-network. Outputs and gradients equal the masked ones; batch norm moving
statistics are updated for the kept channels only.

Slicing covers Conv2D, DepthwiseConv2D (multiplier 1), Dense on channels, batch
norm, gates, layers and keras operations that act channel by channel or merge
element-wise, and reshapes that only add or drop axes of size 1 (squeeze-excitation).
Graphs with other layers on pruned channels (concatenations, flattening into a dense
layer, separable or transposed convs) fall back to masking: `SlicedForward.supported`
is False and `reason` says why.
"""

import keras
import tensorflow as tf

from dmcp_tf import layer_rules as rules
from dmcp_tf.gates import ChannelGate
from dmcp_tf.walk import walk

_SLICED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense, keras.layers.BatchNormalization)
_UNSLICEABLE = (keras.layers.SeparableConv2D, keras.layers.Conv2DTranspose)


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

    def _pruned(self, layout):
        return any(self.graph.space(s).gate is not None for s in layout)

    def _unsupported_reason(self):
        for r in self.graph.records:
            pruned = self._pruned(r.in_layout) or self._pruned(r.out_layout)
            if not pruned:
                continue
            if len(r.in_layout) != 1 or len(r.out_layout) != 1:
                return f"layer {r.layer.name!r} sees concatenated or flattened channels"
            if isinstance(r.layer, _UNSLICEABLE) or r.rule.role == rules.CONCAT:
                return f"layer {r.layer.name!r} ({type(r.layer).__name__}) is not sliced"
            if r.rule.check(r.layer, r.in_shape):
                return f"layer {r.layer.name!r}: {r.rule.check(r.layer, r.in_shape)}"
            if r.rule.role == rules.PRODUCE and not isinstance(r.layer, _SLICED):
                return f"layer {r.layer.name!r} ({type(r.layer).__name__}) is not sliced"
        return None

    def __call__(self, inputs, widths, training=True):
        """The model's outputs for the sub-network `widths` (gate -> channels, tensors or ints)."""
        if not self.supported:
            raise ValueError(f"Sub-networks of {self.graph.model.name!r} cannot be sliced: {self.reason}.")
        by_gate = {id(g): w for g, w in widths.items()}
        records = iter(self.graph.records)

        def width(layout):
            gate = self.graph.space(layout[0]).gate
            full = self.graph.space(layout[0]).size
            return by_gate.get(id(gate), full) if gate is not None else full

        def visit(layer, args, kwargs, node):
            if rules.rule_for(layer) is None:  # an unknown layer or operation: a boundary, its channels whole
                return layer(*args, **kwargs)
            record = next(records)
            if record.layer is not layer:
                raise ValueError(f"Layer {layer.name!r} does not follow the channel graph's order.")
            if isinstance(layer, ChannelGate):
                return args[0]
            if isinstance(layer, _SLICED) and self._pruned(record.in_layout + record.out_layout):
                return _sliced_call(layer, args[0], width(record.in_layout), width(record.out_layout), training)
            if record.rule.role == rules.FLATTEN:
                return _unit_axes_reshape(args[0], len(record.out_shape))
            if getattr(layer, "_call_has_training_arg", False):
                kwargs = dict(kwargs, training=training)
            return layer.call(*args, **kwargs)

        outputs = walk(self.graph.model, keras.tree.flatten(inputs), visit)
        return outputs[0] if len(outputs) == 1 else outputs


def _unit_axes_reshape(x, rank):
    """`x` (batch, 1.., channels) reshaped to `rank` axes, the ones between batch and channels of size 1."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([shape[:1], tf.ones([rank - 2], tf.int32), shape[-1:]], axis=0))


def _sliced_call(layer, x, cin, cout, training):
    if isinstance(layer, keras.layers.BatchNormalization):
        return _batch_norm(layer, x, cin, training)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        y = tf.nn.depthwise_conv2d(
            x, layer.kernel[:, :, :cin, :], strides=(1, *layer.strides, 1),
            padding=layer.padding.upper(), dilations=layer.dilation_rate,
        )
        bias_width = cin
    elif isinstance(layer, keras.layers.Conv2D):
        y = tf.nn.conv2d(x, layer.kernel[:, :, :cin, :cout], strides=layer.strides,
                         padding=layer.padding.upper(), dilations=layer.dilation_rate)
        bias_width = cout
    else:  # Dense
        y = tf.tensordot(x, layer.kernel[:cin, :cout], axes=[[x.shape.rank - 1], [0]])
        bias_width = cout
    if layer.use_bias:
        y = y + layer.bias[:bias_width]
    return layer.activation(y)


def _batch_norm(layer, x, channels, training):
    """Batch norm over the first `channels` channels; moving statistics of those are updated.

    In training, a float32 NHWC tensor takes one fused op (forward and gradient: the
    separate moment and normalisation ops cost more than the narrow convolutions);
    float64, other ranks and synchronized batch norm across replicas take separate ops.
    """
    gamma = layer.gamma[:channels] if layer.scale else 1.0
    beta = layer.beta[:channels] if layer.center else 0.0
    if not training:
        mean, variance = layer.moving_mean[:channels], layer.moving_variance[:channels]
        return (x - mean) * tf.math.rsqrt(variance + layer.epsilon) * gamma + beta
    context = tf.distribute.get_replica_context()
    synchronized = layer.synchronized and context is not None and context.num_replicas_in_sync > 1
    if x.dtype == tf.float32 and x.shape.rank == 4 and not synchronized:
        ones = tf.ones(tf.reshape(channels, [1]), x.dtype)
        y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            x, gamma if layer.scale else ones, beta if layer.center else 0.0 * ones,
            epsilon=layer.epsilon, is_training=True)
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
        variance = unbiased * (count - 1.0) / count  # the moving variance follows Keras: the biased one
    else:
        axes = list(range(x.shape.rank - 1))
        if synchronized:
            mean, mean_square = tf.reduce_mean(x, axes), tf.reduce_mean(tf.square(x), axes)
            mean, mean_square = context.all_reduce(tf.distribute.ReduceOp.MEAN, [mean, mean_square])
            variance = tf.maximum(mean_square - tf.square(mean), 0.0)
        else:
            mean, variance = tf.nn.moments(x, axes)
        y = (x - mean) * tf.math.rsqrt(variance + layer.epsilon) * gamma + beta
    for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
        updated = moving[:channels] * layer.momentum + batch * (1.0 - layer.momentum)
        moving.assign(tf.concat([updated, moving[channels:]], axis=0))
    return y
