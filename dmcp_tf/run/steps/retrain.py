"""The retrain step: the slim model of `channels.json`, trained; writes `slim.keras` and `retrain.json`.

From scratch as the paper (`retrain.from_scratch`), or fine-tuning inherited
weights after a batch-norm calibration: the searched supernet's, or (`retrain.inherit=
"initial_weights"`) those of the trained model the search started from, each layer's
channels sorted by L1 norm as the search's were: L1-norm pruning at DMCP's widths.
With `retrain.calibrate_after` the trained model's batch-norm statistics are
re-estimated before it is saved. With `retrain.compare_uniform` the uniform-width
network of the same cost is trained the same way beside it.
"""

import keras

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.io_utils import file_sha256
from dmcp_tf.run.checkpoints import list_checkpoints
from dmcp_tf.run.steps.step import Step
from dmcp_tf.search import baselines, pretrained, recipes, sampling
from dmcp_tf.search.supernet import seed_generator_states


def run(ctx):
    """Rebuilds and trains the slim model; returns the content of `retrain.json`.

    Args:
        ctx: the `RunContext`.
    """
    r = ctx.config.retrain
    channels = sampling.load_config(ctx.dir.path("channels.json"))
    graph = ChannelGraph(ctx.supernet)
    graph.validate_config(channels, complete=True)
    keras.utils.set_random_seed(ctx.config.seed)
    steps = ctx.trainer.steps_per_epoch(r.steps_per_epoch)
    resuming = bool(list_checkpoints(ctx.dir.path("checkpoints", "retrain")))
    inherited = None
    source = ctx.supernet if r.from_scratch else _weights_source(ctx)
    with ctx.strategy.scope():
        slim = rebuild(source, channels, copy_weights=not r.from_scratch)
    if not r.from_scratch and not resuming:
        inherited = _calibrate_inherited(ctx, slim, source, channels)
    with ctx.strategy.scope():
        recipes.compile_classifier(slim, r, steps * r.epochs)
        slim.optimizer.build(slim.trainable_variables)  # its variables exist before a restore
    identity = ctx.trainer.identity("retrain", steps, channels=channels,
                                    supernet_sha256=file_sha256(ctx.dir.path("supernet.keras")))
    objects = {"model": slim, "optimizer": slim.optimizer, "random_state": seed_generator_states(slim)}
    resumed = ctx.trainer.resume("retrain", objects, identity, steps * r.epochs)
    inherited = resumed.extra.get("inherited", inherited)
    # Several workers: no per-epoch validation (the eval step measures the result).
    history = ctx.trainer.fit(slim, resumed, step="retrain", epochs=r.epochs, steps_per_epoch=steps,
                              extra={"inherited": inherited},
                              validation_data=None if ctx.multi_worker else ctx.data.test)
    if r.calibrate_after:
        _calibrate(ctx, slim, source, channels, augmented=True)
    uniform = _train_uniform(ctx, graph, source, ctx.budget.cost.of(graph, channels), steps) \
        if r.compare_uniform else None
    ctx.dir.save_model(recipes.portable_copy(slim), "slim.keras")  # loads with plain Keras
    ctx.slim = None if ctx.multi_worker else slim
    return {
        "from_scratch": r.from_scratch, "inherited": inherited, "resumed_from_step": resumed.start or None,
        "history": history, "uniform": uniform,
    }


STEP = Step("retrain", run, outputs=("slim.keras", "retrain.json"), inputs=("supernet.keras", "channels.json"),
            trains=True, needs_data=True)


def _weights_source(ctx):
    """The gated model whose weights a fine-tuned slim model inherits (`retrain.inherit`)."""
    if ctx.config.retrain.inherit == "supernet":
        return ctx.supernet
    s = ctx.config.search
    with ctx.local_scope():
        source = ctx.new_supernet()
        pretrained.load_initial_weights(source, s.initial_weights, sort_channels=s.sort_initial_channels)
    ctx.log(f"the slim model inherits the weights of {s.initial_weights}"
            + (", channels sorted by L1 norm" if s.sort_initial_channels else ""))
    return source


def _calibrate_inherited(ctx, slim, source, channels):
    """Calibrates the batch norms of `slim`'s inherited weights; returns their test results (on the chief).

    Under several workers the calibration and the evaluation run on a local copy
    (Keras 3 evaluate does not run under MultiWorkerMirroredStrategy), whose
    weights are then copied in.
    """
    local = _calibrate(ctx, slim, source, channels)
    inherited = None
    if ctx.chief:
        with ctx.local_scope():
            inherited = recipes.evaluate(local, ctx.data.test)
        ctx.log(f"inherited weights after BN calibration: top-1 {inherited['accuracy']:.4f}")
    return inherited


def _calibrate(ctx, model, source, channels, augmented=False):
    """Re-estimates the batch-norm statistics of `model` (`source` rebuilt to `channels`); returns the model calibrated.

    `augmented`: on training batches as training sees them, after training (`ctx.calibrate`).

    Under several workers that is a local copy (Keras 3 calls no model eagerly under
    MultiWorkerMirroredStrategy) whose weights are then copied into `model`.
    """
    local = model
    if ctx.multi_worker:
        with ctx.local_scope():
            local = rebuild(source, channels)
        local.set_weights(model.get_weights())
    with ctx.local_scope():
        ctx.calibrate(local, augmented=augmented)
    if local is not model:
        model.set_weights(local.get_weights())
    return local


def _train_uniform(ctx, graph, source, target, steps):
    """Trains the uniform-width network of the slim model's cost (`target`) as the slim model was.

    From scratch, or (`retrain.from_scratch=False`) fine-tuned from the weights of
    `source`, the slim model's, after batch-norm calibration: where its channels are
    sorted by L1 norm (a trained `--model`, `retrain.inherit="initial_weights"`), that is
    L1-norm pruning at uniform widths. `graph` is the supernet's `ChannelGraph`; returns
    the uniform network's test results.

    What DMCP's structure is worth: the same training, the same cost (of the
    budget's kind), widths chosen by one factor instead of the search.
    """
    r = ctx.config.retrain
    try:
        config, fraction, _ = baselines.uniform_config(graph, target, cost=ctx.budget.cost, tolerance=0.03)
    except ValueError as error:
        ctx.log(f"no uniform-width baseline: {error}")
        return {"note": str(error)}
    keras.utils.set_random_seed(ctx.config.seed)
    with ctx.strategy.scope():
        model = rebuild(source, config, copy_weights=not r.from_scratch, name=f"{ctx.supernet.name}_uniform")
    if not r.from_scratch:
        _calibrate_inherited(ctx, model, source, config)
    with ctx.strategy.scope():
        recipes.compile_classifier(model, r, steps * r.epochs)
    macs = costs.MACS.of(graph, config)
    ctx.log(f"uniform width {fraction:.3f} ({costs.MACS.format(macs)}): training {r.epochs} epochs")
    ctx.trainer.train(model, epochs=r.epochs, steps_per_epoch=steps)
    if r.calibrate_after:
        _calibrate(ctx, model, source, config, augmented=True)
    measured = {"fraction": fraction, "macs": macs, "params": costs.PARAMS.of(graph, config),
                "unit": ctx.budget.cost.unit, "inherited": not r.from_scratch}
    if ctx.multi_worker:
        return dict(measured, note="not evaluated")
    return dict(recipes.evaluate(model, ctx.data.test), channels=config, **measured)
