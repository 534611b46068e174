"""MirroredStrategy over two virtual CPU devices (set up in conftest.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmcp_tf.supernet import DMCPModel, default_arch_optimizer
from tests.helpers import blob_data, tiny_supernet


def train(strategy, x, y, steps=12):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = DMCPModel(tiny_supernet(sync_bn=True), budget="0.5x", total_steps=steps, warmup_fraction=0.5, seed=3)
        model.compile(arch_optimizer=default_arch_optimizer(steps // 2, 2.0, 0.5))
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model


def test_two_replicas_match_one_device():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest.py should create two virtual CPU devices"
    x, y = blob_data(np.random.default_rng(0), 12 * 32)
    single = train(tf.distribute.OneDeviceStrategy("/cpu:0"), x, y)
    mirrored = train(tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), x, y)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    assert mirrored.searching and int(mirrored.arch_optimizer.iterations.numpy()) == 6
    # Same global batches, same sub-networks, synchronized batch norm: only the
    # order of float32 reductions differs (sum of two half-batch means), which
    # moves weights by ~1e-6 relative after 12 SGD steps; 1e-4 leaves margin.
    for a, b in zip(single.arch_variables, mirrored.arch_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
    assert any(np.abs(v.numpy()).max() > 1e-3 for v in single.arch_variables)  # the search moved
    for a, b in zip(single.supernet.weights, mirrored.supernet.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
