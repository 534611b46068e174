"""`--deterministic`: two runs of one config give bit-identical gate parameters."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import dmcp_tf.channels.gates  # noqa: F401 (registers the gate layers for loading)
from tests.helpers import learnable_fashion_mnist

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
SEARCH = [
    "--mode=search", "--deterministic",
    "--config.data.train_limit=512", "--config.data.test_limit=128", "--config.data.batch_size=64",
    "--config.model.options.channels=(16,)", "--config.model.options.blocks=1", "--config.search.epochs=2", "--config.search.steps_per_epoch=5",
]


@pytest.mark.slow
def test_two_deterministic_searches_give_identical_gates(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    learnable_fashion_mnist(data_dir)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    runs = [tmp_path / "first", tmp_path / "second"]
    # Both at once: different timing and thread interleaving must not matter.
    logs = [tmp_path / "first.log", tmp_path / "second.log"]  # files: a full pipe would block the process
    procs = []
    try:
        for run, log in zip(runs, logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), f"--data_dir={data_dir}",
                                               f"--run_dir={run}", *SEARCH], stdout=out, stderr=subprocess.STDOUT,
                                              env=env))
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log.read_text(errors="replace")[-3000:]
    first, second = (keras.models.load_model(run / "supernet.keras", compile=False) for run in runs)
    alphas = [w for w in first.weights if w.path.endswith("alpha")]
    assert alphas and any(np.abs(w.numpy()).max() > 1e-3 for w in alphas)  # the search moved the gates
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)
    histories = [json.loads((run / "search.json").read_text())["history"] for run in runs]
    assert histories[0] == histories[1]
