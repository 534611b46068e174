"""Tests for dmcp_tf.deploy.export: SavedModel / TFLite export, parity, latency, atomic writes."""

import math
import os
import tempfile
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from dmcp_tf.deploy import export

# The whole module on one xdist worker: its module-scoped fixture (a model and its TFLite files)
# is then built once, not once per worker.
pytestmark = pytest.mark.xdist_group("export")


def _tiny_model(extra_layer=None):
    """Input(16,16,3) -> Conv -> BN -> ReLU [-> extra] -> DWConv -> 1x1 Conv -> GAP -> Dense(5) logits.

    ~3.5k weights: enough that weight bytes, not flatbuffer overhead, decide file sizes.
    """
    rng = np.random.default_rng(1)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 3)(inputs)
    bn = keras.layers.BatchNormalization()
    x = keras.layers.ReLU()(bn(x))
    if extra_layer is not None:
        x = extra_layer(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.Conv2D(64, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    # Non-trivial BN statistics so folding BN into the conv is actually exercised.
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, 32).astype("float32"),  # gamma
            rng.normal(0, 0.1, 32).astype("float32"),  # beta
            rng.normal(0, 0.1, 32).astype("float32"),  # moving mean
            rng.uniform(0.5, 1.5, 32).astype("float32"),  # moving variance
        ]
    )
    return model


def _spread_logits(model, images):
    """Rescales the random Dense head so each logit has mean 0 and std 2 over `images`.

    A random-init tiny net gives near-identical logits (~1e-2 apart) for every image,
    which would make class agreement and probability differences trivially pass.
    """
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    logits = model.predict(images, verbose=0)
    mean, std = logits.mean(axis=0), logits.std(axis=0)
    dense.set_weights([kernel * 2 / std, (bias - mean) * 2 / std])


def _images(seed, count):
    """Noisy images of random flat colours in [0, 1], so images differ in more than noise."""
    rng = np.random.default_rng(seed)
    colours = rng.random((count, 1, 1, 3), dtype=np.float32)
    noise = 0.05 * rng.standard_normal((count, 16, 16, 3), dtype=np.float32)
    return np.clip(colours + noise, 0.0, 1.0)


@pytest.fixture(scope="module")
def calibration_images():
    return _images(seed=2, count=64)


@pytest.fixture(scope="module")
def images():
    return _images(seed=0, count=32)


@pytest.fixture(scope="module")
def model(calibration_images):
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    _spread_logits(model, calibration_images)
    return model


@pytest.fixture(scope="module")
def tflite_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite")


@pytest.fixture(scope="module")
def float32_path(model, tflite_dir):
    return export.export_tflite(model, tflite_dir / "float32.tflite")


@pytest.fixture(scope="module")
def int8_path(model, tflite_dir, calibration_images):
    with warnings.catch_warnings():
        # Every op of the tiny model has an int8 kernel: a float fallback here is a failure.
        warnings.filterwarnings("error", message="int8 export is not fully integer")
        return export.export_tflite(
            model, tflite_dir / "int8.tflite", quantization="int8", representative_images=calibration_images
        )


def test_saved_model_serving_signature_matches_keras(model, images, tmp_path):
    path = tmp_path / "saved_model"
    assert export.export_saved_model(model, path) == str(path)
    serving = tf.saved_model.load(str(path)).signatures["serving_default"]
    (output,) = serving(tf.constant(images)).values()
    np.testing.assert_allclose(output.numpy(), model.predict(images, verbose=0), atol=1e-5)


