"""The user's data for `dmcp_tf.prune`: whatever `model.fit` accepts, as batches of images and integer labels.

`Batches.read` takes a `tf.data.Dataset` of `(images, labels)` (batched or not),
a `keras.utils.PyDataset`, or an `(x, y)` tuple of arrays, and checks the labels
against the model's outputs before anything trains: integer class indices or
one-hot rows, one class per model output. Inside, labels are integer class
indices (what the search's losses read); `one_hot` remembers the user's kind, so
the pruned model is compiled with the loss the user's labels need.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

BATCH_SIZE = 32  # arrays and unbatched datasets: Keras' `fit` default
CHECKED_BATCHES = 20  # batches whose labels are checked when the data set is not read whole anyway


@dataclasses.dataclass
class Batches:
    """One pass over the user's data as `(images, integer labels)` batches.

    Attributes:
        dataset: a finite `tf.data.Dataset` of one pass (`stream()` repeats it).
        steps: batches in one pass.
        one_hot: whether the user's labels were one-hot rows.
    """

    dataset: tf.data.Dataset
    steps: int
    one_hot: bool

    @classmethod
    def read(cls, data, model, *, what="train_data", steps_per_epoch=None, shuffle=True, seed=0, every_class=True):
        """Reads `data` for `model` (one image input, one output of a unit per class) and checks its labels.

        Args:
            data: a `tf.data.Dataset` of `(images, labels)`, a `keras.utils.PyDataset`,
                or an `(x, y)` tuple of arrays.
            model: the classifier the data is for.
            what: the argument's name, for messages.
            steps_per_epoch: batches per pass, for a dataset that repeats forever.
            shuffle: shuffle arrays every pass (a dataset keeps its own order).
            seed: the shuffle's seed.
            every_class: arrays must hold labels of every class of the model (training data).

        Raises:
            ValueError: the data is none of those kinds, its images do not fit the model's
                input, or its labels do not fit the model's classes (the message says which).
        """
        classes, rank = model.outputs[0].shape[-1], len(model.inputs[0].shape)
        dataset, labels = _as_dataset(data, what, shuffle, seed)
        spec = dataset.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise ValueError(f"{what} must give (images, labels) pairs; its elements are {spec}.")
        if spec[0].shape.rank == rank - 1:  # unbatched examples
            dataset = dataset.batch(BATCH_SIZE)
            spec = dataset.element_spec
        if spec[0].shape.rank != rank or not spec[0].shape[1:].is_compatible_with(model.inputs[0].shape[1:]):
            raise ValueError(f"{what}'s images have shape {spec[0].shape}, the model's input "
                             f"{tuple(model.inputs[0].shape)}: give batches of images of the model's input size.")
        one_hot = spec[1].shape.rank == 2 and spec[1].shape[-1] not in (1, None)
        if one_hot and spec[1].shape[-1] != classes:
            raise ValueError(f"{what}'s one-hot labels have {spec[1].shape[-1]} classes but the model has {classes} "
                             "outputs: give labels of the model's classes.")
        dataset = dataset.map(lambda x, y, *_: (x, _class_index(y, one_hot)))
        steps = _steps(dataset, what, steps_per_epoch)
        every_class = every_class and labels is not None  # only arrays are known whole without reading them
        if labels is None:  # the labels of the first batches, or of all when the length must be counted
            labels = [y.numpy() for _, y in (dataset if steps is None else dataset.take(CHECKED_BATCHES))]
            steps = len(labels) if steps is None else steps
        else:
            labels = [np.argmax(labels, axis=-1) if one_hot else labels]
        if steps == 0:
            raise ValueError(f"{what} is empty.")
        _check_labels(np.concatenate([np.reshape(y, -1) for y in labels]), classes, what, every_class)
        return cls(dataset.take(steps), steps, one_hot)

    def stream(self):
        """The batches repeated without end (fit with `steps_per_epoch=self.steps`)."""
        return self.dataset.repeat()

    def first(self, count):
        """The first `count` batches (batch-norm calibration)."""
        return self.dataset.take(count)


def _as_dataset(data, what, shuffle, seed):
    """`data` as a `tf.data.Dataset`, and its labels if they are at hand (arrays), else None."""
    if isinstance(data, tf.data.Dataset):
        return data, None
    if isinstance(data, keras.utils.PyDataset):
        return _from_py_dataset(data, what), None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (np.asarray(part) for part in data)
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} images but {len(y)} labels.")
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(BATCH_SIZE), y
    raise ValueError(f"{what} must be a tf.data.Dataset of (images, labels), a keras.utils.PyDataset or an "
                     f"(x, y) tuple of arrays; got {type(data).__name__}.")


def _from_py_dataset(data, what):
    if data.num_batches is None:
        raise ValueError(f"{what} is a PyDataset without a length (num_batches): give one of finite length.")
    first = data[0]
    spec = tuple(tf.TensorSpec((None,) + np.shape(part)[1:], tf.as_dtype(np.asarray(part).dtype))
                 for part in first[:2])

    def batches():
        for i in range(data.num_batches):
            batch = data[i]
            yield batch[0], batch[1]
        data.on_epoch_end()

    return tf.data.Dataset.from_generator(batches, output_signature=spec).apply(
        tf.data.experimental.assert_cardinality(data.num_batches))


def _class_index(labels, one_hot):
    if one_hot:
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    return tf.cast(tf.reshape(labels, (-1,)), tf.int32)


def _steps(dataset, what, steps_per_epoch):
    cardinality = int(dataset.cardinality())
    if steps_per_epoch:
        return int(steps_per_epoch)
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{what} repeats without end: pass steps_per_epoch (the batches of one pass).")
    return cardinality if cardinality >= 0 else None


def _check_labels(labels, classes, what, every_class):
    """Checks class indices `labels` against the model's `classes` outputs (`every_class`: all must occur)."""
    smallest, largest = int(labels.min()), int(labels.max())
    if smallest < 0 or largest >= classes:
        raise ValueError(f"{what} has labels from {smallest} to {largest}, out of range for the model's {classes} "
                         f"outputs (class indices 0 to {classes - 1}): give labels of the model's classes.")
    if every_class and largest < classes - 1:
        raise ValueError(f"{what}'s labels name {largest + 1} classes (0 to {largest}) but the model has {classes} "
                         "outputs: the data's class count differs from the model's.")


def top1(model, batches):
    """Top-1 accuracy of `model` on `batches` (a `Batches`), inference mode; the model is not compiled or changed."""
    correct = total = 0
    for x, y in batches.dataset:
        predicted = np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)
        correct += int(np.sum(predicted == y.numpy()))
        total += int(y.shape[0])
    return correct / total
