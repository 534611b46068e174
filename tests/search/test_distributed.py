"""MirroredStrategy over two virtual CPU devices (set up in conftest.py)."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmcp_tf.run.checkpoints import CheckpointManager
from dmcp_tf.search.supernet import DMCPModel, default_arch_optimizer
from tests.helpers import blob_data, tiny_supernet

STEPS, WARMUP = 20, 10  # 10 search steps past warm-up
# Two replicas and one device differ only in the order of float32 reductions (sums of
# half-batch gradients and of batch-norm moments). One step from the same state shows it
# directly: the updates of one device and of two replicas differed by at most 1.3e-4 of
# the largest update of a variable (oneDNN on, one intra-op thread, AVX-512 EPYC; 1e-5
# without oneDNN). Over many steps the training amplifies any such difference (a 1e-7
# change of the initial weights alone moved the weights by 2% after 20 steps), so runs of
# many steps are not compared for equality. A replica bug is of the order of the update
# itself: gradients summed over replicas (2x), batch norm not synchronized.
UPDATE_RTOL = 1e-2
# The frozen-weight search (no weight updates to amplify rounding) stays within this of one device.
REPLICA_DRIFT = dict(rtol=1e-2, atol=1e-2)


@functools.cache
def mirrored_strategy():
    """One strategy for the module: two of them in one process reuse collective instance keys."""
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest.py should create two virtual CPU devices"
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def build(strategy, train_weights=True, warmup=WARMUP):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = DMCPModel(tiny_supernet(sync_bn=True), budget="0.5x", total_steps=STEPS,
                          warmup_fraction=warmup / STEPS, seed=3, train_weights=train_weights)
        model.compile(arch_optimizer=default_arch_optimizer(STEPS - model.warmup_steps, 2.0, 0.5))
    return model


def train(strategy, x, y, train_weights=True, warmup=WARMUP):
    model = build(strategy, train_weights, warmup)
    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model, history


def one_step(strategy, x, y, warmup):
    """A fresh model's variables before and after one training step on `x`, and that step's logs."""
    model = build(strategy, warmup=warmup)
    before = [v.numpy().copy() for v in model.variables]
    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model, before, history.history


@pytest.mark.parametrize("phase", ["warm-up", "search"])
def test_two_replicas_compute_the_one_device_update(phase):
    x, y = blob_data(np.random.default_rng(0), 32)
    warmup = WARMUP if phase == "warm-up" else 0
    single, single_before, single_logs = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), x, y, warmup)
    mirrored, mirrored_before, mirrored_logs = one_step(mirrored_strategy(), x, y, warmup)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    assert int(mirrored.arch_optimizer.iterations.numpy()) == int(single.arch_optimizer.iterations.numpy()) \
        == (phase == "search")
    for variable, before, other, other_before in zip(single.variables, single_before,
                                                     mirrored.variables, mirrored_before):
        np.testing.assert_array_equal(other_before, before, err_msg=variable.path)  # the same start
        update, other_update = variable.numpy() - before, other.numpy() - other_before
        scale = np.abs(update).max()
        np.testing.assert_allclose(other_update, update, rtol=0, atol=UPDATE_RTOL * scale + 1e-12,
                                   err_msg=variable.path)
    moved = [np.abs(v.numpy() - b).max() for v, b in zip(single.arch_variables, single_before)]
    assert (max(moved) > 1e-3) == (phase == "search")  # only a search step moves the gates
    # Losses and metrics are reported unscaled (not divided, nor summed, over replicas: 2x).
    assert set(mirrored_logs) == set(single_logs)
    for key, values in single_logs.items():
        np.testing.assert_allclose(mirrored_logs[key], values, rtol=1e-3, atol=1e-6, err_msg=key)


def test_a_two_replica_checkpoint_restores_on_one_device(tmp_path):
    """A resumed run may use another number of devices."""
    x, y = blob_data(np.random.default_rng(0), STEPS * 32)
    mirrored, _ = train(mirrored_strategy(), x, y)
    assert mirrored.searching and int(mirrored.arch_optimizer.iterations.numpy()) == STEPS - WARMUP
    CheckpointManager(tmp_path, mirrored.search_state(), identity={}).save(STEPS)
    restored = build(tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert CheckpointManager(tmp_path, restored.search_state(), identity={}).restore().step == STEPS
    for a, b in zip(mirrored.variables + mirrored.optimizer.variables + mirrored.arch_optimizer.variables,
                    restored.variables + restored.optimizer.variables + restored.arch_optimizer.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)


def test_frozen_weights_search_on_two_replicas_matches_one_device():
    x, y = blob_data(np.random.default_rng(1), STEPS * 32)
    single, _ = train(tf.distribute.OneDeviceStrategy("/cpu:0"), x, y, train_weights=False)
    mirrored, _ = train(mirrored_strategy(), x, y, train_weights=False)
    for model in (single, mirrored):  # the step counter advances once per global step, not per replica
        assert int(model.optimizer.iterations.numpy()) == int(model.arch_optimizer.iterations.numpy()) == STEPS
    assert any(np.abs(v.numpy()).max() > 0.1 for v in single.arch_variables)
    for a, b in zip(single.arch_variables, mirrored.arch_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), **REPLICA_DRIFT)
