"""Automatic gate insertion: any functional model becomes a supernet, and comes back slim."""

import keras
import numpy as np
import pytest

from dmcp_tf import costs
from dmcp_tf.channels.autogate import insert_gates
from dmcp_tf.channels.graph import ChannelGraph, GraphError
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.search import sampling
from dmcp_tf.search.autogate import analyze, make_supernet
from dmcp_tf.channels.gates import MarkovGate
from tests.helpers import assert_rebuild_exact, blob_data

L = keras.layers
WIDTH = (0.25, 1.0, 0.25)


def conv_bn(x, filters, name, **kwargs):
    x = L.Conv2D(filters, kwargs.pop("kernel", 3), padding="same", name=name, **kwargs)(x)
    return L.ReLU()(L.BatchNormalization(name=f"{name}_bn")(x))


def gated_exactly(model, trials=2):
    """Inserts gates; full width equals the original; random sub-networks rebuild exactly."""
    gated = insert_gates(model, width=WIDTH)
    x = np.random.default_rng(9).normal(size=(2,) + tuple(model.input_shape[1:])).astype("float32")
    np.testing.assert_allclose(np.asarray(gated(x)), np.asarray(model(x)), atol=1e-5)
    return assert_rebuild_exact(gated, np.random.default_rng(0), trials)


def gate_of(graph, layer_name):
    """The gate governing the output channels of a layer."""
    record = next(r for r in graph.records if r.layer.name == layer_name)
    return graph.space(record.out_layout[0]).gate


def model_of(inputs, outputs):
    return keras.Model(inputs, outputs)


def test_residual_add_with_identity_and_projection_shortcuts():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "stem")
    y = conv_bn(conv_bn(x, 16, "a1"), 16, "a2")
    x = L.Add()([x, y])  # identity shortcut: a2 couples with the stem
    p = L.BatchNormalization(name="proj_bn")(L.Conv2D(32, 1, strides=2, name="proj")(x))
    y = conv_bn(conv_bn(x, 32, "b1", strides=2), 32, "b2")
    x = L.Add()([p, y])  # projection shortcut: b2 couples with proj
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))
    assert gate_of(graph, "stem") is gate_of(graph, "a2")
    assert gate_of(graph, "proj") is gate_of(graph, "b2")
    assert gate_of(graph, "a1") is not gate_of(graph, "stem")
    assert len(graph.gates) == 4


def test_squeeze_and_excitation_multiply_broadcasts_channels():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "c1")
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(8, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(16, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply()([x, s])
    x = L.Multiply()([x, L.Conv2D(1, 1, activation="sigmoid", name="spatial")(x)])  # broadcast over channels
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.Flatten()(x))))
    assert gate_of(graph, "excite") is gate_of(graph, "c1")
    assert gate_of(graph, "squeeze") is not None
    assert gate_of(graph, "spatial") is None  # one channel: too few for the grid


def test_concatenate_unions_ranges_of_several_gates():
    inputs = keras.Input((8, 8, 3))
    a, b = conv_bn(inputs, 16, "a"), conv_bn(inputs, 8, "b")
    x = L.Concatenate()([a, b, inputs])
    x = conv_bn(x, 16, "after")
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalMaxPooling2D()(x))))
    assert gate_of(graph, "a") is not gate_of(graph, "b")
    slim = rebuild(graph.model, {gate_of(graph, "a").name: 5, gate_of(graph, "b").name: 2})
    assert slim.get_layer("after").kernel.shape[2] == 5 + 2 + 3


@pytest.mark.parametrize("merge", [L.Subtract, L.Average, L.Maximum, L.Minimum])
def test_elementwise_merges_couple_their_inputs(merge):
    inputs = keras.Input((8, 8, 3))
    x = merge()([conv_bn(inputs, 16, "a"), conv_bn(inputs, 16, "b")])
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))
    assert gate_of(graph, "a") is gate_of(graph, "b")


def test_depthwise_and_separable_convolutions():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "c1")
    x = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    x = L.SeparableConv2D(24, 3, depth_multiplier=2, padding="same", name="sep")(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))
    assert gate_of(graph, "dw") is gate_of(graph, "c1")  # depthwise keeps its input's channels
    assert gate_of(graph, "sep") is not None


