"""What a channel configuration costs, and budgets on those costs: the cost models the search reads.

A cost kind (`Cost`) gives, for a `ChannelGraph`, the cost of a configuration
(`of`, NumPy arrays of configurations too), the expected cost as a
differentiable function of the gates' parameters (`expected`) and a per-layer
breakdown (`per_layer`). Kinds, by name in `COSTS`: `macs` (multiply-accumulates
of conv and dense layers, the paper's FLOPs), `params` (weights, gates
excluded) and `latency` (TFLite milliseconds from a measured per-layer table,
`costs/latency.py`; it needs the table, so `COSTS` names it without one). A new kind
is one subclass that says what one layer call costs.

    costs.MACS.of(graph, config)     # MACs of a configuration (the full network by default)
    costs.MACS.expected(graph)       # E[MACs], differentiable in the gates' alpha
    costs.PARAMS.of(graph, config)   # weights
    costs.count_macs(model)          # MACs of a whole functional model

- `kinds`: `Cost`, `MACS`, `PARAMS`, `count_macs`, `count_params`;
- `latency`: the `latency` kind and its table (`LatencyTable`, `load_latency_table`, `latency_cost`);
- `budget`: `Budget` ("210M", "0.5x", "params:1.5M", "latency:3.2ms") and the budget loss.
"""

from dmcp_tf.costs import budget, kinds, latency
from dmcp_tf.costs.budget import BUDGET_FORMS, COSTS, FLAT_BAND_LOW, Budget, budget_loss
from dmcp_tf.costs.kinds import MACS, PARAMS, Cost, Macs, Params, count_flops, count_macs, count_params
from dmcp_tf.costs.latency import (
    LATENCY, LATENCY_NEEDS_TABLE, Latency, LatencyTable, LatencyTableError, configured_cost, latency_cost,
    latency_costs, load_latency_table, save_latency_table,
)
from dmcp_tf.tables import format_count

__all__ = [
    "BUDGET_FORMS", "COSTS", "FLAT_BAND_LOW", "LATENCY", "LATENCY_NEEDS_TABLE", "MACS", "PARAMS", "Budget", "Cost",
    "Latency", "LatencyTable", "LatencyTableError", "Macs", "Params", "budget", "budget_loss", "configured_cost",
    "count_flops", "count_macs", "count_params", "format_count", "kinds", "latency", "latency_cost", "latency_costs",
    "load_latency_table", "save_latency_table",
]
