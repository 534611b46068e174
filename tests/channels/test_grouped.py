"""Grouped convolutions prune whole groups; LayerNormalization keeps its channels whole."""

import keras
import numpy as np
import pytest

from dmcp_tf import costs
from dmcp_tf.channels.autogate import insert_gates
from dmcp_tf.search.autogate import analyze
from dmcp_tf.channels.graph import ChannelGraph, GraphError
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.channels.gates import MarkovGate
from tests.helpers import assert_rebuild_exact, grid_config
from tests.channels.test_autogate import WIDTH, conv_bn, gate_of, gated_exactly, model_of
from tests.channels.test_ops_nodes import analysis, head
from tests.channels.test_slicing import float64, masked_and_sliced  # noqa: F401 (float64 is a fixture)

L = keras.layers
GROUPS = 4  # 16 channels in groups of 4; WIDTH keeps 4 + k * 4 of them


def grouped_model(inputs_of_grouped=16, groups=GROUPS, use_bias=False):
    """conv16 -> BN -> Conv2D(16, groups) -> BN -> conv8 -> head."""
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, inputs_of_grouped, "c1")
    x = conv_bn(x, 16, "grouped", groups=groups, use_bias=use_bias)
    return model_of(inputs, head(conv_bn(x, 8, "c3", kernel=1)))


def gated_grouped(**kwargs):
    model = grouped_model(**kwargs)
    gated = insert_gates(model, width=WIDTH)
    x = np.random.default_rng(9).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(gated(x)), np.asarray(model(x)), atol=1e-5)  # full width: the original
    return gated


@pytest.mark.parametrize("use_bias", [False, True], ids=["no_bias", "bias"])
def test_grouped_conv_shares_its_input_gate_and_rebuilds_exactly(use_bias):
    graph = assert_rebuild_exact(gated_grouped(use_bias=use_bias), np.random.default_rng(0), trials=3,
                                 draw=grid_config)
    gate = gate_of(graph, "c1")
    assert gate is not None and gate_of(graph, "grouped") is gate
    assert graph.conv_group(gate) == 16 // GROUPS
    assert gate_of(graph, "c3") is not None and gate_of(graph, "c3") is not gate


def test_slim_grouped_conv_keeps_whole_groups_with_their_macs_and_params():
    gated = gated_grouped()
    graph = ChannelGraph(gated)
    config = {g.name: g.channels for g in graph.gates} | {"c1_gate": 8}
    slim = rebuild(gated, config, graph=graph)
    conv = slim.get_layer("grouped")
    assert (conv.filters, conv.groups) == (8, 2)  # two whole groups of 4 channels
    assert conv.kernel.shape == (3, 3, 4, 8)
    row = next(r for r in graph.layer_rows(config) if r["layer"] == "grouped")
    assert row["macs_kept"] == 3 * 3 * 4 * 8 * 8 * 8 and row["macs_full"] == 3 * 3 * 4 * 16 * 8 * 8
    assert costs.PARAMS.of(graph, config) == slim.count_params()


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
def test_grouped_conv_slices_like_masking(training, float64):  # noqa: F811
    gated = insert_gates(grouped_model(use_bias=True), width=WIDTH)
    _, config, (masked, sliced), (masked_grads, sliced_grads), _ = masked_and_sliced(gated, training,
                                                                                     draw=grid_config)
    np.testing.assert_allclose(sliced.numpy(), masked.numpy(), rtol=1e-8, atol=1e-10)
    for a, b in zip(masked_grads, sliced_grads):
        np.testing.assert_allclose(np.asarray(b), np.zeros(b.shape) if a is None else np.asarray(a), atol=1e-8)


def test_expected_sampling_keeps_whole_groups():
    gated = gated_grouped()
    gate = gate_of(ChannelGraph(gated), "c1")
    assert gate.channel_multiple == 4
    gate.alpha.assign([0.3, -0.2, 0.1])  # E[c] is not a multiple of 4
    assert gate.expected_channels() % 4 != 0 and gate.expected_sample() % 4 == 0
    rebuild(gated, {"c1_gate": gate.expected_sample()})


def test_a_configuration_must_keep_whole_groups():
    gated = gated_grouped()
    with pytest.raises(GraphError, match="multiple of 4"):
        rebuild(gated, {"c1_gate": 6})


