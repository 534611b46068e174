"""FLOPs budgets: parsing, the budget loss, and model-level counts.

FLOPs here are multiply-accumulates (MACs) of conv and dense layers, the paper's
convention; the channel graph (`graph.py`) does the counting.
"""

import re

from keras import ops

from dmcp_tf.graph import ChannelGraph
from dmcp_tf.report import format_count as format_flops

_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def count_flops(model):
    """MACs of every conv and dense layer of a functional model, one image."""
    return ChannelGraph(model).flops()


def count_params(model):
    """Number of weights of a functional model (gates' parameters excluded)."""
    return ChannelGraph(model).params()


def parse_budget(budget, full_flops):
    """Target MACs for a budget such as `"210M"`, `"2.8G"`, `"0.5x"` or a number.

    `"0.5x"` is a fraction of `full_flops`, the unpruned model's MACs.
    """
    if isinstance(budget, (int, float)):
        return float(budget)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?|x)\s*", str(budget))
    if not match:
        raise ValueError(
            f"Cannot read the FLOPs budget {budget!r}. Write MACs with a unit (\"210M\", \"2.8G\"), "
            "a fraction of the full model (\"0.5x\") or a plain number."
        )
    value, unit = float(match.group(1)), match.group(2)
    if unit == "x":
        return value * full_flops
    return value * _UNITS[unit.upper()]


def check_budget(target, full_flops, min_flops):
    """Raises if no sub-network can meet `target` MACs."""
    if not min_flops < target < full_flops:
        raise ValueError(
            f"The FLOPs budget {format_flops(target)} is outside what the supernet can reach: its "
            f"smallest sub-network has {format_flops(min_flops)} and the full network "
            f"{format_flops(full_flops)}. Choose a budget strictly between the two (e.g. \"0.5x\")."
        )


def budget_loss(expected_flops, target_flops):
    """The authors' piecewise-log budget loss (spec, section 4), in MFLOPs.

    - `E < 0.95 T`: `log(r |E - T|)`;  `0.95 T <= E < T`: 0;  `E >= T`: `log(r |E - 0.95 T|)`,
    with `r = 0.1` when `|E - T| > 200` MFLOPs, else 1.
    """
    e = ops.convert_to_tensor(expected_flops, "float32") / 1e6
    t = ops.convert_to_tensor(target_flops, "float32") / 1e6
    r = ops.where(ops.abs(e - t) > 200.0, 0.1, 1.0)
    tiny = 1e-12  # keeps the unused branch of `where` finite, so gradients stay finite
    below = ops.log(ops.maximum(r * ops.abs(e - t), tiny))
    above = ops.log(ops.maximum(r * ops.abs(e - 0.95 * t), tiny))
    return ops.where(e < 0.95 * t, below, ops.where(e < t, ops.zeros_like(e), above))
