"""CIFAR-10 from TFDS: 32x32x3, 10 classes."""

import tensorflow as tf

from dmcp_tf.data import crops
from dmcp_tf.data.source import Source, native_size, tfds_load

CLASSES = 10


def shape(image_size):
    """32x32x3 whatever `image_size` (`source` rejects another size)."""
    return (32, 32, 3)


def source(data_dir, image_size):
    """CIFAR-10 from TFDS: 32x32x3, pad-4 crop + flip."""
    native_size("cifar10", image_size, 32)
    hint = "TFDS needs network access to download cifar10, or a data_dir where it was prepared."
    train, test = tfds_load("cifar10", data_dir, ("train", "test"), hint)
    return Source(
        train=train,
        test=test,
        num_classes=CLASSES,
        input_shape=shape(image_size),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        random_crop=crops.pad_random_crop(4),
        center_crop=tf.identity,
    )
