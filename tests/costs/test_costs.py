import keras
import numpy as np
import pytest
import tensorflow as tf

from dmcp_tf import costs
from dmcp_tf import costs as F
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.costs import Budget
from dmcp_tf.models import mobilenet_v2, mobilenet_v2_dmcp, resnet50, resnet50_dmcp
from tests.helpers import tiny_supernet


def test_keras_mobilenet_v2_macs():
    model = keras.applications.MobileNetV2(alpha=1.0, weights=None)
    assert F.count_macs(model) == pytest.approx(300.8e6, rel=1e-3)
    assert F.count_params(model) == model.count_params()


def test_our_plain_mobilenet_v2_matches_keras():
    model = mobilenet_v2(1.0, gate_kind=None)
    reference = keras.applications.MobileNetV2(alpha=1.0, weights=None)
    assert F.count_macs(model) == F.count_macs(reference)
    assert model.count_params() == reference.count_params()


def test_mobilenet_v2_supernet_macs():
    graph = ChannelGraph(mobilenet_v2(1.5))
    assert costs.MACS.of(graph) == pytest.approx(672.8e6, rel=1e-3)
    assert len(graph.gates) == 25


def test_resnet50_macs():
    graph = ChannelGraph(resnet50())
    assert costs.MACS.of(graph) == pytest.approx(4.09e9, rel=1e-3)
    assert costs.PARAMS.of(graph) == 25_557_032 + 53_120  # torchvision weights + BN moving statistics


def test_paper_resnet50_structure_macs():
    model = resnet50_dmcp("2.8G")
    assert F.count_macs(model) == pytest.approx(2.83e9, rel=1e-3)
    assert model.get_layer("stem_conv").filters == 51
    assert model.get_layer("stage4_block3_conv3_conv").filters == 1735


def test_paper_mobilenet_v2_structures_build_by_name():
    macs = {s: F.count_macs(mobilenet_v2_dmcp(s)) for s in ("300M", "210M", "97M", "59M")}
    # The last 1x1 conv is not listed in Table 8 and stays at 1920 channels; the
    # names are rounded budgets, ours count 302M / 222M / 120M / 66M.
    assert macs["300M"] > macs["210M"] > macs["97M"] > macs["59M"]
    for name, value in macs.items():
        assert value == pytest.approx(float(name[:-1]) * 1e6, rel=0.25)


def test_expected_macs_is_differentiable_and_bounded():
    model = tiny_supernet()
    graph = ChannelGraph(model)
    gates = graph.gates
    for g in gates:
        g.alpha.assign(np.full(g.num_groups, 30.0, "float32"))
    assert float(costs.MACS.expected(graph)) == pytest.approx(costs.MACS.of(graph), rel=1e-6)
    for g in gates:
        g.alpha.assign(np.full(g.num_groups, -30.0, "float32"))
    assert float(costs.MACS.expected(graph)) == pytest.approx(costs.MACS.of(graph, graph.smallest_config()), rel=1e-6)
    for g in gates:
        g.alpha.assign(np.zeros(g.num_groups, "float32"))
    with tf.GradientTape() as tape:
        value = costs.MACS.expected(graph)
    grads = tape.gradient(value, [g.alpha for g in gates])
    assert all(np.all(np.asarray(gr) > 0) for gr in grads)  # more probability, more MACs


def test_expected_macs_equals_macs_of_expected_channels_for_one_layer():
    inputs = keras.Input((8, 8, 16))
    from dmcp_tf.channels.gates import MarkovGate
    gate = MarkovGate(width=(0.25, 1.0, 0.25), name="g")
    x = gate(keras.layers.Conv2D(16, 3, padding="same")(inputs))
    outputs = keras.layers.Conv2D(5, 1)(x)
    graph = ChannelGraph(keras.Model(inputs, outputs))
    gate.alpha.assign([0.3, -0.2, 1.0])
    e = float(gate.expected_channels())
    assert float(costs.MACS.expected(graph)) == pytest.approx(9 * 16 * e * 64 + e * 5 * 64, rel=1e-6)


@pytest.mark.parametrize("text, kind, value, relative", [
    ("210M", "macs", 210e6, False), ("2.8G", "macs", 2.8e9, False), ("0.5x", "macs", 0.5, True),
    (123.0, "macs", 123.0, False), ("1.5e3K", "macs", 1.5e6, False), ("macs:210M", "macs", 210e6, False),
    ("params:1.5M", "params", 1.5e6, False), ("params:0.4x", "params", 0.4, True), (" Params : 2k ", "params", 2e3, False),
])
def test_budget_texts(text, kind, value, relative):
    budget = Budget.parse(text)
    assert (budget.cost.name, budget.value, budget.relative) == (kind, pytest.approx(value), relative)
    assert Budget.parse(budget) is budget and Budget.parse(str(budget)).cost is budget.cost


