"""The DMCP pipeline: search, sample, retrain, eval, export, and a report.

Each step (`steps/`) reads what earlier steps left in the run directory and
writes its own outputs there (atomically), so any step can run on its own
(`--mode=sample`) and pick up a previous run. Everything that can be checked is
checked before the first step trains: the config, the run directory, the data,
the budget.

The same command started again continues an interrupted run: finished steps are
skipped, partial outputs of the interrupted one are redone, and a training step
resumes from its last intact checkpoint (`trainer`). Under
`MultiWorkerMirroredStrategy` every worker trains, but only the chief writes the
run directory (which must be on a file system all workers share) and runs the
single-machine steps (sample, eval, export, report).
"""

import contextlib
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.walk import call_nodes
from dmcp_tf.run import config as config_lib
from dmcp_tf.run import distributed, report
from dmcp_tf.run.context import RunContext
from dmcp_tf.run.errors import PipelineError
from dmcp_tf.run.rundir import RunDirectory
from dmcp_tf.run.steps import BY_NAME, sample
from dmcp_tf.search import pretrained

# Training keeps every layer's outputs for the backward pass and their gradients beside them. A lower bound
# of what it needs rather than an estimate: the check refuses what cannot fit, not what might not.
TRAINING_MEMORY_FACTOR = 2


@contextlib.contextmanager
def dtype_policy(name):
    """Sets Keras' global dtype policy (e.g. `"mixed_bfloat16"`) inside the block; restores the previous one after.

    Models built inside keep their policy (it is saved with them), so the
    supernet, the slim model and what is loaded from the run stay in it.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def enable_determinism(seed):
    """Fixed seeds and TensorFlow op determinism: the same config gives the same result.

    Process-wide and not reversible: call it once, at start-up (`--deterministic`).
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class Pipeline:
    """Runs DMCP steps for one config in one run directory.

    Args:
        config: a ConfigDict from `config.base_config()` or a config file.
        run_dir: where every output goes.
        overwrite: allow replacing outputs of earlier runs.
        strategy: a `tf.distribute` strategy (models are built in its scope).
        log: where progress lines go.
        deterministic: fixed seeds and op determinism (`enable_determinism`), so
            two runs of one config give identical gate parameters.
    """

    def __init__(self, config, run_dir, *, overwrite=False, strategy=None, log=print, deterministic=False):
        tf.get_logger().setLevel("ERROR")
        strategy = strategy or tf.distribute.get_strategy()
        self.config = config
        self.deterministic = deterministic
        self.dir = RunDirectory(run_dir, overwrite=overwrite, chief=distributed.is_chief(strategy),
                                scratch_prefix=f"dmcp-{distributed.task_name(strategy)}-")
        self.context = RunContext(config, self.dir, strategy=strategy, log=log)
        self.chief = self.context.chief
        self.skipped = []

    def preflight(self, steps):
        """Raises `PipelineError`/`ValueError` for anything that would fail later; reads the budget."""
        ctx = self.context
        ctx.budget = config_lib.validate(self.config)
        batch, replicas = self.config.data.batch_size, ctx.strategy.num_replicas_in_sync
        if batch < 2 * replicas:
            raise PipelineError(f"data.batch_size={batch} over {replicas} replicas gives fewer than 2 images per "
                                "replica, on which batch normalization cannot train. Use --config.data.batch_size="
                                f"{2 * replicas} or more.")
        self.dir.check(self.config, steps)
        self.dir.check_inputs(steps)
        if any(BY_NAME[s].needs_data for s in steps):
            ctx.data  # noqa: B018 (loads the data now, so a missing data set fails before training)
        fresh = ctx.new_supernet() if any(BY_NAME[s].trains for s in steps) else None
        if fresh is not None:
            self._check_memory(fresh)
            if self.config.search.initial_weights:  # a damaged file or a custom layer fails now, not in the step
                pretrained.load_trained_model(self.config.search.initial_weights)
        test_limit, wanted = self.config.data.test_limit, self.config.export.representative_images
        if "export" in steps and ctx.data.test_examples < wanted:
            limited = f" (data.test_limit={test_limit})" if test_limit else ""
            raise PipelineError(f"export.representative_images={wanted} needs that many test images, but the test "
                                f"split has {ctx.data.test_examples}{limited}: lower --config.export."
                                "representative_images" + (" or raise data.test_limit." if test_limit else "."))
        if "sample" in steps:
            sample.check_round_to(ChannelGraph(fresh if "search" in steps else ctx.supernet), ctx.budget, self.config)
        if "search" in steps:
            ctx.build_search_model(steps_per_epoch=1)  # checks the model and the budget

    def _check_memory(self, supernet):
        """Raises `PipelineError` if training `supernet` on one machine's share of a batch cannot fit in memory.

        On CPUs only (a GPU's memory is its own): the supernet's activations (every
        layer's outputs) for this machine's images of a batch, times
        `TRAINING_MEMORY_FACTOR` for what training keeps beside them, against the
        machine's physical memory.
        """
        if tf.config.list_logical_devices("GPU"):
            return
        images = self.config.data.batch_size // max(1, distributed.cluster_workers())
        values = sum(int(np.prod(t.shape[1:])) for layer in supernet.layers  # a shared layer: once per call
                     for node in call_nodes(layer) for t in node.output_tensors)
        needed = values * images * 4 * TRAINING_MEMORY_FACTOR
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if needed > available:
            raise PipelineError(
                f"Training {supernet.name} on {images} images of {'x'.join(map(str, supernet.input_shape[1:]))} "
                f"needs about {needed / 2**30:.1f} GiB of memory for its activations, more than this machine's "
                f"{available / 2**30:.1f} GiB. Lower --config.data.image_size or --config.data.batch_size.")

    def run(self, steps):
        """Runs `steps` in order, then writes the report; returns the summary rows.

        Started again after an interruption, it skips the steps that finished and
        resumes the interrupted one from its last checkpoint. The steps run under
        the Keras dtype policy `config.mixed_precision` (`dtype_policy`); the
        global policy is restored afterwards.
        """
        if self.deterministic:
            enable_determinism(self.config.seed)
        try:
            with self.dir.owned():
                self.skipped = self.dir.resumable_prefix(steps)
                todo = [s for s in steps if s not in self.skipped]
                self.preflight(todo)
                for step in self.skipped:
                    self.context.log(f"== {step} == finished earlier in {self.dir.root} ({step}.json); skipped")
                stale = self.dir.begin(self.config, todo)
                if stale:
                    self.context.log(f"removed the outputs of {', '.join(stale)}: they were made from outputs "
                                     "this run replaces (run those steps again)")
                with dtype_policy(self.config.mixed_precision):
                    self._run_steps(todo)
                return report.write_run_report(self.dir, self.config.search.budget) if self.chief else []
        finally:
            self.dir.close()

    def _run_steps(self, steps):
        """Runs `steps`: training steps on every worker, the others on the chief only."""
        for step in steps:
            if self.context.multi_worker:
                if not BY_NAME[step].trains:
                    if self.chief:
                        self._run_step(step)
                    continue
                distributed.barrier(self.context.strategy)  # the chief's earlier outputs are written
            self._run_step(step)

    def _run_step(self, step):
        self.context.log(f"== {step} ==")
        start = time.time()
        self.dir.start_step(step)
        result = BY_NAME[step].run(self.context)
        result["seconds"] = round(time.time() - start, 1)
        self.dir.finish_step(step, result)

