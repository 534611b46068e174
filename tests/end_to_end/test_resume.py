"""Checkpoints and resumption: a crash or a preempted machine must not cost the run."""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmcp_tf.configs import fashion_mnist
from dmcp_tf.run import checkpoints
from dmcp_tf.run.checkpoints import CheckpointCallback, CheckpointError, CheckpointManager, CheckpointMismatchError
from dmcp_tf.run.pipeline import Pipeline
from dmcp_tf.search.supernet import DMCPModel
from tests.helpers import blob_data, learnable_fashion_mnist, tiny_supernet

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


# --- the checkpoint module ----------------------------------------------------
def search_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = DMCPModel(tiny_supernet(), budget="0.5x", total_steps=10, warmup_fraction=0.4, seed=seed)
    model.compile()
    return model


def training_state(model):
    variables = model.variables + model.optimizer.variables + model.arch_optimizer.variables
    return [(v.path, v.numpy()) for v in variables]


def batches(x, y, start):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat().skip(start)


def test_checkpoint_restores_the_whole_training_state_and_training_continues_identically(tmp_path):
    x, y = blob_data(np.random.default_rng(0), 10 * 32)
    first = search_model()
    manager = CheckpointManager(tmp_path, first.search_state(), identity={"run": 1})
    first.fit(batches(x, y, 0), epochs=1, steps_per_epoch=6, verbose=0, shuffle=False,
              callbacks=[CheckpointCallback(manager, 2)])
    assert first.searching  # 4 warm-up steps, then 2 search steps
    assert [step for step, _ in manager.checkpoints()] == [2, 4, 6]  # every 2 steps and at the epoch end

    second = search_model(seed=1)  # other initial values, other sampling seed
    restored = CheckpointManager(tmp_path, second.search_state(), identity={"run": 1}).restore()
    assert restored.step == 6 and not restored.skipped
    # Weights, gate parameters, batch-norm statistics, both optimisers (with their
    # step counters) and the sub-network sampler's random state.
    for (path, a), (_, b) in zip(training_state(first), training_state(second)):
        np.testing.assert_array_equal(b, a, err_msg=path)
    assert int(second.arch_optimizer.iterations.numpy()) == 2

    first.fit(batches(x, y, 6), epochs=1, steps_per_epoch=4, verbose=0, shuffle=False)
    second.fit(batches(x, y, 6), epochs=1, steps_per_epoch=4, verbose=0, shuffle=False)
    assert second.searching  # the phase follows the restored step counter
    for (path, a), (_, b) in zip(training_state(first), training_state(second)):
        np.testing.assert_array_equal(b, a, err_msg=path)


def small_objects(value):
    layer = keras.layers.Dense(3, name="dense")
    layer.build((None, 4))
    layer.kernel.assign(np.full((4, 3), value, "float32"))
    return {"layer": layer, "step": keras.Variable(0, dtype="int64", name="step")}, layer


def damage_data(path):
    data = next(f for f in os.listdir(path) if ".data-" in f)
    with open(os.path.join(path, data), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(path, data)) // 2)
    return "truncated"


def flip_a_byte(path):
    index = next(f for f in os.listdir(path) if f.endswith(".index"))
    with open(os.path.join(path, index), "r+b") as f:
        f.seek(7)
        byte = f.read(1)
        f.seek(7)
        f.write(bytes([byte[0] ^ 0xFF]))
    return "SHA-256"


def drop_manifest(path):
    os.remove(os.path.join(path, checkpoints.MANIFEST))
    return "no manifest.json"


def drop_data(path):
    os.remove(os.path.join(path, next(f for f in os.listdir(path) if ".data-" in f)))
    return "missing its file"


@pytest.mark.parametrize("damage", [damage_data, flip_a_byte, drop_manifest, drop_data])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage):
    objects, _ = small_objects(1.0)
    manager = CheckpointManager(tmp_path, objects, identity={})
    manager.save(1)
    objects["layer"].kernel.assign(np.full((4, 3), 2.0, "float32"))
    newest = manager.save(2)
    reason = damage(newest)

    messages = []
    fresh, layer = small_objects(0.0)
    restored = CheckpointManager(tmp_path, fresh, identity={}, log=messages.append).restore()
    assert restored.step == 1 and len(restored.skipped) == 1
    np.testing.assert_array_equal(layer.kernel.numpy(), 1.0)  # the damaged one was not loaded, not even partly
    assert len(messages) == 1 and newest in messages[0] and reason in messages[0] and "previous" in messages[0]

    # Damage the other one too: nothing intact is left, which is an error, not a silent fresh start.
    damage(manager.checkpoints()[0][1])
    with pytest.raises(CheckpointError, match="Every checkpoint .* is damaged"):
        CheckpointManager(tmp_path, small_objects(0.0)[0], identity={}, log=messages.append).restore()


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    objects, _ = small_objects(1.0)
    manager = CheckpointManager(tmp_path, objects, identity={})
    manager.save(1)

    def crash(self, prefix, **kwargs):
        with open(prefix + ".index", "wb") as f:  # half-written, then the process dies
            f.write(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tf.train.Checkpoint, "write", crash)
        with pytest.raises(KeyboardInterrupt):
            manager.save(2)
    assert [step for step, _ in manager.checkpoints()] == [1]
    # What a SIGKILL during a save leaves: a temporary directory, never taken for a checkpoint.
    leftover = tmp_path / ".tmp-ckpt-000000003-x"
    leftover.mkdir()
    (leftover / "state.index").write_bytes(b"partial")
    fresh, layer = small_objects(0.0)
    again = CheckpointManager(tmp_path, fresh, identity={})
    assert again.restore().step == 1
    np.testing.assert_array_equal(layer.kernel.numpy(), 1.0)
    again.clean_temporary()
    assert not leftover.exists()


