"""Data sets and input pipelines.

`load(name, batch_size=...)` returns a `DataBundle` of batched `tf.data` pipelines
yielding `(images float32 NHWC normalized, labels int32)`. Every data set goes
through the same plumbing (`_build`): take the first N examples, shuffle and
augment the training split, crop/resize, normalize, batch, prefetch. A data set
only describes its raw splits and crops (`_Source`).
"""

import dataclasses
import functools
import gzip
import os
import warnings
import zlib
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_MNIST_ALL_FILES = _FASHION_MNIST_FILES["train"] + _FASHION_MNIST_FILES["test"]
_SHUFFLE_BUFFER = 10_000
_CENTER_CROP_FRACTION = 0.875


class DataError(ValueError):
    """Missing or invalid data; the message says what was wrong and how to fix it."""


def _read_idx(path, ndim):
    """Reads a gzipped unsigned-byte IDX file with `ndim` dimensions.

    Args:
        path: the `.gz` file.
        ndim: expected number of dimensions (3 for images, 1 for labels).

    Returns:
        A read-only uint8 numpy array of the stored shape.

    Raises:
        DataError: the file is not valid gzip, has the wrong magic number or a
            size that does not match its header.
    """
    fix = "Replace it with an intact copy (for example reinstall `dataset-fashion-mnist`)."
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a damaged stream raises zlib.error
        raise DataError(f"{path} is not a readable gzip file ({e}). {fix}") from e
    header = 4 * (ndim + 1)
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if len(data) < header or magic != 0x800 + ndim:
        raise DataError(
            f"{path} has a bad IDX magic number {magic} (expected {0x800 + ndim} for a "
            f"{ndim}-D unsigned-byte file): it is corrupt or not the right file. {fix}"
        )
    shape = [int.from_bytes(data[4 * i : 4 * i + 4], "big") for i in range(1, ndim + 1)]
    if len(data) != header + int(np.prod(shape)):
        raise DataError(
            f"{path} is truncated or corrupt: its header promises shape {shape} "
            f"({header + int(np.prod(shape))} bytes) but it holds {len(data)} bytes. {fix}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _read_fashion_mnist_split(data_dir, split):
    """Reads one split (`train` or `test`) of Fashion-MNIST IDX files from `data_dir`."""
    image_file, label_file = _FASHION_MNIST_FILES[split]
    for file in (image_file, label_file):
        if not os.path.isfile(os.path.join(data_dir, file)):
            raise DataError(
                f"Fashion-MNIST file {file} is missing from {data_dir}. Put the four files "
                f"{', '.join(_FASHION_MNIST_ALL_FILES)} there (as shipped by "
                f"the Debian package `dataset-fashion-mnist` in {DEBIAN_FASHION_MNIST_DIR}), "
                "or drop --data_dir to use the installed copy or TFDS."
            )
    images = _read_idx(os.path.join(data_dir, image_file), ndim=3)
    labels = _read_idx(os.path.join(data_dir, label_file), ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {data_dir} do not match: images {images.shape}, "
            f"labels {labels.shape}; expected (N, 28, 28) images and N labels. Replace them "
            "with an intact copy."
        )
    return images[..., None], labels.astype(np.int64)


def _tfds_load(name, data_dir, splits, hint, **kwargs):
    """`tfds.load` of supervised `splits`, wrapping any failure in a DataError with `hint`."""
    try:
        return tfds.load(name, split=list(splits), data_dir=data_dir, as_supervised=True, **kwargs)
    except Exception as e:  # TFDS raises many types (network, missing files, ...).
        raise DataError(f"Could not load TFDS data set {name!r}: {e}. {hint}") from e


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
    if data_dir is None and all(
        os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST_DIR, f)) for f in _FASHION_MNIST_ALL_FILES
    ):
        data_dir = DEBIAN_FASHION_MNIST_DIR
    if data_dir is not None:
        return tuple(_read_fashion_mnist_split(data_dir, split) for split in ("train", "test"))
    hint = (
        "Install the files with `apt-get install dataset-fashion-mnist`, pass --data_dir "
        "pointing to a folder with the gzipped IDX files, or allow TFDS to download "
        "`fashion_mnist` (needs network)."
    )
    splits = _tfds_load("fashion_mnist", None, ("train", "test"), hint, batch_size=-1)
    return tuple(tuple(tfds.as_numpy(split)) for split in splits)


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

    def calibration_batches(self, n):
        """Returns the first `n` batches of un-augmented training `(x, y)` (for BN calibration)."""
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