def test_saved_model_failure_keeps_existing_dir(tmp_path, monkeypatch):
    model = _tiny_model()
    path = tmp_path / "saved_model"
    path.mkdir()
    (path / "marker.txt").write_text("old")

    def half_written_export(target, **kwargs):
        with open(os.path.join(target, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise RuntimeError("export failed")

    monkeypatch.setattr(model, "export", half_written_export)
    with pytest.raises(RuntimeError, match="export failed"):
        export.export_saved_model(model, path)
    assert os.listdir(tmp_path) == ["saved_model"]
    assert os.listdir(path) == ["marker.txt"]


def test_float32_tflite_matches_keras(model, images, float32_path):
    interpreter = Interpreter(model_path=str(float32_path))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    parity = export.tflite_parity(float32_path, model, images)
    assert parity.examples == len(images)
    assert parity.top1_agreement == 1.0
    assert parity.max_abs_diff < 1e-4


def test_int8_tflite_is_integer_smaller_and_close(model, images, float32_path, int8_path):
    interpreter = Interpreter(model_path=str(int8_path))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    assert export.tflite_model_size_bytes(int8_path) < export.tflite_model_size_bytes(float32_path)
    parity = export.tflite_parity(int8_path, model, images)
    assert parity.examples == len(images)
    # Int8 rounding moves these logits (std 2) by up to ~0.2, so an image whose top two
    # classes are closer than that can swap: seeds 0-4 of this setup give 0.91-1.0
    # agreement and 0.02-0.1 max probability diff. 0.8 leaves margin for those near-ties,
    # while a wrong input scale/zero-point gives ~0.5 agreement and ~0.8 diff.
    assert parity.top1_agreement >= 0.8
    assert parity.max_abs_diff < 0.1


def test_int8_warns_about_ops_left_in_float(calibration_images, tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny_model(extra_layer=keras.layers.Lambda(keras.ops.sin))
    path = tmp_path / "int8_sin.tflite"
    with pytest.warns(RuntimeWarning, match="SIN"):
        export.export_tflite(model, path, quantization="int8", representative_images=calibration_images)
    assert Interpreter(model_path=str(path)).get_input_details()[0]["dtype"] == np.int8


def test_float16_tflite_is_smaller_and_runs(model, images, float32_path, tflite_dir):
    path = export.export_tflite(model, tflite_dir / "float16.tflite", quantization="float16")
    assert export.tflite_model_size_bytes(path) < export.tflite_model_size_bytes(float32_path)
    parity = export.tflite_parity(path, model, images)
    assert parity.top1_agreement >= 0.9
    assert parity.max_abs_diff < 1e-2


def test_int8_without_representative_images_raises(model, tmp_path):
    with pytest.raises(ValueError, match="representative_images"):
        export.export_tflite(model, tmp_path / "m.tflite", quantization="int8")
    assert not os.listdir(tmp_path)


def test_unknown_quantization_raises_listing_valid_ones(model, tmp_path):
    with pytest.raises(ValueError, match="float32, float16, int8"):
        export.export_tflite(model, tmp_path / "m.tflite", quantization="int4")


def test_parity_on_probability_outputs(images, calibration_images, tmp_path):
    keras.utils.set_random_seed(0)
    logits_model = _tiny_model()
    _spread_logits(logits_model, calibration_images)
    probs_model = keras.Model(logits_model.input, keras.layers.Softmax()(logits_model.output))
    path = export.export_tflite(probs_model, tmp_path / "probs.tflite")
    parity = export.tflite_parity(path, probs_model, images, outputs_are_logits=False)
    assert parity.top1_agreement == 1.0
    assert parity.max_abs_diff < 1e-5


@pytest.mark.parametrize("threads", [1, 2])
def test_latency_is_positive_and_finite(int8_path, threads):
    latency = export.tflite_latency_ms(int8_path, threads=threads, runs=10, warmup=2)
    assert math.isfinite(latency)
    assert latency > 0


def test_model_size_bytes(float32_path):
    with open(float32_path, "rb") as f:
        size = len(f.read())
    assert size > 0
    assert export.tflite_model_size_bytes(float32_path) == size


def test_failing_conversion_keeps_existing_file_and_leaves_no_temp_files(model, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.tflite"
    target.write_bytes(b"previous model")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the intermediate SavedModel goes
    real_from_saved_model = tf.lite.TFLiteConverter.from_saved_model

    def failing_from_saved_model(*args, **kwargs):
        converter = real_from_saved_model(*args, **kwargs)

        def convert():
            raise RuntimeError("conversion failed")

        converter.convert = convert
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", failing_from_saved_model)
    with pytest.raises(RuntimeError, match="conversion failed"):
        export.export_tflite(model, target, quantization="float16")
    assert target.read_bytes() == b"previous model"
    assert os.listdir(out_dir) == ["model.tflite"]
    assert not os.listdir(scratch)