def test_a_channel_order_must_move_whole_groups():
    gated = gated_grouped()
    groups_reversed = np.arange(16).reshape(4, 4)[::-1].reshape(-1)
    rebuild(gated, {"c1_gate": 8}, channel_order={"c1_gate": groups_reversed})
    with pytest.raises(ValueError, match="whole groups of 4"):
        rebuild(gated, {"c1_gate": 8}, channel_order={"c1_gate": np.arange(16)[::-1]})


def test_groups_that_do_not_divide_the_grid_are_a_boundary_named_by_analyze():
    model = grouped_model()
    gated = insert_gates(model, width=(0.1, 1.0, 0.1))  # 16 channels: 7 + k * 1, not whole groups of 4
    graph = ChannelGraph(gated)
    assert gate_of(graph, "c1") is None and gate_of(graph, "c3") is None  # c3 has 8 channels: too few
    lines = []
    analyze(model, width=(0.1, 1.0, 0.1), print_fn=lines.append)
    assert "split the groups of 4 channels of grouped convolution 'grouped'" in "\n".join(lines)


def test_grouped_conv_with_more_filters_than_inputs_is_a_boundary():
    model = grouped_model(inputs_of_grouped=8)  # 8 -> 16 channels in 4 groups
    graph = ChannelGraph(insert_gates(model, width=WIDTH))
    assert gate_of(graph, "c1") is None and gate_of(graph, "grouped") is None
    assert "grouped convolution (groups=4) from 8 to 16 channels" in analysis(model)


def test_a_gate_whose_grid_splits_groups_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = MarkovGate(width=(0.1, 1.0, 0.1), name="g")(L.Conv2D(16, 3, padding="same", name="c1")(inputs))
    x = L.Conv2D(16, 3, padding="same", groups=GROUPS, name="grouped")(x)
    with pytest.raises(GraphError, match="Gate 'g': keeping 7 \\+ k \\* 1 channels would split the groups"):
        ChannelGraph(model_of(inputs, head(x)))


def test_a_hand_placed_gate_on_grouped_channels_needs_their_channel_multiple():
    def model(channel_multiple):
        inputs = keras.Input((8, 8, 3))
        gate = MarkovGate(width=WIDTH, channel_multiple=channel_multiple, name="g")
        x = gate(L.Conv2D(16, 3, padding="same", name="c1")(inputs))
        x = L.Conv2D(16, 3, padding="same", groups=GROUPS, name="grouped")(x)
        return model_of(inputs, head(gate(x)))

    with pytest.raises(GraphError, match="make it with channel_multiple=4"):
        ChannelGraph(model(1))
    graph = ChannelGraph(model(4))
    assert graph.conv_group(graph.gates[0]) == 4


def test_layer_normalization_over_channels_is_a_boundary_analyze_explains():
    inputs = keras.Input((8, 8, 3))
    x = L.LayerNormalization(epsilon=1e-6, name="ln")(L.Conv2D(16, 3, padding="same", name="c1")(inputs))
    x = conv_bn(L.Conv2D(32, 1, name="expand")(x), 16, "c2")  # an inverted bottleneck after it, as in ConvNeXt
    graph = gated_exactly(model_of(inputs, head(x)))
    assert gate_of(graph, "c1") is None
    assert gate_of(graph, "expand") is not None and gate_of(graph, "c2") is not None
    text = analysis(graph.model)
    assert ("not pruned: they feed layer 'ln' (layer normalization over the channel axis: each position's "
            "mean and variance mix all its channels, so they are kept whole)") in text
    assert "not a layer type" not in text


def test_layer_normalization_over_other_axes_is_a_boundary_too():
    inputs = keras.Input((8, 8, 3))
    x = L.LayerNormalization(axis=(1, 2), name="ln")(L.Conv2D(16, 3, padding="same", name="c1")(inputs))
    graph = gated_exactly(model_of(inputs, head(conv_bn(x, 16, "c2"))))
    assert gate_of(graph, "c1") is None and gate_of(graph, "c2") is not None
    assert "layer normalization over axes [1, 2], not the channel axis" in analysis(graph.model)


def test_the_default_grid_prunes_groups_it_divides():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(conv_bn(inputs, 40, "c1"), 40, "grouped", groups=10)  # 4 + k * 4 channels of groups of 4
    gated = insert_gates(model_of(inputs, head(x)), width=(0.1, 1.0, 0.1))
    graph = assert_rebuild_exact(gated, np.random.default_rng(1), trials=3, draw=grid_config)
    assert gate_of(graph, "grouped") is gate_of(graph, "c1") is not None


