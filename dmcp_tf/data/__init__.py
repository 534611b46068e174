"""Data sets and input pipelines.

`load(name, batch_size=...)` returns a `DataBundle` of batched `tf.data` pipelines
yielding `(images float32 NHWC normalized, labels int32)`. The data sets are in
`registry.REGISTRY`, one module each (`fashion_mnist`, `cifar10`, `imagenet2012`,
`image_folder`); each only describes its raw splits and crops (`source.Source`),
and all go through the same plumbing (`pipeline.build`).
"""

from dmcp_tf.data.errors import DataError
from dmcp_tf.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR, load_fashion_mnist
from dmcp_tf.data.image_folder import undecodable_images, unreadable_images
from dmcp_tf.data.pipeline import PREPROCESSING, DataBundle
from dmcp_tf.data.registry import DATASET_SHAPES, DATASETS, REGISTRY, Dataset, load

__all__ = [
    "DATASETS", "DATASET_SHAPES", "DEBIAN_FASHION_MNIST_DIR", "PREPROCESSING", "REGISTRY", "DataBundle", "DataError",
    "Dataset", "load", "load_fashion_mnist", "undecodable_images", "unreadable_images",
]
