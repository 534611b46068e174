"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train the search.

Keras 3 `fit` fails under that strategy (keras issue 20585); `dmcp_tf.run.distributed.
train_loop` runs the model's own `train_step` through `strategy.run` instead.
This file is also the worker program: `python tests/search/test_multiworker.py worker
<index> <ports> <out_dir>` (each worker is a process of its own, configured by
TF_CONFIG before TensorFlow starts).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
STEPS, STEPS_PER_EPOCH, BATCH, SEED = 8, 4, 32, 3  # 4 warm-up steps, then 4 search steps
TIMEOUT = 240  # seconds for the whole two-worker run


def free_ports(n):
    """Ports free right now on 127.0.0.1 (the OS picks them: bind to port 0)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def data():
    from tests.helpers import blob_data  # noqa: PLC0415

    return blob_data(np.random.default_rng(0), STEPS * BATCH)


def build(strategy):
    import keras  # noqa: PLC0415

    from dmcp_tf.search.supernet import DMCPModel, default_arch_optimizer  # noqa: PLC0415
    from tests.helpers import tiny_supernet  # noqa: PLC0415

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = DMCPModel(tiny_supernet(sync_bn=True), budget="0.5x", total_steps=STEPS, warmup_fraction=0.5,
                          seed=SEED)
        model.compile(arch_optimizer=default_arch_optimizer(STEPS // 2, 2.0, 0.5))
    return model


def state(model):
    return {v.path: v.numpy() for v in model.supernet.weights}


def worker(index, ports, out_dir):
    """One worker: TF_CONFIG, the strategy, the tiny search; writes its final variables."""
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})
    from dmcp_tf.run import distributed  # noqa: PLC0415

    strategy = distributed.make_strategy("auto")  # TF_CONFIG lists two workers: multi-worker
    import tensorflow as tf  # noqa: PLC0415

    from dmcp_tf.run.checkpoints import CheckpointCallback, CheckpointManager  # noqa: PLC0415
    from dmcp_tf.search.supernet import SearchPhaseSwitch  # noqa: PLC0415

    assert distributed.is_multi_worker(strategy) and strategy.num_replicas_in_sync == 2
    model = build(strategy)
    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
    manager = CheckpointManager(os.path.join(out_dir, "checkpoints"), {"supernet": model.supernet},
                                identity={"test": 1}, is_chief=distributed.is_chief(strategy))
    history = distributed.train_loop(model, dataset, epochs=STEPS // STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH,
                                     callbacks=[SearchPhaseSwitch(), CheckpointCallback(manager, 3)], verbose=0)
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), **state(model))
    distributed.agree(strategy, 7, "a value all workers hold")
    try:  # what a resumed run does when the workers see different checkpoints
        distributed.agree(strategy, index, "the step to resume from")
        disagreement = None
    except distributed.StrategyError as error:
        disagreement = str(error)
    with open(os.path.join(out_dir, f"worker{index}.json"), "w") as f:
        json.dump({"history": history.history, "chief": distributed.is_chief(strategy), "disagreement": disagreement,
                   "arch_steps": int(model.arch_optimizer.iterations.numpy())}, f)


@pytest.mark.slow
def test_two_workers_match_one_process(tmp_path):
    ports = free_ports(2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]  # files: a full pipe would block a worker
    procs = []
    try:
        for i, log in enumerate(logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", str(i),
                                               ",".join(map(str, ports)), str(tmp_path)],
                                              stdout=out, stderr=subprocess.STDOUT, env=env))
        # The single-process reference, with Keras fit, while the workers start.
        import tensorflow as tf  # noqa: PLC0415

        x, y = data()
        reference = build(tf.distribute.OneDeviceStrategy("/cpu:0"))
        batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
        ref_history = reference.fit(batches, epochs=STEPS // STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH,
                                    shuffle=False, verbose=0)
        deadline = time.time() + TIMEOUT
        # Until both finish; a worker that fails leaves the other waiting in a collective: stop then.
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {i}:\n{log.read_text(errors='replace')[-3000:]}"
    workers = [dict(np.load(tmp_path / f"worker{i}.npz")) for i in range(2)]
    infos = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert [info["chief"] for info in infos] == [True, False]
    assert all(info["arch_steps"] == STEPS // 2 for info in infos)  # four search steps ran
    assert all("workers disagree on the step to resume from" in info["disagreement"] for info in infos)
    # The workers apply the same all-reduced updates: bit-identical.
    for name in workers[0]:
        np.testing.assert_array_equal(workers[1][name], workers[0][name], err_msg=name)
    # Against one process on the same global batches: only the order of float32
    # reductions differs (two half-batch gradient sums, synchronized batch-norm
    # moments). Measured: at most 6e-7 absolute on any variable, 1.2e-7 on the gate
    # parameters, after 8 steps; rtol 1e-4 / atol 1e-5 leave margin.
    ref = state(reference)
    alphas = [name for name in ref if name.endswith("alpha")]
    assert alphas and any(np.abs(ref[a]).max() > 1e-3 for a in alphas)  # the search moved the gates
    for name, value in ref.items():
        np.testing.assert_allclose(workers[0][name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    # Losses and metrics are reported unscaled: as in the single process.
    for key, values in ref_history.history.items():
        np.testing.assert_allclose(infos[0]["history"][key], values, rtol=1e-4, atol=1e-5, err_msg=key)
    # Only the chief kept checkpoints; the other worker wrote to a scratch folder it removed.
    kept = sorted(os.listdir(tmp_path / "checkpoints"))
    assert kept and all(name.startswith("ckpt-") for name in kept), kept


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(int(sys.argv[2]), [int(p) for p in sys.argv[3].split(",")], sys.argv[4])
