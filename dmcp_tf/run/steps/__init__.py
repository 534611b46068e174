"""The steps of a run, one module each; `RUN[step](ctx)` runs one and returns the content of `<step>.json`.

Each step reads what earlier steps left in the run directory (through the
`RunContext`) and writes its own outputs there (`rundir.OUTPUTS`).
"""

from dmcp_tf.run.steps import evaluate, export, latency_table, retrain, sample, search

RUN = {"search": search.run, "sample": sample.run, "retrain": retrain.run, "eval": evaluate.run, "export": export.run,
       "latency_table": latency_table.run}
