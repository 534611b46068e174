"""The eval step: test accuracy, MACs and parameters of the unpruned supernet and the slim model (`eval.json`)."""

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.run.steps.step import Step
from dmcp_tf.search import recipes


def run(ctx):
    """Evaluates the full and the slim model on the test split; returns the content of `eval.json`.

    Args:
        ctx: the `RunContext`.
    """
    results = {}
    for label, model in (("full", ctx.full_model()), ("slim", ctx.slim)):
        graph = ChannelGraph(model)
        results[label] = dict(recipes.evaluate(model, ctx.data.test), macs=costs.MACS.of(graph),
                              params=costs.PARAMS.of(graph))
        ctx.log(f"{label}: top-1 {results[label]['accuracy']:.4f}, {costs.MACS.format(results[label]['macs'])}")
    return results


STEP = Step("eval", run, outputs=("eval.json",), inputs=("supernet.keras", "slim.keras"), needs_data=True)
