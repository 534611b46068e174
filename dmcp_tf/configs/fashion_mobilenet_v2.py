"""MobileNetV2 (0.5x, CIFAR's stride-1 stem) on Fashion-MNIST at 32x32 RGB.

`--config=configs/fashion_mobilenet_v2.py:0.25x`. The default run's recipe
(`configs/fashion_mnist.py`) on the network of `benchmarks/accuracy.py
--model=mobilenet_v2` (docs/benchmarks.md, section 9): every gate on a grid of eighths
of the 0.5x widths (the narrowest stage has 8 channels), searches and retraining on
the first 12,000 training images.
"""

from dmcp_tf.configs import fashion_mnist


def get_config(budget="0.25x"):
    config = fashion_mnist.get_config()
    config.name = f"fashion_mobilenet_v2_{budget}"
    config.data.image_size = 32
    config.data.train_limit = 12000
    config.model.name = "mobilenet_v2"
    config.model.options = {"width_multiplier": 0.5, "stem_stride": 1, "min_width": 0.0625, "width_offset": 0.0625}
    config.search.budget = budget
    config.search.steps_per_epoch = 0  # every image of the epoch
    return config
