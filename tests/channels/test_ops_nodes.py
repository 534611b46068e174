"""Keras operations as graph nodes, squeeze-excitation through Reshape, trained weights kept."""

import keras
import numpy as np
import pytest

from dmcp_tf.channels.autogate import insert_gates
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.channels.slicing import SlicedForward
from dmcp_tf.search.autogate import analyze, make_supernet
from dmcp_tf.channels.gates import ChannelGate
from tests.helpers import blob_data, unit_layer_scales
from tests.channels.test_autogate import WIDTH, conv_bn, gate_of, gated_exactly, model_of
from tests.channels.test_slicing import float64, masked_and_sliced  # noqa: F401 (float64 is a fixture)

L = keras.layers
ops = keras.ops


def head(x):
    return L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))


def analysis(model):
    lines = []
    analyze(model, width=WIDTH, print_fn=lines.append)
    return "\n".join(lines)


@pytest.mark.parametrize("merge", [
    lambda x, y: x * y, ops.multiply, lambda x, y: x + y, ops.add, lambda x, y: x - y, ops.maximum,
], ids=["mul", "ops.multiply", "add", "ops.add", "sub", "ops.maximum"])
def test_elementwise_ops_of_two_tensors_couple_them(merge):
    inputs = keras.Input((8, 8, 3))
    x = merge(conv_bn(inputs, 16, "a"), conv_bn(inputs, 16, "b"))
    graph = gated_exactly(model_of(inputs, head(conv_bn(x, 8, "after"))))
    assert gate_of(graph, "a") is not None and gate_of(graph, "a") is gate_of(graph, "b")
    assert gate_of(graph, "after") is not gate_of(graph, "a")


def test_ops_with_constants_and_activations_as_ops_pass_channels_on():
    inputs = keras.Input((8, 8, 3))
    x = ops.relu(conv_bn(inputs, 16, "c1") * 0.5)
    x = ops.relu6(x + 3.0) / 6.0  # hard sigmoid written out, as MobileNetV3 does
    x = ops.hard_silu(-x)
    x = conv_bn(x, 16, "c2")
    graph = gated_exactly(model_of(inputs, head(x)))
    assert gate_of(graph, "c1") is not None and gate_of(graph, "c2") is not None
    assert "operation" not in analysis(graph.model)  # every operation understood: no boundary


def test_adding_a_constant_makes_pruned_channels_non_zero_so_the_reader_is_gated_after_it():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", name="c1")(inputs) + 1.0
    model = model_of(inputs, head(L.Conv2D(8, 1, name="c2")(x)))
    graph = gated_exactly(model)
    add = next(r for r in graph.records if r.layer.name.startswith("add"))
    reader = graph.readers[id(add.out_info)][0]
    assert isinstance(reader, ChannelGate)  # the gate sits after `+ 1`, not only after c1


def test_add_of_a_one_channel_tensor_broadcasts_and_unmasks():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "c1")
    x = L.Add()([x, L.Conv2D(1, 1, name="one")(x)])  # pruned channels become `one`, not zero
    graph = gated_exactly(model_of(inputs, head(conv_bn(x, 8, "c2"))))
    assert gate_of(graph, "c1") is not None and gate_of(graph, "one") is None


def test_squeeze_excitation_written_with_ops_mean_reshape_and_hard_sigmoid():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "block")
    s = ops.reshape(ops.mean(x, axis=(1, 2)), (-1, 1, 1, 16))
    s = L.Conv2D(8, 1, activation="relu", name="se_reduce")(s)
    s = ops.hard_sigmoid(L.Conv2D(16, 1, name="se_expand")(s))
    graph = gated_exactly(model_of(inputs, head(x * s)))
    assert gate_of(graph, "se_expand") is gate_of(graph, "block") is not None
    assert gate_of(graph, "se_reduce") is not None


