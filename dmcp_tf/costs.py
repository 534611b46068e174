"""What a channel configuration costs, and budgets on those costs.

A cost kind (`Cost`) gives, for a `ChannelGraph`, the cost of a configuration
(`of`, NumPy arrays of configurations too), the expected cost as a
differentiable function of the gates' parameters (`expected`) and a per-layer
breakdown (`per_layer`). Kinds, by name in `COSTS`: `macs` (multiply-accumulates
of conv and dense layers, the paper's FLOPs), `params` (weights, gates
excluded) and `latency` (TFLite milliseconds from a measured per-layer table,
`latency.py`; it needs the table, so `COSTS` names it without one). A new kind
is one subclass that says what one layer call costs.

A `Budget` is a kind and a target, read once from text:

    "210M", "2.8G", "0.5x"          MACs (absolute, or a fraction of the full network)
    "macs:210M", "params:1.5M", "params:0.4x"
    "latency:3.2ms", "latency:0.5x"   TFLite latency (given a `Latency` kind with its table)

The budget loss (`budget_loss`) is the authors' piecewise-log loss, computed in
millions of the budget's unit (their MFLOPs).
"""

import dataclasses
import re

import numpy as np
from keras import ops

_UNITS = (("G", 1e9), ("M", 1e6), ("K", 1e3))


def format_count(n):
    """Formats a count readably: `672832704` -> `"672.8M"`, `12` -> `"12"`."""
    for suffix, scale in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


_MULTIPLIERS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?|x|ms)\s*")


class Cost:
    """A cost kind; subclasses say what one recorded layer call costs (`_layer`) and what is fixed."""

    name = unit = ""
    axis = (1e6, "millions of {unit}")  # a plot axis: values divided by the first, labelled by the second

    def of(self, graph, config=None):
        """The cost under `config` (gate name -> kept channels, ints or arrays); the full network by default."""
        return self._rounded(self._total(graph, lambda layout: graph.count(layout, config)))

    def expected(self, graph):
        """The expected cost (a scalar tensor), differentiable in every gate's alpha."""
        widths = graph.expected_widths()  # once per gate: a layer sees several gates, a gate many layers
        return self._total(graph, lambda layout: graph.expected_count(layout, widths))

    def per_layer(self, graph, config=None):
        """`[(layer name, cost)]`, one entry per costed layer call, under `config`."""
        def count(layout):
            return graph.count(layout, config)

        return [(r.layer.name, self._layer(graph, r, count)) for r in self._records(graph)]

    def format(self, value):
        return f"{format_count(value)} {self.unit}"

    def amount(self, value):
        """`value` as a budget string writes it (`"210.0M"`)."""
        return format_count(value)

    def _rounded(self, total):
        """A count: whole numbers (ints, or int64 arrays for arrays of configurations)."""
        if isinstance(total, np.ndarray):
            return np.round(total).astype(np.int64)
        return int(round(total))

    def _total(self, graph, count):
        total = self._fixed(graph)
        for record in self._records(graph):
            total = total + self._layer(graph, record, count)
        return total

    def _records(self, graph):
        return graph.records

    def _fixed(self, graph):
        return 0

    def _layer(self, graph, record, count):
        raise NotImplementedError


class Macs(Cost):
    """Multiply-accumulates of conv and dense layers for one image (the paper's FLOPs)."""

    name, unit = "macs", "MACs"

    def _layer(self, graph, record, count):
        return record.rule.macs(record.layer, record.in_shape, record.out_shape,
                                count(record.in_layout), count(record.out_layout))