def test_a_checkpoint_of_another_config_or_model_is_refused(tmp_path):
    objects, _ = small_objects(1.0)
    CheckpointManager(tmp_path, objects, identity={"search": {"budget": "0.5x"}, "seed": 0}).save(5)
    with pytest.raises(CheckpointMismatchError, match=r"another configuration \(search.budget: '0.5x' in the "
                                                      r"checkpoint, '0.3x' now\).*--overwrite"):
        CheckpointManager(tmp_path, small_objects(0.0)[0], identity={"search": {"budget": "0.3x"}, "seed": 0}).restore()
    wider = keras.layers.Dense(5, name="dense")
    wider.build((None, 4))
    other = {"layer": wider, "step": keras.Variable(0, dtype="int64", name="step")}
    expected = r"another model \(dense/kernel \[4, 3\] float32 in the checkpoint, dense/kernel \[4, 5\] float32 now"
    with pytest.raises(CheckpointMismatchError, match=expected):
        CheckpointManager(tmp_path, other, identity={"search": {"budget": "0.5x"}, "seed": 0}).restore()


# --- the pipeline: retraining resumes; a checkpoint of another config is refused ---------
class Crash(Exception):
    pass


def fashion_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    return learnable_fashion_mnist(folder)


def tiny_config(data_dir):
    config = fashion_mnist.get_config()
    with config.unlocked():
        config.data.data_dir = str(data_dir)
        config.data.train_limit, config.data.test_limit, config.data.batch_size = 256, 128, 64
        config.model.options = {"channels": (16,), "blocks": 1}
        config.search.epochs, config.search.steps_per_epoch, config.search.warmup_fraction = 1, 2, 0.0
        config.sample.statistics_samples, config.sample.direct_samples = 300, 1
        config.sample.calibration_batches = 2
        config.retrain.epochs, config.retrain.steps_per_epoch, config.retrain.checkpoint_every_steps = 2, 4, 3
        config.retrain.from_scratch = False  # the longer path: inherited weights, batch-norm calibration
    return config


def slim_weights(run_dir):
    model = keras.models.load_model(os.path.join(run_dir, "slim.keras"), compile=False)
    return [(w.path, w.numpy()) for w in model.weights]


@pytest.mark.slow
def test_pipeline_resumes_an_interrupted_retraining(tmp_path, monkeypatch):
    config = tiny_config(fashion_dir(tmp_path))
    uninterrupted, interrupted = tmp_path / "a", tmp_path / "b"
    quiet = lambda *args, **kwargs: None  # noqa: E731
    Pipeline(config, str(uninterrupted), log=quiet).run(["search", "sample"])
    shutil.copytree(uninterrupted, interrupted)
    Pipeline(config, str(uninterrupted), log=quiet).run(["retrain"])

    original = CheckpointCallback.on_train_batch_end

    def crash_after_step_7(self, batch, logs=None):
        original(self, batch, logs)
        if int(self.model.optimizer.iterations.numpy()) == 7:
            raise Crash  # in epoch 2 of 2 (4 steps each), after the checkpoints of steps 3, 4 and 6

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointCallback, "on_train_batch_end", crash_after_step_7)
        with pytest.raises(Crash):
            Pipeline(config, str(interrupted), log=quiet).run(["search", "sample", "retrain"])
    assert not (interrupted / "slim.keras").exists()
    assert sorted(os.listdir(interrupted / "checkpoints" / "retrain")) == [
        "ckpt-000000003", "ckpt-000000004", "ckpt-000000006"]

    # Another batch size (not part of the run directory's identity, but of the
    # retraining's) must not continue from these checkpoints.
    other = tiny_config(config.data.data_dir)
    with other.unlocked():
        other.data.batch_size = 32
    with pytest.raises(CheckpointMismatchError, match="data.batch_size: 64 in the checkpoint, 32 now"):
        Pipeline(other, str(interrupted), log=quiet).run(["retrain"])

    lines = []
    Pipeline(config, str(interrupted), log=lines.append).run(["search", "sample", "retrain"])  # the same command again
    assert any("search == finished earlier" in line for line in lines)
    assert any("sample == finished earlier" in line for line in lines)
    assert any("resuming from step 6 of 8" in line for line in lines), lines  # in the middle of epoch 2
    for (path, a), (_, b) in zip(slim_weights(uninterrupted), slim_weights(interrupted)):
        np.testing.assert_array_equal(b, a, err_msg=path)
    retrain = json.loads((interrupted / "retrain.json").read_text())
    assert retrain["resumed_from_step"] == 6 and len(retrain["history"]["loss"]) == 2
    assert len(retrain["history"]["val_accuracy"]) == 2
    assert retrain["inherited"] is not None
    assert retrain["inherited"] == json.loads((uninterrupted / "retrain.json").read_text())["inherited"]
    assert not (interrupted / "checkpoints").exists()  # removed once slim.keras is written


