"""The search step: DMCP on the gated supernet; writes `supernet.keras`, `search.json` and the trajectory plot."""

import keras

from dmcp_tf import costs
from dmcp_tf.run import report
from dmcp_tf.run.steps.step import Step
from dmcp_tf.search import pretrained
from dmcp_tf.search import trajectory as trajectory_lib


def run(ctx):
    """Searches the channel widths of `config.model` under the budget; returns the content of `search.json`.

    Args:
        ctx: the `RunContext`.
    """
    s = ctx.config.search
    keras.utils.set_random_seed(ctx.config.seed)
    steps = ctx.trainer.steps_per_epoch(s.steps_per_epoch)
    model = ctx.build_search_model(steps)
    ctx.log(f"supernet {model.supernet.name}: {costs.MACS.format(model.full_macs)}, "
            f"{len(model.gates)} gates, budget {model.cost.format(model.target)}")
    if s.initial_weights:
        pretrained.load_initial_weights(model.supernet, s.initial_weights, sort_channels=s.sort_initial_channels)
        ctx.log(f"search starts from the weights of {s.initial_weights}"
                + ("" if s.train_weights else "; they stay frozen, only the gates learn, every step "
                                             "projected back onto the budget"))
    start_cost = model.initialize_gates(s.init)
    ctx.log(f"search start {s.init!r}: expected {model.cost.unit} {start_cost / model.target:.3f} of the budget")
    resumed = ctx.trainer.resume("search", model.search_state(), ctx.trainer.identity("search", steps),
                                 model.total_steps)
    tracker = trajectory_lib.SearchTrajectory(
        s.trajectory_every_steps, log_dir=ctx.dir.path("logs", "search", "trajectory") if ctx.chief else None,
        records=resumed.extra.get("trajectory"))
    history = ctx.trainer.fit(model, resumed, step="search", epochs=s.epochs, steps_per_epoch=steps,
                              callbacks=[tracker], extra={"trajectory": tracker.records})
    ctx.dir.save_model(model.supernet, "supernet.keras")
    ctx.supernet = model.supernet
    expected = float(model.cost.expected(model.graph))
    settling = trajectory_lib.settling(tracker.records, model.warmup_steps, model.total_steps)
    missed = trajectory_lib.budget_verdict(expected / model.target, s.budget_weight_growth)
    if missed:
        ctx.log(missed.replace("**", ""))
    if ctx.chief:
        report.plot_search_trajectory(tracker.records, model.warmup_steps, ctx.dir.path("search_trajectory.png"),
                                      title=f"Search of {model.supernet.name} at {s.budget} (start {s.init!r})",
                                      unit=model.cost.unit)
    return {
        "cost": model.cost.name, "unit": model.cost.unit, "full_cost": model.cost.of(model.graph),
        "target": model.target, "expected_cost": expected, "full_macs": model.full_macs,
        "steps": model.total_steps, "warmup_steps": model.warmup_steps, "resumed_from_step": resumed.start or None,
        "replicas": ctx.strategy.num_replicas_in_sync, "init": s.init, "start_cost": start_cost,
        "settling": settling, "budget_weight_growth": s.budget_weight_growth, "history": history,
        "trajectory": tracker.records,
    }


STEP = Step("search", run, outputs=("supernet.keras", "search.json", "search_trajectory.png"), trains=True,
            needs_data=True)
