"""What a hostile user tried (issue 26): each ends in a clear error with exit code 2, or in the right behaviour."""

import dataclasses
import fcntl
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from ml_collections import ConfigDict
from PIL import Image

from dmcp_tf import costs, data
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.configs import fashion_mnist
from dmcp_tf.deploy.latency import LatencyTableError
from dmcp_tf.run import cli, distributed, report
from dmcp_tf.run.pipeline import Pipeline
from dmcp_tf.run.rundir import LOCK, OUTPUTS, STEPS, PipelineError, RunDirectory
from dmcp_tf.run.steps import BY_NAME
from dmcp_tf.search import search_init
from tests.helpers import learnable_fashion_mnist, main_in_process, tiny_supernet
from tests.search.test_multiworker import free_ports

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """A small made-up Fashion-MNIST folder (runs refused before training read it)."""
    return str(learnable_fashion_mnist(tmp_path_factory.mktemp("fashion"), train=128, test=128))


def test_a_run_directory_in_use_is_refused_naming_its_holder_also_with_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    holder = {"pid": os.getpid(), "host": "elsewhere", "started": "today", "command": "main.py --mode=search"}
    with open(run_dir / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a running process holds it
        json.dump(holder, lock)
        lock.flush()
        for extra in ([], ["--overwrite"]):
            code, out = main_in_process(f"--run_dir={run_dir}", "--mode=search", *extra)
            assert code == 2, out
            assert f"in use by another process (pid {os.getpid()} on elsewhere" in out and "--mode=search" in out
            assert "Traceback" not in out
    assert (run_dir / "config.json").read_text() == "{}"  # nothing replaced
    assert json.loads((run_dir / LOCK).read_text()) == holder


def test_the_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": "here", "started": "x", "command": "y"}))
    code, out = main_in_process(f"--run_dir={run_dir}", f"--data_dir={tmp_path / 'nowhere'}")
    assert code == 2 and "in use" not in out and "nowhere" in out, out  # past the lock, refused by the data check
    assert not (run_dir / LOCK).exists()


def test_only_the_chief_of_a_multi_worker_run_takes_the_lock(tmp_path):
    chief, worker = RunDirectory(str(tmp_path)), RunDirectory(str(tmp_path), chief=False)
    with chief.owned():
        with worker.owned():  # the other workers share the run directory with the chief
            holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["pid"] == os.getpid() and (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()
    worker.close()


def test_a_refused_run_leaves_no_run_directory_behind(tmp_path):
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'nowhere'}")
    assert code == 2, out
    assert not (tmp_path / "run").exists()


def test_a_run_directory_that_is_a_file_is_named(tmp_path):
    (tmp_path / "run").write_text("notes")
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}")
    assert code == 2 and "is a file, not a directory" in out and "Errno" not in out, out
    assert (tmp_path / "run").read_text() == "notes"


def replace_run(monkeypatch, step, run):
    """Runs `run(ctx)` instead of the step `step` for the rest of the test."""
    monkeypatch.setitem(BY_NAME, step, dataclasses.replace(BY_NAME[step], run=run))


def finished_run(root):
    """A run directory in which every step finished (empty stand-ins for the outputs)."""
    for step in STEPS:
        for name in (*OUTPUTS[step], f"{step}.json"):
            (root / name).write_text("{}")
    (root / "checkpoints" / "retrain").mkdir(parents=True)


def test_redoing_a_step_removes_the_outputs_of_the_steps_after_it_and_the_report_says_so(tmp_path):
    finished_run(tmp_path)
    rundir = RunDirectory(str(tmp_path), overwrite=True)
    assert rundir.begin(fashion_mnist.get_config(), ["sample"]) == ["retrain", "eval", "export"]
    for step in STEPS:
        assert all((tmp_path / name).exists() == (step in ("search", "sample"))
                   for name in (*OUTPUTS[step], f"{step}.json")), step
    assert not (tmp_path / "checkpoints" / "retrain").exists()
    [(title, text)] = report.markdown._missing_steps_section(rundir)
    assert text.startswith("retrain, eval, export: no results here, as they have not run since the steps before")
    assert "--mode=retrain" in text


