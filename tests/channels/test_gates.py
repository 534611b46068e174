import keras
import numpy as np
import pytest

from dmcp_tf.channels import gates as G
from tests.helpers import tiny_supernet


def built_gate(cls=G.MarkovGate, channels=48, alpha=None, **kwargs):
    kwargs = kwargs or {"width": (0.1, 1.5, 0.1)}
    gate = cls(**kwargs)
    gate.build((None, 4, 4, channels))
    if alpha is not None:
        gate.alpha.assign(np.asarray(alpha, "float32"))
    return gate


@pytest.mark.parametrize(
    "channels, width, expected",
    [
        (48, (0.1, 1.5, 0.1), (6, 3, 14)),    # 1.5x MobileNetV2 stem: 15 parts (Fig. 7)
        (144, (0.1, 1.5, 0.1), (18, 9, 14)),  # block 2-1 expansion: smallest is 18 (Table 8, 59M)
        (64, (0.1, 1.0, 0.1), (10, 6, 9)),    # ResNet-50 stem
        (2048, (0.1, 1.0, 0.1), (212, 204, 9)),
    ],
)
def test_split_follows_width_grid(channels, width, expected):
    assert G.split_channels(channels, width=width) == expected


def test_split_with_explicit_groups():
    assert G.split_channels(40, min_channels=8, group_size=4) == (8, 4, 8)
    with pytest.raises(ValueError, match="multiple of group_size"):
        G.split_channels(40, min_channels=7, group_size=4)


def test_grid_without_prefix_is_rejected():
    with pytest.raises(ValueError, match="no channel in the always-kept prefix"):
        G.split_channels(20, width=(0.0, 1.0, 0.1))  # 10 groups of 2 use all 20 channels
    with pytest.raises(ValueError, match="no channel in the always-kept prefix"):
        G.split_channels(20, min_channels=0, group_size=4)


def test_gate_on_too_few_channels_is_rejected():
    with pytest.raises(ValueError, match="cannot use the width grid"):
        built_gate(channels=8)  # 14 groups cannot fit in 8 channels


def test_markov_marginals_and_expected_channels():
    alpha = np.linspace(-1, 2, 14)
    gate = built_gate(alpha=alpha)
    p = 1 / (1 + np.exp(-alpha))
    q = np.cumprod(p)
    np.testing.assert_allclose(gate.keep_probabilities(), q, rtol=1e-6)
    np.testing.assert_allclose(float(gate.expected_channels()), 6 + 3 * q.sum(), rtol=1e-6)
    probs = np.asarray(gate.channel_probabilities())
    np.testing.assert_allclose(probs[:6], 1.0)
    np.testing.assert_allclose(probs[6:], np.repeat(q, 3), rtol=1e-6)
    assert gate.expected_sample() == int(np.round(6 + 3 * q.sum()))


def test_bernoulli_marginals_are_independent():
    alpha = np.linspace(-1, 2, 14)
    gate = built_gate(G.BernoulliGate, alpha=alpha)
    p = 1 / (1 + np.exp(-alpha))
    np.testing.assert_allclose(gate.keep_probabilities(), p, rtol=1e-6)
    np.testing.assert_allclose(float(gate.expected_channels()), 6 + 3 * p.sum(), rtol=1e-6)


def chain_distribution(p):
    """P(K = k) kept groups of the Markov chain: q_k (1 - p_{k+1})."""
    q = np.concatenate([[1.0], np.cumprod(p)])
    stop = np.concatenate([1 - p, [1.0]])
    return q * stop


def test_direct_samples_follow_the_markov_chain():
    alpha = np.array([2.0, 1.0, 0.5, 0.0, -0.5, 1.5, 3.0, -1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    gate = built_gate(alpha=alpha)
    n = 40000
    samples = gate.direct_sample(np.random.default_rng(7), size=n)
    assert set(np.unique(samples)) <= set(gate.widths_grid())
    counts = np.bincount((samples - gate.prefix) // gate.group, minlength=15) / n
    expected = chain_distribution(1 / (1 + np.exp(-alpha)))
    # Each frequency is a binomial proportion: 5 standard errors bound a false
    # alarm below 1e-5 per bin, while a chain with one transition off by 0.05
    # moves its bins by more than 0.01, well outside.
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(counts - expected) <= 5 * sigma + 1e-9)
    np.testing.assert_allclose(samples.mean(), float(gate.expected_channels()), rtol=0.01)


def test_graph_sampler_matches_numpy_sampler():
    alpha = np.full(14, 0.7)
    gate = built_gate(alpha=alpha)
    rng = np.random.default_rng(3)
    uniform = rng.random((2000, 14)).astype("float32")
    graph_groups = [int(gate.sample_groups(u)) for u in uniform[:200]]
    np.testing.assert_array_equal(graph_groups, gate.sample_groups_numpy(uniform[:200]))


def test_forward_modes():
    gate = built_gate(alpha=np.linspace(-1, 1, 14))
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 48)).astype("float32")
    np.testing.assert_array_equal(gate(x), x)  # no selection: identity
    with G.selection(G.Selection(G.SUBNET, {gate: 21})):
        y = np.asarray(gate(x))
    np.testing.assert_array_equal(y[..., :21], x[..., :21])
    assert not y[..., 21:].any()
    with G.selection(G.Selection(G.SCALE)):
        y = np.asarray(gate(x))
    np.testing.assert_allclose(y, x * np.asarray(gate.channel_probabilities()), rtol=1e-6)
    with G.selection(G.Selection(G.FULL)):
        np.testing.assert_array_equal(gate(x), x)


def test_selection_only_applies_inside_the_block():
    gate = built_gate()
    x = np.ones((1, 48), "float32")
    with G.selection(G.Selection(G.SUBNET, {gate: 6})):
        assert float(np.sum(gate(x))) == 6
    assert float(np.sum(gate(x))) == 48


def test_unknown_mode_and_kind_are_rejected():
    with pytest.raises(ValueError, match="Unknown gate mode"):
        G.Selection("half")
    with pytest.raises(ValueError, match="Unknown gate kind"):
        G.make_gate("gumbel", width=(0.1, 1.0, 0.1))


@pytest.mark.parametrize("gate_cls", [G.MarkovGate, G.BernoulliGate])
def test_gated_model_saves_and_loads_with_safe_mode(tmp_path, gate_cls):
    model = tiny_supernet(gate_cls=gate_cls)
    model.get_layer("g1").alpha.assign(np.linspace(-1, 1, 3))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    gate = loaded.get_layer("g1")
    assert isinstance(gate, gate_cls)
    np.testing.assert_allclose(gate.alpha.numpy(), np.linspace(-1, 1, 3))
    assert gate.get_config()["width"] == (0.25, 1.0, 0.25)
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
