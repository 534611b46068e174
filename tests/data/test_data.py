"""Tests for dmcp_tf.data (no network: TFDS is mocked or avoided)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dmcp_tf import data
from tests.helpers import FASHION_FILES, idx_bytes, write_fashion_mnist, write_gz

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
FILES = FASHION_FILES



@pytest.fixture
def fashion(tmp_path):
    """A tiny made-up Fashion-MNIST folder: 64 train and 32 test images."""
    rng = np.random.default_rng(0)
    arrays = {
        FILES[0]: rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
        FILES[1]: np.arange(64, dtype=np.uint8) % 10,
        FILES[2]: rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        FILES[3]: (np.arange(32, dtype=np.uint8) * 3) % 10,
    }
    write_fashion_mnist(tmp_path, arrays)
    return tmp_path, arrays


def _normalized(images):
    return (images.astype(np.float32)[..., None] / 255.0 - FASHION_MEAN) / FASHION_STD


def _collect(ds):
    xs, ys = zip(*ds.as_numpy_iterator())
    return np.concatenate(xs), np.concatenate(ys)


def test_load_fashion_mnist_round_trips_idx_files(fashion):
    folder, arrays = fashion
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist(str(folder))
    assert x_train.dtype == np.uint8 and x_train.shape == (64, 28, 28, 1)
    assert y_train.dtype == np.int64 and y_train.shape == (64,)
    np.testing.assert_array_equal(x_train[..., 0], arrays[FILES[0]])
    np.testing.assert_array_equal(y_train, arrays[FILES[1]])
    np.testing.assert_array_equal(x_test[..., 0], arrays[FILES[2]])
    np.testing.assert_array_equal(y_test, arrays[FILES[3]])


def test_fashion_pipeline_shapes_dtypes_and_normalization(fashion):
    folder, arrays = fashion
    bundle = data.load("fashion_mnist", data_dir=str(folder), batch_size=16, augment=False)
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("fashion_mnist", 10, (28, 28, 1))
    assert (bundle.train_examples, bundle.test_examples) == (64, 32)
    batches = list(bundle.train.as_numpy_iterator())
    assert len(batches) == 4
    for x, y in batches:
        assert x.shape == (16, 28, 28, 1) and x.dtype == np.float32
        assert y.shape == (16,) and y.dtype == np.int32
    x_test, y_test = _collect(bundle.test)
    np.testing.assert_allclose(x_test, _normalized(arrays[FILES[2]]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y_test, arrays[FILES[3]])


def test_train_is_a_seeded_shuffle_of_all_examples(fashion):
    folder, arrays = fashion
    kwargs = dict(data_dir=str(folder), batch_size=16, augment=False)
    x, y = _collect(data.load("fashion_mnist", seed=3, **kwargs).train)
    x_again, _ = _collect(data.load("fashion_mnist", seed=3, **kwargs).train)
    expected = _normalized(arrays[FILES[0]])
    order = [int(np.argmin(np.abs(expected - image).sum(axis=(1, 2, 3)))) for image in x]
    assert sorted(order) == list(range(64))
    assert order != list(range(64))
    np.testing.assert_allclose(x, expected[order], atol=1e-6)
    np.testing.assert_array_equal(y, arrays[FILES[1]][order])
    np.testing.assert_array_equal(x, x_again)


def test_train_drops_remainder_and_train_limit_works(fashion):
    folder, arrays = fashion
    bundle = data.load("fashion_mnist", data_dir=str(folder), batch_size=16, train_limit=40, augment=False)
    assert bundle.train_examples == 40
    x, y = _collect(bundle.train)
    assert [b[0].shape[0] for b in bundle.train.as_numpy_iterator()] == [16, 16]
    assert set(y) <= set(arrays[FILES[1]][:40])
    first_40 = _normalized(arrays[FILES[0]][:40])
    for image in x:
        assert np.abs(first_40 - image).sum(axis=(1, 2, 3)).min() < 1e-3


@pytest.mark.parametrize("augment", [False, True])
def test_train_stream_from_any_step_is_the_uninterrupted_stream_from_there(fashion, augment):
    folder, _ = fashion
    bundle = data.load("fashion_mnist", data_dir=str(folder), batch_size=16, train_limit=56, augment=augment, seed=1)
    batches = lambda ds, n: list(ds.take(n).as_numpy_iterator())
    uninterrupted = batches(bundle.train_stream(0, 10), 10)  # 3 full batches per epoch
    epochs = [np.concatenate([y for _, y in uninterrupted[e * 3:(e + 1) * 3]]) for e in range(3)]
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # In one process, after other iterations of the same bundle (as a resumed run
    # finishes one epoch and starts the next): nothing carries over between streams.
    batches(bundle.train, 3)
    for start in (4, 3, 7, 0):
        for (x, y), (x_ref, y_ref) in zip(batches(bundle.train_stream(start, 10), 10), uninterrupted[start:]):
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(x, x_ref)
    # Another seed, another stream.
    other = data.load("fashion_mnist", data_dir=str(folder), batch_size=16, train_limit=56, augment=augment, seed=2)
    assert not np.array_equal(batches(other.train_stream(0, 1), 1)[0][1], uninterrupted[0][1])


def test_test_split_is_deterministic_and_keeps_last_partial_batch(fashion):
    folder, _ = fashion
    bundle = data.load("fashion_mnist", data_dir=str(folder), batch_size=16, test_limit=20)
    assert bundle.test_examples == 20
    first, second = list(bundle.test.as_numpy_iterator()), list(bundle.test.as_numpy_iterator())
    assert [b[0].shape[0] for b in first] == [16, 4]
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def _is_shift_or_flip(augmented, original, pad=2):
    """True if `augmented` is `original` zero-padded by `pad`, cropped and maybe flipped."""
    padded = np.pad(original, pad)
    size = original.shape[0]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + size, dx : dx + size]
            if np.array_equal(crop, augmented) or np.array_equal(crop[:, ::-1], augmented):
                return True
    return False


def test_augmentation_shifts_and_flips_but_keeps_shape(fashion):
    folder, _ = fashion
    kwargs = dict(data_dir=str(folder), batch_size=16, seed=5)
    plain_x, plain_y = _collect(data.load("fashion_mnist", augment=False, **kwargs).train)
    bundle = data.load("fashion_mnist", augment=True, **kwargs)
    aug_x, aug_y = _collect(bundle.train)
    assert aug_x.shape == plain_x.shape == (64, 28, 28, 1)
    np.testing.assert_array_equal(aug_y, plain_y)  # same seeded shuffle
    assert not np.allclose(aug_x, plain_x)
    to_pixels = lambda x: np.rint((x[..., 0] * FASHION_STD + FASHION_MEAN) * 255).astype(int)
    assert all(_is_shift_or_flip(a, p) for a, p in zip(to_pixels(aug_x), to_pixels(plain_x)))
    second_epoch, _ = _collect(bundle.train)
    assert not np.allclose(np.sort(second_epoch, axis=0), np.sort(aug_x, axis=0))


def test_calibration_batches_and_representative_images(fashion):
    folder, arrays = fashion
    bundle = data.load("fashion_mnist", data_dir=str(folder), batch_size=16)
    calibration = list(bundle.calibration_batches(2).as_numpy_iterator())
    assert len(calibration) == 2
    np.testing.assert_allclose(calibration[0][0], _normalized(arrays[FILES[0]][:16]), atol=1e-6)
    images = bundle.representative_images(5)
    assert images.dtype == np.float32 and images.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(images, _normalized(arrays[FILES[2]][:5]), atol=1e-6)
    with pytest.raises(data.DataError, match="only 32"):
        bundle.representative_images(33)


def test_augmented_calibration_batches_are_the_first_training_batches(fashion):
    folder, _ = fashion
    bundle = data.load("fashion_mnist", data_dir=str(folder), batch_size=16, seed=3)
    first, again = (list(bundle.calibration_batches(2, augmented=True).as_numpy_iterator()) for _ in range(2))
    stream = list(bundle.train_stream(0, 2).as_numpy_iterator())
    assert len(first) == 2
    for (x, y), (x_again, y_again), (x_stream, y_stream) in zip(first, again, stream):
        np.testing.assert_array_equal(x, x_again)  # the same batches on every call
        np.testing.assert_array_equal(x, x_stream)
        np.testing.assert_array_equal(y, y_stream)
    plain = list(bundle.calibration_batches(2).as_numpy_iterator())
    assert not np.allclose(first[0][0], plain[0][0])  # augmented and shuffled, not test-time images in file order


def test_missing_data_dir(tmp_path):
    with pytest.raises(data.DataError, match="does not exist") as info:
        data.load_fashion_mnist(str(tmp_path / "nope"))
    assert "--data_dir" in str(info.value)


def test_missing_file_is_named(fashion):
    folder, _ = fashion
    os.remove(folder / FILES[3])
    with pytest.raises(data.DataError, match=FILES[3]) as info:
        data.load_fashion_mnist(str(folder))
    assert "missing" in str(info.value) and "dataset-fashion-mnist" in str(info.value)


def test_corrupt_magic_number(fashion):
    folder, arrays = fashion
    payload = bytearray(idx_bytes(arrays[FILES[1]]))
    payload[3] = 0x03
    write_gz(folder / FILES[1], bytes(payload))
    with pytest.raises(data.DataError, match="magic number") as info:
        data.load_fashion_mnist(str(folder))
    assert FILES[1] in str(info.value)


def test_truncated_idx_payload(fashion):
    folder, arrays = fashion
    write_gz(folder / FILES[0], idx_bytes(arrays[FILES[0]])[:-100])
    with pytest.raises(data.DataError, match="truncated") as info:
        data.load_fashion_mnist(str(folder))
    assert FILES[0] in str(info.value)


def test_truncated_gzip_stream(fashion):
    folder, _ = fashion
    path = folder / FILES[2]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(data.DataError, match="gzip") as info:
        data.load_fashion_mnist(str(folder))
    assert FILES[2] in str(info.value)


def test_mismatched_image_and_label_counts(fashion):
    folder, arrays = fashion
    write_gz(folder / FILES[3], idx_bytes(arrays[FILES[3]][:31]))
    with pytest.raises(data.DataError, match="do not match"):
        data.load_fashion_mnist(str(folder))


def test_without_any_source_tells_how_to_get_the_data(monkeypatch, tmp_path):
    monkeypatch.setattr(data.fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist") as info:
        data.load_fashion_mnist()
    assert "no network" in str(info.value) and "--data_dir" in str(info.value)


def test_falls_back_to_tfds_as_numpy(monkeypatch, tmp_path):
    monkeypatch.setattr(data.fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    calls = []

    def fake_load(name, **kwargs):
        calls.append((name, kwargs))
        return [(tf.ones([n, 28, 28, 1], tf.uint8), tf.range(n, dtype=tf.int64)) for n in (6, 4)]

    monkeypatch.setattr(tfds, "load", fake_load)
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist()
    assert [c[0] for c in calls] == ["fashion_mnist"]
    assert isinstance(x_train, np.ndarray) and x_train.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(y_test, [0, 1, 2, 3])


def test_train_limit_smaller_than_batch(fashion):
    folder, _ = fashion
    with pytest.raises(data.DataError, match="batch_size"):
        data.load("fashion_mnist", data_dir=str(folder), batch_size=16, train_limit=10)


def test_fashion_mnist_at_an_image_size_is_resized_rgb(fashion):
    folder, arrays = fashion
    bundle = data.load("fashion_mnist", data_dir=str(folder), batch_size=16, image_size=32, augment=False,
                       preprocess="raw")
    assert bundle.input_shape == (32, 32, 3)
    x_test, _ = _collect(bundle.test)
    assert x_test.shape == (32, 32, 32, 3)
    np.testing.assert_array_equal(x_test[..., 0], x_test[..., 2])  # grey in three equal channels
    expected = tf.image.resize(arrays[FILES[2]][..., None].astype(np.float32), (32, 32)).numpy()[..., 0]
    np.testing.assert_allclose(x_test[..., 1], np.round(expected), atol=1)
    assert data.DATASET_SHAPES["fashion_mnist"](32) == ((32, 32, 3), 10)
    assert data.load("fashion_mnist", data_dir=str(folder), batch_size=16, image_size=28).input_shape == (28, 28, 1)
    with pytest.raises(data.DataError, match="image_size=4"):
        data.load("fashion_mnist", data_dir=str(folder), batch_size=16, image_size=4)


def test_unknown_name_lists_valid_names():
    with pytest.raises(data.DataError, match="Unknown data set") as info:
        data.load("mnist", batch_size=8)
    for name in ("fashion_mnist", "cifar10", "imagenet2012", "image_folder"):
        assert name in str(info.value)


def test_cifar10_with_mocked_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        bundle = data.load("cifar10", data_dir=str(tmp_path), batch_size=8, train_limit=16, test_limit=12)
        x, y = next(iter(bundle.train))
        x_test, y_test = _collect(bundle.test)
    assert (bundle.num_classes, bundle.input_shape) == (10, (32, 32, 3))
    assert (bundle.train_examples, bundle.test_examples) == (16, 12)
    assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert x_test.shape == (12, 32, 32, 3) and ((0 <= y_test) & (y_test < 10)).all()
    # Uniform random pixels normalized by CIFAR statistics are centred near (0.5 - mean) / std.
    np.testing.assert_allclose(x_test.mean(axis=(0, 1, 2)), (0.5 - 0.48) / 0.25, atol=0.15)


def test_imagenet2012_with_mocked_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        bundle = data.load(
            "imagenet2012", data_dir=str(tmp_path), batch_size=4, image_size=24, train_limit=8, test_limit=6
        )
        x, y = next(iter(bundle.train))
        x_test, _ = _collect(bundle.test)
    assert (bundle.num_classes, bundle.input_shape) == (1000, (24, 24, 3))
    assert x.shape == (4, 24, 24, 3) and y.dtype == tf.int32
    assert x_test.shape == (6, 24, 24, 3)


def test_imagenet_requires_data_dir():
    with pytest.raises(data.DataError, match="ILSVRC2012_img_train.tar"):
        data.load("imagenet2012", batch_size=8)


@pytest.fixture
def image_folder(tmp_path):
    """train/ (3 images per class) and test/ (2 per class) of two classes, different sizes."""
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, count in (("train", 3), ("test", 2)):
        for label, color in colors.items():
            os.makedirs(tmp_path / split / label)
            for i in range(count):
                image = np.full((20 + 4 * i, 30, 3), color, np.uint8)
                tf.io.write_file(str(tmp_path / split / label / f"{i}.png"), tf.io.encode_png(image))
    return tmp_path


def test_image_folder(image_folder):
    bundle = data.load("image_folder", data_dir=str(image_folder), batch_size=2, image_size=16)
    assert (bundle.num_classes, bundle.input_shape) == (2, (16, 16, 3))
    assert (bundle.train_examples, bundle.test_examples) == (6, 4)
    train_batches = list(bundle.train.as_numpy_iterator())
    assert len(train_batches) == 3
    assert all(x.shape == (2, 16, 16, 3) and y.dtype == np.int32 for x, y in train_batches)
    x_test, y_test = _collect(bundle.test)
    assert x_test.shape == (4, 16, 16, 3) and sorted(y_test) == [0, 0, 1, 1]
    # Solid colours survive resize + crop; ImageNet normalization maps them to known values.
    red = (np.array([1.0, 0.0, 0.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    blue = (np.array([0.0, 0.0, 1.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    for image, label in zip(x_test, y_test):
        np.testing.assert_allclose(image, np.broadcast_to(red if label == 0 else blue, image.shape), atol=1e-4)


def test_image_folder_errors(image_folder, tmp_path):
    with pytest.raises(data.DataError, match="train/ and test/"):
        data.load("image_folder", batch_size=2)
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("image_folder", data_dir=str(tmp_path / "absent"), batch_size=2)
    os.rename(image_folder / "train", image_folder / "training")
    with pytest.raises(data.DataError, match="no train split"):
        data.load("image_folder", data_dir=str(image_folder), batch_size=2)


def test_a_class_missing_from_the_test_split_is_warned_about(image_folder):
    for path in (image_folder / "test" / "dog").iterdir():
        path.unlink()
    with pytest.warns(UserWarning, match=r"has no images of the classes \['dog'\]"):
        data.load("image_folder", data_dir=str(image_folder), batch_size=2, image_size=16)


@pytest.mark.skipif(
    not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR),
    reason=f"{data.DEBIAN_FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist():
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist()
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # Published statistics used for normalization.
    assert abs(x_train.mean() / 255 - FASHION_MEAN) < 1e-3
    assert abs(x_train.std() / 255 - FASHION_STD) < 1e-3
