"""The per-layer-type facts of a `LayerRule` (TFLite fusing, weight decay, a gate's kept groups) are read
from the registered rule: the built-in rules keep their behaviour, a user's rule states its own."""

import keras
import numpy as np
import pytest

import dmcp_tf
from dmcp_tf.channels import layer_rules
from dmcp_tf.channels.gates import BernoulliGate, MarkovGate
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.layer_rules import DenseRule, GateRule, LayerRule
from dmcp_tf.costs import latency
from dmcp_tf.search import search_init
from dmcp_tf.search.supernet import DMCPModel
from tests.channels.test_register_rule import ChannelScale, ChannelScaleRule

L = keras.layers


class FusedScaleRule(ChannelScaleRule):
    """TFLite folds the scale into the convolution before it; the search decays it."""

    decayed_weights = ("scale",)

    def fused(self, layer):
        return True


class UndecayedDense(L.Dense):
    pass


class UndecayedDenseRule(DenseRule):
    decayed_weights = ()


class SquareGate(MarkovGate):
    pass


class SquareGateRule(GateRule):
    """Keeps `num_groups * p ** 2` groups in expectation."""

    def kept_groups(self, gate, p):
        return float(gate.num_groups * p**2)


@pytest.fixture
def registered():
    """Registers `rules` (layer class -> rule) for one test; the registry is as before afterwards."""
    added = set()

    def register(rules):
        for layer_class, rule in rules.items():
            dmcp_tf.register_rule(layer_class, rule)
            added.add(layer_class)

    yield register
    for layer_class in added:
        layer_rules.unregister_rule(layer_class)


def scaled_supernet():
    """conv -> bn -> gate -> scale -> relu -> pool -> dense -> dense."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = MarkovGate(width=(0.25, 1.0, 0.25), name="gate")(x)
    x = L.ReLU(name="relu")(ChannelScale(name="scale")(x))
    x = UndecayedDense(6, name="hidden")(L.GlobalAveragePooling2D(name="pool")(x))
    return keras.Model(inputs, L.Dense(4, name="head")(x))


def timed(model):
    return {r.layer.name for r in latency.timed_records(ChannelGraph(model))}


def decayed(model):
    return {v.path for v in DMCPModel(model, budget="0.5x", total_steps=10)._decayed}


def test_built_in_rules_keep_their_facts(registered):
    inputs = keras.Input((4, 4, 8))
    x = L.Conv2D(8, 1, name="conv")(inputs)
    for layer in (L.BatchNormalization(name="bn"), L.ReLU(name="relu"), L.Activation("relu6", name="relu6"),
                  L.Activation("sigmoid", name="sigmoid"), L.Dropout(0.1, name="dropout"),
                  L.SpatialDropout2D(0.1, name="spatial"), L.MaxPooling2D(name="max"), L.Flatten(name="flat"),
                  L.Reshape((1, 1, -1), name="reshape")):
        x = layer(x)
    assert timed(keras.Model(inputs, x)) == {"conv", "sigmoid", "max"}
    gate = MarkovGate(width=(0.1, 1.0, 0.1))
    assert layer_rules.rule_for(gate).fused(gate)
    registered({ChannelScale: ChannelScaleRule()})
    assert decayed(scaled_supernet()) == {"conv/kernel", "hidden/kernel", "head/kernel"}


def test_a_registered_rule_states_fusing_and_decay(registered):
    registered({ChannelScale: ChannelScaleRule()})
    assert "scale" in timed(scaled_supernet())
    registered({ChannelScale: FusedScaleRule(), UndecayedDense: UndecayedDenseRule()})
    model = scaled_supernet()
    assert "scale" not in timed(model)
    assert decayed(model) == {"conv/kernel", "scale/scale", "head/kernel"}


@pytest.mark.parametrize("fraction", [0.3, 0.8])
def test_a_registered_gate_rule_says_how_many_groups_it_keeps(registered, fraction):
    registered({SquareGate: SquareGateRule()})
    gates = {cls: cls(width=(0.1, 1.0, 0.1)) for cls in (SquareGate, MarkovGate, BernoulliGate)}
    for gate in gates.values():
        gate.build((None, 40))
    alphas = {cls: search_init.alpha_for_fraction(gate, fraction) for cls, gate in gates.items()}
    gate = gates[SquareGate]
    p = 1 / (1 + np.exp(-alphas[SquareGate]))
    assert gate.prefix + gate.group * gate.num_groups * p**2 == pytest.approx(fraction * gate.channels, abs=1e-3)
    assert alphas[SquareGate] != pytest.approx(alphas[MarkovGate], abs=0.1)
    assert alphas[BernoulliGate] != pytest.approx(alphas[MarkovGate], abs=0.1)


def test_a_layer_without_a_rule_gets_the_default_decay():
    inputs = keras.Input((8, 3))
    x = L.Flatten()(L.Conv1D(4, 3, name="conv1d")(inputs))  # Conv1D has no rule
    model = keras.Model(inputs, L.Dense(4, name="head")(x))
    ids = layer_rules.decayed_weight_ids(model)
    assert {v.path for v in model.weights if id(v) in ids} == {"conv1d/kernel", "head/kernel"}
    assert LayerRule.decayed_weights == layer_rules.DECAYED_WEIGHTS