@dataclasses.dataclass
class _Source:
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


def _pad_random_crop(pad):
    """Returns a crop that zero-pads by `pad` pixels and randomly crops back to size."""

    def crop(image, seed):
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        return tf.image.stateless_random_crop(padded, tf.shape(image), seed)

    return crop


def _random_resized_crop(size):
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


def _resize_center_crop(size):
    """Returns a crop that resizes the shorter side to `size / 0.875` and center-crops `size`."""
    shorter = round(size / _CENTER_CROP_FRACTION)

    def crop(image):
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        new_hw = tf.cast(tf.round(hw * shorter / tf.reduce_min(hw)), tf.int32)
        image = tf.image.resize(image, new_hw, antialias=True)
        return tf.image.resize_with_crop_or_pad(image, size, size)

    return crop


def _native_size(name, image_size, size):
    """Rejects an `image_size` that differs from a fixed-size data set's `size`."""
    if image_size not in (None, size):
        raise DataError(
            f"{name} images are {size}x{size}; image_size={image_size} is not supported for it. "
            "Leave image_size unset."
        )


def _fashion_mnist(data_dir, image_size):
    """Fashion-MNIST from IDX files or TFDS: 28x28x1, pad-2 crop + flip.

    With an `image_size`, bilinear RGB copies at that side (keras.applications
    networks take 3 channels and at least 32x32), resized once in memory.
    """
    train, test = load_fashion_mnist(data_dir)
    shape, crop_pad = (28, 28, 1), 2
    if image_size not in (None, 28):
        train, test = ((_resized_rgb(x, image_size), y) for x, y in (train, test))
        shape, crop_pad = (image_size, image_size, 3), max(2, image_size // 14)
    return _Source(
        train=tf.data.Dataset.from_tensor_slices(train),
        test=tf.data.Dataset.from_tensor_slices(test),
        num_classes=10,
        input_shape=shape,
        mean=(0.2860,) * shape[-1],
        std=(0.3530,) * shape[-1],
        random_crop=_pad_random_crop(crop_pad),
        center_crop=tf.identity,
    )


def _resized_rgb(images, size, chunk=10000):
    """uint8 (N, H, W, 1) -> uint8 (N, size, size, 3), bilinear, in chunks (bounded memory)."""
    if size < 8:
        raise DataError(f"fashion_mnist image_size={size} is too small; give 28 (native) or a side of 8 or more.")
    parts = [tf.cast(tf.round(tf.image.resize(tf.cast(images[i:i + chunk], tf.float32), (size, size))), tf.uint8)
             for i in range(0, len(images), chunk)]
    return np.repeat(tf.concat(parts, 0).numpy(), 3, axis=-1)


def _cifar10(data_dir, image_size):
    """CIFAR-10 from TFDS: 32x32x3, pad-4 crop + flip."""
    _native_size("cifar10", image_size, 32)
    hint = "TFDS needs network access to download cifar10, or a data_dir where it was prepared."
    train, test = _tfds_load("cifar10", data_dir, ("train", "test"), hint)
    return _Source(
        train=train,
        test=test,
        num_classes=10,
        input_shape=(32, 32, 3),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        random_crop=_pad_random_crop(4),
        center_crop=tf.identity,
    )


def _imagenet_style(train, test, num_classes, image_size):
    """A source with ImageNet crops and normalization at `image_size` (default 224)."""
    size = image_size or 224
    return _Source(
        train=train,
        test=test,
        num_classes=num_classes,
        input_shape=(size, size, 3),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        random_crop=_random_resized_crop(size),
        center_crop=_resize_center_crop(size),
    )


def _imagenet2012(data_dir, image_size):
    """ImageNet-1k from TFDS, prepared from the manually downloaded tar files in `data_dir`."""
    hint = (
        "ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar in --data_dir (or point it to an already prepared TFDS folder)."
    )
    if data_dir is None or not os.path.isdir(data_dir):
        raise DataError(f"imagenet2012 needs an existing --data_dir (got {data_dir}). {hint}")
    config = tfds.download.DownloadConfig(manual_dir=data_dir)
    train, test = _tfds_load(
        "imagenet2012",
        data_dir,
        ("train", "validation"),
        hint,
        download_and_prepare_kwargs={"download_config": config},
    )
    return _imagenet_style(train, test, 1000, image_size)


def _image_folder(data_dir, image_size):
    """`data_dir/{train,test}/<class>/<image>` read with `tfds.ImageFolder`, ImageNet preprocessing."""
    layout = (
        "image_folder needs --data_dir with subfolders train/ and test/, each holding one "
        "folder of images per class."
    )
    if data_dir is None or not os.path.isdir(data_dir):
        raise DataError(f"{layout} Got data_dir={data_dir}, which does not exist.")
    unreadable = unreadable_images(data_dir)
    if unreadable:
        raise DataError(f"{data_dir} holds image files that cannot be read: {'; '.join(unreadable)}. Remove them "
                        "(or replace them with the images they should be).")
    builder = tfds.ImageFolder(data_dir)
    missing = [s for s in ("train", "test") if s not in builder.info.splits]
    if missing:
        raise DataError(f"{layout} {data_dir} has no {' or '.join(missing)} split (no images found).")
    train_classes, test_classes = (set(_class_folders(data_dir, s)) for s in ("train", "test"))
    if len(train_classes) < 2:
        raise DataError(f"{data_dir}/train has {len(train_classes)} class folder(s) with images "
                        f"({', '.join(sorted(train_classes))}); a classifier needs at least 2 classes. {layout}")
    if test_classes - train_classes:
        raise DataError(f"The test split of {data_dir} has classes without training images "
                        f"{sorted(test_classes - train_classes)}: the model cannot learn them. Add their training "
                        "images or remove them from test/.")
    absent = sorted(train_classes - test_classes)
    if absent:
        warnings.warn(f"The test split of {data_dir} has no images of the classes {absent}: their accuracy is "
                      "not measured.", stacklevel=2)
    train, test = (builder.as_dataset(split=s, as_supervised=True) for s in ("train", "test"))
    return _imagenet_style(train, test, builder.info.features["label"].num_classes, image_size)


def _class_folders(data_dir, split):
    """The class folders of a split that hold at least one file."""
    root = os.path.join(data_dir, split)
    return [c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c)) and os.listdir(os.path.join(root, c))]


