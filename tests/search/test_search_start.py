"""Where a search starts (gates, trained weights) and what it records on its way."""

import keras
import numpy as np
import pytest

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.models import fashion_resnet
from dmcp_tf.models.common import kernel_initializer
from dmcp_tf.search import baselines, pretrained, search_init
from dmcp_tf.search import trajectory as trajectory_lib
from dmcp_tf.channels.gates import BernoulliGate, MarkovGate
from dmcp_tf.search.supernet import DMCPModel, default_arch_optimizer, default_weight_optimizer
from tests.helpers import blob_data, randomize_batch_norm, tiny_supernet


def _fractions(graph):
    return np.array([float(g.expected_channels()) / g.channels for g in graph.gates])


@pytest.mark.parametrize("gate_cls", [MarkovGate, BernoulliGate])
@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.9])
def test_alpha_for_fraction_gives_that_expected_width(gate_cls, fraction):
    gate = gate_cls(width=(0.1, 1.0, 0.1))
    gate.build((None, 40))
    gate.alpha.assign(np.full(gate.num_groups, search_init.alpha_for_fraction(gate, fraction), np.float32))
    assert float(gate.expected_channels()) / gate.channels == pytest.approx(fraction, abs=1e-4)


def test_the_three_starts():
    graph = ChannelGraph(fashion_resnet(channels=(32, 32, 32), blocks=3))
    full = costs.MACS.of(graph)
    assert search_init.initialize(graph, "authors") < 0.1 * full  # every transition 0.5: far below any budget
    assert all(np.all(g.alpha.numpy() == 0) for g in graph.gates)
    assert search_init.initialize(graph, "full") > 0.9 * full
    assert np.all(_fractions(graph) > 0.95)
    expected = search_init.initialize(graph, "budget", 0.25 * full)
    assert expected == pytest.approx(0.25 * full, rel=1e-4)
    assert np.ptp(_fractions(graph)) < 1e-4  # one fraction for every gate: the uniform baseline
    with pytest.raises(ValueError, match="authors, full, budget"):
        search_init.initialize(graph, "middle")


def test_trajectory_records_the_search_and_tells_if_it_settled(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = blob_data(np.random.default_rng(0), 256)
    model = DMCPModel(tiny_supernet(channels=(32, 64)), budget="0.5x", total_steps=40, warmup_fraction=0.25)
    model.compile(arch_optimizer=default_arch_optimizer(30, 2.0, 0.5))
    assert model.initialize_gates("budget") == pytest.approx(model.target, rel=1e-3)
    tracker = trajectory_lib.SearchTrajectory(every_steps=5, log_dir=str(tmp_path / "tb"))
    model.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[tracker])
    steps = [r["step"] for r in tracker.records]
    assert steps == list(range(0, 41, 5))
    warm = [r for r in tracker.records if r["step"] <= model.warmup_steps]
    assert all(r["fractions"] == warm[0]["fractions"] for r in warm)  # alpha does not move in warm-up
    assert tracker.records[-1]["fractions"] != warm[0]["fractions"]
    assert tracker.records[0]["expected_over_budget"] == pytest.approx(1.0, rel=1e-3)
    assert any((tmp_path / "tb").iterdir())
    change = trajectory_lib.settling(tracker.records, model.warmup_steps, model.total_steps, window=0.5)
    last = [r for r in tracker.records if r["step"] >= 25]
    assert change == pytest.approx(max(np.ptp([r["fractions"][g.name] for r in last]) for g in model.gates))
    assert "still moving" in trajectory_lib.verdict(0.05) and "settled" in trajectory_lib.verdict(0.01)
    assert all(key in trajectory_lib.verdict(0.05) for key in ("--config.search.epochs", "arch_learning_rate"))
    assert trajectory_lib.settling(tracker.records[:1], 10, 40) is None


def test_sorting_channels_by_l1_keeps_the_function_and_puts_large_filters_first():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    net = tiny_supernet()
    randomize_batch_norm(net, rng)
    x = rng.normal(size=(4, 12, 12, 3)).astype("float32")
    before = np.asarray(net(x))
    pretrained.sort_channels_by_l1(net)
    np.testing.assert_allclose(np.asarray(net(x)), before, atol=1e-5)
    for name, order in baselines.l1_channel_order(ChannelGraph(net)).items():
        assert list(order) == list(range(len(order))), name  # already sorted


