"""A user's own layers with a registered rule are pruned like built-in ones; without one they are boundaries."""

import keras
import numpy as np
import pytest

import dmcp_tf
from dmcp_tf import costs
from dmcp_tf.channels import layer_rules
from dmcp_tf.channels.autogate import insert_gates
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.layer_rules import PRODUCE, LayerRule, spatial_size
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.channels.slicing import SlicedForward
from tests.helpers import assert_rebuild_exact
from tests.channels.test_autogate import WIDTH, conv_bn, gate_of, gated_exactly, model_of
from tests.channels.test_ops_nodes import analysis, head
from tests.channels.test_slicing import float64, masked_and_sliced  # noqa: F401 (float64 is a fixture)

L = keras.layers


class ChannelScale(L.Layer):
    """`y = x * scale`, one learned scale per channel (the README's example)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="scale")

    def call(self, x):
        return x * self.scale


class ChannelScaleRule(LayerRule):
    weight_axes = {"scale": (0, None)}  # the scale's axis 0 follows the input channels

    def macs(self, layer, in_shape, out_shape, cin, cout):
        return cin * spatial_size(out_shape)

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        return args[0] * layer.scale[:cin]


class Pointwise(L.Layer):
    """A hand-written 1x1 convolution: `units` output channels from every input channel."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class PointwiseRule(LayerRule):
    role = PRODUCE
    weight_axes = {"kernel": (0, 1)}
    width_key = "units"

    def macs(self, layer, in_shape, out_shape, cin, cout):
        return cin * cout * spatial_size(out_shape)

    def sliced_call(self, layer, args, kwargs, cin, cout, training):
        return keras.ops.matmul(args[0], layer.kernel[:cin, :cout])


@pytest.fixture
def custom_rules():
    """Registers the two rules for one test; the registry is as before afterwards."""
    dmcp_tf.register_rule(ChannelScale, ChannelScaleRule())
    dmcp_tf.register_rule(Pointwise, PointwiseRule())
    yield
    layer_rules.unregister_rule(ChannelScale)
    layer_rules.unregister_rule(Pointwise)


def custom_model():
    """conv -> ChannelScale -> Pointwise -> batch norm -> conv -> head, on 8x8 images."""
    inputs = keras.Input((8, 8, 3))
    x = ChannelScale(name="scale")(conv_bn(inputs, 16, "c1"))
    x = L.ReLU()(L.BatchNormalization(name="pw_bn")(Pointwise(12, name="pw")(x)))
    return model_of(inputs, head(conv_bn(x, 8, "c2")))


def test_registered_custom_layers_are_gated_and_rebuild_exactly(custom_rules):
    graph = gated_exactly(custom_model(), trials=3)  # outputs, MACs and params of random sub-networks
    assert gate_of(graph, "c1") is not None and gate_of(graph, "pw") is not None  # Pointwise produces channels
    assert gate_of(graph, "scale") is gate_of(graph, "c1")  # ChannelScale passes c1's channels on
    config = {gate_of(graph, "c1").name: 4, gate_of(graph, "pw").name: 6, gate_of(graph, "c2").name: 5}
    slim = rebuild(graph.model, config, graph=graph)
    full_scale = next(r.layer for r in graph.records if r.layer.name == "scale").scale.numpy()
    np.testing.assert_array_equal(slim.get_layer("scale").scale.numpy(), full_scale[:4])
    assert slim.get_layer("pw").kernel.shape == (4, 6)
    hw = 8 * 8  # c1, scale, pw, c2 and the head, by hand
    assert costs.MACS.of(graph, config) == 9 * 3 * 4 * hw + 4 * hw + 4 * 6 * hw + 9 * 6 * 5 * hw + 5 * 3
    params = (9 * 3 * 4 + 4 + 4 * 4) + 4 + (4 * 6 + 6 * 4) + (9 * 6 * 5 + 5 + 5 * 4) + (5 * 3 + 3)
    assert costs.PARAMS.of(graph, config) == slim.count_params() == params


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
def test_sliced_forward_runs_registered_layers_like_masking(training, custom_rules, float64):  # noqa: F811
    gated = insert_gates(custom_model(), width=WIDTH)
    _, _, (masked, sliced), (masked_grads, sliced_grads), _ = masked_and_sliced(gated, training)
    np.testing.assert_allclose(sliced.numpy(), masked.numpy(), rtol=1e-8, atol=1e-10)
    for a, b in zip(masked_grads, sliced_grads):
        np.testing.assert_allclose(np.asarray(b), np.zeros(b.shape) if a is None else np.asarray(a), atol=1e-8)


def test_rule_without_sliced_call_falls_back_to_masking(custom_rules):
    class UnslicedScaleRule(LayerRule):
        weight_axes = ChannelScaleRule.weight_axes

    dmcp_tf.register_rule(ChannelScale, UnslicedScaleRule())
    forward = SlicedForward(ChannelGraph(insert_gates(custom_model(), width=WIDTH)))
    assert not forward.supported
    assert "'scale' (ChannelScale) is not sliced" in forward.reason and "sliced_call" in forward.reason


def test_unregistered_custom_layer_is_a_boundary_named_by_analyze():
    assert layer_rules.rule_for(ChannelScale()) is None  # nothing left over from the registering tests
    inputs = keras.Input((8, 8, 3))
    x = conv_bn(ChannelScale(name="scale")(conv_bn(inputs, 16, "before")), 16, "after")
    model = model_of(inputs, head(x))
    graph = gated_exactly(model)
    assert gate_of(graph, "before") is None and gate_of(graph, "after") is not None
    text = analysis(model)
    assert "layer 'scale'" in text and "ChannelScale is not a layer type" in text


@pytest.mark.parametrize("layer_class, rule, error, message", [
    (ChannelScale, object(), TypeError, "must be an instance of dmcp_tf.channels.layer_rules.LayerRule"),
    (ChannelScale, ChannelScaleRule, TypeError, "must be an instance"),  # the class, not an instance
    (int, ChannelScaleRule(), TypeError, "takes a keras.layers.Layer subclass"),
    (ChannelScale(), ChannelScaleRule(), TypeError, "takes a keras.layers.Layer subclass"),  # an instance
    (ChannelScale, type("Odd", (LayerRule,), {"role": "mix"})(), ValueError, "role 'mix'"),
], ids=["not-a-rule", "rule-class", "not-a-layer", "layer-instance", "unknown-role"])
def test_bad_registrations_are_refused_clearly(layer_class, rule, error, message):
    with pytest.raises(error, match=message):
        dmcp_tf.register_rule(layer_class, rule)
    assert layer_rules.rule_for(ChannelScale()) is None


def test_unregistering_an_unknown_class_is_a_clear_error():
    with pytest.raises(KeyError, match="No rule is registered for 'ChannelScale'"):
        layer_rules.unregister_rule(ChannelScale)
