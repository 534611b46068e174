"""ResNet-18 (CIFAR stem: 3x3, stride 1, no pooling) on CIFAR-10, pruned to half its FLOPs.

`--config=configs/cifar10_resnet18.py:0.5x`. CIFAR-10 comes from TFDS (network, or
a prepared `--config.data.data_dir`).
"""

from dmcp_tf.configs.base import base_config


def get_config(budget="0.5x"):
    config = base_config()
    config.name = f"cifar10_resnet18_{budget}"
    config.data.name = "cifar10"
    config.model.name = "resnet18"
    config.model.options = {"stem_kernel": 3, "stem_stride": 1, "stem_pool": False}
    config.search.budget = budget
    config.search.init = "budget"  # short searches start on the budget (docs/benchmarks.md, section 3)
    config.sample.fit_to_budget = True  # the structure spends the whole budget (configs/fashion_mnist.py)
    config.search.epochs = 60
    config.search.learning_rate = 0.1
    config.search.weight_decay = 5e-4
    config.retrain.epochs = 100
    config.retrain.learning_rate = 0.1
    config.retrain.weight_decay = 5e-4
    return config
