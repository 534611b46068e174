"""Distribution strategies, and a training loop for several machines.

- `make_strategy(name)`: one device, `MirroredStrategy` over the local GPUs, or
  `MultiWorkerMirroredStrategy` over the machines listed in `TF_CONFIG`.
- `train_loop(model, dataset, ...)`: runs `model.train_step` through
  `strategy.run`, epoch by epoch, with Keras callbacks, like `fit`. Keras 3
  `fit()` fails under `MultiWorkerMirroredStrategy` (keras issue 20585: its data
  adapter and its per-replica log reduction do not handle that strategy), so
  the pipeline uses this loop there. It can also start in the middle of an
  epoch, which a resumed run needs.
- `is_chief`, `barrier`, `agree`: what multi-worker code needs to write files on
  one machine only and keep the workers in step.

Every worker runs the same program (same flags, its own `TF_CONFIG` task); the
global batch (`data.batch_size`) is split over all replicas of all workers, each
worker reading its share of every global batch, so the batches, and the result,
are those of one machine.

Example (on every machine, with TF_CONFIG set):
    strategy = make_strategy("multi_worker")
    with strategy.scope():
        model = DMCPModel(...); model.compile()
    train_loop(model, dataset, epochs=2, steps_per_epoch=100)
"""

import json
import os
import socket
import sys
import time

import keras
import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
WORKER_TIMEOUT = 600  # seconds a multi-worker task waits for the others to start (--worker_timeout)
WAIT_REPORT_EVERY = 10  # seconds between the lines that say which tasks it waits for


class StrategyError(ValueError):
    """The requested distribution cannot be set up; the message says why."""


def cluster_workers():
    """Number of tasks `TF_CONFIG` lists (0 when it is not set)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]}") from e
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def _log(message):
    print(message, file=sys.stderr, flush=True)


def wait_for_workers(timeout=WORKER_TIMEOUT, *, poll=1.0, log=_log):
    """Waits until every other task `TF_CONFIG` lists accepts connections, before TensorFlow connects to them.

    `MultiWorkerMirroredStrategy` waits for missing workers inside TensorFlow:
    silently, forever, deaf to SIGTERM and Ctrl-C. This waits in Python
    instead: it says which tasks it waits for every `WAIT_REPORT_EVERY` seconds,
    stops on a signal, and gives up after `timeout` seconds. Meanwhile this task
    listens on its own address, so the others see it start too.

    Raises:
        StrategyError: a task did not start within `timeout`, or this task's port is taken.
    """
    config = json.loads(os.environ["TF_CONFIG"])
    task = config.get("task", {})
    tasks = {f"{role} {i}": address for role in ("chief", "worker")
             for i, address in enumerate(config.get("cluster", {}).get(role, []))}
    own = tasks.pop(f"{task.get('type')} {task.get('index')}", None)
    listener = socket.socket()
    try:
        if own is not None:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("", int(own.rpartition(":")[2])))
            except OSError as e:
                raise StrategyError(f"This task's address {own} (TF_CONFIG) cannot be listened on: {e}. Another "
                                    "process uses the port: stop it or give this task another port.") from e
            listener.listen(len(tasks) + 1)
        start, reported = time.monotonic(), None
        pending = dict(tasks)
        while True:
            pending = {name: address for name, address in pending.items() if not _accepts(address)}
            waited = time.monotonic() - start
            if not pending:
                return
            if waited >= timeout:
                raise StrategyError(
                    f"Gave up after {waited:.0f} s waiting for {_tasks(pending)} (TF_CONFIG) to start. Start the same "
                    "command there (with its own TF_CONFIG task), check the addresses and firewalls, or wait longer "
                    "with --worker_timeout=SECONDS.")
            if reported is None or time.monotonic() - reported >= WAIT_REPORT_EVERY:
                log(f"waiting for {_tasks(pending)} (TF_CONFIG) to start: {waited:.0f} s of {timeout:g} s "
                    "(--worker_timeout)")
                reported = time.monotonic()
            time.sleep(min(poll, max(0.0, timeout - waited)))
    finally:
        listener.close()


def _accepts(address, timeout=1.0):
    """True if `host:port` accepts a TCP connection now."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _tasks(tasks):
    return ", ".join(f"{name} at {address}" for name, address in tasks.items())


