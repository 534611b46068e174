"""The product as a user runs it: main.py end to end, and its errors on bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from dmcp_tf import costs
from dmcp_tf import data as data_lib
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.configs import fashion_mnist
from dmcp_tf.run import report
from dmcp_tf.run.rundir import RunDirectory
from dmcp_tf.search import baselines, trajectory
from dmcp_tf.search.calibration import calibrate_batch_norm
from tests.helpers import learnable_fashion_mnist, main_in_process

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
TINY = [
    "--config.data.train_limit=512", "--config.data.test_limit=256", "--config.data.batch_size=64",
    "--config.model.options.channels=(16, 32)", "--config.model.options.blocks=1",
    "--config.search.epochs=2", "--config.search.steps_per_epoch=4", "--config.search.trajectory_every_steps=2",
    "--config.retrain.epochs=1", "--config.retrain.steps_per_epoch=8",
    "--config.sample.statistics_samples=300", "--config.sample.calibration_batches=2",
    "--config.export.representative_images=16", "--config.export.parity_images=200",
    "--config.export.latency_runs=3",
]

# Rounded to multiples of 4 without fitting: after TINY's 8 search steps on 4 gates of 16 and 32
# channels, rounding every gate on its own lands up to 1.13x the budget (measured).
ROUNDED = ["--config.sample.round_to=4", "--config.sample.fit_to_budget=False", "--config.sample.over_budget=0.25"]


def main(*args, timeout=600):
    """Runs main.py; returns (exit code, stdout + stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], capture_output=True,
                            text=True, timeout=timeout, env=env)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(learnable_fashion_mnist(tmp_path_factory.mktemp("fashion")))


