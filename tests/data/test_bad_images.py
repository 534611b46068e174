"""Bad input files and folders end with exit 2 and what to do: a damaged image in an image folder (the file
named, not TensorFlow's traceback), a run directory without write permission or space."""

import numpy as np
import pytest
import tensorflow as tf
from ml_collections import ConfigDict
from PIL import Image

from dmcp_tf.run import cli
from dmcp_tf.data import undecodable_images
from tests.helpers import main_exit_message


@pytest.fixture
def folder(tmp_path):
    """train/ and test/ with two classes of small PNG/JPEG images, one of them not an image at all."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i, suffix in enumerate((".png", ".jpg", ".JPEG")):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / split / label / f"{i}{suffix}")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not read by tfds.ImageFolder")
    bad = tmp_path / "train" / "dog" / "7.png"
    bad.write_bytes(b"<html>a download that failed</html>")
    return tmp_path, bad


# What Keras' fit reported for a non-image file of an image folder (the text of the
# InvalidArgumentError of the battery run: its iterator runs in a multi-step function).
FIT_TEXT = ("Graph execution error:\n\nDetected at node IteratorGetNext defined at (most recent call last):\n"
            "<stack traces unavailable>\nError in user-defined function passed to ParallelMapDatasetV2:1 "
            "transformation with iterator: Iterator::Root::Prefetch::MapAndBatch::FiniteTake::Zip[0]::Shuffle::"
            "ParallelMapV2::ParallelMapV2: Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP "
            "required.\n\t [[{{node decode_image/DecodeImage}}]]\n\t [[IteratorGetNext]] [Op:__inference_multi_step_on_iterator_1]")


def decoding_error(path, how):
    """The error TensorFlow raises when an input pipeline decodes `path` (as tfds.ImageFolder does)."""
    if how == "fit":
        return tf.errors.InvalidArgumentError(None, None, FIT_TEXT)
    files = tf.data.Dataset.from_tensor_slices([str(path)]).map(tf.io.read_file)
    images = files.map(lambda data: tf.io.decode_image(data, channels=3, expand_animations=False),
                       num_parallel_calls=2).batch(1)
    iterator = iter(images)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        next(iterator) if how == "eager" else tf.function(lambda it: next(it))(iterator)
    return raised.value


def test_undecodable_images_are_found_by_their_first_bytes(folder):
    root, bad = folder
    assert undecodable_images(str(root)) == [str(bad)]


@pytest.mark.parametrize("how", ["eager", "function", "fit"])
def test_an_undecodable_image_ends_with_exit_2_naming_the_file(folder, monkeypatch, capsys, how):
    root, bad = folder
    error = decoding_error(bad, how)
    assert str(bad) not in str(error)  # TensorFlow's own text names no file
    data = ConfigDict({"name": "image_folder", "data_dir": str(root)})

    def run(argv):
        raise error

    monkeypatch.setattr(cli, "run", run)
    monkeypatch.setattr(cli, "_data_config", lambda: data)
    with pytest.raises(SystemExit) as stopped:
        cli._main(["main.py"])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith(f"error: An image in {root} cannot be decoded (Unknown image file format. One of JPEG")
    assert f"first bytes: {bad}. Remove or replace it." in message and "rerun the same command" in message


def test_a_file_damaged_after_its_header_is_not_named_but_explained(folder):
    root, bad = folder
    error = decoding_error(bad, "eager")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # looks like a PNG, is none
    data = ConfigDict({"name": "image_folder", "data_dir": str(root)})
    message = cli._tensorflow_error_message(error, data)
    assert "TensorFlow does not say which file" in message and "damaged further in" in message
    other = cli._tensorflow_error_message(error, ConfigDict({"name": "imagenet2012", "data_dir": ""}))
    assert "check the data set's files" in other


@pytest.mark.parametrize("error, named", [
    (PermissionError(13, "Permission denied", "/runs/x/.tmp-uknyf1ox.sample.started"),
     "Permission denied: the folder /runs/x (writing a file into it). Make it writable"),
    (OSError(30, "Read-only file system", "/runs/x/channels.json"), "Read-only file system: /runs/x/channels.json."),
    (OSError(28, "No space left on device", "/runs/x/slim.keras.tmp.keras"), "No space left on device: the folder "
     "/runs/x (writing a file into it). Free disk space"),
])
def test_no_permission_or_space_names_the_run_directory_not_a_temporary_file(monkeypatch, capsys, error, named):
    message = main_exit_message(monkeypatch, capsys, error)
    assert named in message and "rerun the same command" in message, message
    assert "uknyf1ox" not in message and "slim.keras.tmp" not in message  # temporary names mean nothing to a user


def test_other_os_errors_keep_their_text(monkeypatch, capsys):
    message = main_exit_message(monkeypatch, capsys, FileNotFoundError(2, "No such file", "/a/b"))
    assert message == "error: [Errno 2] No such file: '/a/b'\n"


def test_a_full_disk_while_saving_a_checkpoint_names_the_file_without_tensorflows_function_node(monkeypatch, capsys):
    text = ("{{function_node __wrapped__SaveV2_dtypes_92_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
            "/runs/x/checkpoints/search/.tmp-ckpt-000000008-r9/state_temp/part-00000; No space left on device [Op:SaveV2]")
    message = main_exit_message(monkeypatch, capsys, tf.errors.ResourceExhaustedError(None, None, text))
    assert message.startswith("error: TensorFlow ran out of a resource (/runs/x/checkpoints/search/") and \
        "No space left on device [Op:SaveV2]): a full disk while saving" in message and "function_node" not in message
