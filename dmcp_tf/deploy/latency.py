"""Measuring TFLite latency per layer: the table behind the `latency` cost kind (`dmcp_tf.costs.latency`).

`measure_latency_table(supernet)` converts every layer call that TFLite runs as an
op of its own (`timed_records`: convolutions, depthwise convolutions, dense layers,
element-wise merges, pooling; not batch norms and activations, which the converter
folds into the op before them, nor gates) *in isolation* to TFLite, on a grid of
input/output channel counts (each gate's width grid, subsampled to `points` values
with both ends kept), and times it with the `ai_edge_litert` interpreter (XNNPACK,
batch 1, `threads` threads), float32 and int8, every model once per round in turn
(interleaved) and the median over rounds. A whole network then costs

    latency = scale * sum over timed layer calls of table(layer, c_in, c_out) + overhead_ms

with the table interpolated piecewise-linearly in each channel count (bilinear for a
layer with separate input and output channels; exact at grid points, and exact
everywhere for costs of the form a c_in c_out + b c_in + c c_out + d, which a
convolution's nearly are). `scale` and `overhead_ms` are fitted (least squares of
the relative error, `fit_calibration`) to the measured latency of whole networks,
uniformly narrowed sub-networks of the supernet from the smallest to the full one and
random ones (`calibration_networks`): they absorb what the per-layer sum does not explain (one
invoke's fixed cost, the ops left out, caches that a whole network shares).

The file format is in `dmcp_tf/costs/latency.py`, which reads the table (its names
are importable from here too: `load_latency_table`, `LatencyTable`, `latency_cost`, ...).

On a phone: run LiteRT's `benchmark_model` (or `benchmark_litert_model`) with
`--num_threads=1 --enable_op_profiling=true` on the `.tflite` files of the isolated
layers (`measure_latency_table(..., keep_models=DIR)` writes them, one per layer and
grid point, named `<layer>_<in>_<out>_<quantization>.tflite`) and of a few whole
networks, and write the per-op averages into the same JSON (the op of an isolated
layer's model is its only op besides quantize/dequantize); or run this module's
measurement there with Python (`pip install ai-edge-litert tensorflow`,
`python main.py --mode=latency_table`). Pass the file with
`--config.search.latency_table=PATH`.
"""

import dataclasses
import json
import os
import platform
import statistics
import tempfile
from importlib import metadata

import keras
import numpy as np

from dmcp_tf.channels import layer_rules as rules
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.channels.walk import call_nodes, layer_config
from dmcp_tf.costs.latency import (  # noqa: F401 (the table's API, where it was: `deploy.latency.load_latency_table`)
    FILE_NAME, FORMAT, VERSION, Latency, LatencyTable, LatencyTableError, LayerLatency,
    channel_grid, configured_cost, hat_weights, latency_cost, latency_costs, layer_grids, load_latency_table,
    save_latency_table, timed_records,
)
from dmcp_tf.deploy import export
from dmcp_tf.search import baselines

CALIBRATION_WIDTHS = (0.0, 0.35, 0.7, 1.0)  # uniform width fractions of the whole networks a table is fitted to
CALIBRATION_RANDOM = 4  # and random sub-networks (per gate a width of its grid): mixes of wide and narrow layers


def isolated_layer(record, cin, cout):
    """A one-layer Keras model: a fresh copy of the recorded layer with `cin` input / `cout` output channels.

    Merges (Add, Multiply) read their one input as every operand.
    """
    layer = record.layer
    copy = type(layer).from_config(layer_config(layer, record.rule.slim_config(layer, cin, cout), "float32"))
    inputs = keras.Input(tuple(record.in_shape[1:-1]) + (int(cin),))
    operands = len(keras.tree.flatten(call_nodes(layer)[0].input_tensors))
    outputs = copy([inputs] * operands if record.rule.role in (rules.COUPLE, rules.CONCAT) else inputs)
    return keras.Model(inputs, outputs, name=f"{layer.name}_{cin}_{cout}")


def _measurement_key(record, grid_in, grid_out):
    """What makes a layer's times its own: identical layers on identical inputs share one measurement."""
    config = {k: v for k, v in record.layer.get_config().items() if k != "name"}
    return json.dumps([type(record.layer).__name__, config, record.in_shape, grid_in, grid_out], default=str)