@pytest.mark.parametrize("text", ["fast", "latency:3", "macs:3ms", "params:", "0x", "-1M", "params:1.5Q", True])
def test_unreadable_budgets_list_the_forms(text):
    with pytest.raises(ValueError, match="Cannot read the budget.*params:1.5M.*latency:3.2ms.*kinds: macs, params, "
                                         "latency"):
        Budget.parse(text)


def test_budget_targets_and_reachability():
    graph = ChannelGraph(tiny_supernet())
    full, smallest = costs.PARAMS.of(graph), costs.PARAMS.of(graph, graph.smallest_config())
    assert Budget.parse("params:0.5x").checked_target(graph) == pytest.approx(0.5 * full)
    assert Budget.parse("0.5x").checked_target(graph) == pytest.approx(0.5 * costs.MACS.of(graph))
    for text in ("params:2x", f"params:{smallest / 2:.0f}"):
        with pytest.raises(ValueError, match=r"outside what the supernet can reach.*params"):
            Budget.parse(text).checked_target(graph)


def test_params_of_configurations_equal_the_rebuilt_models():
    model = tiny_supernet()
    graph = ChannelGraph(model)
    rng = np.random.default_rng(0)
    configs = [{g.name: int(rng.choice(g.widths_grid())) for g in graph.gates} for _ in range(4)]
    for config in configs:
        assert costs.PARAMS.of(graph, config) == rebuild(model, config).count_params()
    arrays = {name: np.array([c[name] for c in configs]) for name in configs[0]}
    np.testing.assert_array_equal(costs.PARAMS.of(graph, arrays), [costs.PARAMS.of(graph, c) for c in configs])
    for kind in (costs.PARAMS, costs.MACS):  # every weighted layer is costed: the breakdown adds up
        assert sum(cost for _, cost in kind.per_layer(graph, configs[0])) == kind.of(graph, configs[0])


def test_expected_params_span_the_smallest_and_full_networks_and_are_differentiable():
    graph = ChannelGraph(tiny_supernet())
    for alpha, config in ((30.0, None), (-30.0, graph.smallest_config())):
        for g in graph.gates:
            g.alpha.assign(np.full(g.num_groups, alpha, "float32"))
        assert float(costs.PARAMS.expected(graph)) == pytest.approx(costs.PARAMS.of(graph, config), rel=1e-5)
    for g in graph.gates:
        g.alpha.assign(np.zeros(g.num_groups, "float32"))
    with tf.GradientTape() as tape:
        value = costs.PARAMS.expected(graph)
    grads = tape.gradient(value, [g.alpha for g in graph.gates])
    assert all(np.all(np.asarray(gr) > 0) for gr in grads)


@pytest.mark.parametrize(
    "expected_m, target_m",
    [
        (50.0, 100.0),    # below 0.95 T, close: r = 1
        (100.0, 400.0),   # below 0.95 T, far: r = 0.1
        (96.0, 100.0),    # dead zone
        (99.99, 100.0),   # dead zone, upper edge
        (100.0, 100.0),   # at T: upper piece
        (130.0, 100.0),   # above
        (800.0, 500.0),   # above, far: r = 0.1
    ],
)
def test_budget_loss_piecewise(expected_m, target_m):
    e, t = expected_m, target_m
    r = 0.1 if abs(e - t) > 200 else 1.0
    if e < 0.95 * t:
        want = np.log(r * abs(e - t))
    elif e < t:
        want = 0.0
    else:
        want = np.log(r * abs(e - 0.95 * t))
    got = float(F.budget_loss(e * 1e6, t * 1e6))
    assert got == pytest.approx(want, abs=1e-5)


def test_budget_loss_gradient_points_to_the_budget():
    for e, sign in ((50e6, -1), (130e6, 1)):
        x = tf.Variable(e)
        with tf.GradientTape() as tape:
            loss = F.budget_loss(x, 100e6)
        assert np.sign(float(tape.gradient(loss, x))) == sign


def test_the_old_flops_names_warn_and_count_the_same():
    import dmcp_tf
    from dmcp_tf.search.supernet import DMCPModel

    supernet = tiny_supernet()
    graph = ChannelGraph(supernet)
    config = {g.name: g.channels // 2 for g in graph.gates}
    counts = [
        (lambda: dmcp_tf.count_flops(supernet), costs.count_macs(supernet)),
        (lambda: costs.count_flops(supernet), costs.count_macs(supernet)),
        (lambda: graph.flops(), costs.MACS.of(graph)),
        (lambda: graph.flops(config), costs.MACS.of(graph, config)),
        (lambda: float(graph.expected_flops()), float(costs.MACS.expected(graph))),
        (lambda: graph.params(config), costs.PARAMS.of(graph, config)),
        (lambda: DMCPModel(supernet, budget="0.5x", total_steps=10).full_flops, costs.MACS.of(graph)),
    ]
    for old, new in counts:
        with pytest.warns(DeprecationWarning, match="deprecated"):
            assert old() == new
    assert costs.count_macs(supernet) == dmcp_tf.count_macs(supernet) == costs.MACS.of(graph) > 0