def test_dilated_strided_and_transposed_convolutions():
    inputs = keras.Input((16, 16, 3))
    x = conv_bn(inputs, 16, "dilated", dilation_rate=2)
    x = conv_bn(x, 16, "strided", strides=2)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2DTranspose(12, 3, strides=2, padding="same", name="up")(x)))
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))
    assert {gate_of(graph, n) is not None for n in ("dilated", "strided", "up")} == {True}
    assert costs.MACS.of(ChannelGraph(graph.model)) > 0


@pytest.mark.parametrize("fold", [lambda: L.Flatten(), lambda: L.Reshape((4 * 4 * 16,))], ids=["flatten", "reshape"])
def test_flatten_then_dense_prunes_feature_indices(fold):
    inputs = keras.Input((8, 8, 3))
    x = L.MaxPooling2D()(conv_bn(inputs, 16, "c1"))
    x = L.Dense(12, activation="relu", name="fc")(fold()(x))
    graph = gated_exactly(model_of(inputs, L.Dense(3)(x)))
    slim = rebuild(graph.model, {gate_of(graph, "c1").name: 6})
    assert slim.get_layer("fc").kernel.shape == (4 * 4 * 6, graph.model.get_layer("fc").units)


def test_pass_through_layers_padding_pooling_dropout_activations():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "c1")
    x = L.ZeroPadding2D(1)(x)
    x = L.AveragePooling2D(2)(x)
    x = L.Activation("swish")(x)
    x = L.LeakyReLU()(x)
    x = L.Dropout(0.3)(x)
    x = conv_bn(x, 16, "c2", kernel=1)
    x = L.Activation("sigmoid")(x)  # not zero-preserving: the next reader gets the gate again
    x = L.Conv2D(8, 1, name="c3")(x)
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))
    assert gate_of(graph, "c2") is not None


def test_preprocessing_at_the_input_is_not_pruned():
    inputs = keras.Input((8, 8, 3))
    norm = L.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.1, 0.2, 0.3])
    x = conv_bn(norm(L.Rescaling(1 / 255.0)(inputs)), 16, "c1")
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))
    assert len(graph.gates) == 1


def test_nested_backbone_transfer_learning_pattern():
    backbone_in = keras.Input((8, 8, 3))
    backbone = keras.Model(backbone_in, conv_bn(conv_bn(backbone_in, 16, "b1"), 24, "b2"), name="backbone")
    inputs = keras.Input((8, 8, 3))
    x = backbone(L.Rescaling(2.0)(inputs))
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    graph = gated_exactly(model_of(inputs, L.Dense(3, name="head")(x)))
    assert gate_of(graph, "b1") is not None and gate_of(graph, "b2") is not None


def test_layer_shared_at_several_call_sites():
    shared = L.Conv2D(16, 3, padding="same", name="shared")
    inputs = keras.Input((8, 8, 3))
    a = L.ReLU()(L.BatchNormalization(name="bn_a")(shared(inputs)))
    b = L.ReLU()(L.BatchNormalization(name="bn_b")(shared(L.Rescaling(0.5)(inputs))))
    x = L.Concatenate()([a, b])
    graph = gated_exactly(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))
    assert len(graph.gates) == 1  # both calls keep the same channels


def test_excluded_layers_keep_their_channels():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(conv_bn(conv_bn(inputs, 16, "keep_me"), 16, "stage_a"), 16, "stage_b")
    model = model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    gated = insert_gates(model, width=WIDTH, exclude=["keep_me", "stage_.*"])
    assert ChannelGraph(gated).gates == []
    gated = insert_gates(model, width=WIDTH, exclude=["stage_b"])
    assert [g.name for g in ChannelGraph(gated).gates] == ["keep_me_gate", "stage_a_gate"]


