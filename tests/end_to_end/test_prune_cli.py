"""`main.py --model=...`: the user's saved model pruned by the pipeline, and its bad inputs (exit 2, nothing written)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from tests.helpers import main_in_process

SIZE, CLASSES = 24, 3
COLORS = ((220, 40, 40), (40, 220, 40), (40, 40, 220))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ (16 images per class) and test/ (6 per class): noisy images of one colour per class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 6)):
        for label, color in enumerate(COLORS):
            os.makedirs(root / split / f"class{label}")
            for i in range(count):
                image = np.clip(rng.normal(color, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                tf.io.write_file(str(root / split / f"class{label}" / f"{i}.png"), tf.io.encode_png(image))
    return root


def saved_model(path, classes=CLASSES):
    """A Sequential CNN with its own Rescaling, trained a little by plain Keras on raw pixels, saved as .keras."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(24, 3, padding="same", use_bias=False, name="c1"), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.Conv2D(48, 3, strides=2, padding="same", use_bias=False, name="c2"),
        keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation="softmax", name="head")], name="my_cnn")
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(1).uniform(0, 255, (32, SIZE, SIZE, 3)).astype("float32")
    model.fit(x, np.arange(32) % classes, epochs=1, verbose=0)
    model.save(path)
    return str(path)


def saved(path, *layers, shape=(SIZE, SIZE, 3)):
    keras.Sequential([keras.Input(shape), *layers]).save(path)
    return str(path)


SMALL_RUN = ("--config.data.batch_size=8", "--config.retrain.epochs=1", "--config.export.representative_images=8",
             "--config.export.parity_images=8", "--config.export.latency_runs=2",
             "--config.sample.statistics_samples=200")


@pytest.mark.slow  # 20-40 s: search, fine-tuning, the uniform baseline, TFLite export
def test_main_prunes_a_saved_model_into_a_run_directory(folder, tmp_path):
    model = saved_model(tmp_path / "my_cnn.keras")
    run = tmp_path / "run"
    code, out = main_in_process(f"--model={model}", "--config.data.name=image_folder",
                                f"--config.data.data_dir={folder}", "--config.search.budget=0.5x",
                                f"--run_dir={run}", *SMALL_RUN)
    assert code in (0, None), out
    assert f"images resized to {SIZE}x{SIZE}" in out and "pixel values 0-255" in out
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["path"] == model and config["data"]["image_size"] == SIZE
    assert config["data"]["preprocess"] == "raw" and config["search"]["train_weights"] is False
    assert config["retrain"]["calibrate_after"] is True  # moving averages lag a short fine-tuning
    for name in ("search.json", "search_trajectory.png", "channels.json", "structure.md", "slim.keras",
                 "export/slim_int8.tflite", "export/saved_model", "report.md"):
        assert (run / name).exists(), name
    slim = keras.saving.load_model(run / "slim.keras", safe_mode=True)
    full = costs.MACS.of(ChannelGraph(keras.saving.load_model(model)))
    assert 0.9 <= costs.MACS.of(ChannelGraph(slim)) / (0.5 * full) <= 1.0
    export = json.loads((run / "export.json").read_text())
    assert export["slim_float32"]["top1_agreement"] >= 0.99
    uniform = json.loads((run / "retrain.json").read_text())["uniform"]
    assert uniform["inherited"] and 0.9 <= uniform["macs"] / (0.5 * full) <= 1.1  # L1 pruning at uniform widths
    report = (run / "report.md").read_text()
    assert "my_cnn.keras (unpruned, batch norm re-estimated)" in report
    assert "uniform width (inherited weights, fine-tuned), same MACs" in report


@pytest.mark.parametrize("make, message", [
    (lambda tmp: str(tmp / "missing.keras"), "no such file"),
    (lambda tmp: str(tmp / "model.h5"), r"HDF5 \(.h5\) file.*model.save\('my_model.keras'\)"),
    (lambda tmp: str(tmp), r"is a directory \(a TensorFlow SavedModel\?\)"),
    (lambda tmp: "keras.applications.NoSuchNet", "keras.applications has no network 'NoSuchNet'"),
    (lambda tmp: saved_model(tmp / "four.keras", classes=4), "has 4 outputs, but the data set has 3 classes"),
    (lambda tmp: saved(tmp / "dense.keras", keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(CLASSES)),
     "has no prunable layer"),
    (lambda tmp: saved(tmp / "any_size.keras", keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D(),
                       keras.layers.Dense(CLASSES), shape=(None, None, 3)), "images' size is unknown"),
])
def test_bad_model_flag_exits_2_with_one_paragraph_and_writes_nothing(make, message, folder, tmp_path):
    run = tmp_path / "run"
    code, out = main_in_process(f"--model={make(tmp_path)}", "--config.data.name=image_folder",
                                f"--config.data.data_dir={folder}", f"--run_dir={run}", *SMALL_RUN)
    assert code == 2
    error = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and __import__("re").search(message, error[0]), out
    assert not run.exists()


