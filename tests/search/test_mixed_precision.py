"""Mixed precision (`config.mixed_precision`): search, slicing, rebuild and export under a Keras mixed dtype policy.

On CPU the tests use `mixed_bfloat16`: float32 variables, bfloat16 activations.
bfloat16 keeps 8 significant bits (about 3 decimal digits, a relative step of
2**-8 = 0.4%); the tolerances below are stated in those steps.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend import AutocastScope

from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.deploy import export
from dmcp_tf.run import config as config_lib
from dmcp_tf.run.pipeline import dtype_policy
from dmcp_tf.channels import gates as G
from dmcp_tf.search.supernet import DMCPModel, default_weight_optimizer
from tests.helpers import blob_data, learnable_fashion_mnist, randomize_batch_norm, tiny_supernet
from tests.end_to_end.test_pipeline import TINY, main
from tests.channels.test_slicing import masked_and_sliced

# The whole module on one xdist worker: its module-scoped fixture (a bfloat16 search)
# is then built once, not once per worker.
pytestmark = pytest.mark.xdist_group("mixed_precision")

BF16_STEP = 2.0 ** -8  # the relative spacing of bfloat16 numbers


@pytest.fixture
def mixed_bfloat16():
    """The `mixed_bfloat16` global policy for one test; the previous policy afterwards."""
    with dtype_policy("mixed_bfloat16"):
        yield


def short_search(total_steps=4, **compile_kwargs):
    """A `DMCPModel` on `tiny_supernet` after `total_steps` steps (half of them warm-up), and its history."""
    keras.utils.set_random_seed(0)
    x, y = blob_data(np.random.default_rng(0), 16 * total_steps)
    model = DMCPModel(tiny_supernet(), budget="0.5x", total_steps=total_steps, warmup_fraction=0.5)
    model.compile(**compile_kwargs)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model, history.history


@pytest.fixture(scope="module")
def searched():
    with dtype_policy("mixed_bfloat16"):
        return short_search()


def test_policy_is_restored_after_the_block():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError), dtype_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError
    assert keras.config.dtype_policy().name == before


def test_unknown_policy_names_the_key():
    config = config_lib.base_config()
    config.mixed_precision = "float16"
    with pytest.raises(ValueError, match=r"`mixed_precision`.*'float16'.*mixed_float16, mixed_bfloat16"):
        config_lib.validate(config)


def test_search_runs_with_float32_gates_costs_and_weights(searched, mixed_bfloat16):
    model, history = searched
    for name in ("loss", "loss_full", "loss_smallest", "arch_loss", "budget_loss", "expected_cost"):
        assert np.all(np.isfinite(history[name])), name
    assert "arch_loss" in history and model.searching  # the architecture stage ran
    assert all(np.any(g.alpha.numpy() != 0.0) for g in model.gates)  # and moved every gate
    for gate in model.gates:
        assert gate.alpha.dtype == "float32"
        with AutocastScope("bfloat16"):  # what a layer call opens under the mixed policy
            assert gate.keep_probabilities().dtype == tf.float32
    assert model.cost.expected(model.graph).dtype == tf.float32
    assert {v.dtype for v in model.supernet.weights} == {"float32"}
    assert model.supernet.get_layer("c1").compute_dtype == "bfloat16"
    x = blob_data(np.random.default_rng(1), 4)[0]
    with G.selection(G.Selection(G.SCALE)):  # the gates' probabilities are cast to the activations' dtype
        assert model.supernet(x).dtype == tf.bfloat16


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
def test_sliced_weight_stage_equals_masked(training, mixed_bfloat16):
    """Outputs within 2 bfloat16 steps of the output scale, gradients (float32, from bfloat16 activations)
    within 4 steps of the largest gradient, batch-norm statistics (computed in float32) to 1e-5."""
    graph, config, (masked, sliced), (masked_grads, sliced_grads), (moving, _, after_masked) = \
        masked_and_sliced(tiny_supernet(), training)
    assert sliced.dtype == masked.dtype == tf.bfloat16
    masked, sliced = np.asarray(masked, np.float32), np.asarray(sliced, np.float32)
    np.testing.assert_allclose(sliced, masked, rtol=0, atol=2 * BF16_STEP * np.abs(masked).max())
    masked_grads = [np.zeros(b.shape) if a is None else np.asarray(a) for a, b in zip(masked_grads, sliced_grads)]
    scale = max(np.abs(a).max() for a in masked_grads)
    for a, b in zip(masked_grads, sliced_grads):
        assert b.dtype == tf.float32
        np.testing.assert_allclose(np.asarray(b), a, rtol=0, atol=4 * BF16_STEP * scale)
    kept = config["g1"]
    for i in [i for i, v in enumerate(moving) if v.path.startswith("bn1")]:
        np.testing.assert_allclose(moving[i].numpy()[:kept], after_masked[i][:kept], rtol=1e-5, atol=1e-5)


def sampled_slim(model, seed=0):
    """A direct sample of the searched gates, the supernet's slim rebuild of it and a few inputs."""
    rng = np.random.default_rng(seed)
    randomize_batch_norm(model.supernet, rng)
    config = {g.name: int(g.direct_sample(rng)) for g in model.gates}
    x = blob_data(rng, 8)[0]
    return config, rebuild(model.supernet, config, graph=ChannelGraph(model.supernet)), x


