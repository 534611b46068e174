"""ResNets as DMCP supernets (the stride sits on the 3x3 conv, as in the paper).

Gates (names are the keys of a channel configuration):
- `stem`: the stem conv;
- `stage{s}_block{b}_conv1`, `stage{s}_block{b}_conv2`: inner convs of a block
  (bottleneck: conv1 and conv2; basic block: conv1 only);
- `stage{s}_out`: every block output of stage s and the stage's shortcut
  projection, coupled by the residual adds. A stage whose first block has an
  identity shortcut (ResNet-18's first stage) shares the gate of its input.
Every gate follows the batch norm of its conv.
"""

import keras

from dmcp_tf.models.common import GateFactory, apply, classifier, conv_bn

RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
RESNET18_STAGES = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))


def _bottleneck(x, filters, stride, block, stage_gate, gates, conv_options):
    y = conv_bn(x, filters, 1, name=f"{block}_conv1", **conv_options)
    y = keras.layers.ReLU(name=f"{block}_conv1_relu")(apply(y, gates(f"{block}_conv1")))
    y = conv_bn(y, filters, 3, stride=stride, name=f"{block}_conv2", **conv_options)
    y = keras.layers.ReLU(name=f"{block}_conv2_relu")(apply(y, gates(f"{block}_conv2")))
    y = conv_bn(y, 4 * filters, 1, name=f"{block}_conv3", **conv_options)
    return apply(y, stage_gate)


def _basic(x, filters, stride, block, stage_gate, gates, conv_options):
    y = conv_bn(x, filters, 3, stride=stride, name=f"{block}_conv1", **conv_options)
    y = keras.layers.ReLU(name=f"{block}_conv1_relu")(apply(y, gates(f"{block}_conv1")))
    y = conv_bn(y, filters, 3, name=f"{block}_conv2", **conv_options)
    return apply(y, stage_gate)


BLOCKS = {"bottleneck": (_bottleneck, 4), "basic": (_basic, 1)}


def resnet(
    stages=RESNET50_STAGES,
    block="bottleneck",
    *,
    input_shape=(224, 224, 3),
    num_classes=1000,
    stem_channels=64,
    stem_kernel=7,
    stem_stride=2,
    stem_pool=True,
    gate_kind="markov",
    width=(0.1, 1.0, 0.1),
    sync_bn=False,
    kernel_initializer="glorot_uniform",
    name="resnet",
):
    """Builds a ResNet; with `gate_kind=None`, a plain network without gates.

    Args:
        stages: `(filters, blocks, first_stride)` per stage.
        block: `"bottleneck"` (ResNet-50) or `"basic"` (ResNet-18).
        width: every gate's width grid `(min_width, max_width, width_offset)`.
        kernel_initializer: `"glorot_uniform"` (Keras) or `"kaiming_fan_out"` (the authors').
    """
    make_block, expansion = BLOCKS[block]
    conv_options = dict(sync_bn=sync_bn, initializer=kernel_initializer)
    gates = GateFactory(width, gate_kind)
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, stem_channels, stem_kernel, stride=stem_stride, name="stem", **conv_options)
    x = keras.layers.ReLU(name="stem_relu")(apply(x, gates("stem")))
    if stem_pool:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    channels, stage_gate = stem_channels, gates("stem")
    for s, (filters, blocks, first_stride) in enumerate(stages, start=1):
        if first_stride != 1 or channels != filters * expansion:
            stage_gate = gates(f"stage{s}_out")
        for b in range(1, blocks + 1):
            stride = first_stride if b == 1 else 1
            name_b = f"stage{s}_block{b}"
            shortcut = x
            if stride != 1 or channels != filters * expansion:
                shortcut = conv_bn(x, filters * expansion, 1, stride=stride, name=f"{name_b}_shortcut", **conv_options)
                shortcut = apply(shortcut, stage_gate)
            y = make_block(x, filters, stride, name_b, stage_gate, gates, conv_options)
            x = keras.layers.Add(name=f"{name_b}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{name_b}_relu")(x)
            channels = filters * expansion
    outputs = classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=name)


def resnet50(**kwargs):
    """ResNet-50 (4.09G MACs at 224x224) as a supernet."""
    return resnet(RESNET50_STAGES, "bottleneck", name="resnet50", **kwargs)


def resnet18(**kwargs):
    """ResNet-18 as a supernet."""
    return resnet(RESNET18_STAGES, "basic", name="resnet18", **kwargs)


def fashion_resnet(channels=(32, 64, 128), blocks=1, **kwargs):
    """A small, fast ResNet for 28x28 grey images (the default data set).

    A 3x3 stride-2 stem and three stages of `blocks` basic blocks; `channels` per
    stage (the stem has the first stage's). With equal channels in every stage a
    channel costs 4x more MACs in each earlier stage, which gives a search room to
    choose: `channels=(32, 32, 32), blocks=3` has 12 gates.
    """
    defaults = dict(
        input_shape=(28, 28, 1), num_classes=10, stem_channels=channels[0], stem_kernel=3,
        stem_stride=2, stem_pool=False, name="fashion_resnet",
    )
    defaults.update(kwargs)
    stages = [(c, blocks, 1 if i == 0 else 2) for i, c in enumerate(channels)]
    return resnet(stages, "basic", **defaults)
