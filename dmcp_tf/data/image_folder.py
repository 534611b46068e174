"""Your own images: `data_dir/{train,test}/<class>/<image>`, read with `tfds.ImageFolder`, and their checks."""

import os
import warnings

import tensorflow_datasets as tfds

from dmcp_tf.data.errors import DataError
from dmcp_tf.data.source import imagenet_style

# First bytes of the formats TensorFlow decodes (tf.io.decode_image; JPEG XL as a codestream or a container).
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"\xff\x0a",
                     b"\x00\x00\x00\x0cJXL \r\n\x87\n")
_IMAGE_FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what tfds.ImageFolder reads


def source(data_dir, image_size):
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
    return imagenet_style(train, test, builder.info.features["label"].num_classes, image_size)


def _class_folders(data_dir, split):
    """The class folders of a split that hold at least one file."""
    root = os.path.join(data_dir, split)
    return [c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c)) and os.listdir(os.path.join(root, c))]


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
