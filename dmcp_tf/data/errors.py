"""The error of `dmcp_tf.data`."""


class DataError(ValueError):
    """Missing or invalid data; the message says what was wrong and how to fix it."""
