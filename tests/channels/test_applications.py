"""keras.applications families end to end, the cheap ones: exact, costs as predicted, TFLite float32.

Each family runs the checks of `benchmarks/applications.py` (gates, full width
against the original, a random sub-network rebuilt against the masked gated
model with its MACs and parameters against the graph's prediction, the slim
model through TFLite float32) at 32x32. The heavy families, and the 2-step
search of every family, are covered by that script (docs/applications.md).
"""

import keras
import numpy as np
import pytest

from benchmarks import applications
from tests.helpers import randomize_batch_norm

CHEAP = ["MobileNet", "MobileNetV3Small", "EfficientNetB0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CHEAP)
def test_family_is_exact_costed_as_predicted_and_converts_to_tflite(name):
    row = applications.Family(name, 32, stages=("gates", "full", "subnet", "tflite"), log=lambda m: None).run()
    assert "error" not in row, row["error"]
    assert row["full_exact"], row["full_diff"]
    assert row["subnet_exact"], row["subnet_diff"]
    assert row["subnet_macs"] == row["predicted_macs"] < row["full_macs"]  # a real sub-network, costed right
    assert row["subnet_params"] == row["predicted_params"]
    assert row["tflite_ok"] and row["tflite_bytes"] > 0, row["tflite_diff"]
    assert row["prunable"] >= applications.LOW_SHARE


def test_batch_norms_without_scale_get_random_statistics_too():  # InceptionV3's and InceptionResNetV2's
    inputs = keras.Input((4, 4, 3))
    bn = keras.layers.BatchNormalization(scale=False, center=False)
    model = keras.Model(inputs, bn(inputs))
    randomize_batch_norm(model, np.random.default_rng(0))
    assert [w.name for w in bn.weights] == ["moving_mean", "moving_variance"]
    assert not np.allclose(bn.moving_mean.numpy(), 0) and not np.allclose(bn.moving_variance.numpy(), 1)