def test_sample_overwritten_on_a_finished_run_says_what_it_removed_and_the_report_names_the_steps_left(
        tmp_path, monkeypatch):
    finished_run(tmp_path)
    (tmp_path / "config.json").write_text(fashion_mnist.get_config().to_json())
    monkeypatch.setattr(Pipeline, "preflight", lambda self, steps: None)  # the stand-in files are no models
    replace_run(monkeypatch, "sample", lambda ctx: {"cost": "macs", "unit": "MACs", "target": 100.0, "es_cost": 98.0,
                                                    "direct_mean_cost": 99.0})
    code, out = main_in_process(f"--run_dir={tmp_path}", "--mode=sample", "--overwrite")
    assert code == 0, out
    assert "removed the outputs of retrain, eval, export: they were made from outputs this run replaces" in out
    assert not (tmp_path / "slim.keras").exists() and not (tmp_path / "eval.json").exists()
    assert "## Steps without results\n\nretrain, eval, export: no results here" in (tmp_path / "report.md").read_text()


def test_a_whole_run_overwritten_starts_without_the_old_results_of_its_later_steps(tmp_path):
    finished_run(tmp_path)
    rundir = RunDirectory(str(tmp_path), overwrite=True)
    assert rundir.begin(fashion_mnist.get_config(), list(STEPS)) == []  # nothing left for the user to redo
    assert [step for step in STEPS if (tmp_path / f"{step}.json").exists()] == ["search"]  # redone first
    assert rundir.begin(fashion_mnist.get_config(), ["export"]) == []


def test_overwrite_with_other_settings_beside_the_old_ones_outputs_is_refused(tmp_path):
    finished_run(tmp_path)
    config = fashion_mnist.get_config()
    (tmp_path / "config.json").write_text(config.to_json())
    config.search.budget = "0.3x"
    with pytest.raises(PipelineError, match=r"--overwrite would redo sample with settings that differ .* "
                                            r"\(search\), beside the outputs of search made with the old ones"):
        RunDirectory(str(tmp_path), overwrite=True).check(config, ["sample"])
    RunDirectory(str(tmp_path), overwrite=True).check(config, list(STEPS))  # redone from the search: fine


def image_folder(root, classes=("cat", "dog"), test_classes=None):
    """train/ (4 images per class) and test/ (2 per class) of small PNGs."""
    rng = np.random.default_rng(0)
    for split, count, names in (("train", 4, classes), ("test", 2, test_classes or classes)):
        for label in names:
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / label / f"{i}.png")
    return root


def test_a_one_class_image_folder_is_refused_before_anything_is_written(tmp_path):
    folder = image_folder(tmp_path / "images", classes=("cat",))
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={folder}",
                                "--config.data.name=image_folder", "--config.data.batch_size=2")
    assert code == 2 and "has 1 class folder(s) with images (cat); a classifier needs at least 2 classes" in out, out
    assert not (tmp_path / "run").exists()


def test_a_class_only_in_the_test_split_is_refused(tmp_path):
    folder = image_folder(tmp_path, test_classes=("cat", "dog", "fox"))
    with pytest.raises(data.DataError, match=r"classes without training images \['fox'\]"):
        data.load("image_folder", data_dir=str(folder), batch_size=2, image_size=8)


def test_empty_files_and_dangling_links_in_an_image_folder_are_named_before_training(tmp_path):
    folder = image_folder(tmp_path / "images")
    empty, dangling = folder / "train" / "cat" / "9.png", folder / "test" / "dog" / "8.jpg"
    empty.write_bytes(b"")
    os.symlink(tmp_path / "gone.jpg", dangling)
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={folder}",
                                "--config.data.name=image_folder", "--config.data.batch_size=2")
    assert code == 2 and "Traceback" not in out, out
    assert f"{empty} (empty)" in out and f"{dangling} (a link to {tmp_path / 'gone.jpg'}, which does not exist)" in out
    assert "Remove them" in out and not (tmp_path / "run").exists()