def test_application_flag_keeps_the_configs_recipe_and_feeds_raw_pixels_to_its_own_rescaling():
    from dmcp_tf.run import config as config_lib
    from dmcp_tf.run import user_model

    config = config_lib.base_config()
    config.data.image_size = 32
    notes = user_model.configure(config, "keras.applications.MobileNetV3Small", overridden=["data.image_size"])
    assert config.model.path == "keras.applications.MobileNetV3Small" and config.name == "MobileNetV3Small"
    assert config.data.preprocess == "raw" and config.search.train_weights  # trained from scratch
    assert config.retrain.calibrate_after  # momentum 0.999 lags a short training
    assert "pixel values 0-255" in notes[-1]
    config_lib.validate(config)
    supernet = user_model.supernet(config.model.path, (32, 32, 3), CLASSES)
    assert len(ChannelGraph(supernet).gates) > 10


def test_a_run_directory_from_before_model_path_and_preprocess_still_resumes(tmp_path):
    from dmcp_tf.configs import fashion_mnist
    from dmcp_tf.run.pipeline import Pipeline, PipelineError

    config = fashion_mnist.get_config()
    saved = json.loads(config.to_json())
    del saved["model"]["path"], saved["data"]["preprocess"]  # config.json of a run made before the keys existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    Pipeline(config, str(tmp_path)).dir.check(config, ["search"])  # same config: accepted
    config.model.path = "my_cnn.keras"
    config.data.preprocess = "raw"
    with pytest.raises(PipelineError, match="belongs to another config.*data.preprocess, model"):
        Pipeline(config, str(tmp_path)).dir.check(config, ["search"])


def test_model_exclude_keeps_layers_whole_and_sync_bn_synchronizes_the_batch_norms(tmp_path):
    from dmcp_tf.run import config as config_lib
    from dmcp_tf.run import user_model

    path = saved_model(tmp_path / "my_cnn.keras")
    every = user_model.supernet(path, (SIZE, SIZE, 3), CLASSES)
    config = config_lib.base_config()
    config.model.path, config.model.exclude = path, " c1 , "
    config_lib.validate(config)
    kept = user_model.supernet(path, (SIZE, SIZE, 3), CLASSES, exclude=config_lib.excluded_layers(config),
                               sync_bn=True)
    gated = lambda model: {g.name for g in ChannelGraph(model).gates}  # noqa: E731
    assert gated(every) == {"c1_gate", "c2_gate"} and gated(kept) == {"c2_gate"}
    norms = lambda model: [layer.synchronized for layer in model._flatten_layers()  # noqa: E731
                           if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms(kept) == [True, True] and norms(every) == [False, False]
    with pytest.raises(ValueError, match=r"exclude=\['c9'\] matches no layer"):
        user_model.supernet(path, (SIZE, SIZE, 3), CLASSES, exclude=("c1", "c9"))
    with pytest.raises(ValueError, match="saved model: it takes no application options"):
        user_model.supernet(path, (SIZE, SIZE, 3), CLASSES, application_options={"alpha": 0.5})


@pytest.mark.parametrize("path, exclude, message", [("", "c1", "Give --model"),
                                                    ("m.keras", "c1,(", "not a regular expression")])
def test_a_bad_model_exclude_is_named(path, exclude, message):
    from dmcp_tf.run import config as config_lib

    config = config_lib.base_config()
    config.model.path, config.model.exclude = path, exclude
    with pytest.raises(ValueError, match=f"model.exclude.*{message}"):
        config_lib.validate(config)


class Crash(Exception):
    pass


@pytest.mark.slow  # 3 short gate searches on a saved model
def test_a_model_run_crashed_in_its_search_continues_to_the_uninterrupted_result(folder, tmp_path, monkeypatch):
    from dmcp_tf.run.checkpoints import CheckpointCallback

    model = saved_model(tmp_path / "my_cnn.keras")
    args = (f"--model={model}", "--config.data.name=image_folder", f"--config.data.data_dir={folder}",
            "--config.search.budget=0.5x", "--mode=search", "--config.search.epochs=2",
            "--config.search.checkpoint_every_steps=2", *SMALL_RUN)
    code, out = main_in_process(*args, f"--run_dir={tmp_path / 'reference'}")
    assert code in (0, None), out
    original = CheckpointCallback.on_train_batch_end

    def crash_after_step_9(self, batch, logs=None):
        original(self, batch, logs)
        if self._step() == 9:
            raise Crash  # in epoch 2 of 2 (6 steps each), after the checkpoints of steps 2, 4, 6 and 8

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointCallback, "on_train_batch_end", crash_after_step_9)
        with pytest.raises(Crash):
            main_in_process(*args, f"--run_dir={tmp_path / 'crashed'}")
    assert not (tmp_path / "crashed" / "supernet.keras").exists()
    code, out = main_in_process(*args, f"--run_dir={tmp_path / 'crashed'}")  # the same command again
    assert code in (0, None) and "resuming from step 8 of 12" in out, out
    gates = lambda run: {w.path: w.numpy() for w in keras.saving.load_model(  # noqa: E731
        run / "supernet.keras", compile=False).weights if "alpha" in w.path}
    reference, resumed = gates(tmp_path / "reference"), gates(tmp_path / "crashed")
    assert reference and reference.keys() == resumed.keys()
    for path, alpha in reference.items():  # the same batches after the restart: the same gates
        np.testing.assert_allclose(resumed[path], alpha, rtol=1e-5, atol=1e-6, err_msg=path)
    assert json.loads((tmp_path / "crashed" / "search.json").read_text())["resumed_from_step"] == 8
