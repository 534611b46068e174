"""Where the search starts: the gates' `alpha` before the architecture stage.

- `"authors"`: `alpha = 0`, every transition probability 0.5 (the authors'
  `prob_type: sigmoid`). The chains start at a small fraction of the full MACs
  (about 6% on a ResNet), so a short search spends its steps climbing to the budget.
- `"full"`: every transition probability `FULL_TRANSITION` (every chain near full
  width), as MMRazor's DMCP starts; the budget loss pulls the chains down.
- `"budget"`: every gate's expected width equals the one uniform fraction whose
  expected cost meets the budget: the search starts at the uniform-width baseline
  and only the gradients of accuracy and cost move it away.

The warm-up does not read `alpha` (it trains on uniformly drawn sub-networks),
so the start may be set any time before the search phase.
"""

import numpy as np

from dmcp_tf import costs
from dmcp_tf.channels import layer_rules as rules

INITS = ("authors", "full", "budget")
FULL_TRANSITION = 0.99


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _kept_groups(gate, p):
    """Expected kept groups of `gate` when every transition (or keep) probability is `p` (its rule's `kept_groups`)."""
    return rules.rule_for(gate).kept_groups(gate, p)


def alpha_for_fraction(gate, fraction, iterations=60):
    """The constant `alpha` under which `gate` keeps `fraction` of its channels in expectation.

    Fractions at or below the always-kept prefix give the smallest chain, at or
    above 1 the fullest (`p` in [1e-6, 1 - 1e-6]).
    """
    groups = (fraction * gate.channels - gate.prefix) / gate.group
    lo, hi = 1e-6, 1 - 1e-6
    for _ in range(iterations):  # `_kept_groups` increases with p
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _kept_groups(gate, mid) < groups else (lo, mid)
    return float(_logit(0.5 * (lo + hi)))


def set_uniform_fraction(graph, fraction):
    """Sets every gate's `alpha` so that it keeps `fraction` of its channels in expectation."""
    for gate in graph.gates:
        gate.alpha.assign(np.full(gate.num_groups, alpha_for_fraction(gate, fraction), np.float32))


def initialize(graph, init, target=None, *, cost=costs.MACS, iterations=40):
    """Sets the gates of `graph` to the start `init` (one of `INITS`); returns the expected cost there.

    Args:
        graph: the supernet's `ChannelGraph`.
        init: `"authors"`, `"full"` or `"budget"`.
        target: the budget in `cost`'s unit (needed for `"budget"`).
        cost: the budget's kind (`costs.COSTS`), MACs by default.
    """
    if init not in INITS:
        raise ValueError(f"Unknown search start {init!r}; choose one of {', '.join(INITS)}.")
    if init == "authors":
        for gate in graph.gates:
            gate.alpha.assign(np.zeros(gate.num_groups, np.float32))
    elif init == "full":
        for gate in graph.gates:
            gate.alpha.assign(np.full(gate.num_groups, _logit(FULL_TRANSITION), np.float32))
    else:
        if target is None:
            raise ValueError('The search start "budget" needs the budget\'s target.')
        lo, hi = 0.0, 1.0  # every cost increases with the fraction
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            set_uniform_fraction(graph, mid)
            lo, hi = (mid, hi) if float(cost.expected(graph)) < target else (lo, mid)
        set_uniform_fraction(graph, 0.5 * (lo + hi))
    return float(cost.expected(graph))
