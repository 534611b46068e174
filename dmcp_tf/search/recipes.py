"""Training recipes shared by the run, `dmcp_tf.prune` and the benchmarks: search model and classifier, compiled.

Both read their hyperparameters from a config section (`config.search`,
`config.retrain`), so a benchmark trains exactly as `main.py` does. Also: the
portable copy of a trained classifier that plain Keras loads, and its evaluation.
"""

import keras

from dmcp_tf.channels.walk import applies_weight_decay
from dmcp_tf.search import losses as losses_lib
from dmcp_tf.search.supernet import DMCPModel, default_arch_optimizer, default_weight_optimizer, ends_in_softmax


def build_search_model(supernet, search, steps_per_epoch, seed=0, budget=None):
    """A compiled `DMCPModel` for `supernet`, set up by the config section `search`.

    Args:
        supernet: a gated functional model.
        search: the `config.search` section (budget, epochs, learning rates...).
        steps_per_epoch: training steps per search epoch.
        seed: seed of the sub-network sampling.
        budget: the `costs.Budget` already read from `search.budget` (read here if None).
    """
    total = search.epochs * steps_per_epoch
    model = DMCPModel(
        supernet, budget=budget or search.budget, total_steps=total, warmup_fraction=search.warmup_fraction,
        budget_weight=search.budget_weight,
        budget_weight_growth=search.budget_weight_growth, label_smoothing=search.label_smoothing,
        arch_label_smoothing=search.arch_label_smoothing,
        weight_decay=search.weight_decay, uniform_decay=search.uniform_decay,
        uniform_decay_every=search.uniform_decay_every, seed=seed, train_weights=search.train_weights,
    )
    model.compile(
        weight_optimizer=default_weight_optimizer(total, search.learning_rate,
                                                  int(search.warmup_epochs * steps_per_epoch),
                                                  warmup_start=search.warmup_start_learning_rate,
                                                  min_learning_rate=search.min_learning_rate),
        arch_optimizer=default_arch_optimizer(total - model.warmup_steps, search.arch_learning_rate,
                                              search.arch_final_learning_rate),
    )
    return model


WEIGHT_DECAY_TYPES = ("decoupled", "coupled")


@keras.saving.register_keras_serializable(package="dmcp_tf")
class CoupledSGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 term of the loss (PyTorch's `SGD(weight_decay=...)`).

    The gradient of every decayed variable gets `l2 * variable` added before the
    momentum update, so with momentum 0.9 the decay acts about 10x more strongly
    than Keras' decoupled `weight_decay` of the same value. Variables excluded with
    `exclude_from_weight_decay` are not decayed.

    Args:
        l2: the L2 coefficient (the authors' `weight_decay`).
    """

    def __init__(self, *args, l2=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and applies_weight_decay(self, variable):
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return dict(super().get_config(), l2=self.l2)


def compile_classifier(model, retrain, total_steps):
    """SGD with Nesterov momentum, cosine schedule over `total_steps`, weight decay off biases and BN.

    `retrain` is the `config.retrain` section (learning rate, weight decay and its
    type, label smoothing). `weight_decay_type="decoupled"` is Keras' weight decay,
    `"coupled"` the authors' L2 term (`CoupledSGD`). A model ending in a softmax
    (keras.applications) is trained on its probabilities, others on their logits.
    """
    schedule = keras.optimizers.schedules.CosineDecay(retrain.learning_rate, max(1, total_steps))
    if retrain.weight_decay_type == "coupled":
        optimizer = CoupledSGD(schedule, momentum=0.9, nesterov=True, l2=retrain.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=retrain.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    loss = losses_lib.smoothed_sparse_cross_entropy(retrain.label_smoothing, from_logits=not ends_in_softmax(model))
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def portable_copy(model):
    """A copy of a trained classifier that loads with plain Keras, without importing dmcp_tf.

    The same layers and weights, compiled with Keras' own sparse cross-entropy
    and accuracy (the training's loss and optimizer are dmcp_tf functions; their
    state lives in the checkpoints, not in the deliverable). The optimizer is plain
    SGD, which has no per-variable state: Keras' default (RMSprop), saved unbuilt,
    made every load warn "Skipping variable loading for optimizer".
    """
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_in_softmax(model)),
                 metrics=["accuracy"])
    return copy


def evaluate(model, dataset):
    """Top-1 accuracy and cross-entropy of a classifier on `dataset`: `{"accuracy", "loss"}`."""
    if not model.compiled:
        model.compile(loss=losses_lib.smoothed_sparse_cross_entropy(0.0, from_logits=not ends_in_softmax(model)),
                      metrics=["accuracy"])
    result = model.evaluate(dataset, verbose=0, return_dict=True)
    return {"accuracy": float(result["accuracy"]), "loss": float(result["loss"])}
