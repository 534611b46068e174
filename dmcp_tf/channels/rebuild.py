"""Rebuild a gated model as a standalone slim Keras model."""

import keras
import numpy as np

from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.walk import clone, copy_operation, layer_config
from dmcp_tf.channels.gates import ChannelGate


def rebuild(model, config=None, *, copy_weights=True, graph=None, name=None, channel_order=None, dtype=None):
    """Builds the sub-network `config` of `model` as a plain model without gates.

    Every layer keeps the channel counts the configuration gives its gates; with
    `copy_weights` the slim layers receive the kept (first) channels' weights, so
    the slim model computes what the gated model computes with that sub-network
    selected, in inference mode.

    Args:
        model: a functional model, usually with gates.
        config: gate name -> kept channels; gates not named keep every channel.
        copy_weights: copy the kept weights (fine-tuning); False gives freshly
            initialised layers (training from scratch, as in the paper).
        graph: the model's `ChannelGraph`, if already built.
        channel_order: gate name -> that gate's channel indices, most important
            first; a gate keeping `c` channels then keeps the first `c` of its
            order instead of the first `c` channels (pruning by an importance
            criterion, e.g. `baselines.l1_channel_order`). Changes only which
            weights are copied.
        dtype: the Keras dtype policy of every rebuilt layer (e.g. `"float32"` for a
            copy of a mixed-precision model); by default each layer keeps its own.

    Returns:
        A `keras.Model` whose layers carry the original names.
    """
    graph = graph or ChannelGraph(model)
    config = dict(config or {})
    graph.validate_config(config)
    _check_order(graph, channel_order or {})
    records = graph.first_records()
    slim_layers = {}

    def visit(layer, args, kwargs, node):
        if isinstance(layer, ChannelGate):
            return args[0]
        if id(layer) not in slim_layers:
            slim_layers[id(layer)] = (layer, _slim_layer(graph, layer, records.get(id(layer)), config, dtype))
        return slim_layers[id(layer)][1](*args, **kwargs)

    slim = clone(model, visit, name or f"{model.name}_slim")
    if copy_weights:
        for layer_id, (layer, slim_layer) in slim_layers.items():
            _copy_weights(graph, layer, records.get(layer_id), slim_layer, config, channel_order)
    return slim


def _check_order(graph, order):
    gates = {g.name: g for g in graph.gates}
    for name, ranked in order.items():
        if name not in gates:
            raise ValueError(f"channel_order names unknown gate {name!r}; the gates are {sorted(gates)}.")
        channels, group = gates[name].channels, graph.conv_group(gates[name])
        if sorted(int(i) for i in ranked) != list(range(channels)):
            raise ValueError(f"channel_order[{name!r}] must be a permutation of 0..{channels - 1} "
                             "(every channel index once, most important first).")
        if not _moves_whole_groups(ranked, group):
            raise ValueError(f"channel_order[{name!r}] must move whole groups of {group} channels (a grouped "
                             "convolution reads them): rank the groups, each keeping its channels in order.")


def _moves_whole_groups(ranked, group):
    """Whether `ranked` is a sequence of whole aligned groups of `group` channels, each in order."""
    blocks = np.asarray(ranked, int).reshape(-1, group)
    return bool(np.all(blocks == blocks[:, :1] + np.arange(group)) and np.all(blocks[:, 0] % group == 0))


def _slim_layer(graph, layer, record, config, dtype):
    if record is None:
        return copy_operation(layer, dtype)
    cin, cout = graph.count(record.in_layout, config), graph.count(record.out_layout, config)
    return layer.__class__.from_config(layer_config(layer, record.rule.slim_config(layer, cin, cout), dtype))


def _copy_weights(graph, layer, record, slim_layer, config, order):
    if not isinstance(slim_layer, keras.layers.Layer):
        return  # a keras operation that is not a layer holds no weights
    if record is None:
        source = [w.numpy() for w in layer.weights]
    else:
        source = [
            w.numpy()[np.ix_(*graph.kept_weight_indices(w, axes, config, order))]
            for w, axes in graph.weight_axes(record)
        ]
    slim_layer.set_weights(source)