def squeeze_excitation_block(x, filters, name):
    """EfficientNet's: GlobalAveragePooling2D -> Reshape((1, 1, C)) -> Conv2D -> Conv2D -> Multiply."""
    s = L.GlobalAveragePooling2D(name=f"{name}_squeeze")(x)
    s = L.Reshape((1, 1, filters), name=f"{name}_reshape")(s)
    s = L.Conv2D(max(filters // 4, 1), 1, activation="swish", name=f"{name}_reduce")(s)
    s = L.Conv2D(filters, 1, activation="sigmoid", name=f"{name}_expand")(s)
    return L.Multiply(name=f"{name}_excite")([x, s])


def test_squeeze_excitation_through_reshape_prunes_with_the_block():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "expand")
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = squeeze_excitation_block(L.ReLU()(L.BatchNormalization(name="dw_bn")(x)), 16, "se")
    graph = gated_exactly(model_of(inputs, head(conv_bn(x, 8, "project"))))
    block = gate_of(graph, "expand")
    assert block is not None and gate_of(graph, "se_expand") is block
    slim = rebuild(graph.model, {block.name: 6})
    assert slim.get_layer("se_reduce").kernel.shape[2] == 6  # the excitation's channels are the block's
    assert slim.get_layer("se_expand").kernel.shape[3] == 6
    assert slim.get_layer("se_reshape").output.shape == (None, 1, 1, 6)


@pytest.mark.parametrize("newshape", [(-1, 8, 16, 8), (-1, 16)], ids=["channels-split", "batch-merged"])
def test_reshape_that_moves_channels_is_a_boundary(newshape):
    inputs = keras.Input((8, 8, 3))
    x = ops.reshape(conv_bn(inputs, 16, "before"), newshape)
    x = ops.reshape(x, (-1, 8, 8, 16))
    graph = gated_exactly(model_of(inputs, head(conv_bn(x, 16, "after"))))
    assert gate_of(graph, "before") is None and gate_of(graph, "after") is not None
    shown = f"({', '.join(str(d) for d in (None, *newshape[1:]))})"
    assert f"reshape from (None, 8, 8, 16) to {shown} moves channels" in analysis(graph.model)


def test_operation_keras_cannot_configure_is_kept_as_is():
    inputs = keras.Input((8, 8, 3))
    x = ops.clip(conv_bn(inputs, 16, "before"), np.zeros(16, "float32"), 6.0)  # array bounds: no config
    graph = gated_exactly(model_of(inputs, head(conv_bn(x, 16, "after"))))
    assert gate_of(graph, "before") is None and gate_of(graph, "after") is not None
    assert "Clip is not a keras operation type" in analysis(graph.model)


def test_unknown_operation_is_a_boundary_named_by_analyze():
    inputs = keras.Input((8, 8, 3))
    x = ops.flip(conv_bn(inputs, 16, "before"), axis=-1)  # mixes channels: must not be pruned around
    model = model_of(inputs, head(conv_bn(x, 16, "after")))
    graph = gated_exactly(model)
    assert gate_of(graph, "before") is None and gate_of(graph, "after") is not None
    text = analysis(model)
    assert "Flip is not a keras operation type" in text and "keras operation 'flip" in text


def test_per_channel_constant_is_a_boundary():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "before") * np.linspace(0.5, 1.5, 16).astype("float32")
    graph = gated_exactly(model_of(inputs, head(conv_bn(x, 16, "after"))))
    assert gate_of(graph, "before") is None
    assert "a constant array of their own" in analysis(graph.model)


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
def test_ops_and_squeeze_excitation_slice_like_masking(training, float64):  # noqa: F811
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "expand")
    x = squeeze_excitation_block(ops.hard_silu(x + conv_bn(inputs, 16, "side")), 16, "se")
    x = x * ops.sigmoid(L.Conv2D(1, 1, name="spatial")(x))
    gated = insert_gates(model_of(inputs, L.Dense(4)(L.GlobalAveragePooling2D()(conv_bn(x, 8, "out")))),
                         width=WIDTH)
    _, _, (masked, sliced), (masked_grads, sliced_grads), _ = masked_and_sliced(gated, training)
    np.testing.assert_allclose(sliced.numpy(), masked.numpy(), rtol=1e-8, atol=1e-10)
    for a, b in zip(masked_grads, sliced_grads):
        np.testing.assert_allclose(np.asarray(b), np.zeros(b.shape) if a is None else np.asarray(a), atol=1e-8)