def test_an_image_size_whose_activations_cannot_fit_in_memory_is_refused_with_the_numbers(tmp_path):
    folder = image_folder(tmp_path / "images")
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={folder}",
                                "--config.data.name=image_folder", "--config.data.batch_size=4",
                                "--config.data.image_size=4000")
    assert code == 2, out
    assert re.search(r"on 4 images of 4000x4000x3 needs about [\d.]+ GiB of memory .* than this machine's "
                     r"[\d.]+ GiB\. Lower --config.data.image_size", out), out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, named", [
    (["--config.data.batch_size=1"], "`data.batch_size`: must be at least 2: batch normalization"),
    (["--strategy=mirrored", "--config.data.batch_size=2"], "data.batch_size=2 over 2 replicas gives fewer than 2"),
])
def test_batches_of_one_image_per_replica_are_refused(tmp_path, args, named):
    devices = len(tf.config.list_logical_devices("CPU"))
    if "--strategy=mirrored" in args and devices != 2:
        pytest.skip(f"needs the 2 logical CPU devices of tests/conftest.py, found {devices}")
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", *args)
    assert code == 2 and named in out, out
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_the_search_ends_with_one_line_exit_130_releases_the_lock_and_resumes(
        tmp_path, fashion_dir, monkeypatch):
    def interrupted(ctx):
        assert (tmp_path / "run" / LOCK).exists()
        raise KeyboardInterrupt

    replace_run(monkeypatch, "search", interrupted)
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={fashion_dir}", "--mode=search")
    assert code == 130
    assert [line for line in out.splitlines() if line] == [
        "== search ==",
        "interrupted (SIGINT): finished steps and checkpoints are kept; the same command resumes the run."]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".search.started", "config.json"]  # resumable


@pytest.mark.parametrize("content, name, named", [
    ("raise RuntimeError('no GPU here')\n", "raises.py", "could not be loaded: RuntimeError: no GPU here"),
    ("def get_config(:\n", "syntax.py", "could not be loaded: SyntaxError: invalid syntax"),
    ("data:\n  batch_size: 8\n", "config.yaml", "is not a Python file"),
    (None, "absent.py", "does not exist"),
])
def test_a_config_file_that_fails_is_named_with_overrides_given(tmp_path, content, name, named):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code, out = main_in_process(f"--config={path}", "--config.seed=1", f"--run_dir={tmp_path / 'run'}")
    assert code == 2 and f"config file {path} {named}" in out and "Traceback" not in out, out


def test_a_round_to_that_cannot_meet_the_budget_is_refused_before_training(tmp_path, fashion_dir):
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={fashion_dir}",
                                "--config.sample.round_to=1000", "--config.sample.fit_to_budget=False",
                                "--config.search.budget=0.5x")
    assert code == 2, out
    assert re.search(r"sample.round_to=1000 keeps .* even the smallest structure costs .*, 2.00x the budget 0.5x", out)
    assert "Use a smaller --config.sample.round_to (0 does not round)." in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


def test_a_sampled_structure_over_the_budget_stops_the_sample_step_before_retraining(tmp_path, fashion_dir):
    config = fashion_mnist.get_config()
    config.data.data_dir, config.model.options.channels, config.model.options.blocks = fashion_dir, (16, 32), 1
    config.search.budget = "0.5x"
    supernet = Pipeline(config, str(tmp_path / "unused")).context.new_supernet()
    search_init.set_uniform_fraction(ChannelGraph(supernet), 0.95)  # gates that were never pulled to the budget
    (tmp_path / "run").mkdir()
    supernet.save(tmp_path / "run" / "supernet.keras")
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={fashion_dir}", "--mode=sample",
                                "--config.model.options.channels=(16, 32)", "--config.model.options.blocks=1",
                                "--config.search.budget=0.5x", "--config.sample.fit_to_budget=False")
    assert code == 2, out
    assert re.search(r"The sampled structure costs .*, 1\.\d\dx the budget 0.5x .*; retraining it would break the "
                     r"budget, so the sample step stops \(nothing written\)\. Use --config.sample.fit_to_budget=True", out)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".sample.started", "config.json", "supernet.keras"]


