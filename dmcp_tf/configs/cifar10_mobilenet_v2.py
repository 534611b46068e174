"""MobileNetV2 (1.0x, stride-1 stem) on CIFAR-10, pruned to a fraction of its FLOPs.

`--config=configs/cifar10_mobilenet_v2.py:0.5x`.
"""

from dmcp_tf.configs.base import base_config


def get_config(budget="0.5x"):
    config = base_config()
    config.name = f"cifar10_mobilenet_v2_{budget}"
    config.data.name = "cifar10"
    config.model.name = "mobilenet_v2"
    config.model.options = {"width_multiplier": 1.0, "stem_stride": 1}
    config.search.budget = budget
    config.search.init = "budget"  # short searches start on the budget (docs/benchmarks.md, section 3)
    config.sample.fit_to_budget = True  # the structure spends the whole budget (configs/fashion_mnist.py)
    config.search.epochs = 60
    config.search.learning_rate = 0.1
    config.search.weight_decay = 4e-5
    config.retrain.epochs = 100
    config.retrain.learning_rate = 0.1
    config.retrain.weight_decay = 4e-5
    return config
