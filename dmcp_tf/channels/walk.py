"""Walk a Keras functional model's layer calls in order, with nested models inlined.

The channel graph, the slim rebuild and gate insertion all evaluate a model's
graph on their own kind of values (channel layouts, or new symbolic tensors);
this is the one traversal they share. A node's operation is a layer or a
keras operation that is not a layer (`x + y`, `keras.ops.relu(x)`); both are
visited alike.

It is also the one module that reads Keras' private API (`_inbound_nodes`,
`_keras_history`, `_inputs_struct`, ...): the rest of the package goes through
the small helpers here, so a Keras upgrade that moves them is fixed in one place.
"""

import keras
from keras.src.models.functional import Functional


class WalkError(ValueError):
    """The model's layer graph cannot be read."""


def as_functional(model):
    """The functional graph of a model (a built Sequential holds one), or an error."""
    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None) or model
    if not isinstance(model, Functional):
        raise WalkError(
            f"{type(model).__name__} {model.name!r} is not a functional model. Build it with "
            "keras.Model(inputs, outputs), or a keras.Sequential that starts with keras.Input, "
            "so its layer graph can be read."
        )
    return model


def all_layers(model):
    """Every layer inside `model`, each once: nested models and their layers included, `model` not."""
    return model._flatten_layers(include_self=False)


def call_nodes(layer):
    """The calls of `layer` in the functional graphs that use it (Keras nodes: `input_tensors`, `output_tensors`)."""
    return layer._inbound_nodes


def producer_of(tensor):
    """The layer or keras operation whose call made the symbolic `tensor`."""
    return tensor._keras_history.operation


def takes_training(layer):
    """Whether `layer.call` takes a `training` argument."""
    return getattr(layer, "_call_has_training_arg", False)


def applies_weight_decay(optimizer, variable):
    """Whether `optimizer`'s weight decay applies to `variable` (not excluded by `exclude_from_weight_decay`)."""
    return optimizer._use_weight_decay(variable)


def is_nested_model(layer):
    return isinstance(layer, (Functional, keras.Sequential))


def weights_of(operation):
    """The weights of a layer; a keras operation that is not a layer has none."""
    return operation.weights if isinstance(operation, keras.layers.Layer) else []


def copy_operation(operation, dtype=None):
    """A fresh, unbuilt copy of a layer or keras operation (weights are copied separately).

    A keras operation whose config keras cannot write (e.g. `keras.ops.clip` with
    array bounds) is stateless, so the copy is the operation itself. A `Lambda`
    layer is rebuilt around the same Python function: its config holds bytecode,
    which Keras' safe mode rightly refuses to read back. `dtype`: the dtype policy
    of a copied layer (default: the layer's own).
    """
    if isinstance(operation, keras.layers.Lambda):
        return keras.layers.Lambda(operation.function, output_shape=operation._output_shape, mask=operation.mask,
                                   arguments=operation.arguments, name=operation.name,
                                   dtype=dtype or operation.dtype_policy)
    try:
        return operation.__class__.from_config(layer_config(operation, operation.get_config(), dtype))
    except NotImplementedError:
        if isinstance(operation, keras.layers.Layer):
            raise
        return operation


def layer_config(operation, config, dtype=None):
    """`config` of `operation` with the dtype policy `dtype` if it is a layer and `dtype` is given."""
    if dtype is None or not isinstance(operation, keras.layers.Layer):
        return config
    return dict(config, dtype=dtype)


def walk(model, inputs, visit):
    """Evaluates the graph of `model` on `inputs` with `visit` for every layer or operation call.

    Args:
        model: a functional model or Sequential; nested functional models and
            Sequentials used as layers are walked through (inlined).
        inputs: one value per model input, in order.
        visit: `visit(layer, args, kwargs, node) -> outputs`, called in
            topological order; `args`/`kwargs` hold the values computed for the
            call's input tensors, `node.outputs` the original output tensors.

    Returns:
        The list of values of the model's outputs.
    """
    model = as_functional(model)
    values = {id(t): v for t, v in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(values)
            layer = node.operation
            if is_nested_model(layer):
                outputs = walk(layer, keras.tree.flatten(args[0]), visit)
            else:
                outputs = visit(layer, args, kwargs, node)
            for old, new in zip(node.outputs, keras.tree.flatten(outputs)):
                values[id(old)] = new
    return [values[id(t)] for t in model.outputs]


def clone(model, visit, name):
    """A new functional model of `model`'s graph with every layer call made by `visit`.

    Args:
        model: a functional model or Sequential.
        visit: as in `walk`, called on the new model's symbolic tensors: it returns
            the outputs of the call (a copy of the layer's, or its input to drop it).
        name: the new model's name.

    Returns:
        A `keras.Model` on fresh inputs of the same shapes, dtypes and names, with
        `model`'s structure of inputs and outputs.
    """
    functional = as_functional(model)
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in functional.inputs]
    outputs = walk(functional, inputs, visit)
    return keras.Model(
        keras.tree.pack_sequence_as(functional._inputs_struct, inputs),
        keras.tree.pack_sequence_as(functional._outputs_struct, outputs),
        name=name,
    )