def test_rebuild_is_output_exact_in_the_same_policy(searched, mixed_bfloat16):
    """Tolerance: 1 bfloat16 step of the largest output (the two compute the same products in bfloat16)."""
    model, _ = searched
    config, slim, x = sampled_slim(model)
    assert config != {g.name: g.channels for g in model.gates}  # a real sub-network
    assert {layer.dtype_policy.name for layer in slim.layers[1:]} == {"mixed_bfloat16"}
    with G.selection(G.Selection(G.SUBNET, {g: config[g.name] for g in model.gates})):
        gated = np.asarray(model.supernet(x, training=False), np.float32)
    out = slim(x, training=False)
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), gated, rtol=0, atol=BF16_STEP * np.abs(gated).max())


def test_tflite_export_of_the_mixed_slim_model(searched, mixed_bfloat16, tmp_path):
    """The float32 TFLite model is within 4 bfloat16 steps of the Keras model's logits and agrees on top-1."""
    model, _ = searched
    _, slim, x = sampled_slim(model, seed=1)
    head = slim.get_layer("head")  # logits far apart, so a tie cannot decide the top-1
    kernel, bias = head.get_weights()
    head.set_weights([20 * kernel, bias])
    copy = export.float32_copy(slim)
    assert {layer.compute_dtype for layer in copy.layers[1:]} == {"float32"}  # after the input
    keras_logits = np.asarray(slim(x, training=False), np.float32)
    np.testing.assert_allclose(np.asarray(copy(x, training=False)), keras_logits, rtol=0,
                               atol=4 * BF16_STEP * np.abs(keras_logits).max())
    path = export.export_tflite(slim, tmp_path / "slim.tflite")
    parity = export.tflite_parity(path, slim, x)
    assert parity.examples == len(x) and parity.top1_agreement == 1.0
    assert parity.max_abs_diff < 0.05  # softmax probabilities


def test_float16_stages_use_loss_scaling():
    """Under mixed_float16 both optimisers scale the loss; a step that overflows float16 is skipped but counted."""
    with dtype_policy("mixed_float16"):
        model, history = short_search()
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(model.arch_optimizer, keras.optimizers.LossScaleOptimizer)
        assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["arch_loss"]))
        assert model.supernet.get_layer("c1").compute_dtype == "float16"
        assert model.gates[0].alpha.dtype == "float32"

        # A loss scale of 1e30 makes every float16 gradient infinite: each step is skipped, the scale halves.
        huge = keras.optimizers.LossScaleOptimizer(default_weight_optimizer(4), initial_scale=1e30)
        model, history = short_search(weight_optimizer=huge)
        assert int(model.optimizer.iterations.numpy()) == 4  # skipped steps still count
        assert float(model.optimizer.dynamic_scale.numpy()) == pytest.approx(1e30 / 2 ** 4, rel=1e-6)


@pytest.mark.slow
def test_main_runs_the_whole_pipeline_in_mixed_bfloat16(tmp_path):
    data_dir = tmp_path / "fashion"
    data_dir.mkdir()
    learnable_fashion_mnist(data_dir)
    run_dir = tmp_path / "run"
    code, out = main(f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--config.mixed_precision=mixed_bfloat16",
                     "--config.retrain.compare_uniform=False", *TINY)
    assert code == 0, out
    assert json.loads((run_dir / "config.json").read_text())["mixed_precision"] == "mixed_bfloat16"
    search = json.loads((run_dir / "search.json").read_text())
    assert np.all(np.isfinite(search["history"]["loss"])) and np.isfinite(search["expected_cost"])
    slim = keras.models.load_model(run_dir / "slim.keras", safe_mode=True, compile=False)
    assert slim.get_layer("logits").dtype_policy.name == "mixed_bfloat16"  # the deliverable keeps its policy
    exported = json.loads((run_dir / "export.json").read_text())
    for name in ("slim_float32", "slim_int8", "full_float32"):
        assert os.path.exists(run_dir / exported[name]["path"]), name
    assert exported["slim_float32"]["top1_agreement"] >= 0.9