# The tests of one finished run (`finished_run`) share it: one xdist worker builds it once.
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """`main.py` end to end in a new Python (TINY, ROUNDED): (run directory, output); read it, copy it to change it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    code, out = main(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--config.retrain.calibrate_after=True",
                     *ROUNDED, *TINY)
    assert code == 0, out
    return run_dir, out


def copy_of(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")
def test_whole_pipeline_writes_every_artefact(finished_run):
    run_dir, out = finished_run
    assert "DMCP slim" in out and "unpruned supernet" in out  # the console summary table
    assert "━" not in out and "Epoch 1/2" in out  # not a terminal: one line per epoch, no progress bar
    assert "uniform width, same MACs" in out
    for name in ("config.json", "supernet.keras", "search.json", "search_trajectory.png", "channels.json", "samples.json", "structure.md",
                 "cost_histogram.png", "channel_distributions.png", "slim.keras", "retrain.json", "eval.json",
                 "export.json", "report.md", "export/saved_model/saved_model.pb", "export/slim_float32.tflite",
                 "export/slim_int8.tflite", "export/full_float32.tflite"):
        assert (run_dir / name).exists(), name
    for png in ("cost_histogram.png", "channel_distributions.png", "search_trajectory.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
    assert any(os.scandir(run_dir / "logs" / "search")), "TensorBoard logs"

    search = json.loads((run_dir / "search.json").read_text())
    for key in ("loss_full", "loss_smallest", "loss_random1", "loss_random2", "arch_loss", "budget_loss"):
        assert np.all(np.isfinite(search["history"][key])), key
    # The default config starts the search at the budget's uniform width; the trajectory shows every step.
    assert search["init"] == "budget" and search["start_cost"] == pytest.approx(search["target"], rel=1e-3)
    assert [p["step"] for p in search["trajectory"]] == list(range(0, search["steps"] + 1, 2))
    supernet = keras.models.load_model(run_dir / "supernet.keras", safe_mode=True, compile=False)
    graph = ChannelGraph(supernet)
    channels = json.loads((run_dir / "channels.json").read_text())
    assert set(channels) == {g.name for g in graph.gates}
    assert all(1 <= channels[g.name] <= g.channels for g in graph.gates)
    assert all(channels[g.name] % 4 == 0 or channels[g.name] == g.channels for g in graph.gates)  # round_to
    structure = (run_dir / "structure.md").read_text()
    assert all(g.name in structure for g in graph.gates)

    slim = keras.models.load_model(run_dir / "slim.keras", safe_mode=True, compile=False)
    # The deliverable loads in plain Keras, compiled, without dmcp_tf.
    plain = subprocess.run([sys.executable, "-c", "import sys, keras; m = keras.saving.load_model(sys.argv[1]); "
                            "assert 'dmcp_tf' not in sys.modules and m.compiled; print(m.count_params())",
                            str(run_dir / "slim.keras")], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and int(plain.stdout.split()[-1]) == slim.count_params(), plain.stderr
    _assert_batch_norms_hold_the_calibration_statistics(slim, run_dir)  # retrain.calibrate_after
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["slim"]["macs"] == costs.MACS.of(ChannelGraph(slim)) == costs.MACS.of(graph, channels)
    assert evaluated["full"]["macs"] == costs.MACS.of(graph)
    for label in ("full", "slim"):
        assert 0.0 <= evaluated[label]["accuracy"] <= 1.0
    exported = json.loads((run_dir / "export.json").read_text())
    for name in ("slim_float32", "full_float32"):
        assert exported[name]["top1_agreement"] >= 0.99, exported[name]
        assert exported[name]["latency_ms"] > 0
    assert exported["slim_int8"]["bytes"] < exported["slim_float32"]["bytes"]
    report = (run_dir / "report.md").read_text()
    assert "## Summary" in report and "DMCP slim" in report and "cost_histogram.png" in report
    assert "search_trajectory.png" in report and trajectory.verdict(search["settling"]) in report
    retrained = json.loads((run_dir / "retrain.json").read_text())
    uniform = retrained["uniform"]
    assert 0.0 <= uniform["accuracy"] <= 1.0 and abs(uniform["macs"] - evaluated["slim"]["macs"]) <= 0.03 * uniform["macs"]
    assert f"{100 * (evaluated['slim']['accuracy'] - uniform['accuracy']):+.2f} points" in report

    assert not list(run_dir.glob(".*.started"))  # every step finished


def _assert_batch_norms_hold_the_calibration_statistics(slim, run_dir):
    """Calibrated again on the run's first training batches (augmented), `slim`'s batch norms keep their statistics."""
    config = json.loads((run_dir / "config.json").read_text())
    d = config["data"]
    data = data_lib.load(d["name"], batch_size=d["batch_size"], data_dir=d["data_dir"], train_limit=d["train_limit"],
                         test_limit=d["test_limit"], image_size=d["image_size"] or None, augment=d["augment"],
                         seed=config["seed"], preprocess=d["preprocess"])
    again = keras.models.clone_model(slim)
    again.set_weights(slim.get_weights())
    keras.utils.set_random_seed(config["seed"])  # as the run: tf.data's shuffle reads the global seed too
    calibrate_batch_norm(again, data.calibration_batches(config["sample"]["calibration_batches"], augmented=True))
    norms = [(a, b) for a, b in zip(slim.layers, again.layers) if isinstance(a, keras.layers.BatchNormalization)]
    assert norms
    for saved, recomputed in norms:
        np.testing.assert_allclose(saved.moving_mean.numpy(), recomputed.moving_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(saved.moving_variance.numpy(), recomputed.moving_variance.numpy(), rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")
def test_a_run_killed_during_export_finishes_with_the_same_command(finished_run, data_dir, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    # Killed during export: half an export directory, a temporary one, no export.json.
    # The same command finishes the run; the finished steps are kept.
    (run_dir / "export.json").unlink()
    (run_dir / ".export.started").write_text("")
    (run_dir / "export" / "slim_int8.tflite").unlink()
    (run_dir / "export" / ".tmp-saved_modelab12cd34").mkdir()
    supernet_bytes = (run_dir / "supernet.keras").read_bytes()
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={run_dir}", *ROUNDED, *TINY)
    assert code == 0, out
    assert all(f"== {step} == finished earlier" in out for step in ("search", "sample", "retrain", "eval"))
    assert (run_dir / "export.json").exists() and (run_dir / "export" / "slim_int8.tflite").exists()
    assert not any(p.name.startswith(".tmp-") for p in (run_dir / "export").iterdir())
    assert (run_dir / "supernet.keras").read_bytes() == supernet_bytes


def test_a_report_this_run_did_not_write_is_not_replaced(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.md").write_text("my notes")
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--mode=search", *TINY)
    assert code == 2 and "report.md that no run of this config wrote" in out and "Traceback" not in out
    assert (run_dir / "report.md").read_text() == "my notes"


def test_missing_data_dir_stops_before_anything_is_written(tmp_path):
    code, out = main_in_process("--data_dir=/no/such/folder", f"--run_dir={tmp_path / 'run'}")
    assert code == 2
    assert "/no/such/folder" in out and "does not exist" in out
    assert not (tmp_path / "run").exists()


def test_unknown_config_key_is_named():
    code, out = main("--config.search.bugdet=0.5x", "--mode=macs")  # main.py: the config flag fails when defined
    assert code == 2
    assert "bugdet" in out and "budget" in out and "Traceback" not in out


def test_impossible_budget_stops_before_training(tmp_path, data_dir):
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={tmp_path / 'run'}", "--config.search.budget=2x")
    assert code == 2
    assert "outside what the supernet can reach" in out and "Epoch" not in out
    assert not (tmp_path / "run").exists()


def test_help_lists_the_flags_and_every_config_key_with_its_default():
    for flag in ("--help", "--helpshort"):
        code, out = main(flag)
        assert code == 1 and "Traceback" not in out, out  # absl ends its help with exit code 1
        for expected in ("--mode", "--model", "--run_dir", "--[no]overwrite", "search.budget = '0.25x'",
                         "retrain.epochs = 3", "data.batch_size = 128"):
            assert expected in out, (flag, expected)


def test_unknown_mode_is_rejected():
    code, out = main_in_process("--mode=prune")
    assert code == 2
    assert "prune" in out and "search" in out


def test_run_directory_of_another_config_is_refused(tmp_path, data_dir):
    other = fashion_mnist.get_config()
    other.model.options = {"channels": (8, 16, 32)}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(other.to_json())
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={run_dir}")
    assert code == 2
    assert "belongs to another config" in out and "model" in out
    assert json.loads((run_dir / "config.json").read_text()) == json.loads(other.to_json())


def test_a_run_directory_from_before_mixed_precision_still_resumes(tmp_path):
    from dmcp_tf.run.pipeline import Pipeline, PipelineError

    config = fashion_mnist.get_config()
    saved = json.loads(config.to_json())
    del saved["mixed_precision"]  # config.json of a run made before the key existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    Pipeline(config, str(tmp_path)).dir.check(config, ["search"])  # same config: accepted
    config.mixed_precision = "mixed_bfloat16"
    with pytest.raises(PipelineError, match="belongs to another config.*mixed_precision"):
        Pipeline(config, str(tmp_path)).dir.check(config, ["search"])


def test_existing_outputs_are_not_overwritten(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(fashion_mnist.get_config().to_json())
    (run_dir / "channels.json").write_text("keep me")
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--mode=sample")
    assert code == 2
    assert "channels.json" in out and "--overwrite" in out
    assert (run_dir / "channels.json").read_text() == "keep me"


def test_a_step_without_its_inputs_says_which_step_to_run_first(tmp_path):
    code, out = main_in_process(f"--run_dir={tmp_path}", "--mode=retrain")
    assert code == 2
    assert "supernet.keras" in out and "--mode=all" in out


def fashion_mnist_supernet():
    from dmcp_tf.models import build_supernet

    config = fashion_mnist.get_config()
    return build_supernet(config.model.name, **config.model.options.to_dict())


def test_macs_mode_counts_supernet_and_paper_structures(tmp_path):
    code, out = main_in_process("--mode=macs", "--config=" + os.path.join(ROOT, "configs", "mobilenet_v2_imagenet.py") + ":210M")
    assert code == 0, out
    assert "672.8M MACs" in out and "params" in out and "budget 210M = 210.0M MACs" in out
    code, out = main_in_process("--mode=flops", "--structure=resnet50_2.8G")  # the old name of --mode=macs
    assert code == 0, out
    assert "2.8G MACs (2832777865)" in out
    channels = tmp_path / "channels.json"
    graph = ChannelGraph(fashion_mnist_supernet())
    half = {g.name: g.channels // 2 for g in graph.gates}
    channels.write_text(json.dumps(half))
    code, out = main_in_process("--mode=macs", f"--channels={channels}", "--config.search.budget=params:0.5x")
    assert code == 0, out
    assert f"{channels}: " in out and f"({costs.MACS.of(graph, half)})" in out and f"({costs.PARAMS.of(graph, half)})" in out
    assert f"budget params:0.5x = {report.format_count(0.5 * costs.PARAMS.of(graph))} params" in out


@pytest.mark.parametrize("key, value, named", [
    ("search.init", "middle", "authors, full, budget"),
    ("retrain.weight_decay_type", "l2", "decoupled, coupled"),
    ("search.min_learning_rate", "0.5", "search.learning_rate"),
    ("search.initial_weights", "/no/such/model.keras", "does not exist"),
    ("search.arch_learning_rate", "0", "must be positive"),
    ("search.budget_weight_growth", "-0.1", "must be >= 0"),
    ("search.train_weights", "False", "--config.search.initial_weights"),
    ("retrain.inherit", "trained", "supernet, initial_weights"),
    ("retrain.inherit", "initial_weights", "--config.search.initial_weights=PATH.keras"),
])
def test_bad_search_settings_are_named_before_training(tmp_path, data_dir, key, value, named):
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={tmp_path / 'run'}", f"--config.{key}={value}")
    assert code == 2 and key in out and named in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


# One run serves the params-budget and the fine-tuning tests: search, sample and retrain in params,
# from a trained model's weights (the L1-sorted channels the retraining inherits).
@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, data_dir):
    """search, sample, retrain (`retrain.inherit="initial_weights"`) at `params:0.5x`: (run dir, trained .keras)."""
    from dmcp_tf.channels.rebuild import rebuild
    from dmcp_tf.models import fashion_resnet

    folder = tmp_path_factory.mktemp("fine_tuned")
    keras.utils.set_random_seed(4)
    trained = rebuild(fashion_resnet(channels=(16, 32)), copy_weights=False, name="trained")
    trained.save(folder / "trained.keras")
    run_dir, flags = folder / "run", [f"--data_dir={data_dir}", f"--run_dir={folder / 'run'}", *TINY,
                                      f"--config.search.initial_weights={folder / 'trained.keras'}",
                                      "--config.search.budget=params:0.5x"]
    for mode in ("search", "sample"):
        code, out = main_in_process(*flags, f"--mode={mode}")
        assert code == 0, out
    code, out = main_in_process(*flags, "--mode=retrain", "--config.retrain.from_scratch=False",
                                "--config.retrain.inherit=initial_weights", "--config.retrain.learning_rate=1e-9",
                                "--config.retrain.steps_per_epoch=1")
    assert code == 0 and "inherits the weights of" in out, out
    return run_dir, folder / "trained.keras"


@pytest.mark.xdist_group("fine_tuned")
def test_a_params_budget_is_searched_sampled_and_reported_in_params(fine_tuned):
    run_dir, _ = fine_tuned
    supernet = keras.models.load_model(run_dir / "supernet.keras", safe_mode=True, compile=False)
    graph = ChannelGraph(supernet)
    search = json.loads((run_dir / "search.json").read_text())
    assert (search["cost"], search["unit"]) == ("params", "params")
    assert search["target"] == pytest.approx(0.5 * costs.PARAMS.of(graph)) and search["full_cost"] == costs.PARAMS.of(graph)
    assert search["start_cost"] == pytest.approx(search["target"], rel=1e-3)  # "budget" start, in params
    sample = json.loads((run_dir / "sample.json").read_text())
    channels = json.loads((run_dir / "channels.json").read_text())
    assert sample["es_cost"] == costs.PARAMS.of(graph, channels) and sample["es_params"] == sample["es_cost"]
    # The default config scales the expected-sampling widths together to the budget, in params.
    assert sample["fit_to_budget"] and abs(sample["es_cost"] - search["target"]) <= 0.02 * search["target"]
    report = (run_dir / "report.md").read_text()
    assert "params of" in report and "params histogram" in report and "scaled together to the budget" in report


def test_search_from_a_trained_model_starts_from_its_sorted_weights(tmp_path, data_dir):
    from dmcp_tf.channels.rebuild import rebuild
    from dmcp_tf.models import fashion_resnet

    keras.utils.set_random_seed(3)
    trained = rebuild(fashion_resnet(channels=(16, 32)), copy_weights=False, name="trained")
    trained.save(tmp_path / "trained.keras")
    run_dir = tmp_path / "run"
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--mode=search", *TINY,
                     f"--config.search.initial_weights={tmp_path / 'trained.keras'}",
                     "--config.search.train_weights=False")
    assert code == 0, out
    assert "search starts from the weights of" in out and "they stay frozen" in out
    search = json.loads((run_dir / "search.json").read_text())  # projected onto the budget at every step
    assert 0.95 - 1e-3 <= search["expected_cost"] / search["target"] <= 1 + 1e-3, search["expected_cost"]
    supernet = keras.models.load_model(run_dir / "supernet.keras", safe_mode=True, compile=False)
    # Frozen weights: the kernels are the trained ones, every gate's channels sorted by L1 norm.
    for name, order in baselines.l1_channel_order(ChannelGraph(supernet)).items():
        assert list(order) == list(range(len(order))), name
    source, searched = (m.get_layer("stem_conv").kernel.numpy() for m in (trained, supernet))
    np.testing.assert_allclose(*(np.sort(np.abs(k).sum(axis=(0, 1, 2))) for k in (searched, source)), rtol=1e-6)


@pytest.mark.xdist_group("fine_tuned")
def test_fine_tuning_can_inherit_the_trained_models_l1_largest_channels(fine_tuned):
    """`retrain.inherit="initial_weights"`: L1-norm pruning of the trained model at DMCP's widths."""
    from dmcp_tf.models import build_supernet
    from dmcp_tf.search.pretrained import load_initial_weights

    run_dir, trained = fine_tuned
    slim = keras.models.load_model(run_dir / "slim.keras", compile=False)
    supernet = keras.models.load_model(run_dir / "supernet.keras", compile=False)
    sorted_trained = build_supernet("fashion_resnet", channels=(16, 32))
    load_initial_weights(sorted_trained, trained)  # each gate's channels by L1 norm, as the search
    for layer in ("stem_conv", "stage2_block1_conv1_conv"):
        kernel = slim.get_layer(layer).kernel.numpy()
        kept = kernel.shape[-1]
        assert kept < sorted_trained.get_layer(layer).kernel.shape[-1], layer  # pruned
        np.testing.assert_allclose(kernel, sorted_trained.get_layer(layer).kernel.numpy()[..., :kernel.shape[2], :kept],
                                   atol=1e-6, err_msg=layer)  # the trained model's L1-largest channels
        assert not np.allclose(kernel, supernet.get_layer(layer).kernel.numpy()[..., :kernel.shape[2], :kept],
                               atol=1e-3), layer  # not the searched supernet's weights


