"""The sample step: the channel configuration of the searched supernet (expected sampling), and its statistics.

Writes `channels.json`, `samples.json` (budget-constrained direct samples),
`structure.md`, the cost histogram and the channel distributions.
"""

import numpy as np

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.io_utils import atomic_write_json, atomic_write_text
from dmcp_tf.run import report
from dmcp_tf.run.errors import PipelineError
from dmcp_tf.run.steps.step import Step
from dmcp_tf.search import sampling


def run(ctx):
    """Samples the configuration of the searched supernet; returns the content of `sample.json`.

    Args:
        ctx: the `RunContext`.
    """
    graph = ChannelGraph(ctx.supernet)
    cost, target = ctx.budget.cost, ctx.budget.target(graph)
    cfg = ctx.config.sample
    rng = np.random.default_rng(ctx.config.seed)
    chosen = sampling.round_config(graph, sampling.expected_config(graph, target, cost=cost), cfg.round_to)
    expected_sampling_cost = chosen_cost = cost.of(graph, chosen)
    if cfg.fit_to_budget:
        # A user's model (--model) never goes above its budget, as with dmcp_tf.prune; the zoo's
        # measured runs keep the nearest structure on either side.
        chosen, chosen_cost = sampling.fit_to_budget(graph, chosen, target, cost=cost,
                                                     at_most=bool(ctx.config.model.path))
    if chosen_cost > (1 + cfg.over_budget) * target:
        raise PipelineError(
            f"The sampled structure costs {cost.format(chosen_cost)}, {chosen_cost / target:.2f}x the budget "
            f"{ctx.config.search.budget} ({cost.format(target)}), more than sample.over_budget={cfg.over_budget} "
            "above it; retraining it would break the budget, so the sample step stops (nothing written). "
            f"{_over_budget_advice(ctx.config)}")
    sampling.save_config(ctx.dir.path("channels.json"), chosen)
    direct, note = [], None
    try:
        for _ in range(cfg.direct_samples):
            sample = sampling.sample_within_budget(graph, target, rng, cost=cost, tolerance=cfg.tolerance)
            direct.append({"channels": sample, "cost": cost.of(graph, sample), "macs": costs.MACS.of(graph, sample)})
    except RuntimeError as error:
        note = str(error)
    stats = sampling.cost_statistics(graph, rng, cfg.statistics_samples, cost)
    dists = sampling.channel_distributions(graph, rng, target, cost=cost, count=cfg.statistics_samples,
                                           tolerance=cfg.tolerance)
    report.plot_cost_histogram(stats["values"], target, ctx.dir.path("cost_histogram.png"), tolerance=cfg.tolerance,
                               title=f"{cost.unit} of {cfg.statistics_samples} direct samples", cost=cost)
    report.plot_channel_distributions(dists, {g.name: g.channels for g in graph.gates},
                                      ctx.dir.path("channel_distributions.png"), expected=chosen)
    structure = report.structure_markdown(graph.gate_rows(chosen), graph.layer_rows(chosen),
                                          f"{ctx.supernet.name} at {ctx.config.search.budget} (expected sampling"
                                          + (f", rounded to multiples of {cfg.round_to}" if cfg.round_to > 1 else "")
                                          + (", widths scaled to the budget)" if cfg.fit_to_budget else ")"))
    atomic_write_text(ctx.dir.path("structure.md"), structure)
    atomic_write_json(ctx.dir.path("samples.json"), {"direct": direct, "note": note})
    fitted = f", scaled to the budget: {cost.format(chosen_cost)}" if cfg.fit_to_budget else ""
    ctx.log(f"expected sampling: {cost.format(expected_sampling_cost)}{fitted} (budget {cost.format(target)}); "
            f"direct samples: mean {cost.format(stats['mean'])}")
    return {
        "cost": cost.name, "unit": cost.unit, "target": target, "expected_cost": float(cost.expected(graph)),
        "es_cost": chosen_cost, "es_macs": costs.MACS.of(graph, chosen), "es_params": costs.PARAMS.of(graph, chosen),
        "round_to": cfg.round_to, "fit_to_budget": cfg.fit_to_budget, "unfitted_es_cost": expected_sampling_cost,
        "direct_mean_cost": stats["mean"], "direct_std_cost": stats["std"],
        "direct_samples": len(direct), "within_budget_samples": int(len(next(iter(dists.values())))),
    }


STEP = Step("sample", run, outputs=("channels.json", "samples.json", "structure.md", "cost_histogram.png",
                                     "channel_distributions.png"), inputs=("supernet.keras",))


def check_round_to(graph, budget, config):
    """Raises `PipelineError` if `sample.round_to` keeps so many channels that even the smallest structure
    costs more than the budget allows (before any training)."""
    cost, target, round_to = budget.cost, budget.target(graph), config.sample.round_to
    smallest = cost.of(graph, sampling.round_config(graph, graph.smallest_config(), round_to))
    if smallest > (1 + config.sample.over_budget) * target:
        raise PipelineError(
            f"sample.round_to={round_to} keeps at least that many channels per layer, so even the smallest "
            f"structure costs {cost.format(smallest)}, {smallest / target:.2f}x the budget {config.search.budget} "
            f"({cost.format(target)}). Use a smaller --config.sample.round_to (0 does not round).")


def _over_budget_advice(config):
    """What brings a sampled structure down to the budget, for the error that it is above."""
    options = []
    if config.sample.round_to > 1:
        options.append(f"a smaller --config.sample.round_to (now {config.sample.round_to}; 0 does not round)")
    if not config.sample.fit_to_budget:
        options.append("--config.sample.fit_to_budget=True (with round_to=0) to scale the widths to the budget")
    options.append("a longer search (search.epochs) or a larger search.budget_weight, so that the gates reach "
                   "the budget (or accept more with --config.sample.over_budget)")
    return f"Use {', or '.join(options)}."
