"""Deploys a slim Keras model: TF SavedModel, TFLite (float32/float16/int8) and on-device checks.

TFLite conversion goes Keras model -> SavedModel (Keras `model.export`) ->
`tf.lite.TFLiteConverter.from_saved_model`, the route Keras 3 itself uses.
TFLite models are run with the `ai_edge_litert` interpreter and are assumed to
have one image input and one output, as slim classifiers do.

A model trained under a mixed dtype policy (`mixed_bfloat16`, `mixed_float16`)
is exported from a float32 copy (`float32_copy`): TFLite has no bfloat16
kernels, and a float32 SavedModel serves anywhere. Half precision on a device
is TFLite's own `float16` quantization.
"""

import dataclasses
import os
import statistics
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from dmcp_tf.channels import walk
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.io_utils import atomic_directory, atomic_write_bytes

QUANTIZATIONS = ("float32", "float16", "int8")


def float32_copy(model):
    """`model` itself if every layer computes in its variables' dtype; else a copy in float32 with its weights.

    The copy (`rebuild` of the functional model) has the same layers, every one
    under the `float32` dtype policy, and the same weights, which a mixed policy
    keeps in float32 already.
    """
    layers = [layer for layer in walk.all_layers(model)
              if not isinstance(layer, keras.layers.InputLayer)]
    if all(layer.compute_dtype == layer.variable_dtype for layer in layers):
        return model
    return rebuild(model, dtype="float32", name=model.name)


def export_saved_model(model, path):
    """Exports `model` (in float32: `float32_copy`) as a TF SavedModel with a `serving_default` signature.

    Args:
        model: A built Keras model.
        path: Target directory; replaced atomically.

    Returns:
        `path` as a string.
    """
    with atomic_directory(path) as tmp:
        float32_copy(model).export(tmp, format="tf_saved_model", verbose=False)
    return os.fspath(path)


def export_tflite(model, path, *, quantization="float32", representative_images=None):
    """Converts `model` (in float32: `float32_copy`) to a TFLite flatbuffer.

    "int8" is full integer quantization with int8 input/output tensors,
    calibrated on `representative_images`. Ops without an int8 kernel are left
    in float32 by the converter; a `RuntimeWarning` names them.

    Args:
        model: A built Keras model.
        path: Target `.tflite` file; written atomically.
        quantization: One of `QUANTIZATIONS`.
        representative_images: float32 NHWC array for int8 calibration.

    Returns:
        `path` as a string.

    Raises:
        ValueError: For an unknown `quantization`, or "int8" without images.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown quantization {quantization!r}; valid: {', '.join(QUANTIZATIONS)}."
        )
    if quantization == "int8" and representative_images is None:
        raise ValueError(
            "quantization='int8' requires representative_images "
            "(a float32 NHWC array) to calibrate activation ranges."
        )
    with tempfile.TemporaryDirectory() as tmp:
        saved_model = export_saved_model(model, os.path.join(tmp, "saved_model"))
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        _configure(converter, quantization, representative_images)
        tflite_bytes = converter.convert()
    if quantization == "int8" and (float_ops := _float_ops(tflite_bytes)):
        warnings.warn(
            "int8 export is not fully integer: these ops have no int8 kernel and run in "
            f"float32 between QUANTIZE/DEQUANTIZE ops: {', '.join(float_ops)}.",
            RuntimeWarning,
        )
    atomic_write_bytes(path, tflite_bytes)
    return os.fspath(path)


def _configure(converter, quantization, representative_images):
    """Sets the converter options for `quantization` (float32 needs none)."""
    if quantization == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return
    images = np.asarray(representative_images, np.float32)
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


def _float_ops(tflite_bytes):
    """Returns the sorted names of ops computing in float32, ignoring (de)quantize."""
    interpreter = Interpreter(
        model_content=tflite_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return sorted(
        {
            op["op_name"]
            for op in interpreter._get_ops_details()  # pylint: disable=protected-access
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
            and np.float32 in op["operand_types"]
        }
    )


@dataclasses.dataclass
class TFLiteParity:
    """Agreement between a TFLite model and its Keras source.

    Attributes:
        top1_agreement: Fraction of images with the same arg-max class.
        max_abs_diff: Largest absolute difference of softmax probabilities.
        examples: Number of images compared.
    """

    top1_agreement: float
    max_abs_diff: float
    examples: int


def tflite_parity(tflite_path, keras_model, images, batch_size=32, *, outputs_are_logits=True):
    """Compares TFLite outputs with `keras_model.predict` on `images`.

    Args:
        tflite_path: A `.tflite` file converted from `keras_model`.
        keras_model: The source Keras model.
        images: float32 NHWC array.
        batch_size: Batch size for `keras_model.predict`.
        outputs_are_logits: Apply softmax to both outputs before comparing.

    Returns:
        A `TFLiteParity`.
    """
    images = np.asarray(images, np.float32)
    expected = keras_model.predict(images, batch_size=batch_size, verbose=0)
    actual = _run_tflite(tflite_path, images)
    if outputs_are_logits:
        expected, actual = _softmax(expected), _softmax(actual)
    return TFLiteParity(
        top1_agreement=float(np.mean(expected.argmax(-1) == actual.argmax(-1))),
        max_abs_diff=float(np.max(np.abs(expected - actual))),
        examples=len(images),
    )


def _run_tflite(tflite_path, images):
    """Runs `images` one at a time; returns float32 (dequantized) outputs."""
    interpreter = _interpreter(tflite_path)
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        interpreter.set_tensor(input_detail["index"], _quantize(image[None], input_detail))
        interpreter.invoke()
        outputs.append(_dequantize(interpreter.get_tensor(output_detail["index"]), output_detail))
    return np.concatenate(outputs)


def _quantize(x, detail):
    """Maps float `x` to the tensor's dtype using its scale/zero-point, if any."""
    scale, zero_point = detail["quantization"]
    if not scale:
        return x.astype(detail["dtype"])
    limits = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), limits.min, limits.max).astype(detail["dtype"])