@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")
def test_a_diverging_search_or_retraining_stops_at_once_and_writes_no_result(tmp_path, data_dir, finished_run):
    run_dir = tmp_path / "diverged"
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--mode=search", *TINY,
                     "--config.search.learning_rate=1e6", "--config.search.checkpoint_every_steps=1")
    assert code == 2 and "Traceback" not in out, out
    assert "The search diverged at step" in out and "--config.search.learning_rate" in out
    assert not (run_dir / "supernet.keras").exists() and not (run_dir / "search.json").exists()
    # The retraining of a run whose search and sample finished: `finished_run`'s, its later steps removed.
    run_dir = copy_of(finished_run, tmp_path)
    RunDirectory(str(run_dir), overwrite=True).invalidate_later_steps(["sample"])
    assert not (run_dir / "slim.keras").exists() and not (run_dir / "retrain.json").exists()
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={run_dir}", *ROUNDED, *TINY,
                     "--config.retrain.learning_rate=1e6")  # search and sample are skipped, finished earlier
    assert code == 2 and "The retrain diverged at step" in out and "--config.retrain.learning_rate" in out, out
    assert (run_dir / "search.json").exists() and not (run_dir / "slim.keras").exists()


@pytest.mark.parametrize("content, named", [
    ("{not json", "is not valid JSON"),
    ('{"stem": true}', "not channel counts"),
    ("{}", "it is empty"),
    ('{"stem": 16}', "leaves out gates"),
])
def test_bad_channel_files_are_named(tmp_path, content, named):
    path = tmp_path / "channels.json"
    path.write_text(content)
    code, out = main_in_process("--mode=macs", f"--channels={path}")
    assert code == 2 and named in out and "Traceback" not in out, out
    if "valid JSON" in named:
        assert str(path) in out


def test_channels_flag_outside_macs_mode_is_refused(tmp_path):
    code, out = main_in_process("--mode=search", "--channels=x.json", f"--run_dir={tmp_path / 'run'}")
    assert code == 2 and "only apply to --mode=macs" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [("seed", "-1"), ("sample.tolerance", "-1"), ("sample.round_to", "8")])
def test_bad_seed_or_tolerance_is_named_before_anything_is_written(tmp_path, data_dir, key, value):
    # the default config fits the structure to the budget: rounding to multiples would undo that
    code, out = main_in_process(f"--data_dir={data_dir}", f"--run_dir={tmp_path / 'run'}", f"--config.{key}={value}")
    named = "`sample.fit_to_budget`" if key == "sample.round_to" else f"`{key}`"
    assert code == 2 and named in out, out
    assert not (tmp_path / "run").exists()