_SOURCES = {
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "imagenet2012": _imagenet2012,
    "image_folder": _image_folder,
}
DATASETS = tuple(_SOURCES)


def _batches(ds, fn, batch_size, drop_remainder):
    """Maps `fn` in parallel (keeping order), batches and prefetches."""
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# How images are scaled (`load(preprocess=...)`): "normalize" by the data set's mean and standard
# deviation, or "raw" pixel values (0 to 255, float32) for a model with its own preprocessing layers.
PREPROCESSING = ("normalize", "raw")


def _build(name, source, *, batch_size, train_limit, test_limit, augment, seed, preprocess="normalize"):
    """Turns a `_Source` into a `DataBundle` (shared by all data sets)."""
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


def load(
    name,
    *,
    batch_size,
    data_dir=None,
    train_limit=None,
    test_limit=None,
    image_size=None,
    augment=True,
    seed=0,
    preprocess="normalize",
):
    """Loads a data set as batched input pipelines.

    Args:
        name: one of "fashion_mnist", "cifar10", "imagenet2012", "image_folder".
        batch_size: GLOBAL batch size (tf.distribute splits it across replicas).
        data_dir: where the data lives (see each data set); None for defaults.
        train_limit: use only the first N training examples.
        test_limit: use only the first N test examples.
        image_size: output side for imagenet2012/image_folder (default 224); for
            fashion_mnist, RGB copies at that side (default: 28x28x1 as stored).
        augment: random crop + horizontal flip on the training split.
        seed: seed for shuffling and augmentation.
        preprocess: `"normalize"` (the data set's mean and standard deviation) or
            `"raw"` (pixel values 0 to 255 as float32: a model with its own Rescaling).

    Returns:
        A `DataBundle`.

    Raises:
        DataError: unknown name, or missing/invalid data.
    """
    if name not in _SOURCES:
        raise DataError(f"Unknown data set {name!r}. Valid names: {', '.join(sorted(_SOURCES))}.")
    return _build(
        name,
        _SOURCES[name](data_dir, image_size),
        batch_size=batch_size,
        train_limit=train_limit,
        test_limit=test_limit,
        augment=augment,
        seed=seed,
        preprocess=preprocess,
    )