def test_initial_weights_from_a_trained_plain_model(tmp_path):
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    plain = rebuild(tiny_supernet(), copy_weights=False, name="trained")
    plain.compile("sgd", "sparse_categorical_crossentropy")
    plain.fit(*blob_data(rng, 64), epochs=1, verbose=0)
    randomize_batch_norm(plain, rng)
    plain.save(tmp_path / "trained.keras")
    x = rng.normal(size=(4, 12, 12, 3)).astype("float32")
    for sort in (False, True):
        supernet = tiny_supernet()
        pretrained.load_initial_weights(supernet, str(tmp_path / "trained.keras"), sort_channels=sort)
        np.testing.assert_allclose(np.asarray(supernet(x)), np.asarray(plain(x)), atol=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        pretrained.copy_weights_by_name(plain, tiny_supernet(channels=(8, 16)))
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="elsewhere")])
    with pytest.raises(ValueError, match="'elsewhere'"):
        pretrained.copy_weights_by_name(other, tiny_supernet())


def test_weight_schedule_warms_up_and_keeps_its_floor():
    optimizer = default_weight_optimizer(1000, 0.5, 100, warmup_start=0.2, min_learning_rate=0.08)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.2)
    assert float(schedule(100)) == pytest.approx(0.5)
    assert float(schedule(1000)) == pytest.approx(0.08)
    with pytest.raises(ValueError, match="min_learning_rate"):
        default_weight_optimizer(10, 0.1, min_learning_rate=0.2)


def test_coupled_weight_decay_is_an_l2_term_of_the_gradient():
    from dmcp_tf.search.recipes import CoupledSGD

    w = keras.Variable(np.array([1.0, -2.0], np.float32), name="kernel")
    b = keras.Variable(np.array([3.0], np.float32), name="bias")
    optimizer = CoupledSGD(0.1, momentum=0.9, l2=0.5)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    grads = [np.array([0.1, 0.1], np.float32), np.array([0.1], np.float32)]
    for _ in range(2):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], [w, b])
    # Plain momentum SGD on g + l2 * w: v <- 0.9 v - lr (g + l2 w); w <- w + v.
    expected_w, velocity = np.array([1.0, -2.0]), np.zeros(2)
    for _ in range(2):
        velocity = 0.9 * velocity - 0.1 * (grads[0] + 0.5 * expected_w)
        expected_w = expected_w + velocity
    np.testing.assert_allclose(w.numpy(), expected_w, rtol=1e-5)
    np.testing.assert_allclose(b.numpy(), 3.0 - 0.1 * 0.1 - (0.9 * 0.1 * 0.1 + 0.1 * 0.1), rtol=1e-5)


def test_kaiming_fan_out_initialisation():
    kernel = kernel_initializer("kaiming_fan_out")((3, 3, 64, 128))
    assert float(np.std(kernel)) == pytest.approx(np.sqrt(2.0 / (3 * 3 * 128)), rel=0.05)
    net = fashion_resnet(kernel_initializer="kaiming_fan_out")
    conv = net.get_layer("stem_conv")
    assert isinstance(conv.kernel_initializer, keras.initializers.VarianceScaling)
    with pytest.raises(ValueError, match="kaiming_fan_out"):
        kernel_initializer("he")


@pytest.mark.parametrize("ratio, growth, advice", [
    (1.0, 0.0, None), (1.05, 0.0, None), (0.92, 0.0, None),
    (1.8, 0.0, "--config.search.budget_weight_growth=0.1"),
    (1.8, 0.1, "raise --config.search.budget_weight_growth"),
    (0.57, 0.1, "--config.search.init=budget"),
])
def test_a_search_that_ends_off_its_budget_is_named_with_the_key_that_helps(ratio, growth, advice):
    message = trajectory_lib.budget_verdict(ratio, growth)
    if advice is None:
        assert message is None
    else:
        named = "missed its budget" if ratio > 1 else "stopped short of its budget"
        assert named in message and f"{ratio:.2f}x" in message and advice in message
