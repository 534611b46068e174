"""Batch-norm calibration of a chosen sub-network before it is evaluated.

All sub-networks share the supernet's running statistics during the search, so
they fit none of them well; the spec re-estimates them on a few training batches.
"""

import keras

from dmcp_tf.channels.walk import all_layers


def calibrate_batch_norm(model, batches):
    """Sets every batch norm's moving statistics to their average over `batches`.

    Args:
        model: a Keras model (a slim model, or a gated one called inside a
            `gates.selection` block).
        batches: an iterable of `x` or `(x, y)` batches of training images.

    Returns:
        The number of batches used.
    """
    norms = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in norms]
    count = 0
    try:
        for count, batch in enumerate(batches, start=1):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            for bn in norms:
                bn.momentum = (count - 1) / count  # running mean of the batch statistics
            model(x, training=True)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
    if count == 0:
        raise ValueError("Batch-norm calibration needs at least one batch of training images.")
    return count
