"""Rebuild a gated model as a standalone slim Keras model."""

import keras
import numpy as np

from dmcp_tf.gates import ChannelGate
from dmcp_tf.graph import ChannelGraph


def rebuild(model, config=None, *, copy_weights=True, graph=None, name=None):
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

    Returns:
        A `keras.Model` whose layers carry the original names.
    """
    graph = graph or ChannelGraph(model)
    config = dict(config or {})
    graph.validate_config(config)
    records = {}
    for record in graph.records:
        records.setdefault(id(record.layer), record)
    slim_layers = {}
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    tensors = {id(old): new for old, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            layer = node.operation
            if isinstance(layer, ChannelGate):
                outputs = args[0]
            else:
                if id(layer) not in slim_layers:
                    slim_layers[id(layer)] = _slim_layer(graph, layer, records.get(id(layer)), config)
                outputs = slim_layers[id(layer)](*args, **kwargs)
            for old, new in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(old)] = new
    outputs = keras.tree.pack_sequence_as(model._outputs_struct, [tensors[id(t)] for t in model.outputs])
    inputs = keras.tree.pack_sequence_as(model._inputs_struct, inputs)
    slim = keras.Model(inputs, outputs, name=name or f"{model.name}_slim")
    if copy_weights:
        for layer_id, slim_layer in slim_layers.items():
            _copy_weights(graph, records.get(layer_id), slim_layer, config)
    return slim


def _slim_layer(graph, layer, record, config):
    if record is None:
        return layer.__class__.from_config(layer.get_config())
    cin, cout = graph.count(record.in_layout, config), graph.count(record.out_layout, config)
    return layer.__class__.from_config(record.rule.slim_config(layer, cin, cout))


def _copy_weights(graph, record, slim_layer, config):
    if record is None:
        source = [w.numpy() for w in _original_layer(graph, slim_layer).weights]
    else:
        source = [
            w.numpy()[np.ix_(*graph.kept_weight_indices(w, axes, config))]
            for w, axes in graph.weight_axes(record)
        ]
    slim_layer.set_weights(source)


def _original_layer(graph, slim_layer):
    return graph.model.get_layer(slim_layer.name)