class Params(Cost):
    """Weights, trainable and not (batch-norm statistics included), gates excluded.

    A shared layer counts once. Layers the graph does not record (no channel
    rule) count in full.
    """

    name, unit = "params", "params"

    def _records(self, graph):
        records = graph.first_records()
        return [records[id(layer)] for layer in graph.weighted_layers() if id(layer) in records]

    def _fixed(self, graph):
        records = graph.first_records()
        return sum(int(np.prod(w.shape)) for layer in graph.weighted_layers() if id(layer) not in records
                   for w in layer.weights)

    def _layer(self, graph, record, count):
        total = 0
        for weight, axes in graph.weight_axes(record):
            size = 1
            pruned = dict(axes)
            for axis, dim in enumerate(weight.shape):
                full = graph.count(pruned[axis]) if axis in pruned else 0
                # An axis of `expansion` rows per channel (after a depth multiplier); an axis
                # shorter than its channels (a grouped kernel's inputs) is never pruned.
                size = size * (count(pruned[axis]) * (dim // full) if full and dim >= full else dim)
            total = total + size
        return total


class Latency(Cost):
    """TFLite latency in milliseconds, from a measured per-layer table (`latency.LatencyTable`).

    `scale * sum of the table, interpolated at each timed layer call's (input,
    output) channels, + overhead_ms` (the table's whole-network calibration);
    the expected latency interpolates at the expected channels, differentiably.

    Args:
        table: a `latency.LatencyTable` measured for the supernet (`latency.load_latency_table`).
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
        from dmcp_tf.deploy.latency import timed_records  # noqa: PLC0415 (latency.py measures with this module)

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


MACS, PARAMS, LATENCY = Macs(), Params(), Latency()
COSTS = {cost.name: cost for cost in (MACS, PARAMS, LATENCY)}
BUDGET_FORMS = ('"210M", "2.8G" or "0.5x" (MACs: absolute or a fraction of the full network), '
                '"macs:210M", "params:1.5M", "params:0.4x", "latency:3.2ms", "latency:0.5x" '
                '(with a latency table), or a plain number of MACs')
LATENCY_NEEDS_TABLE = (
    "A latency budget needs a measured latency table: write one with python main.py --mode=latency_table "
    "(or dmcp_tf.deploy.latency.measure_latency_table) and pass it with --config.search.latency_table=PATH "
    "(in Python: Budget.parse(text, latency=dmcp_tf.deploy.latency.latency_cost(PATH))).")


@dataclasses.dataclass(frozen=True)
class Budget:
    """A cost kind and a target: absolute (`value` in the kind's unit) or `relative` to the full network.

    Example:
        budget = Budget.parse("params:0.5x")
        target = budget.target(ChannelGraph(supernet))  # half the supernet's weights
    """

    cost: Cost
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, budget, latency=None):
        """A `Budget` from text (`BUDGET_FORMS`), a number of MACs, or a `Budget`.

        Args:
            budget: the text, number or `Budget`.
            latency: the `Latency` kind (with its table) that a latency budget is of.

        Raises:
            ValueError: the text is none of the forms (the message lists them), or a
                latency budget comes without `latency` (the message says how to measure a table).
        """
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, (int, float)) and not isinstance(budget, bool):
            return cls(MACS, float(budget))
        kind, _, amount = str(budget).rpartition(":")
        cost = COSTS.get(kind.strip().lower() or "macs")
        match = _NUMBER.fullmatch(amount)
        unit = match.group(2) if match else None
        unit_fits = unit in ("ms", "x") if cost is LATENCY else unit != "ms"  # milliseconds are latency's only
        if cost is None or not match or float(match.group(1)) <= 0 or not unit_fits:
            raise ValueError(f"Cannot read the budget {budget!r}. Write {BUDGET_FORMS}; kinds: {', '.join(COSTS)}.")
        if cost is LATENCY:
            if latency is None:
                raise ValueError(f"Budget {budget!r}: {LATENCY_NEEDS_TABLE}")
            cost = latency
        value = float(match.group(1))
        if unit == "x":
            return cls(cost, value, relative=True)
        return cls(cost, value * _MULTIPLIERS.get(unit.upper(), 1.0))

    def target(self, graph):
        """The target in the kind's unit for the supernet of `graph`."""
        return self.value * self.cost.of(graph) if self.relative else self.value

    def checked_target(self, graph):
        """`target(graph)`, after checking that a sub-network can meet it.

        Raises:
            ValueError: the target is not strictly between the smallest and the full sub-network's cost.
        """
        target = self.target(graph)
        full, smallest = self.cost.of(graph), self.cost.of(graph, graph.smallest_config())
        if not smallest < target < full:
            raise ValueError(
                f"The budget {self.cost.format(target)} is outside what the supernet can reach: its smallest "
                f"sub-network has {self.cost.format(smallest)} and the full network {self.cost.format(full)}. "
                "Choose a budget strictly between the two (e.g. \"0.5x\").")
        return target

    def __str__(self):
        amount = f"{self.value:g}x" if self.relative else self.cost.amount(self.value)
        return f"{self.cost.name}:{amount}"


# The budget loss is zero for expected costs in [FLAT_BAND_LOW * T, T) (spec, section 4).
FLAT_BAND_LOW = 0.95


def budget_loss(expected, target):
    """The authors' piecewise-log budget loss (spec, section 4), in millions of the budget's unit.

    - `E < 0.95 T`: `log(r |E - T|)`;  `0.95 T <= E < T`: 0;  `E >= T`: `log(r |E - 0.95 T|)`,
    with `r = 0.1` when `|E - T| > 200` million, else 1.
    """
    e = ops.convert_to_tensor(expected, "float32") / 1e6
    t = ops.convert_to_tensor(target, "float32") / 1e6
    r = ops.where(ops.abs(e - t) > 200.0, 0.1, 1.0)
    tiny = 1e-12  # keeps the unused branch of `where` finite, so gradients stay finite
    below = ops.log(ops.maximum(r * ops.abs(e - t), tiny))
    above = ops.log(ops.maximum(r * ops.abs(e - FLAT_BAND_LOW * t), tiny))
    return ops.where(e < FLAT_BAND_LOW * t, below, ops.where(e < t, ops.zeros_like(e), above))


def count_flops(model):
    """MACs of every conv and dense layer of a functional model, one image."""
    from dmcp_tf.channels.graph import ChannelGraph  # noqa: PLC0415 (the graph module counts with this one)

    return MACS.of(ChannelGraph(model))


def count_params(model):
    """Number of weights of a functional model (gates' parameters excluded)."""
    from dmcp_tf.channels.graph import ChannelGraph  # noqa: PLC0415

    return PARAMS.of(ChannelGraph(model))
