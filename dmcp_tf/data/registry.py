"""The data sets by name, and `load`: a data set's `Source` through the shared pipeline.

Adding a data set: a module with `source(data_dir, image_size) -> Source` and a
`shape(image_size)`, and one entry in `REGISTRY`.
"""

import dataclasses
import types
from typing import Callable, Optional

from dmcp_tf.data import cifar10, fashion_mnist, image_folder, imagenet2012
from dmcp_tf.data.errors import DataError
from dmcp_tf.data.pipeline import build
from dmcp_tf.data.source import imagenet_shape


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One data set: how to read it, and its shape and classes, known without reading it.

    Attributes:
        source: `(data_dir, image_size) -> Source`.
        shape: `image_size -> (H, W, C)` of one preprocessed image.
        classes: number of labels; None when only the files tell (an image folder).
    """

    source: Callable
    shape: Callable
    classes: Optional[int]

    def spec(self, image_size):
        """`(input shape, classes)` at `image_size`, without reading the data.

        Raises:
            DataError: the number of classes is only known from the files.
        """
        if self.classes is None:
            raise DataError(
                "An image folder's number of classes is only known from its files; --mode=macs "
                "cannot count its classifier without loading it. Use --mode=all or a fixed data set."
            )
        return self.shape(image_size), self.classes


REGISTRY = types.MappingProxyType({
    "fashion_mnist": Dataset(fashion_mnist.source, fashion_mnist.shape, fashion_mnist.CLASSES),
    "cifar10": Dataset(cifar10.source, cifar10.shape, cifar10.CLASSES),
    "imagenet2012": Dataset(imagenet2012.source, imagenet_shape, imagenet2012.CLASSES),
    "image_folder": Dataset(image_folder.source, imagenet_shape, None),
})
DATASETS = tuple(REGISTRY)
# name -> (image_size -> (input shape, classes)), read-only: `Dataset.spec` of each data set.
DATASET_SHAPES = types.MappingProxyType({name: dataset.spec for name, dataset in REGISTRY.items()})


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
    if name not in REGISTRY:
        raise DataError(f"Unknown data set {name!r}. Valid names: {', '.join(sorted(REGISTRY))}.")
    return build(
        name,
        REGISTRY[name].source(data_dir, image_size),
        batch_size=batch_size,
        train_limit=train_limit,
        test_limit=test_limit,
        augment=augment,
        seed=seed,
        preprocess=preprocess,
    )
