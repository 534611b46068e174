"""DMCP for any functional Keras model: its search model (`make_supernet`) and its channel groups (`analyze`).

The gates go in with `dmcp_tf.channels.autogate.insert_gates`; `make_supernet`
wraps the gated copy in a `DMCPModel`.
"""

from dmcp_tf import costs
from dmcp_tf.channels.autogate import insert_gates, unprunable_reason
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.search import pretrained
from dmcp_tf.search.supernet import DMCPModel


def analyze(model, *, exclude=(), width=(0.1, 1.0, 0.1), print_fn=print):
    """Prints the channel groups of `model`: who shares channels, which can be pruned and why not.

    Returns:
        The model's `ChannelGraph`.
    """
    graph = ChannelGraph(model, exclude=exclude, strict=False)
    print_fn(f"Channel groups of {model.name!r} ({costs.MACS.of(graph):,} MACs):")
    print_fn(graph.describe(lambda space: unprunable_reason(space, width)))
    return graph


def make_supernet(model, *, budget, total_steps, width=(0.1, 1.0, 0.1), gate_kind="markov", exclude=(),
                  initial_alpha=0.0, from_trained=False, **kwargs):
    """Turns any functional model into a `DMCPModel` ready for `compile` and `fit`.

    The model itself is not changed: the supernet is a copy with the same weights.

    Args:
        model: a functional or Sequential Keras model (nested models are inlined).
        budget, total_steps, **kwargs: as for `DMCPModel` (`total_steps`: the steps all
            `fit` calls of the search run together, `epochs * steps_per_epoch`).
        width: every gate's width grid `(min_width, max_width, width_offset)`.
        gate_kind: `"markov"` or `"bernoulli"`.
        exclude: layer names or regular expressions whose output channels stay whole.
        initial_alpha: the gates' starting `alpha` (see `ChannelGate`).
        from_trained: `model` is a trained network. Its gated channels are sorted by
            the L1 norm of their filters (`pretrained.sort_channels_by_l1`: the same
            function, and the channels every sub-network keeps are those L1-norm
            pruning would keep; forgetting it cost 6 points before fine-tuning), and
            the gates start at the budget's uniform width (`search_init`, `"budget"`)
            instead of `initial_alpha` (`pretrained.trained_search_model`). With `train_weights=False` the search learns
            the widths on the frozen trained weights (`dmcp_tf.prune` does all of it).

    Example:
        backbone = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=10)
        model = make_supernet(backbone, budget="0.5x", total_steps=1000)
        model.compile()
        model.fit(train_ds, epochs=2)
    """
    supernet = insert_gates(model, width=width, gate_kind=gate_kind, exclude=exclude, initial_alpha=initial_alpha)
    build = pretrained.trained_search_model if from_trained else DMCPModel
    return build(supernet, budget=budget, total_steps=total_steps, **kwargs)
