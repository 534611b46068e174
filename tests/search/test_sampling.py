import json

import keras
import numpy as np
import pytest

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.models import fashion_resnet
from dmcp_tf.search import sampling
from dmcp_tf.channels.gates import MarkovGate
from tests.helpers import tiny_supernet


@pytest.fixture
def graph():
    graph = ChannelGraph(tiny_supernet())
    rng = np.random.default_rng(0)
    for gate in graph.gates:
        gate.alpha.assign(rng.normal(1.0, 1.0, gate.num_groups).astype("float32"))
    return graph


def test_expected_config_rounds_expected_channels(graph):
    config = sampling.expected_config(graph)
    for gate in graph.gates:
        assert config[gate.name] == round(float(gate.expected_channels()))


def _expected(graph):
    return {g.name: float(g.expected_channels()) for g in graph.gates}


def _roundings(graph):
    """Each gate's two roundings of E[c] (equal when E[c] is whole)."""
    return {g.name: (np.floor(float(g.expected_channels())), np.ceil(float(g.expected_channels())))
            for g in graph.gates}


def wide_graph():
    graph = ChannelGraph(tiny_supernet(channels=(32, 64)))
    rng = np.random.default_rng(1)
    for gate in graph.gates:
        gate.alpha.assign(rng.normal(1.0, 1.0, gate.num_groups).astype("float32"))
    return graph


@pytest.mark.parametrize("factor", [0.99, 1.01 / 0.95])
def test_expected_config_with_a_target_lands_in_the_budget_band(factor):
    """Plain rounding 1% above the band, or 1% below it; one channel of these gates is 1.5-3.3% of the MACs."""
    graph = wide_graph()
    rounded = sampling.expected_config(graph)
    target = factor * costs.MACS.of(graph, rounded)
    assert not 0.95 * target <= costs.MACS.of(graph, rounded) <= target
    config = sampling.expected_config(graph, target)
    assert 0.95 * target <= costs.MACS.of(graph, config) <= target
    roundings = _roundings(graph)
    for gate in graph.gates:  # each gate kept one of its two roundings of E[c]
        assert config[gate.name] in roundings[gate.name], gate.name
    assert config != rounded


def test_expected_config_in_the_band_is_plain_rounding(graph):
    rounded = sampling.expected_config(graph)
    for factor in (1.0, 1.02, 1 / 0.96):  # the rounded structure spends 1.0, 0.98, 0.96 of these budgets
        assert sampling.expected_config(graph, factor * costs.MACS.of(graph, rounded)) == rounded


def test_expected_config_of_a_search_off_its_budget_stays_rounding(graph):
    """Far above the budget, every gate takes its lower rounding and no more: the miss is not hidden."""
    config = sampling.expected_config(graph, 0.5 * costs.MACS.of(graph, graph.smallest_config()))
    for gate in graph.gates:
        assert config[gate.name] == max(np.floor(float(gate.expected_channels())), gate.prefix), gate.name


def test_fit_to_budget_scales_a_structure_together_to_the_budget():
    graph = ChannelGraph(fashion_resnet(channels=(20, 20, 20), blocks=3, gate_kind="markov"))
    narrow_first = {g.name: 4 if g.name.startswith(("stem", "stage1")) else 10 for g in graph.gates}
    target = 1.2 * costs.MACS.of(graph, narrow_first)  # a structure that spends 0.83 of its budget
    fitted, macs = sampling.fit_to_budget(graph, narrow_first, target)
    assert macs == costs.MACS.of(graph, fitted) and abs(macs - target) <= 0.03 * target
    for gate in graph.gates:  # every gate grew by about the same factor (one channel of rounding)
        assert narrow_first[gate.name] <= fitted[gate.name] <= gate.channels
        scale = (costs.MACS.of(graph, fitted) / costs.MACS.of(graph, narrow_first)) ** 0.5  # MACs grow with the square of the widths
        assert abs(fitted[gate.name] - scale * narrow_first[gate.name]) <= 1.5, gate.name
    assert max(fitted[g] for g in fitted if g.startswith("stem")) < max(fitted[g] for g in fitted if "stage3" in g)


