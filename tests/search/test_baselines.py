"""Baseline channel choices (uniform, random, L1-norm) and rebuilding with a channel order."""

import keras
import numpy as np
import pytest

from dmcp_tf import costs
from dmcp_tf.channels.autogate import insert_gates
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.models import fashion_resnet, mobilenet_v2, mobilenet_v2_config
from dmcp_tf.search import baselines
from tests.helpers import randomize_batch_norm

L = keras.layers


def _branchy():
    """Concat of two gated branches, a depthwise conv, a residual add and a dense head."""
    inputs = keras.Input((10, 10, 3))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inputs)))
    b = L.ReLU()(L.BatchNormalization()(L.Conv2D(6, 1)(inputs)))
    x = L.Concatenate()([a, b])
    x = L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(x))
    y = L.BatchNormalization()(L.Conv2D(12, 1)(x))
    z = L.BatchNormalization()(L.Conv2D(12, 1)(inputs))
    x = L.ReLU()(L.Add()([y, z]))
    outputs = L.Dense(5)(L.GlobalAveragePooling2D()(x))
    return insert_gates(keras.Model(inputs, outputs), width=(0.25, 1.0, 0.25))


def _predict(model, x):
    return np.asarray(model(x, training=False))


@pytest.mark.parametrize("build", [_branchy, lambda: fashion_resnet(channels=(16, 32))], ids=["branchy", "resnet"])
def test_rebuild_with_a_permuted_channel_order_computes_the_same_function(build):
    model = build()
    rng = np.random.default_rng(0)
    randomize_batch_norm(model, rng)
    graph = ChannelGraph(model)
    order = {g.name: rng.permutation(g.channels) for g in graph.gates}
    x = rng.normal(size=(2,) + tuple(model.input_shape[1:])).astype("float32")
    reference = _predict(rebuild(model, graph=graph), x)
    permuted = rebuild(model, graph=graph, channel_order=order)
    np.testing.assert_allclose(_predict(permuted, x), reference, rtol=1e-4, atol=1e-5)
    weights = [w for layer in permuted.layers for w in layer.get_weights()]
    originals = [w for layer in rebuild(model, graph=graph).layers for w in layer.get_weights()]
    assert sum(not np.array_equal(a, b) for a, b in zip(weights, originals)) >= len(graph.gates)  # really permuted


def test_l1_order_ranks_filters_and_pruning_keeps_the_largest():
    model = fashion_resnet(channels=(16, 32))
    graph = ChannelGraph(model)
    stem = model.get_layer("stem_conv")
    scale = np.array([3, 1, 7, 5, 2, 8, 4, 6, 16, 9, 11, 10, 15, 12, 14, 13], "float32")
    kernel = np.ones(stem.kernel.shape, "float32") * scale
    stem.kernel.assign(kernel)
    order = baselines.l1_channel_order(graph)
    assert list(order["stem"][:5]) == [8, 12, 14, 15, 13]
    assert list(order["stem"]) == list(np.argsort(-scale))
    slim = rebuild(model, {"stem": 9}, channel_order=order)
    np.testing.assert_array_equal(slim.get_layer("stem_conv").kernel.numpy(), kernel[..., order["stem"][:9]])


def test_l1_order_sums_norms_of_coupled_producers():
    model = fashion_resnet(channels=(16, 32))
    graph = ChannelGraph(model)
    gate = next(g for g in graph.gates if g.name == "stage2_out")
    producers = [r.layer for r in graph.first_records().values()
                 if r.rule.role == "produce" and any(graph.space(s).gate is gate for s in r.out_layout)]
    assert len(producers) >= 2  # the blocks' last convs and the shortcut projection
    rng = np.random.default_rng(1)
    total = np.zeros(gate.channels)
    for layer in producers:
        kernel = rng.normal(size=layer.kernel.shape).astype("float32")
        layer.kernel.assign(kernel)
        total += np.abs(kernel).reshape(-1, gate.channels).sum(axis=0)
    np.testing.assert_array_equal(baselines.l1_channel_order(graph)["stage2_out"], np.argsort(-total, kind="stable"))


def test_bad_channel_order_is_refused():
    model = fashion_resnet(channels=(16, 32))
    with pytest.raises(ValueError, match="permutation of 0..15"):
        rebuild(model, channel_order={"stem": [0, 1, 2]})
    with pytest.raises(ValueError, match="unknown gate 'nope'"):
        rebuild(model, channel_order={"nope": [0]})


def test_uniform_config_matches_paper_structures_macs():
    graph = ChannelGraph(mobilenet_v2(1.5))
    for name in ("300M", "59M"):
        target = costs.MACS.of(graph, mobilenet_v2_config(name))
        config, fraction, macs = baselines.uniform_config(graph, target)
        assert macs == costs.MACS.of(graph, config) and abs(macs - target) <= 0.01 * target
        scaled = baselines.scaled_config(graph, {g.name: fraction for g in graph.gates})
        assert abs(macs - target) <= abs(costs.MACS.of(graph, scaled) - target) and 0 < fraction < 1
        # Uniform up to one channel per gate (rounding up some gates fills the steps of a single scale).
        assert all(abs(config[g.name] - fraction * g.channels) <= 1.0 + 1e-9 for g in graph.gates)
    equal = ChannelGraph(fashion_resnet(channels=(32, 32, 32), blocks=3))  # one scale jumps ~6% of the MACs here
    config, _, macs = baselines.uniform_config(equal, 0.5 * costs.MACS.of(equal), tolerance=0.01)
    assert abs(macs - 0.5 * costs.MACS.of(equal)) <= 0.01 * 0.5 * costs.MACS.of(equal) and max(config.values()) - min(config.values()) <= 1
    tiny = ChannelGraph(fashion_resnet())
    with pytest.raises(ValueError, match="MACs move in steps"):  # outside the network: said, not hidden
        baselines.uniform_config(tiny, 2 * costs.MACS.of(tiny))


def test_random_configs_meet_the_budget_and_differ():
    graph = ChannelGraph(fashion_resnet())
    target = 0.3 * costs.MACS.of(graph)
    configs = [baselines.random_config(graph, target, np.random.default_rng(seed), tolerance=0.02)
               for seed in (0, 1, 0)]
    for config, macs in configs:
        assert macs == costs.MACS.of(graph, config) and abs(macs - target) <= 0.02 * target
        assert all(1 <= config[g.name] <= g.channels for g in graph.gates)
    assert configs[0] == configs[2] and configs[0][0] != configs[1][0]
    uniform, fraction, _ = baselines.uniform_config(graph, target, tolerance=0.03)
    assert configs[0][0] != uniform  # not just uniform scaling
