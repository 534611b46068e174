"""What a data set module gives the pipeline (`Source`), and what several of them share."""

import dataclasses
from typing import Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from dmcp_tf.data import crops
from dmcp_tf.data.errors import DataError


@dataclasses.dataclass
class Source:
    """Raw splits of one data set and how to crop them.

    Attributes:
        train, test: unbatched `(image uint8 HWC, integer label)` datasets.
        num_classes: number of labels.
        input_shape: (H, W, C) after cropping.
        mean, std: per-channel normalization on the [0, 1] scale.
        random_crop: `(image, seed) -> image` of `input_shape`, training only.
        center_crop: `image -> image` of `input_shape`, deterministic.
    """

    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple
    mean: tuple
    std: tuple
    random_crop: Callable
    center_crop: Callable


def tfds_load(name, data_dir, splits, hint, **kwargs):
    """`tfds.load` of supervised `splits`, wrapping any failure in a DataError with `hint`."""
    try:
        return tfds.load(name, split=list(splits), data_dir=data_dir, as_supervised=True, **kwargs)
    except Exception as e:  # TFDS raises many types (network, missing files, ...).
        raise DataError(f"Could not load TFDS data set {name!r}: {e}. {hint}") from e


def native_size(name, image_size, size):
    """Rejects an `image_size` that differs from a fixed-size data set's `size`."""
    if image_size not in (None, size):
        raise DataError(
            f"{name} images are {size}x{size}; image_size={image_size} is not supported for it. "
            "Leave image_size unset."
        )


def imagenet_shape(image_size):
    """(H, W, C) of ImageNet-style preprocessing at `image_size` (default 224)."""
    size = image_size or 224
    return (size, size, 3)


def imagenet_style(train, test, num_classes, image_size):
    """A source with ImageNet crops and normalization at `image_size` (default 224)."""
    shape = imagenet_shape(image_size)
    return Source(
        train=train,
        test=test,
        num_classes=num_classes,
        input_shape=shape,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        random_crop=crops.random_resized_crop(shape[0]),
        center_crop=crops.resize_center_crop(shape[0]),
    )
