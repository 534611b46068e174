"""What each Keras layer type means for channels: one rule per type.

Keras operations that are not layers (`x + y`, `x * 0.5`, `keras.ops.relu`,
`keras.ops.reshape`, `keras.ops.mean`) have rules too, registered for their
operation classes; an operation without a rule is a boundary like an unknown layer.

A rule says how a layer treats the channel axis (its `role`), how many
multiply-accumulates it costs for given input/output channel counts, which axes
of its weights follow the input and output channels, how its config changes
when channels are removed, and how it runs on the first channels only (the
sliced weight stage). The channel graph, costs, masks, the slim rebuild and the
sliced forward read these rules, and so do the latency table (which layers
TFLite fuses into the op before them), the search's weight decay (which weights
it decays) and the search's start (how many groups a gate keeps); supporting a
new layer type (a user's own layer too, with `register_rule`) means registering
one rule.

Roles:
- `PRODUCE`: creates new output channels from all input channels (Conv2D, Dense).
  A grouped convolution whose groups map input channel blocks to output blocks of
  the same size (`group_channels`) does not open a new space: its input and
  output channels are one space, pruned in whole groups (as Torch-Pruning does).
- `THROUGH`: output channel `j` depends on input channel `j` only (BatchNorm,
  activations, pooling, depthwise conv).
- `COUPLE`: element-wise merge; all inputs must keep the same channels (Add).
- `CONCAT`: joins its inputs' channels (Concatenate on the channel axis).
- `FLATTEN`: folds spatial positions into the channel axis (Flatten).
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras.src.ops import nn as nn_ops
from keras.src.ops import numpy as numpy_ops

from dmcp_tf.channels.gates import ChannelGate, MarkovGate
from dmcp_tf.channels.walk import all_layers, takes_training

PRODUCE = "produce"
THROUGH = "through"
COUPLE = "couple"
CONCAT = "concat"
FLATTEN = "flatten"

# Activations f with f(0) == 0: zeroed (pruned) channels stay zero through them.
ZERO_PRESERVING_ACTIVATIONS = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "tanh", "swish", "silu",
    "gelu", "hard_swish", "hard_silu", "mish", "softsign", "celu", "glu",
}
# Activations TFLite runs as the fused activation of the op before them.
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
# The weights the search's L2 weight decay applies to by default: conv and dense kernels.
DECAYED_WEIGHTS = ("kernel", "depthwise_kernel", "pointwise_kernel")


class LayerRule:
    """Channel semantics of one layer type (see the module docstring).

    Subclass it for a layer of your own and register it with `register_rule`.

    Attributes:
        role: one of `PRODUCE`, `THROUGH`, `COUPLE`, `CONCAT`, `FLATTEN`.
        weight_axes: weight name -> `(input_axis, output_axis)`; either may be None.
            For `THROUGH` layers input and output channels are the same, and the
            input axis is used.
        width_key: the config key holding the output channel count (`filters`,
            `units`), for `PRODUCE` layers.
        decayed_weights: names of the weights the search's L2 weight decay applies
            to (`DECAYED_WEIGHTS`, conv and dense kernels, by default).

    Example:
        class ChannelScaleRule(LayerRule):  # y = x * scale, one scale per channel
            weight_axes = {"scale": (0, None)}

            def sliced_call(self, layer, args, kwargs, cin, cout, training):
                return args[0] * layer.scale[:cin]

        register_rule(ChannelScale, ChannelScaleRule())
    """

    role = THROUGH
    weight_axes = {}
    width_key = None
    decayed_weights = DECAYED_WEIGHTS

    def check(self, layer, in_shape):
        """Returns a reason why this layer's channels cannot be pruned, or None."""
        return None

    def zero_preserving(self, layer):
        """Whether zero input channels give zero output channels (THROUGH layers, grouped convs)."""
        return True

    def group_channels(self, layer):
        """Channels per group of a `PRODUCE` layer whose output group `i` reads input group `i`
        only and is as wide (a grouped convolution), or None: its input and output channels
        are then one space, kept in whole groups."""
        return None

    def macs(self, layer, in_shape, out_shape, cin, cout):
        """Multiply-accumulates for one call with `cin` input / `cout` output channels."""
        return 0

    def fused(self, layer):
        """Whether TFLite folds this layer into the op before it (batch norm into a convolution, ReLU into
        its fused activation) or drops it (dropout, reshapes): it runs no op of its own, and latency
        tables do not time it. By default only a `FLATTEN` layer, a reshape."""
        return self.role == FLATTEN

    def slim_config(self, layer, cin, cout):
        """The layer's config with `cin` input and `cout` output channels."""
        config = layer.get_config()
        if self.width_key is not None:
            config[self.width_key] = int(cout)
        return config

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        """The layer's output when only the first `cin` input / `cout` output channels are kept.

        The inputs in `args` already hold `cin` channels; the result must hold
        `cout` and equal the full layer's first `cout` channels under masking.
        By default the layer runs as it is, which is right for a layer that
        treats channels one by one without weights of its own; a rule that
        produces or concatenates channels, or has `weight_axes`, overrides it.

        Args:
            layer: the layer (or keras operation).
            args, kwargs: the call's inputs, as in `layer.call`.
            cin, cout: kept input / output channels (scalar int tensors or ints).
            training: whether the call is a training one.

        Returns:
            The output tensor, `cout` channels wide.
        """
        return call_as_is(layer, args, kwargs, training)

    def slice_reason(self, layer):
        """Why the sliced weight stage cannot run this layer on its kept channels, or None."""
        runs_as_is = type(self).sliced_call is LayerRule.sliced_call
        if runs_as_is and (self.role in (PRODUCE, CONCAT) or self.weight_axes):
            return f"the rule of {type(layer).__name__} does not implement `sliced_call`"
        return None


