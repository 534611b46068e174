"""Measured TFLite latency per layer: the lookup table behind the `latency` cost kind.

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

File format (`latency_table.json`, JSON):

    {
      "format": "dmcp_tf.latency_table", "version": 1,
      "model": "mobilenet_v2_1.5", "input_shape": [224, 224, 3],
      "runtime": {"name": "ai_edge_litert 2.3.0 (XNNPACK)", "threads": 1, "clock": "cpu", "batch": 1, ...},
      "quantizations": ["float32", "int8"],
      "calibration": {"float32": {"scale": 1.02, "overhead_ms": 0.31,
                                  "networks": [{"label": "width 1", "measured_ms": 15.7, "layer_sum_ms": 15.1}]},
                      "int8": {...}},
      "layers": {
        "block2_1_expand": {"in": [6, 24, 42, 48], "out": [12, 100, 188, 216],
                            "ms": {"float32": [[...4 values...], ... 4 rows], "int8": [[...]]}},
        "block2_1_depthwise": {"in": [12, 100, 188, 216], "ms": {"float32": [...], "int8": [...]}}
      }
    }

Each layer (by its Keras name) has the input channel counts `in` (increasing) and,
for a layer whose output channels are not its input's, the output channel counts
`out`; `ms[quantization]` is the latency in milliseconds, a list over `in` (no `out`)
or a list of rows over `in`, each a list over `out`. A layer missing from
`layers` costs nothing of its own (it counts in the overhead). Without a
calibration, `scale` is 1 and `overhead_ms` 0.

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

import keras
import numpy as np
from keras import ops

from dmcp_tf import costs
from dmcp_tf.channels import layer_rules as rules
from dmcp_tf.channels.walk import layer_config
from dmcp_tf.io_utils import atomic_write_json
from dmcp_tf.search import baselines
from dmcp_tf.search.gates import ChannelGate

FORMAT, VERSION = "dmcp_tf.latency_table", 1
FILE_NAME = "latency_table.json"
# Layers TFLite folds into the op before them (batch norm into a convolution, ReLU
# into its fused activation) or drops (dropout, reshapes): they cost no op of their own.
FUSED_LAYERS = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Dropout,
                keras.layers.SpatialDropout2D, keras.layers.Flatten, keras.layers.Reshape, ChannelGate)
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
CALIBRATION_WIDTHS = (0.0, 0.35, 0.7, 1.0)  # uniform width fractions of the whole networks a table is fitted to
CALIBRATION_RANDOM = 4  # and random sub-networks (per gate a width of its grid): mixes of wide and narrow layers


class LatencyTableError(ValueError):
    """A latency table file is malformed or does not describe the model it is used with."""


@dataclasses.dataclass(frozen=True)
class LayerLatency:
    """The measured latency of one layer on a grid of channel counts.

    Attributes:
        inputs: input channel counts, increasing.
        outputs: output channel counts, increasing; None when the output channels are the input's.
        ms: quantization -> array of milliseconds, shape `(len(inputs),)` or `(len(inputs), len(outputs))`.
    """

    inputs: tuple
    outputs: tuple
    ms: dict

    def predict(self, quantization, cin, cout):
        """Interpolated milliseconds at `cin` (and `cout`) channels: ints, arrays or tensors (differentiable)."""
        values = self.ms[quantization]
        weights_in = hat_weights(cin, self.inputs)
        if self.outputs is None:
            return _contract("...i,i->...", weights_in, values)
        return _contract("...i,ij,...j->...", weights_in, values, hat_weights(cout, self.outputs))


def _contract(subscripts, *operands):
    """`einsum` in NumPy, or in Keras ops when an operand is a tensor (then float32)."""
    if not any(ops.is_tensor(o) for o in operands):
        return np.einsum(subscripts, *operands)
    return ops.einsum(subscripts, *(ops.cast(o, "float32") for o in operands))


def hat_weights(x, grid):
    """Piecewise-linear interpolation weights of the points of `grid` at `x` (clamped to the grid's ends).

    `x` is a number, a NumPy array or a tensor (then differentiable); the result has
    a last axis of `len(grid)` and sums to 1 over it.
    """
    grid = np.asarray(grid, np.float32)
    xp = ops if ops.is_tensor(x) else np
    x = xp.asarray(x, "float32") if xp is np else ops.cast(x, "float32")
    if len(grid) == 1:
        return xp.ones_like(x)[..., None]
    x = xp.clip(x, grid[0], grid[-1])[..., None]
    lower = np.concatenate([[grid[0] - 1], grid[:-1]])  # the first point rises from below the grid ...
    upper = np.concatenate([grid[1:], [grid[-1] + 1]])  # ... and the last falls beyond it: weight 1 at the ends
    rise, fall = (x - lower) / (grid - lower), (upper - x) / (upper - grid)
    return xp.clip(xp.minimum(rise, fall), 0.0, 1.0)


@dataclasses.dataclass
class LatencyTable:
    """Per-layer latency of a supernet (see the module docstring for the file format).

    Attributes:
        model: the supernet's name. input_shape: its input shape without the batch.
        layers: layer name -> `LayerLatency`.
        calibration: quantization -> `{"scale", "overhead_ms", "networks"}` (whole-network fit).
        runtime: how it was measured.
        path: the file it was read from, if any (for messages).
    """

    model: str
    input_shape: tuple
    layers: dict
    calibration: dict
    runtime: dict
    path: str = None

    @property
    def quantizations(self):
        return sorted(next(iter(self.layers.values())).ms) if self.layers else sorted(self.calibration)

    def scale(self, quantization):
        return self.calibration.get(quantization, {}).get("scale", 1.0)

    def overhead_ms(self, quantization):
        return self.calibration.get(quantization, {}).get("overhead_ms", 0.0)

    def check(self, graph, quantization):
        """Raises `LatencyTableError` unless this table was measured for the supernet of `graph`."""
        source = f"The latency table {self.path or ''}".rstrip()
        if quantization not in self.quantizations:
            raise LatencyTableError(f"{source} has no {quantization} times (it has {', '.join(self.quantizations)}).")
        shape, measured = tuple(graph.model.input_shape[1:]), tuple(self.input_shape)
        missing = sorted({r.layer.name for r in timed_records(graph)} - set(self.layers))
        if shape != measured or missing:
            found = (f"it was measured at input {measured}, not {shape}" if shape != measured
                     else f"layers {missing[:5]}{' ...' if len(missing) > 5 else ''} are not in it")
            raise LatencyTableError(f"{source} (model {self.model!r}) does not fit {graph.model.name!r}: {found}. "
                                    "Measure a table for this supernet: python main.py --mode=latency_table "
                                    "(same config), then pass it with --config.search.latency_table=PATH.")
        narrower = [name for name, (_, grid_in, grid_out) in layer_grids(graph, 2).items()  # 2: the ends
                    if grid_in[-1] > self.layers[name].inputs[-1]
                    or grid_out is not None and grid_out[-1] > self.layers[name].outputs[-1]]
        if narrower:
            raise LatencyTableError(
                f"{source} (model {self.model!r}) was measured on a narrower supernet than {graph.model.name!r}: "
                f"layers {narrower[:5]}{' ...' if len(narrower) > 5 else ''} have more channels than its grid, whose "
                "times would be taken for theirs. Measure a table for this supernet: python main.py "
                "--mode=latency_table (same config), then pass it with --config.search.latency_table=PATH.")

    def to_json(self):
        def layer(entry):
            ms = {q: np.round(v.astype(np.float64), 6).tolist() for q, v in entry.ms.items()}
            out = {"in": list(entry.inputs), "ms": ms}
            return out if entry.outputs is None else dict(out, out=list(entry.outputs))

        return {"format": FORMAT, "version": VERSION, "model": self.model, "input_shape": list(self.input_shape),
                "runtime": self.runtime, "quantizations": self.quantizations, "calibration": self.calibration,
                "layers": {name: layer(entry) for name, entry in self.layers.items()}}

    @classmethod
    def from_json(cls, data, path=None):
        """A table from the parsed JSON of a file (`path` for messages); `LatencyTableError` if malformed."""
        where = f"{path or 'The latency table'}"

        def fail(detail):
            raise LatencyTableError(f"{where} is not a latency table: {detail}. Write it with "
                                    "python main.py --mode=latency_table or dmcp_tf.deploy.latency.measure_latency_table "
                                    "(the format is in dmcp_tf/deploy/latency.py).")

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            fail(f'its "format" must be "{FORMAT}"')
        if data.get("version") != VERSION:
            fail(f'version {data.get("version")!r} is not {VERSION}')
        for key in ("model", "input_shape", "layers"):
            if key not in data:
                fail(f'the key "{key}" is missing')
        if not isinstance(data["layers"], dict):
            fail('"layers" must map layer names to tables')
        layers = {name: _layer_from_json(name, entry, fail) for name, entry in data["layers"].items()}
        quantizations = {tuple(sorted(entry.ms)) for entry in layers.values()}
        if len(quantizations) > 1:
            fail(f"its layers have different quantizations: {sorted(quantizations)}")
        return cls(str(data["model"]), tuple(data["input_shape"]), layers, data.get("calibration") or {},
                   data.get("runtime") or {}, path)


def _layer_from_json(name, entry, fail):
    """One layer's `LayerLatency` from its JSON; `fail(detail)` raises."""
    if not isinstance(entry, dict) or "in" not in entry or not isinstance(entry.get("ms"), dict) or not entry["ms"]:
        fail(f'layer {name!r} needs "in" (channel counts) and "ms" (quantization -> milliseconds)')
    axes = [entry["in"]] + ([entry["out"]] if "out" in entry else [])
    for axis in axes:
        if not isinstance(axis, list) or not axis or list(axis) != sorted(set(axis)) \
                or not all(isinstance(c, int) and c > 0 for c in axis):
            fail(f"layer {name!r}: channel counts must be increasing positive integers, got {axis!r}")
    shape = tuple(len(a) for a in axes)
    ms = {}
    for quantization, values in entry["ms"].items():
        try:
            array = np.asarray(values, np.float32)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != shape or not np.all(np.isfinite(array)) or np.any(array < 0):
            fail(f"layer {name!r}: ms[{quantization!r}] must be non-negative numbers of shape {shape} "
                 "(rows over \"in\", columns over \"out\")")
        ms[quantization] = array
    return LayerLatency(tuple(entry["in"]), tuple(entry["out"]) if "out" in entry else None, ms)


def save_latency_table(path, table):
    """Writes `table` as JSON (atomically); returns `path`."""
    atomic_write_json(path, table.to_json())
    return os.fspath(path)


def load_latency_table(path):
    """Reads a `LatencyTable` written by `save_latency_table` (or by hand, on a phone).

    Raises:
        LatencyTableError: the file is missing, not JSON, or not in the format.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise LatencyTableError(f"No latency table at {path}: write one with python main.py --mode=latency_table "
                                "(it goes into the run directory), then pass its path.") from None
    except json.JSONDecodeError as error:
        raise LatencyTableError(f"{path} is not valid JSON ({error}): a damaged latency table. Measure it again "
                                "with python main.py --mode=latency_table --overwrite.") from None
    return LatencyTable.from_json(data, path=os.fspath(path))


def latency_costs(path):
    """The `costs.Latency` kinds of the table at `path`, one per quantization; none for an empty path."""
    if not path:
        return []
    table = load_latency_table(path)
    return [costs.Latency(table, q) for q in table.quantizations]


def latency_cost(path, quantization="float32"):
    """The `costs.Latency` kind of the table at `path` in `quantization`, or None for an empty path.

    Raises:
        LatencyTableError: the file is unreadable (`load_latency_table`) or has no `quantization` times.
    """
    if not path:
        return None
    table = load_latency_table(path)
    if quantization not in table.quantizations:
        raise LatencyTableError(f"{path} has no {quantization} times (it has {', '.join(table.quantizations)}): "
                                "choose one of those, or measure the table with that quantization.")
    return costs.Latency(table, quantization)


def configured_cost(search):
    """The `costs.Latency` kind the config section `search` names (`latency_table`, `latency_quantization`), or None."""
    return latency_cost(search.latency_table, search.latency_quantization)


# --- measuring -------------------------------------------------------------
def timed_records(graph):
    """The layer calls of `graph` that TFLite runs as ops of their own (see `FUSED_LAYERS`)."""
    def fused(layer):
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        return isinstance(layer, FUSED_LAYERS) or (
            isinstance(layer, keras.layers.Activation) and activation in FUSED_ACTIVATIONS)

    return [r for r in graph.records if isinstance(r.layer, keras.layers.Layer) and not fused(r.layer)
            and r.rule.role != rules.FLATTEN]


def channel_grid(graph, layout, points):
    """Channel counts to measure a layout at: its gate's width grid (or every count) thinned to `points`, ends kept."""
    spaces = [graph.space(s) for s in layout]
    if len(spaces) == 1 and spaces[0].gate is not None:
        values = spaces[0].gate.widths_grid()
    else:
        values = list(range(graph.count(layout, graph.smallest_config()), graph.count(layout) + 1))
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, max(1, min(points, len(values))))).astype(int))
    return tuple(int(values[i]) for i in picks)