def trained_tiny_model():
    """A small conv net with batch norm, trained three steps (weights and statistics no longer initial)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 3))
    x = conv_bn(inputs, 16, "c1")
    x = conv_bn(x, 16, "c2") + x
    model = model_of(inputs, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x)))
    x, y = blob_data(np.random.default_rng(0), 96)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    return model, x


def test_trained_weights_survive_insert_gates_and_make_supernet():
    model, x = trained_tiny_model()
    initial = keras.models.clone_model(model)
    assert not np.allclose(model.get_layer("c1_bn").moving_mean.numpy(), initial.get_layer("c1_bn").moving_mean)
    expected = np.asarray(model(x[:8], training=False))
    for gated in (insert_gates(model, width=WIDTH),
                  make_supernet(model, budget="0.5x", total_steps=10, width=WIDTH).supernet):
        assert ChannelGraph(gated).gates
        np.testing.assert_allclose(np.asarray(gated(x[:8], training=False)), expected, atol=1e-6)
        for name in ("c1", "c1_bn", "c2", "head"):
            for a, b in zip(gated.get_layer(name).weights, model.get_layer(name).weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())


A = keras.applications
LOGITS = dict(input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None)
APPLICATIONS = {
    "MobileNetV3Small": lambda: A.MobileNetV3Small(**LOGITS),
    "MobileNetV3Large": lambda: A.MobileNetV3Large(**LOGITS, include_preprocessing=False),
    "EfficientNetB0": lambda: A.EfficientNetB0(**LOGITS),
    "EfficientNetV2B0": lambda: A.EfficientNetV2B0(**LOGITS),
    "ConvNeXtTiny": lambda: unit_layer_scales(A.ConvNeXtTiny(**LOGITS)),
}
BOUNDARIES = {  # a boundary analyze() must name in each
    "MobileNetV3Small": "they are a model output",
    "MobileNetV3Large": "they are a model output",
    "EfficientNetB0": "Normalization is not a layer type",
    "EfficientNetV2B0": "they are a model input",
    "ConvNeXtTiny": "layer normalization over the channel axis",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_keras_applications_with_operations_and_squeeze_excitation(name):
    model = APPLICATIONS[name]()
    graph = gated_exactly(model, trials=1)  # full width equals the original; a random sub-network rebuilds exactly
    assert len(graph.gates) >= 10
    assert SlicedForward(graph).supported, SlicedForward(graph).reason
    text = analysis(model)
    assert BOUNDARIES[name] in text
    assert "not a keras operation type" not in text  # every keras operation in these models is understood
    if name.startswith("EfficientNet"):  # the squeeze-excitation prunes with its block (V2 has it from block 4)
        assert gate_of(graph, "block4a_se_expand") is gate_of(graph, "block4a_expand_conv") is not None
    if name == "ConvNeXtTiny":
        assert_convnext_expansions_prunable(graph)


def assert_convnext_expansions_prunable(graph):
    """Every block's inner 4x expansion (Dense C -> 4C -> C) has its own gate; the LayerNorm'd C stays whole."""
    blocks = [f"convnext_tiny_stage_{s}_block_{b}" for s, n in enumerate((3, 3, 9, 3)) for b in range(n)]
    assert [g.name for g in graph.gates] == [f"{block}_pointwise_conv_1_gate" for block in blocks]
    for block in blocks:
        assert gate_of(graph, f"{block}_pointwise_conv_2") is None
    config = {g.name: g.channels // 2 for g in graph.gates}
    slim = rebuild(graph.model, config, graph=graph)
    for block in blocks:
        expand, project = (slim.get_layer(f"{block}_pointwise_conv_{i}").kernel.shape for i in (1, 2))
        channels = graph.model.get_layer(f"{block}_pointwise_conv_1").units
        assert expand[1] == project[0] == channels // 2 and project[1] == channels // 4
