"""The run's tables, read from its run directory: the before/after summary and the TFLite models.

Rows and columns for `dmcp_tf.tables` to format (`summary_table` on the console, `markdown_table` in the report).
"""

import os

from dmcp_tf.tables import format_count

UNIFORM_ROW = "uniform width"  # the summary row of the uniform baseline: "uniform width, same <unit>"
SUMMARY_COLUMNS = [("model", "model"), ("macs", "MACs"), ("params", "params"), ("top1", "top-1"),
                   ("fp32_kb", "TFLite fp32 KB"), ("fp32_ms", "fp32 ms"), ("int8_kb", "int8 KB"),
                   ("int8_ms", "int8 ms")]
TFLITE_COLUMNS = [("name", "model"), ("bytes", "bytes"), ("latency_ms", "latency ms"),
                  ("top1_agreement", "top-1 agreement with Keras"), ("max_abs_diff", "max |prob diff|")]


def summary_rows(rundir):
    """Before/after rows of the console table and the report (`SUMMARY_COLUMNS`), from a `RunDirectory`."""
    evaluated, exported = rundir.load_json("eval.json") or {}, rundir.load_json("export.json") or {}
    uniform = (rundir.load_json("retrain.json") or {}).get("uniform") or {}
    user_model = ((rundir.load_json("config.json") or {}).get("model") or {}).get("path")
    full = f"{os.path.basename(user_model)} (unpruned, batch norm re-estimated)" if user_model else \
        "unpruned supernet (searched, not retrained)"
    inherited = " (inherited weights, fine-tuned)" if uniform.get("inherited") else ""
    rows = []
    for label, title in (("full", full), ("slim", "DMCP slim"),
                         ("uniform", f"{UNIFORM_ROW}{inherited}, same {uniform.get('unit', 'MACs')}")):
        ev = uniform if label == "uniform" else evaluated.get(label, {})
        if label == "uniform" and "accuracy" not in ev:
            continue
        tfl = exported.get(f"{label}_float32", {})
        int8 = exported.get(f"{label}_int8", {})
        rows.append({
            "model": title, "macs": _count(ev.get("macs", ev.get("flops"))), "params": _count(ev.get("params")),
            "top1": ev.get("accuracy"), "fp32_kb": _kb(tfl.get("bytes")), "fp32_ms": tfl.get("latency_ms"),
            "int8_kb": _kb(int8.get("bytes")), "int8_ms": int8.get("latency_ms"),
        })
    return rows


def tflite_rows(exported):
    """One row per TFLite model of export.json (`TFLITE_COLUMNS`): size, latency, agreement with Keras."""
    return [dict(name=k, **{m: v[m] for m in ("bytes", "latency_ms", "top1_agreement", "max_abs_diff")})
            for k, v in exported.items() if isinstance(v, dict)]


def _count(value):
    return None if value is None else format_count(value)


def _kb(value):
    return None if value is None else round(value / 1024, 1)
