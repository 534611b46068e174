"""Saved models in a fresh Python without dmcp_tf: a gated one (supernet.keras) says to import it; the
portable copy (slim.keras) loads compiled, without a warning."""

import os
import subprocess
import sys

import keras
import numpy as np

from dmcp_tf.search import recipes
from dmcp_tf.channels import gates
from tests.helpers import tiny_supernet

# In a fresh Python: load with plain Keras (safe mode, compile on: the defaults), report what happened.
LOAD = """
import sys, warnings, keras
warnings.simplefilter("error")  # a warning fails the load
try:
    model = keras.saving.load_model(sys.argv[1], safe_mode=True)
    print("LOADED", "compiled" if model.compiled else "not compiled")
except Exception as error:
    print(type(error).__name__, str(error))
print("dmcp_tf imported:", "dmcp_tf" in sys.modules)
"""


def load_in_fresh_python(path, prelude=""):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", prelude + LOAD, str(path)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_gated_model_loaded_without_dmcp_tf_says_to_import_it(tmp_path):
    path = tmp_path / "supernet.keras"
    tiny_supernet().save(path)
    out = load_in_fresh_python(path)
    # Keras' own message names the class and prints its saved config, which starts with the hint.
    assert "Could not locate class 'MarkovGate'" in out, out
    assert f"'requires': '{gates.LOAD_HINT}'" in out and "import dmcp_tf before keras.saving.load_model" in out
    assert "dmcp_tf imported: False" in out
    out = load_in_fresh_python(path, prelude="import dmcp_tf\n")
    assert "LOADED" in out, out


def test_the_hint_is_saved_and_dropped_again_when_loaded(tmp_path):
    model = tiny_supernet()
    gate = model.get_layer("g1")
    config = gate.get_config()
    assert next(iter(config)) == "requires" and config["requires"] == gates.LOAD_HINT  # first: printed first
    assert gates.MarkovGate.from_config(config).get_config() == config
    del config["requires"]  # a file saved before the hint
    assert gates.MarkovGate.from_config(config).width == gate.width
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert loaded.get_layer("g1").get_config() == gate.get_config()


def test_the_portable_copy_loads_compiled_without_a_warning(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs)))
    path = tmp_path / "slim.keras"
    recipes.portable_copy(model).save(path)
    out = load_in_fresh_python(path)
    assert "LOADED compiled" in out and "dmcp_tf imported: False" in out, out