def _dequantize(q, detail):
    """Maps a tensor value back to float32 using its scale/zero-point, if any."""
    scale, zero_point = detail["quantization"]
    if not scale:
        return q.astype(np.float32)
    return (q.astype(np.float32) - zero_point) * scale


def _softmax(logits):
    """Numerically stable softmax over the last axis."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def tflite_latency_ms(tflite_path, *, threads=1, runs=50, warmup=5):
    """Returns the median wall time in ms of one batch-1 invoke.

    Uses the `ai_edge_litert` interpreter with its default (XNNPACK) delegate.

    Args:
        tflite_path: A `.tflite` file.
        threads: Interpreter thread count.
        runs: Timed invokes.
        warmup: Untimed invokes before timing.
    """
    return latency_timer(tflite_path, threads=threads, runs=runs, warmup=warmup)()


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def latency_timer(tflite_path, *, threads=1, runs=50, warmup=5, clock="wall"):
    """A callable that measures `tflite_latency_ms` again on one interpreter, kept between calls.

    For interleaved timing of several models: each call runs `warmup` untimed and
    `runs` timed invokes on zero inputs and returns the median in ms. `clock="cpu"`
    times the calling thread's CPU time instead of wall time: with 1 thread the
    interpreter computes in that thread, so this is the invoke's time without the
    waits for a CPU that other processes on a busy machine cause.

    Raises:
        ValueError: an unknown `clock`, or "cpu" with more than 1 thread (the other threads' work would be missed).
    """
    if clock not in CLOCKS or (clock == "cpu" and threads != 1):
        raise ValueError(f"clock must be one of {sorted(CLOCKS)} (\"cpu\" with threads=1 only), got {clock!r} "
                         f"with threads={threads}.")
    now = CLOCKS[clock]
    interpreter = _interpreter(tflite_path, threads)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))

    def measure():
        for _ in range(warmup):
            interpreter.invoke()
        times = []
        for _ in range(runs):
            start = now()
            interpreter.invoke()
            times.append(now() - start)
        return 1000.0 * statistics.median(times)

    return measure


def _interpreter(tflite_path, threads=None):
    """Returns an `ai_edge_litert` interpreter with tensors allocated."""
    interpreter = Interpreter(model_path=os.fspath(tflite_path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def tflite_model_size_bytes(path):
    """Returns the size of the file at `path` in bytes."""
    return os.path.getsize(path)
