"""The `latency` cost kind: TFLite latency from a measured per-layer table (`LatencyTable`).

A whole network costs

    latency = scale * sum over timed layer calls of table(layer, c_in, c_out) + overhead_ms

over the layer calls TFLite runs as ops of their own (`timed_records`), with the
table interpolated piecewise-linearly in each channel count (bilinear for a layer
with separate input and output channels; exact at grid points, and exact everywhere
for costs of the form a c_in c_out + b c_in + c c_out + d, which a convolution's
nearly are). `scale` and `overhead_ms` are the table's whole-network calibration. The search reads
the table here; `dmcp_tf.deploy.latency.measure_latency_table` measures it.

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
"""

import dataclasses
import json
import os

import keras
import numpy as np
from keras import ops

from dmcp_tf.costs.kinds import Cost
from dmcp_tf.io_utils import atomic_write_json

FORMAT, VERSION = "dmcp_tf.latency_table", 1
FILE_NAME = "latency_table.json"
LATENCY_NEEDS_TABLE = (
    "A latency budget needs a measured latency table: write one with python main.py --mode=latency_table "
    "(or dmcp_tf.deploy.latency.measure_latency_table) and pass it with --config.search.latency_table=PATH "
    "(in Python: Budget.parse(text, latency=dmcp_tf.costs.latency_cost(PATH))).")


class Latency(Cost):
    """TFLite latency in milliseconds, from a measured per-layer table (`LatencyTable`).

    `scale * sum of the table, interpolated at each timed layer call's (input,
    output) channels, + overhead_ms` (the table's whole-network calibration);
    the expected latency interpolates at the expected channels, differentiably.

    Args:
        table: a `LatencyTable` measured for the supernet (`load_latency_table`).
        quantization: which of its times: "float32" or "int8".
    """

    name, unit = "latency", "ms"
    axis = (1.0, "{unit}")

    def __init__(self, table=None, quantization="float32"):
        self.table, self.quantization = table, quantization

    def format(self, value):
        return f"{value:.4g} ms" + (f" ({self.quantization})" if self.quantization != "float32" else "")

    def amount(self, value):
        return f"{value:g}ms"

    def _rounded(self, total):
        return np.asarray(total, np.float64) if isinstance(total, np.ndarray) else float(total)

    def _records(self, graph):
        if self.table is None:
            raise ValueError(LATENCY_NEEDS_TABLE)
        self.table.check(graph, self.quantization)
        return timed_records(graph)

    def _fixed(self, graph):
        return self.table.overhead_ms(self.quantization)

    def _layer(self, graph, record, count):
        entry = self.table.layers[record.layer.name]
        ms = entry.predict(self.quantization, count(record.in_layout), count(record.out_layout))
        return self.table.scale(self.quantization) * ms


LATENCY = Latency()  # the kind without a table: `COSTS` names it; a budget of it needs one


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
                                    "(the format is in dmcp_tf/costs/latency.py).")

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
    """The `Latency` kinds of the table at `path`, one per quantization; none for an empty path."""
    if not path:
        return []
    table = load_latency_table(path)
    return [Latency(table, q) for q in table.quantizations]


def latency_cost(path, quantization="float32"):
    """The `Latency` kind of the table at `path` in `quantization`, or None for an empty path.

    Raises:
        LatencyTableError: the file is unreadable (`load_latency_table`) or has no `quantization` times.
    """
    if not path:
        return None
    table = load_latency_table(path)
    if quantization not in table.quantizations:
        raise LatencyTableError(f"{path} has no {quantization} times (it has {', '.join(table.quantizations)}): "
                                "choose one of those, or measure the table with that quantization.")
    return Latency(table, quantization)


def configured_cost(search):
    """The `Latency` kind the config section `search` names (`latency_table`, `latency_quantization`), or None."""
    return latency_cost(search.latency_table, search.latency_quantization)


def timed_records(graph):
    """The layer calls of `graph` that TFLite runs as ops of their own (see `LayerRule.fused`)."""
    return [r for r in graph.records if isinstance(r.layer, keras.layers.Layer) and not r.rule.fused(r.layer)]


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
