"""Budgets: a cost kind and a target, read once from text, and the budget loss of the search.

    "210M", "2.8G", "0.5x"          MACs (absolute, or a fraction of the full network)
    "macs:210M", "params:1.5M", "params:0.4x"
    "latency:3.2ms", "latency:0.5x"   TFLite latency (given a `Latency` kind with its table)

The budget loss (`budget_loss`) is the authors' piecewise-log loss, computed in
millions of the budget's unit (their MFLOPs).
"""

import dataclasses
import re

from keras import ops

from dmcp_tf.costs.kinds import MACS, PARAMS, Cost
from dmcp_tf.costs.latency import LATENCY, LATENCY_NEEDS_TABLE

_MULTIPLIERS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?|x|ms)\s*")
COSTS = {cost.name: cost for cost in (MACS, PARAMS, LATENCY)}
BUDGET_FORMS = ('"210M", "2.8G" or "0.5x" (MACs: absolute or a fraction of the full network), '
                '"macs:210M", "params:1.5M", "params:0.4x", "latency:3.2ms", "latency:0.5x" '
                '(with a latency table), or a plain number of MACs')


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