def call_as_is(layer, args, kwargs, training):
    """`layer.call(*args, **kwargs)`, with `training` where the layer takes it."""
    if takes_training(layer):
        kwargs = dict(kwargs, training=training)
    return layer.call(*args, **kwargs)


def _bias_and_activation(layer, y, channels):
    """The first `channels` of the layer's bias added to `y`, then its activation."""
    if layer.use_bias:
        y = y + layer.bias[:channels]
    return layer.activation(y)


def spatial_size(shape):
    """Product of the dimensions between batch and channels."""
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ValueError(
            f"MACs need a fixed input size, but a tensor has shape {tuple(shape)}. "
            "Build the model with a fixed `input_shape=(H, W, C)`."
        )
    return math.prod(dims)


class ConvRule(LayerRule):
    """Conv2D; a grouped one (1 < groups) with as many filters as input channels keeps whole groups."""

    role = PRODUCE
    weight_axes = {"kernel": (2, 3), "bias": (None, 0)}
    width_key = "filters"

    def check(self, layer, in_shape):
        if layer.groups != 1 and in_shape[-1] != layer.filters:
            return (f"grouped convolution (groups={layer.groups}) from {in_shape[-1]} to {layer.filters} "
                    "channels: whole groups are pruned only when input and output channels are as many")
        return None

    def zero_preserving(self, layer):
        return not layer.use_bias and getattr(layer.activation, "__name__", None) in ZERO_PRESERVING_ACTIVATIONS

    def group_channels(self, layer):
        return layer.filters // layer.groups if layer.groups > 1 else None

    def macs(self, layer, in_shape, out_shape, cin, cout):
        kh, kw = layer.kernel_size
        return kh * kw * _filter_depth(layer, in_shape, cin) * cout * spatial_size(out_shape)

    def slim_config(self, layer, cin, cout):
        config = super().slim_config(layer, cin, cout)
        if layer.groups > 1:
            config["groups"] = int(cout) // self.group_channels(layer)
        return config

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        if layer.groups > 1:  # the kept groups' filters; Keras' op runs grouped convs (and gradients) on CPU too
            y = keras.ops.conv(args[0], layer.kernel[:, :, :, :cout], strides=layer.strides,
                               padding=layer.padding, dilation_rate=layer.dilation_rate)
        else:
            y = tf.nn.conv2d(args[0], layer.kernel[:, :, :cin, :cout], strides=layer.strides,
                             padding=layer.padding.upper(), dilations=layer.dilation_rate)
        return _bias_and_activation(layer, y, cout)


def _filter_depth(layer, in_shape, cin):
    """Input channels each filter reads: all `cin`, or one group's (whole groups are pruned)."""
    return cin if layer.groups == 1 else in_shape[-1] // layer.groups