def _convert(build, directory, name, quantizations, rng):
    """`.tflite` files of the model `build()` makes, per quantization (int8 calibrated on two random inputs).

    Files already in `directory` (from an earlier, interrupted measurement) are kept:
    they are written atomically, so one that exists is whole. Returns their paths.
    """
    paths = {q: os.path.join(directory, f"{name}_{q}.tflite") for q in quantizations}
    missing = [q for q, path in paths.items() if not os.path.exists(path)]
    if missing:
        model = build()
        images = rng.normal(size=(2,) + tuple(model.input_shape[1:])).astype(np.float32)
        for q in missing:
            export.export_tflite(model, paths[q], quantization=q, representative_images=images if q == "int8" else None)
    return paths


def clock_of(threads):
    """The clock of a measurement: the thread's CPU time with 1 thread, else wall time (`export.latency_timer`)."""
    return "cpu" if threads == 1 else "wall"


def _interleaved_ms(paths, *, threads, rounds, runs, warmup):
    """key -> median over `rounds` interleaved rounds of the median invoke time (ms) of the `.tflite` `paths[key]`."""
    timers = {key: export.latency_timer(path, threads=threads, runs=runs, warmup=warmup, clock=clock_of(threads))
              for key, path in paths.items()}
    times = {key: [] for key in timers}
    for _ in range(rounds):
        for key, timer in timers.items():
            times[key].append(timer())
    return {key: statistics.median(values) for key, values in times.items()}


def _grid_ms(measured, key, grid_in, grid_out, quantization):
    """The measured times of one layer on its grid, as `LayerLatency.ms` holds them."""
    if grid_out is None:
        return np.array([measured[key, c, c, quantization] for c in grid_in], np.float32)
    return np.array([[measured[key, a, b, quantization] for b in grid_out] for a in grid_in], np.float32)


def measure_latency_table(supernet, *, quantizations=("float32", "int8"), threads=1, points=4, rounds=5, runs=20,
                          warmup=3, calibration_widths=CALIBRATION_WIDTHS, calibration_random=CALIBRATION_RANDOM,
                          path=None, keep_models=None, seed=0, log=print):
    """Measures the per-layer TFLite latency of a gated supernet (see the module docstring).

    With 1 thread an invoke is timed in the thread's CPU time (`clock_of`), which a
    busy machine inflates far less than wall time.

    Args:
        supernet: a functional model with channel gates.
        quantizations: TFLite variants, from "float32" and "int8".
        threads: interpreter threads (1: a phone's big core, without the scheduler's noise).
        points: channel counts per axis (each gate's width grid thinned to this many, ends kept).
        rounds, runs, warmup: each model is timed once per round, in turn; a time is the
            median of `runs` invokes after `warmup`; the table keeps the median over rounds.
        calibration_widths: uniform width fractions (0: the smallest sub-network) of the
            whole networks timed to fit `scale` and `overhead_ms`; empty: no fit.
        calibration_random: how many random sub-networks are timed for the fit as well.
        path: also write the table there (atomically).
        keep_models: a folder for the `.tflite` files (e.g. to time them on a phone); files
            an interrupted measurement left there are used again instead of converted.

    Returns:
        A `LatencyTable`.
    """
    graph = ChannelGraph(supernet)
    plans = {name: grids + (_measurement_key(*grids),) for name, grids in layer_grids(graph, points).items()}
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch:
        directory = keep_models or scratch
        os.makedirs(directory, exist_ok=True)
        files = {}  # (key, cin, cout, quantization) -> path: one model per distinct layer and grid point
        for name, (record, grid_in, grid_out, key) in plans.items():
            for cin in grid_in:
                for cout in (grid_out or (cin,)):
                    if (key, cin, cout, quantizations[0]) not in files:
                        paths = _convert(lambda r=record, a=cin, b=cout: isolated_layer(r, a, b), directory,
                                         f"{name}_{cin}_{cout}", quantizations, rng)
                        files.update({(key, cin, cout, q): p for q, p in paths.items()})
            log(f"[latency_table] converted {name} ({len(files)} models so far)")
        log(f"[latency_table] timing {len(files)} models in {rounds} interleaved rounds")
        measured = _interleaved_ms(files, threads=threads, rounds=rounds, runs=runs, warmup=warmup)
        layers = {name: LayerLatency(grid_in, grid_out, {q: _grid_ms(measured, key, grid_in, grid_out, q)
                                                         for q in quantizations})
                  for name, (_, grid_in, grid_out, key) in plans.items()}
        table = LatencyTable(supernet.name, tuple(supernet.input_shape[1:]), layers, {}, runtime_info(threads))
        if calibration_widths:
            table.calibration = calibrate(supernet, graph, table, calibration_widths, directory, threads=threads,
                                          rounds=rounds, runs=runs, warmup=warmup, random=calibration_random,
                                          seed=seed, log=log)
    if path:
        save_latency_table(path, table)
        table.path = os.fspath(path)
    return table


