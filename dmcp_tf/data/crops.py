"""The crops a data set's `Source` chooses: random ones for training, deterministic ones for testing."""

import tensorflow as tf

_CENTER_CROP_FRACTION = 0.875


def pad_random_crop(pad):
    """Returns a crop that zero-pads by `pad` pixels and randomly crops back to size."""

    def crop(image, seed):
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        return tf.image.stateless_random_crop(padded, tf.shape(image), seed)

    return crop


def random_resized_crop(size):
    """Returns an Inception-style crop: random area 8-100 %, aspect 3/4-4/3, resized to `size`."""

    def crop(image, seed):
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            area_range=(0.08, 1.0),
            aspect_ratio_range=(3 / 4, 4 / 3),
            max_attempts=10,
        )
        return tf.image.resize(tf.slice(image, begin, extent), [size, size], antialias=True)

    return crop


def resize_center_crop(size):
    """Returns a crop that resizes the shorter side to `size / 0.875` and center-crops `size`."""
    shorter = round(size / _CENTER_CROP_FRACTION)

    def crop(image):
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        new_hw = tf.cast(tf.round(hw * shorter / tf.reduce_min(hw)), tf.int32)
        image = tf.image.resize(image, new_hw, antialias=True)
        return tf.image.resize_with_crop_or_pad(image, size, size)

    return crop