def _image_folder_spec(image_size):
    raise DataError(
        "An image folder's number of classes is only known from its files; --mode=macs "
        "cannot count its classifier without loading it. Use --mode=all or a fixed data set."
    )


# (input shape, classes) of each data set, known without reading it.
DATASET_SHAPES = {
    "fashion_mnist": lambda image_size: ((28, 28, 1) if image_size in (None, 28) else (image_size, image_size, 3), 10),
    "cifar10": lambda image_size: ((32, 32, 3), 10),
    "imagenet2012": lambda image_size: ((image_size or 224, image_size or 224, 3), 1000),
    "image_folder": _image_folder_spec,
}


# First bytes of the formats TensorFlow decodes (tf.io.decode_image; JPEG XL as a codestream or a container).
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"\xff\x0a",
                     b"\x00\x00\x00\x0cJXL \r\n\x87\n")
_IMAGE_FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what tfds.ImageFolder reads


def _image_files(data_dir):
    """The image files `tfds.ImageFolder` reads in `data_dir/{train,test}/<class>/`, in a fixed order."""
    for split in ("train", "test"):
        for folder, _, files in sorted(os.walk(os.path.join(data_dir, split))):
            for name in sorted(files):
                if name.lower().endswith(_IMAGE_FOLDER_EXTENSIONS):
                    yield os.path.join(folder, name)


def unreadable_images(data_dir, limit=5):
    """Up to `limit` image files of an image folder that cannot be read, each with the reason.

    Dangling links, empty files and files without read permission: found from
    their metadata (no file is opened), so it runs before every run.
    """
    found = []
    for path in _image_files(data_dir):
        if not os.path.exists(path):
            found.append(f"{path} (a link to {os.readlink(path)}, which does not exist)")
        elif os.path.getsize(path) == 0:
            found.append(f"{path} (empty)")
        elif not os.access(path, os.R_OK):
            found.append(f"{path} (no read permission)")
        if len(found) >= limit:
            break
    return found


def undecodable_images(data_dir, limit=5):
    """Files of an image folder (`data_dir/{train,test}/<class>/`) that are no image by their first bytes, or GIFs.

    TensorFlow's decoding error does not name the file; this names up to `limit`
    of them (it reads 12 bytes of each image file, so run it after a failure, not
    before every run). A GIF (under a .png or .jpg name) decodes as an animation,
    a batch of frames the pipeline cannot take. A file that starts like an image
    but is damaged later is not found.
    """
    found = []
    for path in _image_files(data_dir):
        with open(path, "rb") as f:
            head = f.read(12)
        riff_webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
        gif = head.startswith((b"GIF87a", b"GIF89a"))
        if gif or not riff_webp and not head.startswith(_IMAGE_SIGNATURES):
            found.append(path)
            if len(found) >= limit:
                return found
    return found
