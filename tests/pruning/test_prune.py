"""`dmcp_tf.prune`: a user's trained model, saved by plain Keras, pruned in one call; its input checks;
the trained-model API (`make_supernet(from_trained=True)`, `total_steps` checks, `uniform_config` errors)."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import dmcp_tf
from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.pruning import api
from dmcp_tf.pruning.inputs import Batches
from dmcp_tf.search import baselines, sampling
from tests.helpers import blob_data

SHAPE, CLASSES = (16, 16, 3), 4


def conv_bn(x, filters, name, strides=1):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
    return keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"{name}_bn")(x))


def sequential_cnn():
    """A Sequential CNN with its own preprocessing (Rescaling) and a softmax output."""
    return keras.Sequential([
        keras.Input(SHAPE), keras.layers.Rescaling(0.5, name="scale"),
        keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="c1"), keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="c2"),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(CLASSES, activation="softmax", name="head"),
    ], name="cnn")


def wrapped_backbone():
    """Input -> Rescaling -> a nested functional base (residual, depthwise) -> pooling -> Dropout -> Dense logits."""
    inputs = keras.Input(SHAPE)
    x = conv_bn(inputs, 16, "stem")
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = conv_bn(keras.layers.ReLU()(keras.layers.BatchNormalization(name="dw_bn")(y)), 16, "pw")
    x = keras.layers.Add()([x, y])
    x = conv_bn(x, 32, "expand", strides=2)
    base = keras.Model(inputs, x, name="base")
    outer = keras.Input(SHAPE)
    h = base(keras.layers.Rescaling(1 / 2.0)(outer))
    h = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(outer, keras.layers.Dense(CLASSES, name="head")(h), name="wrapper")


def trained(model, x, y, path):
    """`model` trained shortly by plain Keras, saved to `path` and loaded back as a user would."""
    keras.utils.set_random_seed(0)
    loss = "sparse_categorical_crossentropy" if dmcp_tf.search.supernet.ends_in_softmax(model) else \
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(path)
    return keras.models.load_model(path)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return blob_data(rng, n=384, input_shape=SHAPE, classes=CLASSES), blob_data(rng, n=96, input_shape=SHAPE,
                                                                                 classes=CLASSES)


@pytest.fixture(scope="module")
def pruned_cnn(data, tmp_path_factory):
    """The Sequential CNN pruned to 0.5x from arrays, with a run directory; and its original weights."""
    (x, y), validation = data
    folder = tmp_path_factory.mktemp("cnn")
    model = trained(sequential_cnn(), x, y, str(folder / "cnn.keras"))
    weights = [w.copy() for w in model.get_weights()]
    result = dmcp_tf.prune(model, "0.5x", (x, y), validation_data=validation, search_epochs=1, finetune_epochs=1,
                           run_dir=str(folder / "run"), verbose=0)
    return model, weights, result, folder


def test_sequential_cnn_meets_the_budget_and_stays_a_plain_keras_model(pruned_cnn):
    model, weights, result, folder = pruned_cnn
    s = result.summary
    assert 0.9 <= s["macs_after"] / (0.5 * s["macs_before"]) <= 1.0
    assert 0.9 <= s["budget_fraction"] <= 1.0 and s["budget"] == "macs:0.5x"
    assert s["params_after"] < s["params_before"]
    for key in ("accuracy_before", "accuracy_inherited", "accuracy_after"):
        assert 0.0 <= s[key] <= 1.0
    assert set(result.channels) == {"c1_gate", "c2_gate"}
    assert isinstance(result.model.get_layer("scale"), keras.layers.Rescaling)  # the user's preprocessing is kept
    assert dmcp_tf.search.supernet.ends_in_softmax(result.model)
    assert costs.MACS.of(ChannelGraph(result.model)) == s["macs_after"]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))  # the original is unchanged
    assert sampling.load_config(folder / "run" / "channels.json") == result.channels
    for name in ("supernet.keras", "structure.md", "slim.keras", "summary.json", "prune.json"):
        assert (folder / "run" / name).exists(), name


def test_slim_model_loads_in_a_fresh_python_without_dmcp_tf(pruned_cnn):
    _, _, result, folder = pruned_cnn
    code = ("import sys, warnings, keras; warnings.simplefilter('error'); "  # a warning fails the load
            "m = keras.saving.load_model(sys.argv[1], safe_mode=True); "
            "assert 'dmcp_tf' not in sys.modules and m.compiled; print(m.count_params())")
    out = subprocess.run([sys.executable, "-c", code, str(folder / "run" / "slim.keras")], capture_output=True,
                         text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=True, cwd="/")
    assert int(out.stdout.split()[-1]) == result.model.count_params()


def test_second_call_with_the_run_dir_skips_finished_stages(pruned_cnn, data, monkeypatch):
    model, _, result, folder = pruned_cnn
    (x, y), validation = data

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(api, "_search", no_training)
    monkeypatch.setattr(api, "_finetune", no_training)
    again = dmcp_tf.prune(model, "0.5x", (x, y), validation_data=validation, search_epochs=1, finetune_epochs=1,
                          run_dir=str(folder / "run"), verbose=0)
    assert again.channels == result.channels
    assert again.summary["macs_after"] == result.summary["macs_after"]
    assert again.summary["accuracy_inherited"] == result.summary["accuracy_inherited"]
    with pytest.raises(ValueError, match=r"other arguments \(budget differ\)"):
        dmcp_tf.prune(model, "0.4x", (x, y), search_epochs=1, finetune_epochs=1, run_dir=str(folder / "run"),
                      verbose=0)


class Crash(Exception):
    """A stand-in for a killed process."""


class EpochLog(keras.callbacks.Callback):
    """Records (model class, epoch, step) at every epoch start; raises `Crash` at the fine-tuning's second epoch."""

    def __init__(self, crash):
        super().__init__()
        self.crash, self.seen = crash, []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append((type(self.model).__name__, epoch, int(self.model.optimizer.iterations.numpy())))
        if self.crash and epoch == 1 and type(self.model).__name__ != "DMCPModel":
            raise Crash