class ConvTransposeRule(LayerRule):
    role = PRODUCE
    weight_axes = {"kernel": (3, 2), "bias": (None, 0)}
    width_key = "filters"

    def macs(self, layer, in_shape, out_shape, cin, cout):
        kh, kw = layer.kernel_size
        return kh * kw * cin * cout * spatial_size(in_shape)


class DepthwiseRule(LayerRule):
    weight_axes = {"kernel": (2, None), "depthwise_kernel": (2, None), "bias": (0, None)}

    def check(self, layer, in_shape):
        if layer.depth_multiplier != 1:
            return f"depthwise convolution with depth_multiplier={layer.depth_multiplier}"
        return None

    def zero_preserving(self, layer):
        return not layer.use_bias

    def macs(self, layer, in_shape, out_shape, cin, cout):
        kh, kw = layer.kernel_size
        return kh * kw * cin * layer.depth_multiplier * spatial_size(out_shape)

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        y = tf.nn.depthwise_conv2d(
            args[0], layer.kernel[:, :, :cin, :], strides=(1, *layer.strides, 1),
            padding=layer.padding.upper(), dilations=layer.dilation_rate,
        )
        return _bias_and_activation(layer, y, cin)


class SeparableConvRule(LayerRule):
    role = PRODUCE
    weight_axes = {"depthwise_kernel": (2, None), "pointwise_kernel": (2, 3), "bias": (None, 0)}
    width_key = "filters"

    def macs(self, layer, in_shape, out_shape, cin, cout):
        kh, kw = layer.kernel_size
        hw = spatial_size(out_shape)
        depthwise = kh * kw * cin * layer.depth_multiplier * hw
        return depthwise + cin * layer.depth_multiplier * cout * hw


class DenseRule(LayerRule):
    role = PRODUCE
    weight_axes = {"kernel": (0, 1), "bias": (None, 0)}
    width_key = "units"

    def macs(self, layer, in_shape, out_shape, cin, cout):
        return cin * cout * math.prod(d for d in out_shape[1:-1] if d is not None)

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        x = args[0]
        y = tf.tensordot(x, layer.kernel[:cin, :cout], axes=[[x.shape.rank - 1], [0]])
        return _bias_and_activation(layer, y, cout)


class BatchNormRule(LayerRule):
    weight_axes = {name: (0, None) for name in ("gamma", "beta", "moving_mean", "moving_variance")}

    def check(self, layer, in_shape):
        if layer.axis not in (-1, len(in_shape) - 1):
            return f"batch normalization over axis {layer.axis}, not the channel axis"
        return None

    def zero_preserving(self, layer):
        return False

    def fused(self, layer):
        return True

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        """Batch norm over the first `cin` channels; in training, their moving statistics are updated.

        Half-precision inputs (mixed precision) are normalised in float32 and the
        result is cast to the layer's compute dtype, as Keras' batch norm does.
        """
        x = tf.cast(args[0], keras.backend.result_type(args[0].dtype, "float32"))
        gamma = layer.gamma[:cin] if layer.scale else 1.0
        beta = layer.beta[:cin] if layer.center else 0.0
        if training:
            y, mean, variance = _batch_normalize(layer, x, cin, gamma, beta)
            for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
                updated = moving[:cin] * layer.momentum + batch * (1.0 - layer.momentum)
                moving.assign(tf.concat([updated, moving[cin:]], axis=0))
        else:
            mean, variance = layer.moving_mean[:cin], layer.moving_variance[:cin]
            y = (x - mean) * tf.math.rsqrt(variance + layer.epsilon) * gamma + beta
        return tf.cast(y, layer.compute_dtype)