def residual_grouped_block():
    """A ResNeXt-like block: grouped 3x3 and 1x1 convs added to their input."""
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(inputs, 16, "stem")
    y = conv_bn(conv_bn(x, 16, "grouped", groups=GROUPS), 16, "project", kernel=1)
    return model_of(inputs, head(conv_bn(L.Add()([x, y]), 8, "after")))


def test_a_residual_grouped_block_is_one_space_that_rebuilds_and_slices_exactly(float64):  # noqa: F811
    gated = insert_gates(residual_grouped_block(), width=WIDTH)
    graph = assert_rebuild_exact(gated, np.random.default_rng(2), trials=3, atol=1e-10, draw=grid_config)
    assert gate_of(graph, "stem") is gate_of(graph, "grouped") is gate_of(graph, "project") is not None
    _, _, (masked, sliced), _, _ = masked_and_sliced(gated, training=True, draw=grid_config)
    np.testing.assert_allclose(sliced.numpy(), masked.numpy(), rtol=1e-8, atol=1e-10)


def test_one_group_per_channel_prunes_like_a_depthwise_conv():
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(conv_bn(inputs, 16, "c1"), 16, "depthwise", groups=16)  # ConvNeXt writes depthwise convs so
    gated = insert_gates(model_of(inputs, head(x)), width=(0.1, 1.0, 0.1))
    graph = assert_rebuild_exact(gated, np.random.default_rng(3), trials=2)  # any channel count
    assert gate_of(graph, "depthwise") is gate_of(graph, "c1") is not None
    assert graph.conv_group(gate_of(graph, "c1")) == 1


@pytest.mark.parametrize("widths", [(8, 8), (6, 10)], ids=["aligned", "straddling"])
def test_concatenated_inputs_prune_only_where_segments_hold_whole_groups(widths):
    inputs = keras.Input((8, 8, 3))
    x = L.Concatenate()([conv_bn(inputs, widths[0], "a"), conv_bn(inputs, widths[1], "b")])
    x = L.ReLU()(L.Conv2D(16, 3, padding="same", groups=GROUPS, use_bias=False, name="grouped")(x))
    model = model_of(inputs, head(conv_bn(x, 8, "c3")))  # c3 reads the grouped conv's zeros: no gate needed there
    gated = insert_gates(model, width=(0.5, 1.0, 0.5))  # 8 channels: 4 + k * 4
    graph = assert_rebuild_exact(gated, np.random.default_rng(4), trials=3, draw=grid_config)
    if widths == (8, 8):
        assert gate_of(graph, "a") is not None and gate_of(graph, "b") is not None
    else:
        assert gate_of(graph, "a") is None and gate_of(graph, "b") is None
        assert "concatenated across the groups of grouped convolution 'grouped'" in analysis(model)


def test_a_grouped_conv_on_concatenated_channels_read_after_a_batch_norm_stays_whole():
    inputs = keras.Input((8, 8, 3))
    x = L.Concatenate()([conv_bn(inputs, 8, "a"), conv_bn(inputs, 8, "b")])
    model = model_of(inputs, head(conv_bn(x, 16, "grouped", groups=GROUPS)))  # no one gate fits after its BN
    graph = ChannelGraph(insert_gates(model, width=(0.5, 1.0, 0.5)))
    assert gate_of(graph, "a") is None and gate_of(graph, "b") is None


def test_baselines_and_rounding_keep_whole_groups():
    from dmcp_tf.search import baselines, sampling

    gated = gated_grouped()
    graph = ChannelGraph(gated)
    grouped = [g for g in graph.gates if g.channel_multiple > 1]
    assert grouped
    for fraction in (0.3, 0.55, 0.8):
        config, _, _ = baselines.uniform_config(graph, fraction * costs.MACS.of(graph), tolerance=0.5)
        assert all(config[g.name] % g.channel_multiple == 0 for g in grouped), config
        rebuild(gated, config)  # whole groups: the slim grouped conv builds
    rounded = sampling.round_config(graph, {g.name: g.channels // 2 + 1 for g in graph.gates}, 3)
    assert all(rounded[g.name] % g.channel_multiple == 0 for g in grouped), rounded