# --- main.py killed with SIGKILL during the search, then started again ------------
SEARCH = [
    "--mode=search", "--deterministic",
    "--config.data.train_limit=512", "--config.data.test_limit=128", "--config.data.batch_size=64",
    "--config.model.options.channels=(16,)", "--config.model.options.blocks=1", "--config.search.epochs=3", "--config.search.steps_per_epoch=8",
    "--config.search.warmup_fraction=0.25", "--config.search.checkpoint_every_steps=2",
]
WARMUP_STEPS, TOTAL_STEPS = 6, 24


def start_search(data_dir, run_dir, log):
    """Starts main.py; its output goes to the file `log` (a pipe nobody reads could fill up and block it)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), f"--data_dir={data_dir}",
                                 f"--run_dir={run_dir}", *SEARCH], stdout=out, stderr=subprocess.STDOUT, env=env)


def tail(log):
    return log.read_text(errors="replace")[-3000:]


def checkpoint_steps(run_dir):
    folder = os.path.join(run_dir, "checkpoints", "search")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return [int(n.split("-")[1]) for n in names if n.startswith("ckpt-")]


def supernet_weights(run_dir):
    model = keras.models.load_model(os.path.join(run_dir, "supernet.keras"), compile=False)
    return [(w.path, w.numpy()) for w in model.weights]


@pytest.mark.slow
def test_search_killed_after_warmup_resumes_to_the_uninterrupted_result(tmp_path):
    data_dir = fashion_dir(tmp_path)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    logs = [tmp_path / "reference.log", tmp_path / "killed.log", tmp_path / "resumed.log"]
    procs = [start_search(data_dir, reference, logs[0]), start_search(data_dir, killed, logs[1])]
    try:
        # Past warm-up and past the retrace of the search phase, in the middle of
        # epoch 2 of 3 (so the resumed run finishes that epoch, then starts the next:
        # two `fit` calls on the input stream), then a random moment within about
        # two steps (perhaps in the middle of a step, or of writing a checkpoint).
        deadline = time.time() + 180
        while not any(s >= WARMUP_STEPS + 4 for s in checkpoint_steps(killed)):
            assert procs[1].poll() is None, tail(logs[1])
            assert time.time() < deadline, "no checkpoint after warm-up within 180 s"
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.1))
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=60)
        procs[0].wait(timeout=180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[1].returncode == -signal.SIGKILL, "the search finished before it could be killed:\n" + tail(logs[1])
    assert procs[0].returncode == 0, tail(logs[0])
    assert not (killed / "supernet.keras").exists()
    last = max(checkpoint_steps(killed))
    assert WARMUP_STEPS < last < TOTAL_STEPS

    resumed = start_search(data_dir, killed, logs[2])
    try:
        resumed.wait(timeout=180)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait()
    output = logs[2].read_text(errors="replace")
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming from step {last} of {TOTAL_STEPS}" in output, output[-3000:]
    # --deterministic: the same batches and sub-networks after the restart as
    # without it, so the result is bit-identical (gate parameters and weights).
    reference_weights, resumed_weights = supernet_weights(reference), supernet_weights(killed)
    assert any(path.endswith("alpha") for path, _ in reference_weights)
    for (path, a), (_, b) in zip(reference_weights, resumed_weights):
        np.testing.assert_array_equal(b, a, err_msg=path)
    search = json.loads((killed / "search.json").read_text())
    assert search["resumed_from_step"] == last
    assert len(search["history"]["loss"]) == 3  # every epoch, across the restart
    assert not (killed / "checkpoints").exists()