def _batch_normalize(layer, x, channels, gamma, beta):
    """`x` normalised by its batch statistics: `(y, mean, biased variance)` of its `channels` channels.

    A float32 NHWC tensor takes one fused op (forward and gradient: the separate
    moment and normalisation ops cost more than the narrow convolutions); float64,
    other ranks and synchronized batch norm across replicas take separate ops.
    """
    context = tf.distribute.get_replica_context()
    synchronized = layer.synchronized and context is not None and context.num_replicas_in_sync > 1
    if x.dtype == tf.float32 and x.shape.rank == 4 and not synchronized:
        ones = tf.ones(tf.reshape(channels, [1]), x.dtype)
        y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            x, gamma if layer.scale else ones, beta if layer.center else 0.0 * ones,
            epsilon=layer.epsilon, is_training=True)
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
        return y, mean, unbiased * (count - 1.0) / count  # the moving variance follows Keras: the biased one
    axes = list(range(x.shape.rank - 1))
    if synchronized:
        mean, mean_square = tf.reduce_mean(x, axes), tf.reduce_mean(tf.square(x), axes)
        mean, mean_square = context.all_reduce(tf.distribute.ReduceOp.MEAN, [mean, mean_square])
        variance = tf.maximum(mean_square - tf.square(mean), 0.0)
    else:
        mean, variance = tf.nn.moments(x, axes)
    return (x - mean) * tf.math.rsqrt(variance + layer.epsilon) * gamma + beta, mean, variance


class LayerNormRule(LayerRule):
    """LayerNormalization: a boundary, its channels kept whole (the masked supernet would normalise
    pruned channels with the kept ones, so the slim network could not compute the same)."""

    def check(self, layer, in_shape):
        rank = len(in_shape)
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if rank - 1 in [a % rank for a in axes]:
            return ("layer normalization over the channel axis: each position's mean and variance mix all "
                    "its channels, so they are kept whole")
        return f"layer normalization over axes {layer.axis}, not the channel axis"


class ActivationRule(LayerRule):
    """`Activation(fn)`: zero-preserving when `fn(0) == 0`."""

    def check(self, layer, in_shape):
        if getattr(layer.activation, "__name__", None) in ("softmax", "log_softmax"):
            return "a softmax mixes the channels it normalises"
        return None

    def zero_preserving(self, layer):
        return getattr(layer.activation, "__name__", None) in ZERO_PRESERVING_ACTIVATIONS

    def fused(self, layer):
        return getattr(layer.activation, "__name__", None) in FUSED_ACTIVATIONS


class ZeroPreservingRule(LayerRule):
    """Pooling, padding, dropout, reshaping of spatial axes: zero stays zero.

    Args:
        fused: whether TFLite runs no op for the layer (ReLU, dropout; see `LayerRule.fused`).
    """

    def __init__(self, fused=False):
        self.is_fused = fused

    def fused(self, layer):
        return self.is_fused


class CoupleRule(LayerRule):
    """Element-wise merge of its operands (tensors, broadcast tensors or constants).

    `zero_if_any_zero`: the result is zero where any operand is (Multiply);
    otherwise only where every operand is (Add, Maximum).
    """

    role = COUPLE

    def __init__(self, zero_if_any_zero=False):
        self.zero_if_any_zero = zero_if_any_zero

    def output_masked(self, operands_masked):
        """Whether pruned channels stay zero, given per operand (in call order) whether they are zero."""
        return any(operands_masked) if self.zero_if_any_zero else all(operands_masked)


class DivideRule(CoupleRule):
    """`x / y`: zero where the numerator is."""

    def output_masked(self, operands_masked):
        return operands_masked[0]


class ConcatRule(LayerRule):
    role = CONCAT


class FlattenRule(LayerRule):
    """Folds spatial positions into channels; sliced only where there is one position
    (`(batch, 1.., C)` to `(batch, C)`, or back), the slicing walk sees to that."""

    role = FLATTEN

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        x, rank = args[0], len(layer.output.shape)
        shape = tf.shape(x)
        return tf.reshape(x, tf.concat([shape[:1], tf.ones([rank - 2], tf.int32), shape[-1:]], axis=0))


class ReshapeRule(FlattenRule):
    """A reshape that flattens into one feature axis (as `Flatten`), or adds or drops axes
    of size 1 around the channels (squeeze-excitation's `(C,) -> (1, 1, C)`); other
    reshapes move channels and are boundaries.

    Args:
        shape_key: the config key of the target shape (`target_shape` of the
            `Reshape` layer, without the batch axis; `newshape` of
            `keras.ops.reshape`, with it).
    """

    def __init__(self, shape_key="target_shape"):
        self.shape_key = shape_key

    def check(self, layer, in_shape):
        out_shape = tuple(layer.compute_output_spec(keras.KerasTensor(in_shape)).shape)
        if _flattens(in_shape, out_shape) or _only_unit_axes(in_shape, out_shape):
            return None
        return f"reshape from {tuple(in_shape)} to {out_shape} moves channels"

    def slim_config(self, layer, cin, cout):
        config = layer.get_config()
        shape = tuple(config[self.shape_key])
        if shape[-1] != -1:  # -1 infers the channels itself
            config[self.shape_key] = shape[:-1] + (int(cout),)
        return config


