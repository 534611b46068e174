"""The input pipeline every data set goes through.

`build` turns a data set's `Source` (raw splits and crops) into a `DataBundle` of
batched `tf.data` pipelines yielding `(images float32 NHWC normalized, labels int32)`:
take the first N examples, shuffle and augment the training split, crop/resize,
normalize, batch, prefetch.
"""

import dataclasses
import functools
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from dmcp_tf.data.errors import DataError

_SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass
class DataBundle:
    """Batched input pipelines of one data set, for the GLOBAL batch size.

    Attributes:
        train: one epoch of shuffled, augmented, full batches, in a new order
            every time it is iterated (for a `fit` over several epochs).
        test: deterministic order, not augmented, last batch may be partial.
        num_classes: number of labels.
        input_shape: (H, W, C) of one image.
        train_examples: examples per training epoch (before dropping the remainder).
        test_examples: examples in `test`.
        name: data set name.
        train_stream: `(start, stop) -> Dataset`: global batches `start` to
            `stop` (exclusive) of the training stream. Epoch e's order and
            augmentation depend on (seed, e) alone, so these are exactly the
            batches an uninterrupted run sees there, whatever ran before in the
            process; reaching `start` skips raw examples of one epoch at most.
        train_unaugmented: training split in file order, test-time preprocessing,
            full batches; used by `calibration_batches` (falls back to `train`).
    """

    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple
    train_examples: int
    test_examples: int
    name: str
    train_stream: Callable[[int, int], tf.data.Dataset] = dataclasses.field(repr=False)
    train_unaugmented: Optional[tf.data.Dataset] = dataclasses.field(default=None, repr=False)

    def calibration_batches(self, n, augmented=False):
        """Returns `n` batches of training `(x, y)` for batch-norm calibration.

        Args:
            n: number of batches.
            augmented: False: the first `n` in file order, preprocessed as test
                images (a sub-network's statistics before it trains). True: the
                first `n` batches of the training stream, augmented as training
                sees them: the statistics a trained network's moving averages
                estimate (with a random-resized crop the two differ enough to
                cost a trained network a point or more of top-1).
        """
        if augmented:
            return self.train_stream(0, n)
        source = self.train if self.train_unaugmented is None else self.train_unaugmented
        return source.take(n)

    def representative_images(self, n):
        """Returns the first `n` preprocessed test images as float32 numpy (N, H, W, C).

        Raises:
            DataError: the test split has fewer than `n` images.
        """
        images = [x for x, _ in self.test.unbatch().take(n).as_numpy_iterator()]
        if len(images) < n:
            raise DataError(
                f"Asked for {n} representative images but the {self.name} test split has only "
                f"{len(images)}. Ask for fewer or raise test_limit."
            )
        return np.stack(images).astype(np.float32)


def _batches(ds, fn, batch_size, drop_remainder):
    """Maps `fn` in parallel (keeping order), batches and prefetches."""
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# How images are scaled (`load(preprocess=...)`): "normalize" by the data set's mean and standard
# deviation, or "raw" pixel values (0 to 255, float32) for a model with its own preprocessing layers.
PREPROCESSING = ("normalize", "raw")


def build(name, source, *, batch_size, train_limit, test_limit, augment, seed, preprocess="normalize"):
    """Turns a `Source` into a `DataBundle` (shared by all data sets)."""
    train = source.train if train_limit is None else source.train.take(train_limit)
    test = source.test if test_limit is None else source.test.take(test_limit)
    train_examples, test_examples = int(train.cardinality()), int(test.cardinality())
    if train_examples < batch_size:
        raise DataError(
            f"{name} has {train_examples} training examples (train_limit={train_limit}), fewer "
            f"than one global batch of {batch_size}; training would have no full batch. Raise "
            "train_limit or lower batch_size."
        )
    if preprocess not in PREPROCESSING:
        raise DataError(f"Unknown preprocessing {preprocess!r}; choose one of {', '.join(PREPROCESSING)}.")
    mean, std = tf.constant(source.mean), tf.constant(source.std)

    def normalize(image, label):
        image = tf.cast(image, tf.float32)
        return (image if preprocess == "raw" else (image / 255.0 - mean) / std), tf.cast(label, tf.int32)

    def plain(image, label):
        return normalize(source.center_crop(image), label)

    def augmented(example, counter):
        # Example i of epoch e (counter e * train_examples + i): seeds fold_in((seed, e), i).
        epoch_key = tf.stack([tf.constant(seed, tf.int64), counter // train_examples])
        seed_pair = tf.random.experimental.stateless_fold_in(epoch_key, counter % train_examples)
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
        image = source.random_crop(example[0], crop_seed)
        return normalize(tf.image.stateless_random_flip_left_right(image, flip_seed), example[1])

    def batched(examples):
        """(example, augmentation counter) -> augmented (or plain) full batches."""
        preprocess = augmented if augment else lambda example, _: plain(*example)
        return _batches(examples, preprocess, batch_size, True)

    buffer = min(train_examples, _SHUFFLE_BUFFER)
    batches_per_epoch = train_examples // batch_size

    def epoch_examples(epoch):
        """Epoch `epoch` of the stream: its order and augmentation depend on (seed, epoch) only."""
        shuffle_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        shuffled = train.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        counters = tf.data.Dataset.range(epoch * train_examples, (epoch + 1) * train_examples)
        return tf.data.Dataset.zip(shuffled, counters).take(batches_per_epoch * batch_size)

    def train_stream(start, stop):
        if not 0 <= start < stop:
            raise ValueError(f"train_stream needs 0 <= start < stop, got start={start}, stop={stop}.")
        first, last = start // batches_per_epoch, (stop - 1) // batches_per_epoch
        examples = functools.reduce(tf.data.Dataset.concatenate, map(epoch_examples, range(first, last + 1)))
        offset = start - first * batches_per_epoch
        return batched(examples.skip(offset * batch_size).take((stop - start) * batch_size))

    reshuffled = train.shuffle(buffer, seed=seed)  # a new order every iteration
    fresh_counters = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return DataBundle(
        train=batched(tf.data.Dataset.zip(reshuffled, fresh_counters)),
        test=_batches(test, plain, batch_size, False),
        num_classes=source.num_classes,
        input_shape=source.input_shape,
        train_examples=train_examples,
        test_examples=test_examples,
        name=name,
        train_stream=train_stream,
        train_unaugmented=_batches(train, plain, batch_size, True),
    )
