"""MobileNetV2 as a DMCP supernet, with gates where the authors put them.

Gates (names are the keys of a channel configuration):
- `stem`: the 3x3 stem conv and the depthwise conv of block 1-1;
- `block{s}_{i}_expand`: the 1x1 expansion of block i of stage s (and its depthwise conv);
- `stage{s}`: the 1x1 projections of all blocks of stage s (coupled by the residual adds; a stage
  whose first block adds its input, as stage 1 at multiplier 0.25, shares its input's gate);
- `last`: the final 1x1 conv before pooling.
Inside a block the gate follows the ReLU6; on projections it follows the batch norm.
"""

import keras

from dmcp_tf.models.common import GateFactory, apply, classifier, conv_bn

# (expansion t, output channels c, blocks n, first stride s), as in the paper.
IMAGENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value, divisor=8):
    """Rounds channels as MobileNetV2 does: to a multiple of `divisor`, never below 90%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2(
    width_multiplier=1.5,
    *,
    input_shape=(224, 224, 3),
    num_classes=1000,
    stages=IMAGENET_STAGES,
    stem_channels=32,
    stem_stride=2,
    last_channels=1280,
    gate_kind="markov",
    min_width=0.1,
    width_offset=0.1,
    dropout=0.0,
    sync_bn=False,
    kernel_initializer="glorot_uniform",
    name=None,
):
    """Builds MobileNetV2; with `gate_kind=None`, a plain network without gates.

    Args:
        width_multiplier: channel multiplier; also the top of every gate's width
            grid `(min_width, width_multiplier, width_offset)`. 1.5 is the paper's supernet.
        stages: `(t, c, n, s)` per stage.
        last_channels: channels of the final 1x1 conv at multiplier 1 (scaled up
            for multipliers above 1, as in the paper's 1.5x supernet: 1920).
        kernel_initializer: `"glorot_uniform"` (Keras) or `"kaiming_fan_out"` (the authors').

    Example:
        supernet = mobilenet_v2(1.5)                # 672.8M MACs at 224x224
        plain = mobilenet_v2(1.0, gate_kind=None)   # standard MobileNetV2, 300.8M MACs
    """
    gates = GateFactory((min_width, width_multiplier, width_offset), gate_kind)
    inputs = keras.Input(input_shape, name="image")
    channels = make_divisible(stem_channels * width_multiplier)
    x = conv_bn(inputs, channels, 3, stride=stem_stride, name="stem", sync_bn=sync_bn, initializer=kernel_initializer)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = apply(x, gates("stem"))
    in_gate, x_gate = gates("stem"), "stem"  # x_gate: the gate of x's channels
    for s, (t, c, n, first_stride) in enumerate(stages, start=1):
        out_channels = make_divisible(c * width_multiplier)
        for i in range(1, n + 1):
            stride = first_stride if i == 1 else 1
            block = f"block{s}_{i}"
            shortcut = x
            if t != 1:
                x = conv_bn(x, channels * t, 1, name=f"{block}_expand", sync_bn=sync_bn, initializer=kernel_initializer)
                x = keras.layers.ReLU(6.0, name=f"{block}_expand_relu")(x)
                in_gate = gates(f"{block}_expand")
                x = apply(x, in_gate)
            x = conv_bn(x, None, 3, stride=stride, depthwise=True, name=f"{block}_depthwise", sync_bn=sync_bn, initializer=kernel_initializer)
            x = keras.layers.ReLU(6.0, name=f"{block}_depthwise_relu")(x)
            x = apply(x, in_gate)
            x = conv_bn(x, out_channels, 1, name=f"{block}_project", sync_bn=sync_bn, initializer=kernel_initializer)
            residual = stride == 1 and channels == out_channels
            # Added to its input, a projection's channels are its input's (at small multipliers a stage's first
            # block too, e.g. block1_1 at 0.25: 8 channels in and out), so they take that gate.
            x_gate = x_gate if residual else f"stage{s}"
            x = apply(x, gates(x_gate))
            if residual:
                x = keras.layers.Add(name=f"{block}_add")([shortcut, x])
            channels = out_channels
    last = make_divisible(last_channels * max(1.0, width_multiplier))
    x = conv_bn(x, last, 1, name="last", sync_bn=sync_bn, initializer=kernel_initializer)
    x = keras.layers.ReLU(6.0, name="last_relu")(x)
    x = apply(x, gates("last"))
    outputs = classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name or f"mobilenet_v2_{width_multiplier:g}")
