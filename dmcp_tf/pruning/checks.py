"""What `dmcp_tf.prune` checks about a model and a budget before anything trains.

Each check raises a `ValueError` that says what is wrong and how to fix it.
"""

import re

import keras

from dmcp_tf import costs
from dmcp_tf.channels import layer_rules as rules
from dmcp_tf.channels.autogate import insert_gates, produced_spaces
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.walk import WalkError, as_functional, walk
from dmcp_tf.search import baselines

# The widest miss below the budget that pruning accepts (the structure is fitted to it from below).
BUDGET_TOLERANCE = 0.1


def check_classifier(model):
    """A functional or Sequential image classifier of one known input size and one output of a unit per class.

    Raises:
        ValueError: a subclassed model, several inputs or outputs, an input of unknown
            spatial size, or an output that is not one unit per class.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model; got {type(model).__name__}.")
    try:
        as_functional(model)
    except WalkError:
        raise ValueError(
            f"{type(model).__name__} {model.name!r} is a subclassed model (or a Sequential never built on an "
            "Input): its call() is Python code whose layers dmcp_tf cannot follow. Build the same layers as "
            "keras.Model(inputs, outputs) or keras.Sequential([keras.Input(shape), ...]), copy the weights "
            "(set_weights), and prune that.") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; prune() "
                         "takes a classifier of one image input and one output.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(f"{model.name!r} has the input shape {shape}: its images' size is unknown, and the MACs "
                         "(and so the budget) depend on it. Build the model on a fixed size, e.g. keras.Input((224, "
                         "224, 3)) or input_shape=(224, 224, 3) for keras.applications.")
    output = tuple(model.outputs[0].shape)
    if len(output) != 2 or not output[1] or output[1] < 2:
        raise ValueError(f"{model.name!r} has the output shape {output}; prune() takes a classifier with one "
                         "output unit per class (logits or a softmax), at least two classes.")


def layers_without_rule(model, exclude=()):
    """The layers and keras operations of `model` (nested models included) that have no rule, by name.

    Layers matching `exclude` (names or regular expressions) are left out.
    """
    patterns = [re.compile(p) for p in exclude]
    found = {}

    def visit(layer, args, kwargs, node):
        if rules.rule_for(layer) is None and not any(p.fullmatch(layer.name) for p in patterns):
            found[layer.name] = layer
        return node.outputs

    functional = as_functional(model)
    walk(functional, functional.inputs, visit)
    return found


def gated_supernet(model, exclude=(), gate_kind="markov"):
    """The gated copy of `model` (`insert_gates`), after checking that its layers are understood and some prunable.

    A layer type without a rule is an error only where it keeps channels whole that
    a producing layer made (a preprocessing layer on the input channels is not).

    Raises:
        ValueError: such a layer (named), or no prunable layer at all.
    """
    graph = ChannelGraph(model, exclude=exclude, strict=False)
    unknown = layers_without_rule(model, exclude)
    blocked = {graph.space(root).frozen for root in produced_spaces(graph)} - {None}
    blocking = [name for name in unknown if any(f"{name!r} (" in reason for reason in blocked)]
    if blocking:
        kinds = sorted({type(unknown[name]).__name__ for name in blocking})
        raise ValueError(
            f"{model.name!r} has layers of a type dmcp_tf has no channel rule for: {', '.join(map(repr, blocking))} "
            f"({', '.join(kinds)}). Their channels cannot be pruned as it is. Give the type a rule with "
            "dmcp_tf.register_rule (README, 'Your own layers'), or keep their channels whole with "
            f"exclude={blocking!r}.")
    supernet = insert_gates(model, exclude=exclude, gate_kind=gate_kind)
    if not ChannelGraph(supernet).gates:
        raise ValueError(f"{model.name!r} has no prunable layer: no convolution or dense layer whose output "
                         "channels may shrink. dmcp_tf.analyze(model) prints every group of channels and why it "
                         "is kept whole.")
    return supernet


def checked_budget(budget, graph):
    """The target of `budget` (a `costs.Budget` or its text) on the supernet `graph`, once checked reachable.

    Raises:
        ValueError: unreadable, outside what the supernet can reach, or not reachable within
            `BUDGET_TOLERANCE` below it by scaling the widths (channel counts are integers).
    """
    budget = costs.Budget.parse(budget)
    target = budget.checked_target(graph)
    try:
        baselines.config_at_cost(graph, target, cost=budget.cost, tolerance=BUDGET_TOLERANCE, at_most=True)
    except ValueError:
        raise ValueError(f"The budget {budget} ({budget.cost.format(target)}) cannot be met within "
                         f"{BUDGET_TOLERANCE:.0%} below it: this model's widths move its {budget.cost.unit} in "
                         "coarser steps. Choose another budget.") from None
    return budget, target
