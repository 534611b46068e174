"""Test set-up: quiet TensorFlow, two virtual CPU devices for MirroredStrategy tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
# One thread per op: the suite runs two workers (`-n 2`) on two cores, and a worker whose ops
# each spread over both cores only makes the other wait.
tf.config.threading.set_intra_op_parallelism_threads(1)


def pytest_collection_modifyitems(items):
    """Slow tests first: with two workers (`-n 2`) the long ones then run beside the short ones,
    instead of one of them ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
