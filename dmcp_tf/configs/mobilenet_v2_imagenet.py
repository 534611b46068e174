"""The paper's MobileNetV2 setting: the 1.5x supernet (672.8M MACs) searched on ImageNet.

`--config=configs/mobilenet_v2_imagenet.py:210M` (also 300M, 97M, 59M; default 210M).
Hyper-parameters of the authors (spec, section 5, and their `config/mbv2/*.yaml`):
40 search epochs, half warm-up; SGD Nesterov 0.9, learning rate warmed up from 0.2
to 0.5 over 1000 iterations (0.4 epoch at batch 512), cosine to a floor of 0.08;
weight decay 4e-5, label smoothing 0.1 (in the architecture stage too); the
architecture lr 0.5 cosine to 0.1; the chains start at alpha = 0; kaiming-normal
(fan-out) initialisation; the pruned network trained 250 epochs from scratch with
coupled L2 weight decay (PyTorch's). The batch is the authors' 64 per GPU on 8 GPUs.
Data: `--config.data.data_dir=/path` holding TFDS's imagenet2012 (manual download).
"""

from dmcp_tf.configs.base import base_config


def get_config(budget="210M"):
    config = base_config()
    config.name = f"mobilenet_v2_imagenet_{budget}"
    config.data.name = "imagenet2012"
    config.data.image_size = 224
    config.data.batch_size = 512
    config.model.name = "mobilenet_v2"
    config.model.options = {"width_multiplier": 1.5, "kernel_initializer": "kaiming_fan_out"}
    config.search.budget = budget
    config.search.epochs = 40
    config.search.init = "authors"
    config.search.learning_rate = 0.5
    config.search.warmup_start_learning_rate = 0.2
    config.search.warmup_epochs = 0.4
    config.search.min_learning_rate = 0.08
    config.search.weight_decay = 4e-5
    config.search.label_smoothing = 0.1
    config.search.arch_label_smoothing = 0.1
    config.sample.calibration_batches = 40
    config.retrain.from_scratch = True
    config.retrain.epochs = 250
    config.retrain.learning_rate = 0.2
    config.retrain.weight_decay = 4e-5
    config.retrain.weight_decay_type = "coupled"
    config.retrain.label_smoothing = 0.1
    return config
