"""The IDX file format of Fashion-MNIST (and MNIST): gzipped unsigned-byte arrays."""

import gzip
import zlib

import numpy as np

from dmcp_tf.data.errors import DataError


def read_idx(path, ndim):
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
