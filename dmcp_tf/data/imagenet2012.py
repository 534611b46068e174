"""ImageNet-1k from TFDS, prepared from the manually downloaded tar files; 1000 classes."""

import os

import tensorflow_datasets as tfds

from dmcp_tf.data.errors import DataError
from dmcp_tf.data.source import imagenet_style, tfds_load

CLASSES = 1000


def source(data_dir, image_size):
    """ImageNet-1k from TFDS, prepared from the manually downloaded tar files in `data_dir`."""
    hint = (
        "ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar in --data_dir (or point it to an already prepared TFDS folder)."
    )
    if data_dir is None or not os.path.isdir(data_dir):
        raise DataError(f"imagenet2012 needs an existing --data_dir (got {data_dir}). {hint}")
    config = tfds.download.DownloadConfig(manual_dir=data_dir)
    train, test = tfds_load(
        "imagenet2012",
        data_dir,
        ("train", "validation"),
        hint,
        download_and_prepare_kwargs={"download_config": config},
    )
    return imagenet_style(train, test, CLASSES, image_size)