def _flattens(in_shape, out_shape):
    """Whether `out_shape` folds every axis of `in_shape` but the batch into one."""
    features = in_shape[1:]
    return len(out_shape) == 2 and None not in features and out_shape[-1] == math.prod(features)


def _only_unit_axes(in_shape, out_shape):
    """Whether the reshape only adds or drops axes of size 1 between batch and channels."""
    return out_shape[-1] == in_shape[-1] and all(d == 1 for d in (*in_shape[1:-1], *out_shape[1:-1]))


class ScalarAffineRule(LayerRule):
    """`Rescaling`: `x * scale + offset` with scalars; zero stays zero without offset."""

    def check(self, layer, in_shape):
        if getattr(layer.scale, "shape", ()) or getattr(layer.offset, "shape", ()):
            return "per-channel rescaling"
        return None

    def zero_preserving(self, layer):
        return not layer.offset


class ElementwiseOpRule(LayerRule):
    """A keras operation applied to each value (`keras.ops.relu`, `hard_sigmoid`, `-x`).

    Args:
        keeps_zero: whether `f(0) == 0`, so pruned channels stay zero.
    """

    def __init__(self, keeps_zero):
        self.keeps_zero = keeps_zero

    def zero_preserving(self, layer):
        return self.keeps_zero


class ReduceOpRule(LayerRule):
    """`keras.ops.mean` over spatial axes: channels pass through; over channels a boundary."""

    def check(self, layer, in_shape):
        rank = len(in_shape)
        if layer.axis is None or rank - 1 in [a % rank for a in layer.axis]:
            return f"it reduces over the channel axis (axis={layer.axis})"
        return None


class GateRule(LayerRule):
    """A gate passes its channels through (the graph reads its width); sliced inputs already have that width.

    It keeps its groups independently (`BernoulliGate`); a gate class of your own
    registers a subclass that says how many it keeps (`kept_groups`).
    """

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        return args[0]

    def fused(self, layer):
        return True

    def kept_groups(self, gate, p):
        """Expected kept groups of `gate` when every transition (or keep) probability is `p`."""
        return float(gate.num_groups * p)


class MarkovGateRule(GateRule):
    """A Markov chain keeps group `k` with probability `p ** k`."""

    def kept_groups(self, gate, p):
        return float(np.sum(p ** np.arange(1, gate.num_groups + 1)))


ROLES = (PRODUCE, THROUGH, COUPLE, CONCAT, FLATTEN)
_RULES = {}