def two_worker_config(ports, index=0):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


def test_waiting_for_a_worker_says_which_and_gives_up_after_the_timeout(monkeypatch):
    ports = free_ports(2)
    monkeypatch.setenv("TF_CONFIG", two_worker_config(ports))
    lines = []
    start = time.monotonic()
    with pytest.raises(distributed.StrategyError, match=rf"Gave up after 1 s waiting for worker 1 at 127.0.0.1:{ports[1]}"
                       r" \(TF_CONFIG\) to start\..*--worker_timeout=SECONDS"):
        distributed.wait_for_workers(1.0, poll=0.1, log=lines.append)
    assert time.monotonic() - start < 3
    assert lines == [f"waiting for worker 1 at 127.0.0.1:{ports[1]} (TF_CONFIG) to start: 0 s of 1 s (--worker_timeout)"]


def test_a_started_worker_ends_the_wait_and_this_task_listens_meanwhile(monkeypatch):
    ports = free_ports(2)
    monkeypatch.setenv("TF_CONFIG", two_worker_config(ports))
    with socket.socket() as other:  # worker 1 has started: its address accepts connections
        other.bind(("127.0.0.1", ports[1]))
        other.listen()
        distributed.wait_for_workers(5.0, poll=0.1, log=pytest.fail)
    with socket.socket() as mine:  # worker 0's own port is free again for TensorFlow's server
        mine.bind(("127.0.0.1", ports[0]))


def start_main(folder, *args, env):
    """`main.py *args` started in `folder` (its output in folder/main.log): (process, log path)."""
    folder.mkdir()
    with open(folder / "main.log", "w") as log:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), f"--run_dir={folder / 'run'}", *args],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT, **env))
    return process, folder / "main.log"


def test_a_missing_worker_ends_main_with_exit_2_after_the_timeout(tmp_path, monkeypatch):
    ports = free_ports(2)
    monkeypatch.setenv("TF_CONFIG", two_worker_config(ports))
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", "--worker_timeout=1")
    assert code == 2, out
    assert f"waiting for worker 1 at 127.0.0.1:{ports[1]} (TF_CONFIG) to start: 0 s of 1 s" in out
    assert f"error: Gave up after 1 s waiting for worker 1 at 127.0.0.1:{ports[1]}" in out
    assert "Traceback" not in out and not (tmp_path / "run").exists()


def test_sigterm_ends_the_wait_for_a_missing_worker_at_once(tmp_path):
    with open(tmp_path / "main.log", "w") as log:
        waiting = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), f"--run_dir={tmp_path / 'run'}"],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
                                            TF_CONFIG=two_worker_config(free_ports(2))))
    try:
        deadline = time.monotonic() + 120
        while "waiting for worker 1" not in (tmp_path / "main.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        waiting.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert waiting.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - sent < 5
        out = (tmp_path / "main.log").read_text()
        assert "interrupted (SIGTERM)" in out and "Traceback" not in out, out
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


def test_a_trained_model_with_an_unregistered_custom_layer_is_named_before_anything_is_written(tmp_path, fashion_dir):
    class Scale(keras.layers.Layer):  # a class of the code that trained the model, registered there only
        def call(self, x):
            return 2.0 * x

    keras.saving.register_keras_serializable("HostileTest")(Scale)
    inputs = keras.Input((28, 28, 1))
    keras.Model(inputs, Scale()(inputs)).save(tmp_path / "trained.keras")
    del keras.saving.get_custom_objects()["HostileTest>Scale"]
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={fashion_dir}",
                                f"--config.search.initial_weights={tmp_path / 'trained.keras'}")
    assert code == 2 and "Traceback" not in out, out
    assert "holds a layer of class 'Scale' that Keras cannot rebuild here" in out
    assert "@keras.saving.register_keras_serializable()" in out and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, named", [
    (None, "does not exist"), (b"PK\x03\x04 half a download", "is not a readable .keras file (a zip archive)")])