def test_unknown_layer_is_a_boundary_and_named_in_analysis():
    class Shuffle(L.Layer):  # mixes channels: dmcp_tf must not prune around it
        def call(self, x):
            return keras.ops.flip(x, axis=-1)

    inputs = keras.Input((8, 8, 3))
    x = Shuffle(name="shuffle")(conv_bn(inputs, 16, "before"))
    x = conv_bn(x, 16, "after")
    model = model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    graph = gated_exactly(model)
    assert gate_of(graph, "before") is None and gate_of(graph, "after") is not None
    lines = []
    analyze(model, width=WIDTH, print_fn=lines.append)
    assert "shuffle" in "\n".join(lines) and "Shuffle is not a layer type" in "\n".join(lines)


def test_hand_gate_before_an_unknown_layer_is_a_clear_error():
    class Shuffle(L.Layer):
        def call(self, x):
            return keras.ops.flip(x, axis=-1)

    inputs = keras.Input((8, 8, 3))
    x = MarkovGate(width=WIDTH, name="my_gate")(conv_bn(inputs, 16, "c1"))
    x = Shuffle(name="mystery")(x)
    with pytest.raises(GraphError, match="my_gate.*mystery.*Shuffle"):
        ChannelGraph(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))


def test_already_gated_model_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = MarkovGate(width=WIDTH, name="g")(conv_bn(inputs, 16, "c1"))
    with pytest.raises(GraphError, match="already has gates"):
        insert_gates(model_of(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x))))


def test_keras_resnet50_groups_are_the_coupled_sets():
    model = keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10)
    graph = gated_exactly(model, trials=1)
    assert len(graph.gates) == 1 + 16 * 2 + 4
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        stage_gate = gate_of(graph, f"conv{stage}_block1_0_conv")
        assert all(gate_of(graph, f"conv{stage}_block{b}_3_conv") is stage_gate for b in range(1, blocks + 1))
        assert gate_of(graph, f"conv{stage}_block1_1_conv") is not stage_gate
    assert len({gate_of(graph, f"conv{s}_block1_0_conv").name for s in (2, 3, 4, 5)}) == 4


def test_keras_mobilenet_v2_groups_are_the_coupled_sets():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.5, weights=None, classes=10)
    graph = gated_exactly(model, trials=1)
    assert gate_of(graph, "block_1_project") is gate_of(graph, "block_2_project")  # block_2_add
    assert gate_of(graph, "block_3_project") is gate_of(graph, "block_5_project")
    assert gate_of(graph, "block_2_depthwise") is gate_of(graph, "block_2_expand")
    assert gate_of(graph, "block_1_project") is not gate_of(graph, "block_3_project")


@pytest.mark.slow
def test_keras_application_search_rebuild_and_tflite(tmp_path):
    from dmcp_tf.deploy import export
    from dmcp_tf.search.supernet import default_weight_optimizer

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.5, weights=None, classes=4)
    x, y = blob_data(np.random.default_rng(0), 256, (32, 32, 3))
    # No warm-up: the search step (weights and gates) is traced once; tracing a 50-gate model is the cost here.
    model = make_supernet(backbone, budget="0.5x", total_steps=16, warmup_fraction=0.0)
    assert model.outputs_probabilities  # keras.applications end in a softmax
    model.compile(weight_optimizer=default_weight_optimizer(16, 0.05))
    model.initialize_gates("budget")
    alphas = [g.alpha.numpy() for g in model.gates]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1]) and np.isfinite(history["arch_loss"][-1])
    assert any(not np.allclose(a, g.alpha.numpy()) for a, g in zip(alphas, model.gates))  # the gates moved
    config = sampling.expected_config(model.graph)
    slim = rebuild(model.supernet, config)
    slim_macs = costs.MACS.of(ChannelGraph(slim))
    assert slim_macs == costs.MACS.of(model.graph, config)  # the slim model costs what the search counted
    # 16 steps from the budget's uniform width on untrained weights: near the budget, not settled.
    assert slim_macs == pytest.approx(0.5 * costs.MACS.of(ChannelGraph(backbone)), rel=0.15)
    path = export.export_tflite(slim, tmp_path / "slim.tflite")
    parity = export.tflite_parity(path, slim, x[:64], outputs_are_logits=False)
    assert parity.top1_agreement >= 0.99