def test_a_training_stage_cut_short_resumes_from_its_last_epoch(tmp_path):
    x, y = small_arrays(128)  # 4 batches an epoch
    arguments = dict(search_epochs=2, finetune_epochs=2, run_dir=str(tmp_path), verbose=0)
    first = EpochLog(crash=True)
    with pytest.raises(Crash):
        dmcp_tf.prune(sequential_cnn(), "0.5x", (x, y), callbacks=[first], **arguments)
    assert (tmp_path / "supernet.keras").exists() and (tmp_path / "backup_finetune").exists()
    second = EpochLog(crash=False)
    result = dmcp_tf.prune(sequential_cnn(), "0.5x", (x, y), callbacks=[second], **arguments)
    assert second.seen == [("Functional", 1, 4)]  # no search; fine-tuning from the end of its first epoch
    assert not (tmp_path / "backup_finetune").exists()
    assert 0.9 <= result.summary["budget_fraction"] <= 1.0


def test_nested_backbone_from_a_dataset_with_one_hot_labels_and_a_params_budget(data, tmp_path):
    (x, y), (xv, yv) = data
    model = trained(wrapped_backbone(), x, y, str(tmp_path / "wrapper.keras"))
    one_hot = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, CLASSES))).batch(64)
    result = dmcp_tf.prune(model, "params:0.5x", one_hot, validation_data=(xv, keras.utils.to_categorical(yv)),
                           search_epochs=1, finetune_epochs=1, verbose=0)
    s = result.summary
    assert s["unit"] == "params" and 0.9 <= s["budget_fraction"] <= 1.0
    assert s["macs_after"] < s["macs_before"]
    assert {"stem_gate", "expand_gate"} <= set(result.channels)
    assert isinstance(result.model.loss, keras.losses.CategoricalCrossentropy)  # the user's one-hot labels
    assert not dmcp_tf.search.supernet.ends_in_softmax(result.model)  # logits stay logits
    assert not any(isinstance(layer, keras.Model) for layer in result.model.layers)  # a flat, plain model
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in result.model.layers)
    # Fine-tuned, then its batch norms re-estimated: calibrated again on the same batches, they keep their statistics.
    again = keras.models.clone_model(result.model)
    again.set_weights(result.model.get_weights())
    dmcp_tf.calibrate_batch_norm(again, Batches.read(one_hot, model).first(api.CALIBRATION_BATCHES))
    norms = [(a, b) for a, b in zip(result.model.layers, again.layers) if isinstance(a, keras.layers.BatchNormalization)]
    assert norms
    for kept, recomputed in norms:
        np.testing.assert_allclose(kept.moving_mean.numpy(), recomputed.moving_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(kept.moving_variance.numpy(), recomputed.moving_variance.numpy(), rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.slow
def test_a_keras_application_saved_by_plain_keras_is_pruned_end_to_end(tmp_path):
    """MobileNetV3Small (squeeze-and-excitation, hard-swish, its own Rescaling) in a transfer-learning wrapper."""
    rng = np.random.default_rng(1)
    (x, y), (xv, yv) = (blob_data(rng, n=n, input_shape=(32, 32, 3), classes=CLASSES) for n in (128, 32))
    x, xv = 127.5 * (x + 1.0), 127.5 * (xv + 1.0)  # pixels around 0-255, as the application expects
    inputs = keras.Input((32, 32, 3))
    base = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, include_top=False,
                                               minimalistic=False, include_preprocessing=True)
    head = keras.layers.Dense(CLASSES, activation="softmax", name="head")
    wrapper = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(base(inputs))), name="transfer")
    model = trained(wrapper, x, y, str(tmp_path / "transfer.keras"))
    result = dmcp_tf.prune(model, "0.5x", (x, y), validation_data=(xv, yv), search_epochs=1, finetune_epochs=1,
                           verbose=0)
    assert 0.9 <= result.summary["budget_fraction"] <= 1.0
    assert not any(isinstance(layer, keras.Model) for layer in result.model.layers)
    path = str(tmp_path / "slim.keras")
    result.model.save(path)
    code = ("import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1], safe_mode=True); "
            "assert 'dmcp_tf' not in sys.modules; print(m.count_params())")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True, cwd="/",
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert int(out.stdout.split()[-1]) == result.model.count_params()
    tflite = dmcp_tf.export.export_tflite(result.model, str(tmp_path / "slim.tflite"))
    parity = dmcp_tf.export.tflite_parity(tflite, result.model, xv, outputs_are_logits=False)
    assert parity.top1_agreement == 1.0 and parity.max_abs_diff < 1e-4


