"""Fashion-MNIST: the Debian package's IDX files, a folder of them, or TFDS; 28x28x1, 10 classes."""

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dmcp_tf.data import crops
from dmcp_tf.data.errors import DataError
from dmcp_tf.data.idx import read_idx
from dmcp_tf.data.source import Source, tfds_load

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = 10

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_ALL_FILES = _FILES["train"] + _FILES["test"]


def _read_split(data_dir, split):
    """Reads one split (`train` or `test`) of Fashion-MNIST IDX files from `data_dir`."""
    image_file, label_file = _FILES[split]
    for file in (image_file, label_file):
        if not os.path.isfile(os.path.join(data_dir, file)):
            raise DataError(
                f"Fashion-MNIST file {file} is missing from {data_dir}. Put the four files "
                f"{', '.join(_ALL_FILES)} there (as shipped by "
                f"the Debian package `dataset-fashion-mnist` in {DEBIAN_FASHION_MNIST_DIR}), "
                "or drop --data_dir to use the installed copy or TFDS."
            )
    images = read_idx(os.path.join(data_dir, image_file), ndim=3)
    labels = read_idx(os.path.join(data_dir, label_file), ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {data_dir} do not match: images {images.shape}, "
            f"labels {labels.shape}; expected (N, 28, 28) images and N labels. Replace them "
            "with an intact copy."
        )
    return images[..., None], labels.astype(np.int64)


def load_fashion_mnist(data_dir=None):
    """Loads Fashion-MNIST as numpy arrays.

    Looks in `data_dir` if given, else in `DEBIAN_FASHION_MNIST_DIR`, else asks TFDS.

    Args:
        data_dir: folder holding the four gzipped IDX files, or None.

    Returns:
        `((x_train, y_train), (x_test, y_test))`; x uint8 (N, 28, 28, 1), y int64 (N,).

    Raises:
        DataError: the data is missing, incomplete or corrupt.
    """
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(
            f"Fashion-MNIST data_dir {data_dir} does not exist. Pass --data_dir pointing to a "
            "folder with the gzipped IDX files, or omit it to use the Debian package "
            "`dataset-fashion-mnist` or TFDS."
        )
    if data_dir is None and all(os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST_DIR, f)) for f in _ALL_FILES):
        data_dir = DEBIAN_FASHION_MNIST_DIR
    if data_dir is not None:
        return tuple(_read_split(data_dir, split) for split in ("train", "test"))
    hint = (
        "Install the files with `apt-get install dataset-fashion-mnist`, pass --data_dir "
        "pointing to a folder with the gzipped IDX files, or allow TFDS to download "
        "`fashion_mnist` (needs network)."
    )
    splits = tfds_load("fashion_mnist", None, ("train", "test"), hint, batch_size=-1)
    return tuple(tuple(tfds.as_numpy(split)) for split in splits)


def shape(image_size):
    """28x28x1 as stored, or RGB at `image_size`."""
    return (28, 28, 1) if image_size in (None, 28) else (image_size, image_size, 3)


def source(data_dir, image_size):
    """Fashion-MNIST from IDX files or TFDS: 28x28x1, pad-2 crop + flip.

    With an `image_size`, bilinear RGB copies at that side (keras.applications
    networks take 3 channels and at least 32x32), resized once in memory.
    """
    train, test = load_fashion_mnist(data_dir)
    crop_pad = 2
    if image_size not in (None, 28):
        train, test = ((_resized_rgb(x, image_size), y) for x, y in (train, test))
        crop_pad = max(2, image_size // 14)
    input_shape = shape(image_size)
    return Source(
        train=tf.data.Dataset.from_tensor_slices(train),
        test=tf.data.Dataset.from_tensor_slices(test),
        num_classes=CLASSES,
        input_shape=input_shape,
        mean=(0.2860,) * input_shape[-1],
        std=(0.3530,) * input_shape[-1],
        random_crop=crops.pad_random_crop(crop_pad),
        center_crop=tf.identity,
    )


def _resized_rgb(images, size, chunk=10000):
    """uint8 (N, H, W, 1) -> uint8 (N, size, size, 3), bilinear, in chunks (bounded memory)."""
    if size < 8:
        raise DataError(f"fashion_mnist image_size={size} is too small; give 28 (native) or a side of 8 or more.")
    parts = [tf.cast(tf.round(tf.image.resize(tf.cast(images[i:i + chunk], tf.float32), (size, size))), tf.uint8)
             for i in range(0, len(images), chunk)]
    return np.repeat(tf.concat(parts, 0).numpy(), 3, axis=-1)