def _same_channels(graph, record):
    """Whether a call's output channels are its input channels (depthwise conv, pooling, merges)."""
    return [graph.find(s) for s in record.in_layout] == [graph.find(s) for s in record.out_layout]


def isolated_layer(record, cin, cout):
    """A one-layer Keras model: a fresh copy of the recorded layer with `cin` input / `cout` output channels.

    Merges (Add, Multiply) read their one input as every operand.
    """
    layer = record.layer
    copy = type(layer).from_config(layer_config(layer, record.rule.slim_config(layer, cin, cout), "float32"))
    inputs = keras.Input(tuple(record.in_shape[1:-1]) + (int(cin),))
    operands = len(keras.tree.flatten(layer._inbound_nodes[0].input_tensors))  # noqa: SLF001
    outputs = copy([inputs] * operands if record.rule.role in (rules.COUPLE, rules.CONCAT) else inputs)
    return keras.Model(inputs, outputs, name=f"{layer.name}_{cin}_{cout}")


def layer_grids(graph, points):
    """Per timed layer name (its first call): `(record, input channel grid, output grid or None)`.

    The output grid is None for a layer whose output channels are its input's.
    """
    grids = {}
    for record in timed_records(graph):
        if record.layer.name not in grids:
            grid_out = None if _same_channels(graph, record) else channel_grid(graph, record.out_layout, points)
            grids[record.layer.name] = (record, channel_grid(graph, record.in_layout, points), grid_out)
    return grids


