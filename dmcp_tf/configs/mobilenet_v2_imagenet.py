"""The paper's MobileNetV2 setting: the 1.5x supernet (672.8M MACs) searched on ImageNet.

`--config=configs/mobilenet_v2_imagenet.py:210M` (also 300M, 97M, 59M; default 210M).
Hyper-parameters of the authors (spec, section 5): 40 search epochs, half warm-up,
SGD Nesterov 0.9, lr 0.2 cosine, weight decay 4e-5, label smoothing 0.1; the
architecture lr 0.5 cosine to 0.1; the pruned network trained 250 epochs from
scratch. The batch is the authors' 64 per GPU on 8 GPUs.
Data: `--config.data.data_dir=/path` holding TFDS's imagenet2012 (manual download).
"""

from dmcp_tf.config import base_config


def get_config(budget="210M"):
    config = base_config()
    config.name = f"mobilenet_v2_imagenet_{budget}"
    config.data.name = "imagenet2012"
    config.data.image_size = 224
    config.data.batch_size = 512
    config.model.name = "mobilenet_v2"
    config.model.options = {"width_multiplier": 1.5}
    config.search.budget = budget
    config.search.epochs = 40
    config.search.learning_rate = 0.2
    config.search.warmup_epochs = 1.0
    config.search.weight_decay = 4e-5
    config.search.label_smoothing = 0.1
    config.sample.calibration_batches = 40
    config.retrain.from_scratch = True
    config.retrain.epochs = 250
    config.retrain.learning_rate = 0.2
    config.retrain.weight_decay = 4e-5
    config.retrain.label_smoothing = 0.1
    return config