def make_strategy(name="auto", worker_timeout=WORKER_TIMEOUT):
    """Returns the `tf.distribute` strategy `name` names.

    Args:
        name: `default` (one device), `mirrored` (every local GPU, or every
            logical CPU device when there is no GPU), `multi_worker` (the
            cluster in `TF_CONFIG`), or `auto`: `multi_worker` when `TF_CONFIG`
            lists several tasks, else `mirrored` when several GPUs are visible,
            else `default`.
        worker_timeout: seconds `multi_worker` waits for the other tasks to start (`wait_for_workers`).

    Call it before any other TensorFlow work: `MultiWorkerMirroredStrategy`
    configures the runtime's collective operations, which must happen first.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
    if name == "auto":
        if cluster_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker":
        if cluster_workers() < 1:
            raise StrategyError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}} '
                "on the first machine (index 1 on the second, ...)."
            )
        wait_for_workers(worker_timeout)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as e:
            raise StrategyError(f"Could not start MultiWorkerMirroredStrategy from TF_CONFIG: {e}") from e
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy=None):
    """True on the one task that writes files: task `chief`, else worker 0, else a single process."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def task_name(strategy=None):
    """`worker-1`, `chief-0`, ... (empty for a single process)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None or not resolver.task_type:
        return ""
    return f"{resolver.task_type}-{resolver.task_id}"


def _all_sum(strategy, values):
    """Sums float values over every replica of every worker (a collective)."""
    values = tf.constant(values, tf.float64)
    per_replica = strategy.run(lambda: tf.identity(values))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy().tolist()


def barrier(strategy):
    """Waits until every worker gets here (a no-op for one process)."""
    if is_multi_worker(strategy):
        _all_sum(strategy, [1.0])


def agree(strategy, value, what):
    """Checks that every worker holds the same integer `value` (e.g. the restored step).

    Raises:
        StrategyError: the workers disagree; `what` names the value.
    """
    if not is_multi_worker(strategy):
        return value
    n = strategy.num_replicas_in_sync
    total, squares = _all_sum(strategy, [float(value), float(value) ** 2])
    if n * squares != total * total:  # equal iff every replica holds the same value
        raise StrategyError(
            f"The workers disagree on {what} (this worker: {value}, mean over workers: {total / n:g}). Every "
            "worker must see the same run directory: put it on a file system all machines share."
        )
    return value


def distribute(strategy, dataset):
    """`strategy.experimental_distribute_dataset` that keeps one machine's global batches.

    Data sharding (every worker reads the pipeline and keeps its part of each
    global batch) rather than file sharding: the batches, and so the result, do
    not depend on how many workers there are.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _make_step(model, strategy):
    def replica_step(batch):
        logs = model.train_step(batch)
        # Each replica reports its own running means; their mean is the global one
        # (equal shares of every global batch). The losses train_step reports are
        # unscaled (only the gradients are divided by the number of replicas).
        # Metric reads carry no device, which collectives need: take the batch's.
        with tf.device(tf.nest.flatten(batch)[0].device):
            logs = {k: tf.identity(v) for k, v in logs.items()}
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, logs)

    @tf.function(reduce_retracing=True)
    def step(iterator):
        outputs = strategy.run(replica_step, args=(next(iterator),))
        return {k: strategy.experimental_local_results(v)[0] for k, v in outputs.items()}

    return step


def train_loop(model, dataset, *, epochs, steps_per_epoch, initial_step=0, callbacks=None, verbose="auto"):
    """Trains `model` like `fit`, through `strategy.run(model.train_step)`; returns the `History`.

    Works under every strategy, including `MultiWorkerMirroredStrategy` (where
    Keras 3 `fit` does not). Callbacks get the calls `fit` makes; the progress
    bar runs on the chief only, and callbacks that write files should be given
    to the chief only (checkpoint managers handle workers themselves).

    Args:
        model: a compiled Keras model built in `strategy.scope()`; its strategy is
            the one in whose scope it was built.
        dataset: an infinite `tf.data.Dataset` of GLOBAL batches, positioned at
            `initial_step` (the caller skips what was already trained).
        epochs, steps_per_epoch: as for `fit`.
        initial_step: global steps already done (a resumed run starts inside
            epoch `initial_step // steps_per_epoch`).
        callbacks: Keras callbacks.
        verbose: as for `fit` (`"auto"` is 1, a progress bar).

    Returns:
        The `keras.callbacks.History` of the epochs run.
    """
    strategy = model.distribute_strategy
    chief = is_chief(strategy)
    verbose = 1 if verbose == "auto" else verbose
    iterator = iter(distribute(strategy, dataset))
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=chief and verbose != 0, model=model, verbose=verbose,
        epochs=epochs, steps=steps_per_epoch,
    )
    model.stop_training = False
    step = model.train_function = _make_step(model, strategy)
    callbacks.on_train_begin()
    first_epoch, first_batch = divmod(int(initial_step), steps_per_epoch)
    epoch_logs = {}
    for epoch in range(first_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        logs = {}
        for batch in range(first_batch if epoch == first_epoch else 0, steps_per_epoch):
            callbacks.on_train_batch_begin(batch)
            if model.train_function is not step:  # the model asked for a retrace (a new phase)
                step = model.train_function = _make_step(model, strategy)
            logs = step(iterator)
            callbacks.on_train_batch_end(batch, logs)
            if model.stop_training:
                break
        # Epoch averages: cross-replica reads of the metrics (a collective: every worker
        # takes part), for the names the step reports.
        results = model.get_metrics_result()
        epoch_logs = {k: float(tf.convert_to_tensor(results.get(k, v))) for k, v in logs.items()}
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callbacks.on_train_end(epoch_logs)
    return model.history