def register_rule(layer_class, rule):
    """Registers `rule` for `layer_class` and its subclasses (a more specific class's rule wins).

    One rule covers everything dmcp_tf does with the layer: how it passes,
    produces or couples channels (the channel graph and gate insertion), its
    MACs and parameters, which weight axes follow the channels (the slim
    rebuild) and its forward on the kept channels (the sliced weight stage).
    A layer type without a rule is a boundary: its channels are kept whole,
    and `dmcp_tf.analyze()` names it. Register before building the
    `ChannelGraph` (before `insert_gates` / `make_supernet`).

    Args:
        layer_class: a `keras.layers.Layer` subclass (or a keras operation class).
        rule: a `LayerRule` instance.

    Raises:
        TypeError: `layer_class` is not a layer or operation class, or `rule` is not a `LayerRule`.
        ValueError: the rule's `role` is not one of `ROLES`.

    Example:
        class ChannelScaleRule(LayerRule):
            weight_axes = {"scale": (0, None)}

            def sliced_call(self, layer, args, kwargs, cin, cout, training):
                return args[0] * layer.scale[:cin]

        dmcp_tf.register_rule(ChannelScale, ChannelScaleRule())
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.Operation)):
        raise TypeError(f"register_rule takes a keras.layers.Layer subclass (or a keras operation class), "
                        f"got {layer_class!r}.")
    if not isinstance(rule, LayerRule):
        raise TypeError(f"The rule for {layer_class.__name__} must be an instance of "
                        f"dmcp_tf.channels.layer_rules.LayerRule (or of a subclass), got {rule!r}.")
    if rule.role not in ROLES:
        raise ValueError(f"The rule for {layer_class.__name__} has role {rule.role!r}; a role is one of {ROLES}.")
    _RULES[layer_class] = rule


def unregister_rule(layer_class):
    """Removes the rule registered for `layer_class`: its layers become boundaries again
    (or follow the rule of a registered base class).

    Returns:
        The removed rule.

    Raises:
        KeyError: no rule is registered for `layer_class` itself.
    """
    if layer_class not in _RULES:
        raise KeyError(f"No rule is registered for {getattr(layer_class, '__name__', layer_class)!r}.")
    return _RULES.pop(layer_class)


def rule_for(layer):
    """The rule of the most specific registered class of `layer`, or None."""
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def decayed_weight_ids(model):
    """Ids of the weights of `model` that the search's L2 weight decay applies to.

    A weight is decayed when the rule of the innermost layer holding it names it
    in `decayed_weights` (`DECAYED_WEIGHTS` for a layer without a rule).
    """
    holders = {}
    for layer in [model, *all_layers(model)]:  # outer layers first: the innermost holder is set last
        holders.update((id(w), (layer, w.name)) for w in layer.weights)
    return {key for key, (layer, name) in holders.items() if name in (rule_for(layer) or LayerRule).decayed_weights}


L = keras.layers
register_rule(L.Conv2D, ConvRule())
register_rule(L.Conv2DTranspose, ConvTransposeRule())
register_rule(L.DepthwiseConv2D, DepthwiseRule())
register_rule(L.SeparableConv2D, SeparableConvRule())
register_rule(L.Dense, DenseRule())
register_rule(L.BatchNormalization, BatchNormRule())
register_rule(L.LayerNormalization, LayerNormRule())
register_rule(L.Activation, ActivationRule())
for _cls in (
    L.LeakyReLU, L.ELU,
    L.MaxPooling2D, L.AveragePooling2D, L.GlobalAveragePooling2D, L.GlobalMaxPooling2D,
    L.ZeroPadding2D, L.Cropping2D, L.UpSampling2D, L.GaussianDropout, L.Identity,
):
    register_rule(_cls, ZeroPreservingRule())
for _cls in (L.ReLU, L.Dropout, L.SpatialDropout2D):
    register_rule(_cls, ZeroPreservingRule(fused=True))
for _cls in (L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum):
    register_rule(_cls, CoupleRule())
register_rule(L.Multiply, CoupleRule(zero_if_any_zero=True))
register_rule(L.Concatenate, ConcatRule())
register_rule(L.Flatten, FlattenRule())
register_rule(L.Reshape, ReshapeRule())
register_rule(L.Rescaling, ScalarAffineRule())
for _cls in (numpy_ops.Add, numpy_ops.Subtract, numpy_ops.Maximum, numpy_ops.Minimum):
    register_rule(_cls, CoupleRule())
register_rule(numpy_ops.Multiply, CoupleRule(zero_if_any_zero=True))
for _cls in (numpy_ops.TrueDivide, numpy_ops.Divide):
    register_rule(_cls, DivideRule())
for _cls in (
    nn_ops.Relu, nn_ops.Relu6, nn_ops.LeakyRelu, nn_ops.Elu, nn_ops.Selu, nn_ops.Celu, nn_ops.Silu,
    nn_ops.HardSilu, nn_ops.Gelu, nn_ops.Softsign, nn_ops.HardTanh, numpy_ops.Tanh, numpy_ops.Negative,
    numpy_ops.Absolute, numpy_ops.Square,
):
    register_rule(_cls, ElementwiseOpRule(keeps_zero=True))
for _cls in (nn_ops.Sigmoid, nn_ops.HardSigmoid, nn_ops.Softplus, numpy_ops.Exp):
    register_rule(_cls, ElementwiseOpRule(keeps_zero=False))
register_rule(numpy_ops.Reshape, ReshapeRule(shape_key="newshape"))
register_rule(numpy_ops.Mean, ReduceOpRule())
register_rule(ChannelGate, GateRule())
register_rule(MarkovGate, MarkovGateRule())