# --- bad input: a clear ValueError before any training ----------------------------------------------
class ChannelShift(keras.layers.Layer):
    """A custom layer with a weight and no channel rule."""

    def build(self, input_shape):
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, x):
        return x + self.shift


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv, self.head = keras.layers.Conv2D(8, 3), keras.layers.Dense(CLASSES)

    def call(self, x):
        return self.head(keras.ops.mean(self.conv(x), axis=(1, 2)))


def with_custom_layer():
    inputs = keras.Input(SHAPE)
    x = ChannelShift(name="shift")(conv_bn(inputs, 16, "c1"))
    x = keras.layers.GlobalAveragePooling2D()(conv_bn(x, 16, "c2"))
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x))


def small_arrays(n=64):
    return blob_data(np.random.default_rng(1), n=n, input_shape=SHAPE, classes=CLASSES)


@pytest.mark.parametrize("make, budget, data, message", [
    (lambda: Subclassed(), "0.5x", None, "subclassed model"),
    (lambda: keras.Sequential([keras.Input(SHAPE), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)]),
     "0.5x", None, "no prunable layer"),
    (with_custom_layer, "0.5x", None, r"'shift' \(ChannelShift\).*register_rule.*exclude=\['shift'\]"),
    (sequential_cnn, "0.001x", None, "outside what the supernet can reach"),
    (sequential_cnn, "50M", None, "outside what the supernet can reach"),
    (sequential_cnn, "half", None, "Cannot read the budget"),
    (sequential_cnn, "0.5x", (small_arrays()[0], small_arrays()[1] + 3), "labels from 3 to 6, out of range"),
    (sequential_cnn, "0.5x", (small_arrays()[0], np.zeros((64, 3))), "one-hot labels have 3 classes but the model "
                                                                       "has 4 outputs"),
    (sequential_cnn, "0.5x", (small_arrays()[0], small_arrays()[1] % 2), "labels name 2 classes"),
    (sequential_cnn, "0.5x", (small_arrays()[0][:, :8], small_arrays()[1]), "images have shape"),
    (lambda: keras.Model(*_unknown_size()), "0.5x", None, "images' size is unknown"),
])
def test_bad_input_is_a_clear_error_before_training(make, budget, data, message, monkeypatch):
    monkeypatch.setattr(api, "_search", lambda *a, **k: pytest.fail("trained despite bad input"))
    with pytest.raises(ValueError, match=message):
        dmcp_tf.prune(make(), budget, data if data is not None else small_arrays(), verbose=0)


