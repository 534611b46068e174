"""Getting channel configurations out of a searched supernet.

A configuration maps each gate's name to the number of channels it keeps (the
first ones). It is saved as readable JSON.
"""

import json
import math

import numpy as np
from keras import ops

from dmcp_tf import costs
from dmcp_tf.search import baselines
from dmcp_tf.io_utils import atomic_write_json


def expected_config(graph, target=None, *, cost=costs.MACS):
    """Expected sampling (the paper's choice): every gate keeps `round(E[c])` channels.

    Rounding every gate on its own can move the cost out of the band the search
    held it in: the budget loss is flat on [FLAT_BAND_LOW, 1] of the budget, and
    one channel of a wide layer is worth several percent of a small network.
    Given `target`, roundings are then turned the other way (a gate rounded up
    rounded down, or the reverse), each time on the gate whose expected width is
    nearest the other side, until the cost is within [FLAT_BAND_LOW, 1] of
    `target` or no turn helps. Every gate stays within one channel step of `E[c]`:
    a search that ended off its budget is not hidden (the sample step then says
    so), and a structure that rounding leaves in the band is the paper's, unchanged.

    Args:
        graph: the searched supernet's `ChannelGraph`.
        target: the budget, in `cost`'s unit; None keeps plain rounding.
        cost: the `costs.Cost` the budget counts.
    """
    config = {g.name: g.expected_sample() for g in graph.gates}
    if target is None:
        return config
    expected = {g.name: float(ops.convert_to_numpy(g.expected_channels())) for g in graph.gates}
    return _into_band(graph, config, expected, target, cost)


def _into_band(graph, config, expected, target, cost):
    """`config` with roundings turned until its cost is within [FLAT_BAND_LOW, 1] of `target` (see `expected_config`)."""
    config = dict(config)

    def turned(gate):  # the gate's other rounding of E[c], and how far it is from E[c] in channel steps
        step = gate.channel_multiple if config[gate.name] < expected[gate.name] else -gate.channel_multiple
        width = config[gate.name] + step
        return width, abs(width - expected[gate.name]) / gate.channel_multiple

    def turnable(gate, down):
        width, distance = turned(gate)
        return distance < 1 and (width < config[gate.name]) == down and max(gate.prefix, 1) <= width <= gate.channels

    value = cost.of(graph, config)
    while value > target:
        candidates = [g for g in graph.gates if turnable(g, down=True)]
        if not candidates:
            break
        gate = min(candidates, key=lambda g: turned(g)[1])
        config[gate.name] = turned(gate)[0]
        value = cost.of(graph, config)
    while value < costs.FLAT_BAND_LOW * target:
        grown = {}
        for gate in (g for g in graph.gates if turnable(g, down=False)):
            trial = dict(config, **{gate.name: turned(gate)[0]})
            grown[gate.name] = (trial, cost.of(graph, trial), turned(gate)[1])
        fitting = [v for v in grown.values() if v[1] <= target]
        if not fitting:
            break
        config, value, _ = min(fitting, key=lambda v: v[2])
    return config


def fit_to_budget(graph, config, target, *, cost=costs.MACS, at_most=False):
    """`config`'s widths scaled together until its cost is nearest `target`, as uniform width is fitted.

    The budget loss is zero anywhere in [0.95, 1] of the budget and expected
    sampling rounds every gate on its own, so a searched structure can land
    several percent below the budget (0.91 measured, docs/benchmarks.md section 3);
    this spends the rest. Every gate keeps its share of its channels relative
    to the others, within one channel (`baselines.config_at_cost`). With
    `at_most`, the nearest configuration that does not cost more than `target`.

    Returns:
        `(config, cost)`: the nearest configuration found and its cost.
    """
    relative = {g.name: config[g.name] / g.channels for g in graph.gates}
    fitted, _, value = baselines.config_at_cost(graph, target, relative, cost=cost, tolerance=float("inf"),
                                                at_most=at_most)
    return fitted, value


def round_config(graph, config, multiple):
    """Rounds every gate's kept channels to the nearest multiple of `multiple` (and of its `channel_multiple`).

    The result is at least `multiple` and never above the gate's channels (a gate with
    fewer channels than `multiple` keeps them all). `multiple` <= 1 returns a copy.
    """
    config = dict(config)
    if multiple <= 1:
        return config
    for gate in graph.gates:
        multiple_here = math.lcm(multiple, gate.channel_multiple)  # whole groups of grouped convs too
        kept = config.get(gate.name, gate.channels)
        rounded = max(multiple_here, int(np.floor(kept / multiple_here + 0.5)) * multiple_here)
        config[gate.name] = min(rounded, gate.channels)
    return config


def direct_configs(graph, rng, count):
    """`count` direct samples of the Markov chains, as per-gate arrays of channel counts."""
    return {g.name: g.direct_sample(rng, size=count) for g in graph.gates}


def sample_within_budget(graph, target, rng, *, cost=costs.MACS, tolerance=0.01, max_tries=20000, batch=500):
    """Direct sampling, redrawn until the real cost (`costs.Cost`, MACs by default) is within `tolerance` of `target`.

    Raises:
        RuntimeError: no sample met the budget within `max_tries` draws.
    """
    tries = 0
    while tries < max_tries:
        n = min(batch, max_tries - tries)
        arrays = direct_configs(graph, rng, n)
        hits = np.flatnonzero(np.abs(cost.of(graph, arrays) - target) <= tolerance * target)
        if hits.size:
            return {name: int(values[hits[0]]) for name, values in arrays.items()}
        tries += n
    raise RuntimeError(
        f"No direct sample within {tolerance:.0%} of the budget ({cost.format(target)}) in "
        f"{max_tries} tries: the gates' distribution is far from the budget. Search longer, or use "
        "expected sampling."
    )


def cost_statistics(graph, rng, count=3000, cost=costs.MACS):
    """Costs of `count` direct samples: `{"values": array, "mean": float, "std": float}`."""
    values = cost.of(graph, direct_configs(graph, rng, count)).astype(np.float64)
    return {"values": values, "mean": float(values.mean()), "std": float(values.std())}


def channel_distributions(graph, rng, target, *, cost=costs.MACS, count=3000, tolerance=0.01):
    """Per gate, the channel counts of direct samples whose cost is within the budget.

    Returns `{gate name: array of channel counts}` (the paper's Fig. 7).
    """
    arrays = direct_configs(graph, rng, count)
    keep = np.abs(cost.of(graph, arrays) - target) <= tolerance * target
    return {name: values[keep] for name, values in arrays.items()}


def save_config(path, config):
    """Writes a configuration as JSON (atomically)."""
    atomic_write_json(path, {name: int(c) for name, c in config.items()})


def load_config(path):
    """Reads a configuration written by `save_config`."""
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); a channel configuration is a JSON object "
                             'of gate name -> channels, e.g. {"stem": 16}.') from None
    bad = {k: v for k, v in config.items() if isinstance(v, bool) or not isinstance(v, int)} \
        if isinstance(config, dict) else None
    if not isinstance(config, dict) or bad or not config:
        detail = f" (not channel counts: {bad})" if bad else " (it is empty)" if config == {} else ""
        raise ValueError(f"{path} is not a channel configuration{detail}: it must be a JSON object of gate "
                         'name -> whole number of channels, e.g. {"stem": 16}.')
    return config
