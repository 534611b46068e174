"""The paper's ResNet-50 setting (4.09G MACs supernet) searched on ImageNet.

`--config=configs/resnet50_imagenet.py:2.8G` (the authors also published 2.2G,
1.1G and 279M; default 2.8G). Spec settings: weight decay 1e-4, width grid
(0.1, 1.0, 0.1), 40 search epochs with half warm-up; the authors' `config/res50`:
learning rate 0.5 without warm-up, cosine to a floor of 0.08; architecture lr 0.5
cosine to 0.1; chains starting at alpha = 0; kaiming-normal (fan-out)
initialisation; coupled (PyTorch) L2 weight decay in retraining. The authors used 32 GPUs; the batch here is 64 per GPU on 16.
"""

from dmcp_tf.configs.base import base_config


def get_config(budget="2.8G"):
    config = base_config()
    config.name = f"resnet50_imagenet_{budget}"
    config.data.name = "imagenet2012"
    config.data.image_size = 224
    config.data.batch_size = 1024
    config.model.name = "resnet50"
    config.model.options = {"kernel_initializer": "kaiming_fan_out"}
    config.search.budget = budget
    config.search.epochs = 40
    config.search.init = "authors"
    config.search.learning_rate = 0.5
    config.search.min_learning_rate = 0.08
    config.search.weight_decay = 1e-4
    config.sample.calibration_batches = 40
    config.retrain.from_scratch = True
    config.retrain.epochs = 100
    config.retrain.learning_rate = 0.4
    config.retrain.weight_decay = 1e-4
    config.retrain.weight_decay_type = "coupled"
    return config
