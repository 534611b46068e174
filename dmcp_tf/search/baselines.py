"""Channel configurations chosen without a search: what DMCP is compared with.

- `uniform_config`: every gate keeps the same fraction of its channels (width
  scaling, as MobileNet's width multiplier);
- `random_config`: random relative widths, scaled together to the budget;
- `l1_channel_order`: Li et al. (2017), "Pruning Filters for Efficient
  ConvNets": filters ranked by the L1 norm of their weights; with
  `rebuild(..., channel_order=...)` a configuration keeps the largest ones.

All of them meet a cost target (`costs.Cost`: MACs by default, or parameters) by
scaling relative widths together (`config_at_cost`).
"""

import numpy as np

from dmcp_tf import costs
from dmcp_tf.channels import layer_rules as rules


def scaled_config(graph, fractions):
    """Every gate keeps `round(fraction * channels)` channels, between 1 and all.

    A gate on grouped-convolution channels keeps a multiple of its `channel_multiple`
    (whole groups), at least one group.

    Args:
        graph: a `ChannelGraph`.
        fractions: gate name -> kept fraction (may exceed 1: clipped).
    """
    def kept(gate):
        step = gate.channel_multiple
        return int(min(gate.channels, step * max(1, np.floor(fractions[gate.name] * gate.channels / step + 0.5))))

    return {g.name: kept(g) for g in graph.gates}


def config_at_cost(graph, target, relative=None, *, cost=costs.MACS, tolerance=0.01, iterations=60, at_most=False):
    """Scales relative widths together until the configuration's cost meets `target`.

    Args:
        graph: a `ChannelGraph`.
        target: the budget in `cost`'s unit.
        relative: gate name -> relative width in (0, 1]; all 1 (uniform) by default.
        cost: the budget's kind (`costs.Cost`).
        tolerance: the largest accepted relative miss of the target.
        at_most: only configurations that cost at most `target` (the nearest one below it);
            by default the nearest one on either side.

    Returns:
        `(config, scale, value)`: gate `g` keeps `round(scale * relative[g] * channels)`, or one
        channel more where that brings the cost nearer the target; `value` is its cost.

    Raises:
        ValueError: the graph has no gates, or no scale comes within `tolerance` of
            the target (channel counts are integers, so a tiny network cannot meet every target).
    """
    if not graph.gates:
        raise ValueError(
            f"Model {graph.model.name!r} has no channel gates, so there are no widths to scale. Pass the "
            "ChannelGraph of a gated supernet: dmcp_tf.insert_gates(model) puts the gates in any functional model.")
    relative = relative or {g.name: 1.0 for g in graph.gates}

    def config(scale):
        return scaled_config(graph, {name: scale * r for name, r in relative.items()})

    lo, hi = 0.0, 1.0 / min(relative.values())  # at `hi` every gate keeps all its channels
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if cost.of(graph, config(mid)) < target:
            lo = mid
        else:
            hi = mid
    scale = lo if at_most else min((lo, hi), key=lambda s: abs(cost.of(graph, config(s)) - target))
    chosen = _closest_rounding(graph, config(lo), {n: lo * r for n, r in relative.items()}, target,
                               config(scale), cost, at_most)
    value = cost.of(graph, chosen)
    if abs(value - target) > tolerance * target:
        raise ValueError(
            f"Scaling these widths reaches {value} {cost.unit} at best, not {target:.0f} within {tolerance:.0%}. "
            f"Channel counts are integers, so the {cost.unit} move in steps (coarse in a narrow network), and no "
            "target outside the network's smallest and full sizes can be met: raise the tolerance or change "
            "the target."
        )
    return chosen, scale, value


def _closest_rounding(graph, below, fractions, target, best, cost, at_most=False):
    """`best`, or a configuration nearer `target` that rounds some gates of `below` up by one step.

    All gates move together under one scale, so a network of equal widths
    jumps in steps of one channel per gate. Adding one channel to one gate at a
    time (largest rounding remainder first) fills those steps: every gate stays
    within one channel of the scaled width. With `at_most`, none above `target`: a gate
    whose step would go over it is passed over for the next.
    """
    remainders = sorted(graph.gates, key=lambda g: -(fractions[g.name] * g.channels - below[g.name]))
    current = dict(below)
    for gate in remainders:
        if cost.of(graph, current) >= target:
            break
        if current[gate.name] < gate.channels:
            step = dict(current, **{gate.name: current[gate.name] + gate.channel_multiple})  # one channel or group
            value = cost.of(graph, step)
            if at_most and value > target:
                continue  # this gate's step would go over the target; a cheaper gate's may not
            current = step
            if abs(value - target) < abs(cost.of(graph, best) - target):
                best = dict(current)
    return best


def uniform_config(graph, target, *, cost=costs.MACS, tolerance=0.01):
    """Uniform width scaling to `target` (in `cost`'s unit): returns `(config, fraction, value)`."""
    return config_at_cost(graph, target, cost=cost, tolerance=tolerance)


def random_config(graph, target, rng, *, cost=costs.MACS, tolerance=0.01, tries=100):
    """A random configuration whose cost (`costs.Cost`, MACs by default) meets `target`.

    Relative widths are drawn as the sandwich rule draws random sub-networks
    (uniformly on each gate's width grid), then scaled together to the target.

    Returns:
        `(config, value)`.
    """
    for _ in range(tries):
        relative = {g.name: float(rng.choice(g.widths_grid())) / g.channels for g in graph.gates}
        try:
            config, _, value = config_at_cost(graph, target, relative, cost=cost, tolerance=tolerance)
        except ValueError:
            continue
        return config, value
    raise ValueError(f"No random configuration met {cost.format(target)} within {tolerance:.0%} in {tries} draws.")


def l1_channel_order(graph):
    """Per gate, its channels ranked by the L1 norm of the filters producing them, largest first.

    A channel produced by several layers (a residual stage's blocks and
    shortcut, coupled by their additions) is ranked by the sum of its filters'
    norms.

    Returns:
        gate name -> int array, a permutation of the gate's channels.
    """
    norms = {g.name: np.zeros(g.channels) for g in graph.gates}
    for record in graph.first_records().values():
        if record.rule.role != rules.PRODUCE:
            continue
        for weight in record.layer.weights:
            in_axis, out_axis = record.rule.weight_axes.get(weight.name, (None, None))
            if in_axis is None or out_axis is None:
                continue  # biases are not filters
            values = np.abs(np.asarray(weight.numpy(), np.float64))
            per_channel = np.moveaxis(values, out_axis, 0).reshape(values.shape[out_axis], -1).sum(axis=1)
            offset = 0
            for space_id in record.out_layout:
                space = graph.space(space_id)
                if space.gate is not None:
                    norms[space.gate.name] += per_channel[offset:offset + space.size]
                offset += space.size
    return {name: np.argsort(-norm, kind="stable") for name, norm in norms.items()}
