"""Sliced sub-networks: same outputs and gradients as masked ones, at real width."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmcp_tf.channels.autogate import insert_gates
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.slicing import SlicedForward
from dmcp_tf.models import mobilenet_v2, resnet50
from dmcp_tf.channels import gates as G
from tests.helpers import random_config, randomize_batch_norm, tiny_supernet


@pytest.fixture
def float64():
    """Float64 models: masked and sliced runs then agree to rounding, not to float32 noise
    amplified by dozens of training-mode batch norms."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # the global policy may already exist as float32
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def masked_and_sliced(model, training, seed=0, draw=random_config):
    rng = np.random.default_rng(seed)
    randomize_batch_norm(model, rng)
    graph = ChannelGraph(model)
    forward = SlicedForward(graph)
    assert forward.supported, forward.reason
    config = draw(graph, rng)
    widths = {g: tf.constant(config[g.name]) for g in graph.gates}
    dtype = keras.config.floatx()
    x = tf.constant(rng.normal(size=(4,) + tuple(model.input_shape[1:])).astype(dtype))
    weights = [v for v in model.trainable_variables if "alpha" not in v.path]
    moving = [v for v in model.non_trainable_variables if "moving_" in v.path]  # means and variances
    start = [v.numpy().copy() for v in moving]
    probe = tf.constant(rng.normal(size=(4, model.output_shape[-1])).astype(dtype))  # a linear loss
    with tf.GradientTape() as tape:
        with G.selection(G.Selection(G.SUBNET, widths)):
            masked = model(x, training=training)
        masked_loss = tf.reduce_sum(tf.cast(masked, dtype) * probe)  # outputs are half precision under a mixed policy
    masked_grads = tape.gradient(masked_loss, weights)
    after_masked = [v.numpy().copy() for v in moving]
    for v, s in zip(moving, start):
        v.assign(s)
    with tf.GradientTape() as tape:
        sliced = forward(x, widths, training=training)
        sliced_loss = tf.reduce_sum(tf.cast(sliced, dtype) * probe)
    sliced_grads = tape.gradient(sliced_loss, weights)
    return graph, config, (masked, sliced), (masked_grads, sliced_grads), (moving, start, after_masked)


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize(
    "build",
    [tiny_supernet, lambda: mobilenet_v2(1.5, input_shape=(32, 32, 3), num_classes=10),
     lambda: resnet50(input_shape=(32, 32, 3), num_classes=10)],
    ids=["tiny", "mobilenet_v2", "resnet50"],
)
def test_sliced_outputs_and_gradients_equal_masked(build, training, float64):
    _, _, (masked, sliced), (masked_grads, sliced_grads), _ = masked_and_sliced(build(), training)
    np.testing.assert_allclose(sliced.numpy(), masked.numpy(), rtol=1e-8, atol=1e-8)
    masked_grads = [np.zeros(b.shape) if a is None else np.asarray(a) for a, b in zip(masked_grads, sliced_grads)]
    scale = max(np.abs(a).max() for a in masked_grads)
    for a, b in zip(masked_grads, sliced_grads):
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-6, atol=1e-9 * scale)


def test_sliced_batch_norm_updates_kept_channels_only(float64):
    graph, config, _, _, (moving, start, after_masked) = masked_and_sliced(tiny_supernet(), training=True)
    bn1 = next(i for i, v in enumerate(moving) if v.path.startswith("bn1"))
    kept = config["g1"]
    np.testing.assert_allclose(moving[bn1].numpy()[:kept], after_masked[bn1][:kept], rtol=1e-10)
    np.testing.assert_array_equal(moving[bn1].numpy()[kept:], start[bn1][kept:])


def test_keras_applications_mobilenet_v2_slices(float64):
    model = insert_gates(keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None))
    _, _, (masked, sliced), _, _ = masked_and_sliced(model, training=True)
    np.testing.assert_allclose(sliced.numpy(), masked.numpy(), rtol=1e-8, atol=1e-10)


def test_unsliceable_graph_falls_back_with_a_reason():
    inputs = keras.Input((8, 8, 3))
    a = G.MarkovGate(width=(0.25, 1.0, 0.25), name="a")(keras.layers.Conv2D(8, 3)(inputs))
    b = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Concatenate()([a, b])
    forward = SlicedForward(ChannelGraph(keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))))
    assert not forward.supported
    assert "concatenated" in forward.reason or "Concatenate" in forward.reason
    with pytest.raises(ValueError, match="cannot be sliced"):
        forward(np.zeros((1, 8, 8, 3), "float32"), {})


def test_float32_batch_norm_is_fused_and_equals_masked():
    """In float32 (what training uses) sliced batch norm is one fused op; results equal masking's."""
    graph, config, (masked, sliced), (masked_grads, sliced_grads), (moving, start, after_masked) = \
        masked_and_sliced(tiny_supernet(), training=True)
    np.testing.assert_allclose(sliced.numpy(), masked.numpy(), rtol=1e-4, atol=1e-5)
    for a, b in zip(masked_grads, sliced_grads):
        a = np.zeros(b.shape) if a is None else np.asarray(a)
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(a).max()))
    kept = config["g1"]
    for i in [i for i, v in enumerate(moving) if v.path.startswith("bn1")]:  # mean, and the biased variance
        np.testing.assert_allclose(moving[i].numpy()[:kept], after_masked[i][:kept], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(moving[i].numpy()[kept:], start[i][kept:])
    forward = SlicedForward(graph)
    widths = {g: tf.constant(config[g.name]) for g in graph.gates}
    traced = tf.function(lambda x: forward(x, widths)).get_concrete_function(tf.TensorSpec((2, 12, 12, 3)))
    assert any(op.type.startswith("FusedBatchNorm") for op in traced.graph.get_operations())
