"""A user's mistakes and a machine's failures end in a clear error that names what to fix."""

import gzip
import zlib

import pytest
import tensorflow as tf

from dmcp_tf import data
import dmcp_tf
from dmcp_tf.configs import fashion_mnist
from dmcp_tf.run import cli
from dmcp_tf.run.pipeline import Pipeline, PipelineError
from dmcp_tf.channels.gates import MarkovGate
from tests.helpers import FASHION_FILES, learnable_fashion_mnist, main_exit_message, tiny_supernet


def test_a_damaged_gzip_stream_is_named(tmp_path):
    raw = bytearray(gzip.compress(bytes(4096)))  # a 10-byte header, then the deflate stream
    raw[10:12] = b"\xff\xff"  # an invalid block: zlib.error, which is not an OSError
    path = tmp_path / FASHION_FILES[0]
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=f"{path}.*not a readable gzip file.*intact copy") as raised:
        data.idx.read_idx(str(path), 3)
    assert isinstance(raised.value.__cause__, zlib.error)


@pytest.mark.parametrize("width", [(0.5, 0.4, 0.1), (0.1, 1.0, 0.0), (0.1, 1.0), "wide"])
def test_a_bad_width_grid_fails_when_the_gate_is_made(width):
    with pytest.raises(ValueError, match="Invalid width grid"):
        MarkovGate(width=width)


@pytest.mark.parametrize("name, step", [("supernet.keras", "search"), ("slim.keras", "retrain")])
def test_a_damaged_model_file_names_itself_and_the_step_that_rewrites_it(tmp_path, name, step):
    (tmp_path / name).write_bytes(b"PK\x03\x04 not really a zip")
    runner = Pipeline(fashion_mnist.get_config(), str(tmp_path))
    with pytest.raises(PipelineError, match=f"{tmp_path / name} cannot be read.*--mode={step} --overwrite"):
        getattr(runner.context, name.split(".")[0])


@pytest.mark.parametrize("error, named", [
    (tf.errors.ResourceExhaustedError(None, None, "runs/x/ckpt; No space left on device [Op:SaveV2]"),
     "Free disk space"),
    (tf.errors.PermissionDeniedError(None, None, "runs/x/logs; Permission denied"), "make the run directory writable"),
    (tf.errors.DataLossError(None, None, "truncated record at 1234"), "A file is damaged"),
])
def test_tensorflow_file_errors_end_with_exit_2_and_advice(monkeypatch, capsys, error, named):
    message = main_exit_message(monkeypatch, capsys, error)
    assert named in message and error.message.splitlines()[0] in message


def test_other_errors_are_not_hidden(monkeypatch):
    def run(argv):
        raise tf.errors.InternalError(None, None, "a bug of ours")

    monkeypatch.setattr(cli, "run", run)
    with pytest.raises(tf.errors.InternalError):
        cli._main(["main.py"])


def test_too_few_test_images_for_the_export_fail_before_training(tmp_path):
    config = fashion_mnist.get_config()
    config.data.test_limit, config.export.representative_images = 50, 100
    (tmp_path / "fashion").mkdir()
    config.data.data_dir = str(learnable_fashion_mnist(tmp_path / "fashion"))
    with pytest.raises(PipelineError, match="representative_images=100.*test_limit=50"):
        Pipeline(config, str(tmp_path / "run")).preflight(["search", "sample", "retrain", "eval", "export"])
    assert not (tmp_path / "run").exists()


def plain_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, name="conv_a")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(4, 1, name="conv_b")(x), name="plain")


def test_an_exclude_pattern_that_matches_no_layer_is_named():
    with pytest.raises(dmcp_tf.GraphError, match=r"exclude=\['nope'\] matches no layer of 'plain'"):
        dmcp_tf.analyze(plain_model(), exclude=["conv_a", "nope"], print_fn=lambda *a: None)
    dmcp_tf.analyze(plain_model(), exclude=["conv_.*"], print_fn=lambda *a: None)  # matches whole names: no error


def test_make_supernet_names_a_bad_width_grid():
    with pytest.raises(ValueError, match="Invalid width grid"):
        dmcp_tf.make_supernet(plain_model(), budget="0.5x", total_steps=4, width=(0.5, 0.4, 0.1))


def test_a_lambda_layer_is_copied_without_deserialising_its_bytecode():
    import keras
    import numpy as np

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(16, 3, name="conv_a")(inputs))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="conv_b")(x))
    gated = dmcp_tf.insert_gates(model, width=(0.25, 1.0, 0.25))  # raised a safe-mode error before
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(gated(images), model(images), atol=1e-5)


def test_weights_that_explode_behind_batch_norm_stop_training_at_the_epoch_end():
    import keras
    import numpy as np

    from dmcp_tf.run.trainer import NonFiniteGuard, TrainingDivergedError

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Dense(3, name="dense")(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    guard = NonFiniteGuard("retrain", "retrain.learning_rate")
    guard.set_model(model)
    guard.on_epoch_end(0)  # finite weights: nothing happens
    model.get_layer("dense").kernel.assign(np.full((4, 3), np.inf, "float32"))
    with pytest.raises(TrainingDivergedError, match="dense/kernel is no longer finite at the end of epoch 2"):
        guard.on_epoch_end(1)
