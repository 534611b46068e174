"""The export step: the slim model as SavedModel and TFLite (`export/`), with parity and latency (`export.json`)."""

import os

import numpy as np

from dmcp_tf.deploy import export
from dmcp_tf.run import config as config_lib
from dmcp_tf.run.steps.step import Step


def run(ctx):
    """Exports the slim model (every `export.quantizations`) and the full one (float32); returns `export.json`.

    Args:
        ctx: the `RunContext`.
    """
    e = ctx.config.export
    images = ctx.data.representative_images(e.representative_images)
    test = _test_images(ctx.data.test, e.parity_images)
    export.export_saved_model(ctx.slim, ctx.dir.path("export", "saved_model"))
    variants = [("slim", ctx.slim, q) for q in config_lib.quantizations(ctx.config)]
    variants.append(("full", ctx.full_model(), "float32"))
    results = {}
    for label, model, quantization in variants:
        path = export.export_tflite(model, ctx.dir.path("export", f"{label}_{quantization}.tflite"),
                                    quantization=quantization, representative_images=images)
        parity = export.tflite_parity(path, model, test)
        results[f"{label}_{quantization}"] = {
            "path": os.path.relpath(path, ctx.dir.root), "bytes": export.tflite_model_size_bytes(path),
            "latency_ms": export.tflite_latency_ms(path, threads=e.latency_threads, runs=e.latency_runs),
            "top1_agreement": parity.top1_agreement, "max_abs_diff": parity.max_abs_diff,
        }
        ctx.log(f"{label} {quantization}: {results[f'{label}_{quantization}']}")
    return results


STEP = Step("export", run, outputs=("export", "export.json"), inputs=("supernet.keras", "slim.keras"), needs_data=True)


def _test_images(dataset, count):
    """The first `count` images of a batched `(image, label)` dataset, as one array."""
    images = []
    for x, _ in dataset:
        images.append(np.asarray(x))
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count]
