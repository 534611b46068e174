"""Walk a Keras functional model's layer calls in order, with nested models inlined.

The channel graph, the slim rebuild and gate insertion all evaluate a model's
graph on their own kind of values (channel layouts, or new symbolic tensors);
this is the one traversal they share. A node's operation is a layer or a
keras operation that is not a layer (`x + y`, `keras.ops.relu(x)`); both are
visited alike.
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
