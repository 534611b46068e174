"""Building blocks shared by the model zoo: conv + batch norm + gate + activation."""

import keras

from dmcp_tf.channels.gates import make_gate


class GateFactory:
    """Creates named gates for a supernet, or none for a plain network.

    Args:
        width: the width grid `(min_width, max_width, width_offset)` of every gate.
        kind: `"markov"` (DMCP) or `"bernoulli"` (ablation); None builds no gates.
    """

    def __init__(self, width, kind="markov"):
        self.width = tuple(width)
        self.kind = kind
        self._gates = {}

    def __call__(self, name):
        """The gate called `name` (one instance per name: reuse couples channels)."""
        if self.kind is None:
            return None
        if name not in self._gates:
            self._gates[name] = make_gate(self.kind, width=self.width, name=name)
        return self._gates[name]


def apply(x, layer):
    """`layer(x)`, or `x` when `layer` is None (an absent gate)."""
    return x if layer is None else layer(x)


KERNEL_INITIALIZERS = ("glorot_uniform", "kaiming_fan_out")


def kernel_initializer(name):
    """A conv kernel initializer by name.

    `"glorot_uniform"` is Keras' default; `"kaiming_fan_out"` is the authors'
    (PyTorch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: a normal
    distribution of variance 2 / fan_out).
    """
    if name == "kaiming_fan_out":
        return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")
    if name == "glorot_uniform":
        return keras.initializers.GlorotUniform()
    raise ValueError(f"Unknown kernel initializer {name!r}; choose one of {', '.join(KERNEL_INITIALIZERS)}.")


def conv_bn(x, filters, kernel, *, stride=1, name, depthwise=False, sync_bn=False, initializer="glorot_uniform"):
    """Conv (or depthwise conv) without bias, then batch normalisation."""
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw",
                                         depthwise_initializer=kernel_initializer(initializer))(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv",
                                kernel_initializer=kernel_initializer(initializer))(x)
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync_bn, name=f"{name}_bn")(x)


def classifier(x, num_classes, dropout=0.0):
    """Global average pooling, optional dropout, dense logits."""
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)
