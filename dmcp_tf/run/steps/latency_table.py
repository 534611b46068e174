"""The latency_table step (`--mode=latency_table`): the supernet's per-layer TFLite latency (`latency_table.json`).

The table it writes is what `--config.search.latency_table` reads for a latency
budget (`dmcp_tf/deploy/latency.py` describes the file and how to measure it on a phone).
"""

from dmcp_tf.deploy import latency
from dmcp_tf.run import config as config_lib
from dmcp_tf.run.steps.step import Step


def run(ctx):
    """Measures every gated layer of a fresh supernet of `config.model`; returns the table (`latency_table.json`).

    Args:
        ctx: the `RunContext`.
    """
    return latency.measure_latency_table(ctx.new_supernet(), quantizations=config_lib.quantizations(ctx.config),
                                         threads=ctx.config.export.latency_threads, log=ctx.log).to_json()


STEP = Step("latency_table", run, outputs=("latency_table.json",), in_all=False)  # its JSON is the table
