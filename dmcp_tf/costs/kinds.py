"""Cost kinds: what a channel configuration of a `ChannelGraph` costs, counted layer by layer.

A kind (`Cost`) gives the cost of a configuration (`of`, NumPy arrays of
configurations too), the expected cost as a differentiable function of the gates'
parameters (`expected`) and a per-layer breakdown (`per_layer`). `MACS` counts
multiply-accumulates of conv and dense layers (the paper's FLOPs), `PARAMS` weights
(gates excluded); `latency.Latency` reads TFLite milliseconds from a measured table.
`count_macs(model)` and `count_params(model)` count a whole functional model.
"""

import functools
import warnings

import numpy as np

from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.tables import format_count


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


MACS, PARAMS = Macs(), Params()


def count_macs(model):
    """MACs (multiply-accumulates) of every conv and dense layer of a functional model, one image."""
    return MACS.of(ChannelGraph(model))


def count_params(model):
    """Number of weights of a functional model (gates' parameters excluded)."""
    return PARAMS.of(ChannelGraph(model))


# --- deprecated names of the counts (they counted MACs under the name "flops") ---
def _deprecated(function, old, new):
    @functools.wraps(function)
    def alias(*args, **kwargs):
        warnings.warn(f"{old} is deprecated: use {new} (the same number).", DeprecationWarning, stacklevel=2)
        return function(*args, **kwargs)

    alias.__doc__ = f"Deprecated: {new}."
    alias.__name__, alias.__qualname__ = old.rpartition(".")[2], old
    return alias


count_flops = _deprecated(count_macs, "count_flops", "costs.count_macs(model)")


def _graph_flops(graph, config=None):
    return MACS.of(graph, config)


def _graph_expected_flops(graph):
    return MACS.expected(graph)


def _graph_params(graph, config=None):
    return PARAMS.of(graph, config)


# The counting methods `ChannelGraph` had: the graph (below this module) does not count,
# so they are set on it here, where the counting is; `import dmcp_tf` always runs this.
ChannelGraph.flops = _deprecated(_graph_flops, "ChannelGraph.flops", "costs.MACS.of(graph, config)")
ChannelGraph.expected_flops = _deprecated(_graph_expected_flops, "ChannelGraph.expected_flops",
                                          "costs.MACS.expected(graph)")
ChannelGraph.params = _deprecated(_graph_params, "ChannelGraph.params", "costs.PARAMS.of(graph, config)")