def chain_graph():
    """conv -> gate -> conv -> gate -> dense: every layer's MACs are bilinear in two different gates."""
    inputs = keras.Input((8, 8, 3))
    x = MarkovGate(width=(0.25, 1.0, 0.25), name="a")(keras.layers.Conv2D(16, 3)(inputs))
    x = MarkovGate(width=(0.25, 1.0, 0.25), name="b")(keras.layers.Conv2D(32, 3)(x))
    graph = ChannelGraph(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x))))
    for gate, alpha in zip(graph.gates, ([2.0, 0.0, -1.0], [0.5, 1.0, 0.2])):
        gate.alpha.assign(alpha)
    return graph


def test_cost_statistics_mean_is_the_expected_cost():
    graph = chain_graph()
    stats = sampling.cost_statistics(graph, np.random.default_rng(1), count=3000)
    assert stats["values"].shape == (3000,)
    # Independent gates and bilinear MACs: the sample mean estimates E[F]. The
    # relative std of one sample is below 0.5, so 2% is more than 5 standard errors.
    assert stats["mean"] == pytest.approx(float(costs.MACS.expected(graph)), rel=0.02)


def test_expected_macs_is_the_specs_approximation_where_a_gate_meets_itself(graph):
    # In the residual block, conv c3 reads and writes channels of the same gate:
    # E[c^2] > E[c]^2, so sampled FLOPs exceed the spec's E[F] there.
    stats = sampling.cost_statistics(graph, np.random.default_rng(1), count=3000)
    assert stats["mean"] > float(costs.MACS.expected(graph))
    graph = chain_graph()
    arrays = sampling.direct_configs(graph, np.random.default_rng(2), 5)
    single = [{name: int(values[i]) for name, values in arrays.items()} for i in range(5)]
    assert all(costs.MACS.of(graph, c) > 0 for c in single)
    np.testing.assert_array_equal(costs.MACS.of(graph, arrays), [costs.MACS.of(graph, c) for c in single])  # per-sample costs


def test_sample_within_budget(graph):
    target = costs.MACS.of(graph, {"g1": 12, "g2": 24})  # on the grid: direct samples can hit it
    config = sampling.sample_within_budget(graph, target, np.random.default_rng(3))
    assert abs(costs.MACS.of(graph, config) - target) <= 0.01 * target
    grids = {g.name: g.widths_grid() for g in graph.gates}
    assert all(config[name] in grids[name] for name in config)


def test_sample_within_budget_gives_up_with_a_clear_error(graph):
    for gate in graph.gates:
        gate.alpha.assign(np.full(gate.num_groups, -30.0, "float32"))  # always the smallest
    with pytest.raises(RuntimeError, match="No direct sample within 1% of the budget"):
        sampling.sample_within_budget(graph, costs.MACS.of(graph), np.random.default_rng(0), max_tries=300)


def test_channel_distributions_keep_samples_within_budget(graph):
    target = costs.MACS.of(graph, {"g1": 12, "g2": 24})
    dists = sampling.channel_distributions(graph, np.random.default_rng(4), target, count=2000)
    kept = len(next(iter(dists.values())))
    assert kept > 0
    macs = costs.MACS.of(graph, {name: values for name, values in dists.items()})
    assert np.all(np.abs(macs - target) <= 0.01 * target)


def test_config_json_round_trip(tmp_path, graph):
    config = sampling.expected_config(graph)
    path = tmp_path / "channels.json"
    sampling.save_config(path, config)
    assert json.loads(path.read_text()) == config
    assert sampling.load_config(path) == config
    path.write_text('{"g1": "many"}')
    with pytest.raises(ValueError, match="not a channel configuration"):
        sampling.load_config(path)


def test_round_config_multiples_within_bounds():
    graph = ChannelGraph(fashion_resnet())
    rng = np.random.default_rng(0)
    config = {g.name: int(rng.integers(1, g.channels + 1)) for g in graph.gates}
    config[graph.gates[0].name] = 1  # rounds up to N, never to 0
    for multiple in (4, 8, 48):
        rounded = sampling.round_config(graph, config, multiple)
        for gate in graph.gates:
            kept = rounded[gate.name]
            assert 1 <= kept <= gate.channels
            assert kept % multiple == 0 or kept == gate.channels
            assert kept >= min(multiple, gate.channels)
            assert abs(kept - config[gate.name]) <= multiple / 2 or kept == min(multiple, gate.channels)
    assert sampling.round_config(graph, config, 0) == config