def _unknown_size():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(conv_bn(inputs, 8, "c1"))
    return inputs, keras.layers.Dense(CLASSES)(x)


def test_excluded_custom_layer_is_accepted_and_kept_whole():
    supernet = dmcp_tf.pruning.checks.gated_supernet(with_custom_layer(), exclude=["shift"])
    assert [g.name for g in ChannelGraph(supernet).gates] == ["c2_gate"]


def test_py_dataset_and_unbatched_dataset_are_read_as_batches():
    x, y = small_arrays()

    class Pairs(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[16 * i:16 * (i + 1)], y[16 * i:16 * (i + 1)]

    model = sequential_cnn()
    batches = Batches.read(Pairs(), model)
    assert batches.steps == 4 and not batches.one_hot
    assert sum(int(b[1].shape[0]) for b in batches.dataset) == 64
    unbatched = Batches.read(tf.data.Dataset.from_tensor_slices((x, y)), model)
    assert unbatched.steps == 2  # batches of 32, as Keras' fit batches arrays
    with pytest.raises(ValueError, match="repeats without end: pass steps_per_epoch"):
        Batches.read(tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(), model)


# --- the trained-model API ---------------------------------------------------------------------------
def test_make_supernet_from_trained_sorts_channels_and_starts_at_the_budget():
    keras.utils.set_random_seed(0)
    model = sequential_cnn()
    x = small_arrays(8)[0]
    search = dmcp_tf.make_supernet(model, budget="0.5x", total_steps=10, from_trained=True, train_weights=False)
    graph = search.graph
    assert 0.95 <= float(search.cost.expected(graph)) / search.target <= 1.05
    order = baselines.l1_channel_order(graph)
    for name in ("c1_gate", "c2_gate"):  # already sorted: largest L1 norm first
        assert list(order[name]) == list(range(len(order[name])))
    full = dmcp_tf.rebuild(search.supernet)
    np.testing.assert_allclose(full(x), model(x), atol=1e-5)  # the same function, channels permuted


def test_uniform_config_without_gates_says_what_to_do():
    with pytest.raises(ValueError, match="has no channel gates.*insert_gates"):
        baselines.uniform_config(ChannelGraph(sequential_cnn()), 1000)


def test_fit_warns_when_total_steps_does_not_match_the_training():
    x, y = small_arrays(32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def fit_warning(total_steps, epochs, **kwargs):
        """The warning `fit` gives before training (turned into an error, so nothing trains), or None."""
        search = dmcp_tf.make_supernet(sequential_cnn(), budget="0.5x", total_steps=total_steps, **kwargs)
        search.compile()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            try:
                search.fit(dataset, epochs=epochs, verbose=0, shuffle=False)
            except UserWarning as warning:
                return str(warning)
        return None

    assert "ends at step 2, inside the warm-up of 50 steps" in fit_warning(100, 1)
    assert "runs to step 4, but the DMCPModel was built for total_steps=2" in fit_warning(2, 2, train_weights=False)
    assert fit_warning(4, 2, train_weights=False) is None
