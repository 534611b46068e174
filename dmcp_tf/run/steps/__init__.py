"""The steps of a run, one module each, and their order (`STEPS`).

Each module declares its `Step` (`step.py`): the run directory (`rundir`), the
pipeline's checks and the command line's `--mode` read those declarations. A step
reads what earlier steps left in the run directory (through the `RunContext`)
and writes its own outputs there.
"""

from dmcp_tf.run.steps import evaluate, export, latency_table, retrain, sample, search

STEPS = (search.STEP, sample.STEP, retrain.STEP, evaluate.STEP, export.STEP, latency_table.STEP)
"""Every step, in the order a run takes them (`--mode=all`: those with `in_all`)."""
BY_NAME = {step.name: step for step in STEPS}
