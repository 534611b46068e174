"""Starting a search from a trained network (the way most users come to pruning).

`load_initial_weights` copies a trained model's weights into a supernet by layer
name and, optionally, sorts every gated channel space by the L1 norm of its
filters first. A Markov gate always drops channels from the end of its layer, so
after sorting, the channels every sub-network keeps are the ones L1-norm pruning
would keep: the supernet's sub-networks start from the trained network's most
important filters instead of arbitrary ones. Sorting permutes channels
consistently in every producer and reader, so the network computes the same
function before and after.
"""

import re
import zipfile

import keras

from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.search import baselines
from dmcp_tf.channels.gates import ChannelGate
from dmcp_tf.search.supernet import DMCPModel


def copy_weights_by_name(source, target):
    """Copies every weighted layer of `source` into the layer of the same name in `target` (gates excepted).

    Raises:
        ValueError: a layer of `source` is missing in `target` or its weights' shapes differ.
    """
    copied = 0
    for layer in source.layers:
        if not layer.weights or isinstance(layer, ChannelGate):
            continue
        try:
            target_layer = target.get_layer(layer.name)
        except ValueError:
            raise ValueError(f"Layer {layer.name!r} of {source.name!r} has no layer of that name in "
                             f"{target.name!r}: the trained model must have the supernet's layer names.") from None
        shapes = [tuple(w.shape) for w in layer.weights]
        expected = [tuple(w.shape) for w in target_layer.weights]
        if shapes != expected:
            raise ValueError(f"Layer {layer.name!r}: the trained weights have shapes {shapes}, the supernet's "
                             f"{expected}. Build the supernet with the trained model's widths.")
        target_layer.set_weights(layer.get_weights())
        copied += 1
    if not copied:
        raise ValueError(f"{source.name!r} has no weighted layer to copy into {target.name!r}.")
    return copied


def sort_channels_by_l1(supernet):
    """Reorders every gated channel space of `supernet` by filter L1 norm, largest first (same function)."""
    graph = ChannelGraph(supernet)
    order = baselines.l1_channel_order(graph)
    copy_weights_by_name(rebuild(supernet, graph=graph, channel_order=order), supernet)


def load_trained_model(path):
    """The model of a `.keras` file, with errors that say what is wrong with the file.

    Raises:
        ValueError: the file is no `.keras` zip (damaged, or another format), or holds
            a custom layer class that Keras cannot find (the message names it).
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable .keras file (a zip archive): it is damaged or in another format "
                         "(.h5, a SavedModel). Save the trained model again with model.save('model.keras').")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except TypeError as error:
        missing = re.search(r"Could not locate class '([^']+)'", str(error))
        if not missing:
            raise
        raise ValueError(
            f"{path} holds a layer of class {missing.group(1)!r} that Keras cannot rebuild here: a custom class of "
            "the code that trained it. Register it with @keras.saving.register_keras_serializable() in a module "
            "imported before the run (Keras then finds it as custom_objects would pass it), or save the model with "
            "built-in layers only.") from None


def load_initial_weights(supernet, path, *, sort_channels=True):
    """Loads the trained model at `path` (`.keras`) into `supernet` by layer name; see the module docstring.

    The trained model may be the plain network (no gates, e.g. `rebuild(supernet)`
    trained by the user) or a supernet of the same architecture.
    """
    copy_weights_by_name(load_trained_model(path), supernet)
    if sort_channels:
        sort_channels_by_l1(supernet)


def trained_search_model(supernet, **kwargs):
    """A `DMCPModel` searching the gated copy of a trained network, set up for it.

    Its gated channels are sorted by L1 norm (`sort_channels_by_l1`) and the gates
    start at the budget's uniform width (`search_init`, `"budget"`). Add
    `train_weights=False` for the search on the frozen trained weights.

    Args:
        supernet: the trained network with gates (`insert_gates`).
        **kwargs: as for `DMCPModel` (`budget`, `total_steps`, ...).
    """
    sort_channels_by_l1(supernet)
    search = DMCPModel(supernet, **kwargs)
    search.initialize_gates("budget")
    return search