def _measurement_key(record, grid_in, grid_out):
    """What makes a layer's times its own: identical layers on identical inputs share one measurement."""
    config = {k: v for k, v in record.layer.get_config().items() if k != "name"}
    return json.dumps([type(record.layer).__name__, config, record.in_shape, grid_in, grid_out], default=str)


def _convert(build, directory, name, quantizations, rng):
    """`.tflite` files of the model `build()` makes, per quantization (int8 calibrated on two random inputs).

    Files already in `directory` (from an earlier, interrupted measurement) are kept:
    they are written atomically, so one that exists is whole. Returns their paths.
    """
    from dmcp_tf.deploy import export  # noqa: PLC0415 (TensorFlow's converter: only when measuring)

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
    from dmcp_tf.deploy import export  # noqa: PLC0415

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
    from dmcp_tf.channels.graph import ChannelGraph  # noqa: PLC0415 (the graph module imports costs, which this one does)

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
    from dmcp_tf.channels.rebuild import rebuild  # noqa: PLC0415

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
        sums = np.array([costs.Latency(uncalibrated, q).of(graph, configs[label]) for label in configs])
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
    from importlib import metadata  # noqa: PLC0415

    return {"name": f"ai_edge_litert {metadata.version('ai-edge-litert')} (XNNPACK)", "threads": int(threads),
            "clock": clock_of(threads), "batch": 1,
            "host": f"{platform.machine()} {platform.processor() or platform.system()}",
            "cores": os.cpu_count()}