def test_a_missing_or_damaged_trained_model_is_called_so(tmp_path, fashion_dir, content, named):
    path = tmp_path / "trained.keras"
    if content is not None:
        path.write_bytes(content)
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={fashion_dir}",
                                f"--config.search.initial_weights={path}")
    assert code == 2 and named in out and "File not found" not in out, out


def test_a_step_redone_is_unfinished_until_it_finishes_again(tmp_path):
    finished_run(tmp_path)
    rundir = RunDirectory(str(tmp_path), overwrite=True)
    rundir.start_step("export")  # then killed
    assert not rundir.finished("export") and rundir.finished("eval")
    assert RunDirectory(str(tmp_path)).resumable_prefix(list(STEPS)) == ["search", "sample", "retrain", "eval"]


@pytest.mark.parametrize("key, value, named", [
    ("export.latency_runs", "0", "`export.latency_runs`: must be at least 1"),
    ("export.quantizations", ",", "`export.quantizations`: names no TFLite variant (','"),
    ("search.budget_weight", "-1", "`search.budget_weight`: must be positive (and a number), got -1"),
    ("search.learning_rate", "nan", "`search.learning_rate`: must be positive (and a number), got nan"),
])
def test_settings_that_fail_after_training_or_do_nothing_are_named_first(tmp_path, key, value, named):
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--config.{key}={value}")
    assert code == 2 and named in out, out
    assert not (tmp_path / "run").exists()


def test_too_few_test_images_for_the_representative_set_are_named_before_training(tmp_path):
    folder = image_folder(tmp_path / "images")
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={folder}",
                                "--config.data.name=image_folder", "--config.data.batch_size=2",
                                "--config.data.image_size=16")
    assert code == 2, out
    assert ("export.representative_images=100 needs that many test images, but the test split has 4: lower "
            "--config.export.representative_images.") in out


def test_a_gif_named_png_in_an_image_folder_is_named(tmp_path):
    import tensorflow_datasets as tfds

    folder = image_folder(tmp_path)
    gif = folder / "train" / "cat" / "9.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(gif, format="GIF")
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:  # what the input pipeline meets
        list(tfds.ImageFolder(str(folder)).as_dataset(split="train", as_supervised=True))
    message = cli._tensorflow_error_message(raised.value, ConfigDict({"name": "image_folder", "data_dir": str(folder)}))
    assert message.startswith(f"An image in {folder} cannot be decoded (Incompatible shapes at component 0"), message
    assert f"(a GIF decodes as an animation) by its first bytes: {gif}. Remove or replace it." in message


def test_a_latency_table_of_a_narrower_supernet_is_refused():
    from tests.costs.test_latency import synthetic_table  # noqa: PLC0415

    def supernet(channels):
        keras.backend.clear_session()  # the same automatic layer names (add, ...) in both
        return ChannelGraph(tiny_supernet(channels=channels))

    narrow, wide = supernet((16, 32)), supernet((16, 64))
    with pytest.raises(LatencyTableError, match=r"measured on a narrower supernet than 'tiny': layers \['c2', 'c3', 'add', "
                                                r"'global_average_pooling2d', 'head'\] have more channels"):
        costs.Latency(synthetic_table(narrow)).of(wide)
    costs.Latency(synthetic_table(wide)).of(narrow)  # a wider table covers a narrower supernet