def calibrate(supernet, graph, table, widths, directory, *, threads=1, rounds=5, runs=20, warmup=3,
              random=CALIBRATION_RANDOM, seed=0, log=print):
    """Fits `scale` and `overhead_ms` per quantization: measured whole networks against the per-layer sums.

    The networks are `calibration_networks`, converted into `directory`; the fit is `fit_calibration`.

    Returns:
        The table's `calibration` (quantization -> `{"scale", "overhead_ms", "networks"}`).
    """
    configs, files = calibration_networks(supernet, graph, widths, directory, table.quantizations, random=random,
                                          seed=seed, log=log)
    measured = _interleaved_ms(files, threads=threads, rounds=rounds, runs=runs, warmup=warmup)
    return calibration_of(table, graph, configs, measured, log=log)


def calibration_networks(supernet, graph, widths, directory, quantizations, *, random=CALIBRATION_RANDOM, seed=0,
                         log=print):
    """The whole networks a calibration times: the supernet at the uniform width fractions `widths`, and
    `random` sub-networks that keep, per gate, a width drawn from the gate's grid.

    0 is the smallest sub-network. Uniform networks alone teach the fit only
    networks whose layers shrink together; a searched one mixes wide and narrow
    layers. Their `.tflite` files go into `directory` (files already there are used again).

    Returns:
        `(configs, files)`: label ("width 0.35", "random 2") -> configuration, and (label, quantization) -> path.
    """
    configs = {f"width {w:g}": _uniform_config(graph, w) for w in widths}
    draw = np.random.default_rng([seed, 1])  # a stream of its own: not the sub-networks a benchmark draws with `seed`
    configs.update({f"random {i + 1}": {g.name: int(draw.choice(g.widths_grid())) for g in graph.gates}
                    for i in range(random)})
    rng = np.random.default_rng(seed)
    files = {}
    for label, config in configs.items():
        log(f"[latency_table] converting the whole network at {label} (calibration)")
        paths = _convert(lambda c=config: rebuild(supernet, c, copy_weights=False, graph=graph), directory,
                         f"{supernet.name}_{label.replace(' ', '_')}", quantizations, rng)
        files.update({(label, q): p for q, p in paths.items()})
    return configs, files


def calibration_of(table, graph, configs, measured, log=print):
    """The calibration of `table` from whole networks: label -> configuration, (label, quantization) -> ms."""
    uncalibrated = dataclasses.replace(table, calibration={})
    calibration = {}
    for q in table.quantizations:
        sums = np.array([Latency(uncalibrated, q).of(graph, configs[label]) for label in configs])
        times = np.array([measured[label, q] for label in configs])
        scale, overhead = fit_calibration(sums, times)
        calibration[q] = {"scale": round(float(scale), 5), "overhead_ms": round(float(overhead), 5), "networks": [
            {"label": label, "measured_ms": round(float(t), 5), "layer_sum_ms": round(float(s), 5)}
            for label, t, s in zip(configs, times, sums)]}
        log(f"[latency_table] {q}: whole network = {scale:.4f} x layer sum + {overhead:.4f} ms")
    return calibration


def fit_calibration(sums, times):
    """`(scale, overhead_ms)` with `times ~ scale * sums + overhead_ms` in least squares of the relative error.

    `sums` are the per-layer sums of whole networks, `times` their measured latency;
    from one network, or times that do not grow with the sums, only the overhead (scale
    1, the median difference). The overhead may be negative: every
    layer timed alone paid the interpreter's fixed cost of an invoke, which a whole
    network pays once.
    """
    sums, times = np.asarray(sums, np.float64), np.asarray(times, np.float64)
    if len(sums) == 1:
        return 1.0, float(times[0] - sums[0])
    scale, overhead = np.polyfit(sums, times, 1, w=1.0 / times)
    if scale <= 0:  # the times do not grow with the sums (noise, or networks too small to time): an offset only
        return 1.0, float(np.median(times - sums))
    return float(scale), float(overhead)


def _uniform_config(graph, fraction):
    """Every gate at `fraction` of its channels (`baselines.scaled_config`), at least its always-kept prefix."""
    scaled = baselines.scaled_config(graph, {g.name: fraction for g in graph.gates})
    return {g.name: max(g.prefix, scaled[g.name]) for g in graph.gates}


def runtime_info(threads):
    """How a table is measured here: the runtime, threads, batch and host."""
    return {"name": f"ai_edge_litert {metadata.version('ai-edge-litert')} (XNNPACK)", "threads": int(threads),
            "clock": clock_of(threads), "batch": 1,
            "host": f"{platform.machine()} {platform.processor() or platform.system()}",
            "cores": os.cpu_count()}
