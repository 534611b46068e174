import keras
import numpy as np
import pytest

from dmcp_tf.channels.graph import ChannelGraph, GraphError
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.models import mobilenet_v2, resnet18, resnet50
from dmcp_tf.channels import gates as G
from dmcp_tf.search.calibration import calibrate_batch_norm
from tests.helpers import assert_rebuild_exact, tiny_supernet


@pytest.mark.parametrize(
    "build",
    [
        lambda: mobilenet_v2(1.5, input_shape=(32, 32, 3), num_classes=10),
        lambda: mobilenet_v2(0.25, input_shape=(32, 32, 3), num_classes=10, min_width=0.25 / 8, width_offset=0.25 / 8),
        lambda: resnet50(input_shape=(32, 32, 3), num_classes=10),
        lambda: resnet18(input_shape=(32, 32, 3), num_classes=10),
        tiny_supernet,
    ],
    ids=["mobilenet_v2", "mobilenet_v2_0.25", "resnet50", "resnet18", "tiny"],
)
def test_slim_model_equals_gated_subnetwork(build):
    assert_rebuild_exact(build(), np.random.default_rng(0))


def test_mobilenet_v2_block_added_to_its_input_shares_the_input_gate():
    """At multiplier 0.25 block1_1 maps the stem's 8 channels to 8 and adds them: one channel space, one gate."""
    gates = {g.name for g in ChannelGraph(mobilenet_v2(0.25, input_shape=(32, 32, 3), num_classes=10)).gates}
    assert "stem" in gates and "stage1" not in gates and {"stage2", "block2_1_expand", "last"} <= gates
    wider = {g.name for g in ChannelGraph(mobilenet_v2(0.5, input_shape=(32, 32, 3), num_classes=10)).gates}
    assert wider == gates | {"stage1"}  # no add there: stage 1 keeps its own gate


def test_rebuild_keeps_first_channels_and_names():
    model = tiny_supernet()
    slim = rebuild(model, {"g1": 8, "g2": 16})
    np.testing.assert_array_equal(slim.get_layer("c1").kernel.numpy(), model.get_layer("c1").kernel.numpy()[..., :8])
    np.testing.assert_array_equal(slim.get_layer("c2").kernel.numpy(), model.get_layer("c2").kernel.numpy()[:, :, :8, :16])
    assert slim.get_layer("head").kernel.shape == (16, 4)


def test_rebuild_from_scratch_reinitialises():
    model = tiny_supernet()
    slim = rebuild(model, {"g1": 8}, copy_weights=False)
    assert slim.get_layer("c1").kernel.shape == (3, 3, 3, 8)
    assert not np.allclose(slim.get_layer("c1").kernel.numpy(), model.get_layer("c1").kernel.numpy()[..., :8])


def test_full_config_rebuild_is_the_same_network():
    model = tiny_supernet()
    slim = rebuild(model)
    x = np.random.default_rng(1).normal(size=(3, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(slim(x), model(x), atol=1e-6)


@pytest.mark.parametrize(
    "config, message",
    [({"g9": 3}, "unknown gates"), ({"g1": 0}, "between 1 and 16"), ({"g1": 17}, "between 1 and 16"), ({"g1": 2.5}, "integer")],
)
def test_bad_configs_are_rejected(config, message):
    with pytest.raises(GraphError, match=message):
        rebuild(tiny_supernet(), config)


def test_gates_on_coupled_branches_must_be_shared():
    inputs = keras.Input((8, 8, 4))
    a = G.MarkovGate(width=(0.25, 1.0, 0.25), name="ga")(keras.layers.Conv2D(8, 1)(inputs))
    b = G.MarkovGate(width=(0.25, 1.0, 0.25), name="gb")(keras.layers.Conv2D(8, 1)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    with pytest.raises(GraphError, match="two different gates"):
        ChannelGraph(model)


def test_gate_that_a_path_skips_is_rejected():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 1, name="producer")(inputs)
    gated = G.MarkovGate(width=(0.25, 1.0, 0.25), name="g")(x)
    y = keras.layers.Conv2D(3, 1, name="reads_ungated")(x)
    z = keras.layers.Conv2D(3, 1, name="reads_gated")(gated)
    model = keras.Model(inputs, keras.layers.Add()([y, z]))
    with pytest.raises(GraphError, match="reads_ungated"):
        ChannelGraph(model)


def test_gate_on_model_output_is_rejected():
    inputs = keras.Input((8,))
    outputs = G.MarkovGate(width=(0.25, 1.0, 0.25), name="g")(keras.layers.Dense(8)(inputs))
    with pytest.raises(GraphError, match="model output"):
        ChannelGraph(keras.Model(inputs, outputs))


def test_batch_norm_calibration_averages_batches():
    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, bn(inputs))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, size=(16, 4)).astype("float32") for i in range(3)]
    assert calibrate_batch_norm(model, [(b, None) for b in batches]) == 3
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-4)
    assert bn.momentum == 0.99
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_batch_norm(model, [])
