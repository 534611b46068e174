"""The DMCP pipeline: search, sample, retrain, eval, export, and a report.

Each step reads what earlier steps left in the run directory and writes its own
outputs there (atomically), so any step can run on its own (`--mode=sample`) and
pick up a previous run. Everything that can be checked is checked before the
first step trains: the config, the run directory, the data, the budget.

The training steps (search, retrain) save checkpoints into
`checkpoints/<step>/` every `checkpoint_every_steps` steps and at every epoch end;
the same command started again continues an interrupted run: finished steps are
skipped and the interrupted one resumes from its last intact checkpoint, on the
same batches (the seeded training stream starts again at the resumed step).
Under `MultiWorkerMirroredStrategy` every worker trains, but only the chief
writes the run directory (which must be on a file system all workers share) and
runs the single-machine steps (sample, eval, export, report).
"""

import contextlib
import json
import os
import shutil
import tempfile
import time
import zipfile

import keras
import numpy as np
import tensorflow as tf

from dmcp_tf import baselines, calibration, costs, distributed, export, pretrained, report, sampling, training
from dmcp_tf import latency as latency_lib
from dmcp_tf import trajectory as trajectory_lib
from dmcp_tf import config as config_lib
from dmcp_tf import data as data_lib
from dmcp_tf.checkpoints import CheckpointCallback, CheckpointManager, list_checkpoints, seed_generator_states
from dmcp_tf.graph import ChannelGraph
from dmcp_tf.io_utils import atomic_write_json, atomic_write_text, file_sha256
from dmcp_tf.models import build_supernet
from dmcp_tf.rebuild import rebuild
from dmcp_tf.supernet import DMCPModel, SearchPhaseSwitch

STEPS = ("search", "sample", "retrain", "eval", "export")
UNIFORM_ROW = "uniform width"  # the summary row of the uniform baseline: "uniform width, same <unit>"
OUTPUTS = {
    "search": ("supernet.keras", "search.json", "search_trajectory.png"),
    "sample": ("channels.json", "samples.json", "structure.md", "cost_histogram.png", "channel_distributions.png"),
    "retrain": ("slim.keras", "retrain.json"),
    "eval": ("eval.json",),
    "export": ("export", "export.json"),
    "latency_table": ("latency_table.json",),  # --mode=latency_table only; the step's JSON is the table
}
INPUTS = {"sample": ("supernet.keras",), "retrain": ("supernet.keras", "channels.json"),
          "eval": ("supernet.keras", "slim.keras"), "export": ("supernet.keras", "slim.keras")}
# Config sections that define the supernet: a run directory belongs to one of them.
IDENTITY = ("data.name", "data.image_size", "mixed_precision", "model", "search")
# Keys inside those sections that do not change results (may differ on a resumed run).
NOT_IDENTITY = ("search.checkpoint_every_steps", "retrain.checkpoint_every_steps")
# Identity keys added after runs were made: a config.json without them had these values.
IDENTITY_DEFAULTS = {"mixed_precision": "float32"}
TRAINING_STEPS = ("search", "retrain")  # run on every worker; the others on the chief only


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


class PipelineError(ValueError):
    """The run cannot start as asked; the message says what to change."""


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
        self.config = config
        self.run_dir = run_dir
        self.overwrite = overwrite
        self.strategy = strategy or tf.distribute.get_strategy()
        self.multi_worker = distributed.is_multi_worker(self.strategy)
        self.chief = distributed.is_chief(self.strategy)
        self.deterministic = deterministic
        self.log = log if self.chief else (lambda *args, **kwargs: None)
        # Workers other than the chief write what they must write to a scratch folder.
        self._scratch = None if self.chief else tempfile.mkdtemp(prefix=f"dmcp-{distributed.task_name(self.strategy)}-")
        self._data = None
        self._supernet = None
        self._slim = None
        self._full = None
        self.skipped = []

    def path(self, *parts):
        """A file of the run directory (what steps read)."""
        return os.path.join(self.run_dir, *parts)

    def out(self, *parts):
        """Where this process writes a run-directory file: the run directory on the chief."""
        return os.path.join(self._scratch or self.run_dir, *parts)

    def _local_scope(self):
        """Scope for models used on one machine (evaluation, export): not multi-worker."""
        return contextlib.nullcontext() if self.multi_worker else self.strategy.scope()

    # --- checks before any training ------------------------------------------
    def preflight(self, steps):
        """Raises `PipelineError`/`ValueError` for anything that would fail later."""
        config_lib.validate(self.config)
        latency = latency_lib.configured_cost(self.config.search)
        self.budget = costs.Budget.parse(self.config.search.budget, latency=latency)  # read from here on
        if self.multi_worker and self.strategy.num_replicas_in_sync > self.config.data.batch_size:
            raise PipelineError(f"data.batch_size {self.config.data.batch_size} is smaller than the number of "
                                f"replicas ({self.strategy.num_replicas_in_sync}).")
        self._check_run_dir(steps)
        missing = [
            f for step in steps for f in INPUTS.get(step, ())
            if not any(f in OUTPUTS[s] for s in steps if STEPS.index(s) < STEPS.index(step))
            and not os.path.exists(self.path(f))
        ]
        if missing:
            raise PipelineError(
                f"Step(s) {', '.join(steps)} need {', '.join(sorted(set(missing)))} in {self.run_dir}, "
                "which an earlier step writes. Run the earlier steps first (--mode=all does all of them) "
                "or point --run_dir at a run directory that has them."
            )
        if any(s in steps for s in ("search", "retrain", "eval", "export")):
            self.data  # noqa: B018 (loads the data now, so a missing data set fails before training)
        test_limit, wanted = self.config.data.test_limit, self.config.export.representative_images
        if "export" in steps and test_limit and test_limit < wanted:
            raise PipelineError(f"export.representative_images={wanted} needs that many test images, but "
                                f"data.test_limit={test_limit}: lower the one or raise the other.")
        if "search" in steps:
            self._build_search_model(steps_per_epoch=1)  # checks the model and the budget

    def _check_run_dir(self, steps):
        saved = self.path("config.json")
        if os.path.exists(saved) and not self.overwrite:
            with open(saved) as f:
                previous = json.load(f)
            current = json.loads(self.config.to_json())
            changed = [key for key in IDENTITY if _identity_value(previous, key) != _identity_value(current, key)]
            if changed:
                raise PipelineError(
                    f"Run directory {self.run_dir} belongs to another config (these settings differ: "
                    f"{', '.join(changed)}). Use another --run_dir, or --overwrite to replace that run."
                )
        if self.overwrite:
            return
        if not os.path.exists(saved) and os.path.exists(self.path("report.md")):
            raise PipelineError(f"Run directory {self.run_dir} holds a report.md that no run of this config wrote "
                                "(there is no config.json). Choose another --run_dir, or --overwrite to replace it.")
        # A step that started in this run directory but did not finish (no <step>.json) left
        # partial outputs: they are redone, not protected.
        interrupted = {s for s in steps if os.path.exists(self.path(_started(s)))
                       and not os.path.exists(self.path(f"{s}.json"))}
        existing = [f for step in steps if step not in interrupted for f in OUTPUTS[step]
                    if os.path.exists(self.path(f))]
        if existing:
            raise PipelineError(
                f"Run directory {self.run_dir} already holds {', '.join(existing)}, which this run would "
                "replace. Pass --overwrite to replace them, or choose another --run_dir."
            )

    def finished(self, step):
        """True if `step` completed in the run directory (its outputs and `<step>.json` exist)."""
        return all(os.path.exists(self.path(f)) for f in OUTPUTS[step] + (f"{step}.json",))

    def _resumable_prefix(self, steps):
        """Leading steps that an earlier, interrupted run finished: skipped when it is started again.

        None if every step finished: running them again would replace their
        outputs, which needs --overwrite (and then nothing is skipped). The first
        unfinished step must not have outputs yet (`_check_run_dir` refuses then).
        """
        if self.overwrite:
            return []
        done = []
        for step in steps:
            if not self.finished(step):
                break
            done.append(step)
        return done if len(done) < len(steps) else []

    # --- shared inputs ------------------------------------------------------
    @property
    def data(self):
        if self._data is None:
            d = self.config.data
            self._data = data_lib.load(
                d.name, batch_size=d.batch_size, data_dir=d.data_dir or None,
                train_limit=d.train_limit or None, test_limit=d.test_limit or None,
                image_size=d.image_size or None, augment=d.augment, seed=self.config.seed,
            )
        return self._data

    def _new_supernet(self):
        m = self.config.model
        sync = self.strategy.num_replicas_in_sync > 1
        return build_supernet(
            m.name, input_shape=self.data.input_shape, num_classes=self.data.num_classes,
            gate_kind=m.gate_kind, sync_bn=sync, **m.options.to_dict(),
        )

    @property
    def supernet(self):
        if self._supernet is None:
            self._supernet = self._load_model("supernet.keras", "search")
        return self._supernet

    @property
    def slim(self):
        if self._slim is None:
            self._slim = self._load_model("slim.keras", "retrain")
        return self._slim

    def _load_model(self, name, step):
        """Loads a model the run wrote; a damaged file is an error that names it and the step that rewrites it."""
        path = self.path(name)
        try:
            with self._local_scope():
                return keras.models.load_model(path, safe_mode=True, compile=False)
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
            raise PipelineError(f"{path} cannot be read ({type(error).__name__}: {error}): the file is damaged "
                                f"or incomplete. Write it again with --mode={step} --overwrite (the steps after "
                                "it then need rerunning too).") from None

    def target(self, graph):
        """The budget's target in its unit, for the supernet of `graph`."""
        return self.budget.target(graph)

    # --- steps --------------------------------------------------------------
    def run(self, steps):
        """Runs `steps` in order, then writes the report; returns the summary rows.

        Started again after an interruption, it skips the steps that finished and
        resumes the interrupted one from its last checkpoint. The steps run under
        the Keras dtype policy `config.mixed_precision` (`dtype_policy`); the
        global policy is restored afterwards.
        """
        if self.deterministic:
            enable_determinism(self.config.seed)
        self.skipped = self._resumable_prefix(steps)
        todo = [s for s in steps if s not in self.skipped]
        self.preflight(todo)
        for step in self.skipped:
            self.log(f"== {step} == finished earlier in {self.run_dir} ({step}.json); skipped")
        if self.chief and self.overwrite:
            for step in todo:
                shutil.rmtree(self.path("checkpoints", step), ignore_errors=True)
        if not os.path.exists(self.path("config.json")) or self.overwrite:
            atomic_write_json(self.out("config.json"), json.loads(self.config.to_json()))
        try:
            with dtype_policy(self.config.mixed_precision):
                self._run_steps(todo)
            return self.write_report() if self.chief else []
        finally:
            if self._scratch:
                shutil.rmtree(self._scratch, ignore_errors=True)

    def _run_steps(self, steps):
        """Runs `steps`: training steps on every worker, the others on the chief only."""
        for step in steps:
            if self.multi_worker:
                if step not in TRAINING_STEPS:
                    if self.chief:
                        self._run_step(step)
                    continue
                distributed.barrier(self.strategy)  # the chief's earlier outputs are written
            self._run_step(step)

    def _run_step(self, step):
        self.log(f"== {step} ==")
        start = time.time()
        if self.chief:  # marks the step's outputs as this run's until <step>.json says it finished
            atomic_write_text(self.path(_started(step)), "")
        result = getattr(self, f"_{step}")()
        result["seconds"] = round(time.time() - start, 1)
        atomic_write_json(self.out(f"{step}.json"), result)
        if self.chief:
            os.remove(self.path(_started(step)))
        if self.chief and step in TRAINING_STEPS:
            shutil.rmtree(self.path("checkpoints", step), ignore_errors=True)  # its outputs are written
            with contextlib.suppress(OSError):
                os.rmdir(self.path("checkpoints"))  # if no other step's checkpoints remain

    # --- training with checkpoints -------------------------------------------
    def _checkpoint_identity(self, step, steps_per_epoch, **more):
        """What a checkpoint of `step` must have been written by (config values that change results)."""
        config = json.loads(self.config.to_json())
        d = config["data"]
        section = {k: v for k, v in config[step].items() if f"{step}.{k}" not in NOT_IDENTITY}
        return dict({
            "step": step, "seed": config["seed"], "mixed_precision": config["mixed_precision"],
            "model": config["model"], step: section,
            "data": {k: d[k] for k in ("name", "image_size", "batch_size", "train_limit", "augment")},
            "steps_per_epoch": steps_per_epoch,
        }, **more)

    def _checkpoint_manager(self, step, objects, identity):
        manager = CheckpointManager(self.path("checkpoints", step), objects, identity=identity,
                                    keep=self.config.checkpoints_to_keep, is_chief=self.chief, log=self.log)
        manager.clean_temporary()
        return manager

    def _restore(self, manager, total_steps):
        """Restores the newest intact checkpoint; returns (step, extra). Workers must agree on the step."""
        restored = manager.restore()
        step = restored.step if restored else 0
        distributed.agree(self.strategy, step, f"the checkpoint to resume from in {manager.directory}")
        if restored:
            self.log(f"resuming from step {step} of {total_steps} ({restored.path})")
            return step, restored.extra
        return 0, {}

    def _train(self, model, *, epochs, steps_per_epoch, initial_step, callbacks, validation_data=None):
        """Trains from global step `initial_step` to the end, on the batches an uninterrupted run sees.

        The training data is one seeded stream (`DataBundle.train_stream`), started
        at `initial_step`. `fit` under one machine's strategies; under
        MultiWorkerMirroredStrategy, where Keras 3 `fit` fails, a loop through
        `strategy.run`.
        """
        stop = epochs * steps_per_epoch
        if self.multi_worker:
            if isinstance(model, DMCPModel):
                callbacks = list(callbacks) + [SearchPhaseSwitch()]
            distributed.train_loop(model, self.data.train_stream(initial_step, stop), epochs=epochs,
                                   steps_per_epoch=steps_per_epoch, initial_step=initial_step, callbacks=callbacks)
            return
        epoch, batch = divmod(initial_step, steps_per_epoch)
        if batch:  # finish the interrupted epoch, then the others
            model.fit(self.data.train_stream(initial_step, stop), initial_epoch=epoch, epochs=epoch + 1,
                      steps_per_epoch=steps_per_epoch - batch, validation_data=validation_data, shuffle=False,
                      callbacks=callbacks)
            epoch += 1
        if epoch < epochs:
            model.fit(self.data.train_stream(epoch * steps_per_epoch, stop), initial_epoch=epoch, epochs=epochs,
                      steps_per_epoch=steps_per_epoch, validation_data=validation_data, shuffle=False,
                      callbacks=callbacks)

    def _tensorboard(self, step):
        return [keras.callbacks.TensorBoard(self.path("logs", step))] if self.chief else []

    def _steps_per_epoch(self, configured):
        return configured or self.data.train_examples // self.config.data.batch_size

    def _build_search_model(self, steps_per_epoch):
        with self.strategy.scope():
            return training.build_search_model(self._new_supernet(), self.config.search, steps_per_epoch,
                                               seed=self.config.seed, budget=self.budget)

    def _search(self):
        s = self.config.search
        keras.utils.set_random_seed(self.config.seed)
        steps = self._steps_per_epoch(s.steps_per_epoch)
        model = self._build_search_model(steps)
        self.log(f"supernet {model.supernet.name}: {costs.MACS.format(model.full_flops)}, "
                 f"{len(model.gates)} gates, budget {model.cost.format(model.target)}")
        if s.initial_weights:
            pretrained.load_initial_weights(model.supernet, s.initial_weights, sort_channels=s.sort_initial_channels)
            self.log(f"search starts from the weights of {s.initial_weights}"
                     + ("" if s.train_weights else "; they stay frozen, only the gates learn"))
        start_cost = model.initialize_gates(s.init)
        self.log(f"search start {s.init!r}: expected {model.cost.unit} {start_cost / model.target:.3f} of the budget")
        manager = self._checkpoint_manager("search", model.search_state(), self._checkpoint_identity("search", steps))
        start, extra = self._restore(manager, model.total_steps)
        tracker = trajectory_lib.SearchTrajectory(
            s.trajectory_every_steps, log_dir=self.path("logs", "search", "trajectory") if self.chief else None,
            records=extra.get("trajectory"))
        saver = CheckpointCallback(manager, s.checkpoint_every_steps, history=extra.get("history"),
                                   extra={"trajectory": tracker.records})
        if start < model.total_steps:
            self._train(model, epochs=s.epochs, steps_per_epoch=steps, initial_step=start,
                        callbacks=self._tensorboard("search") + [
                            training.NonFiniteGuard("search", "search.learning_rate"), tracker, saver])
        _save_model(model.supernet, self.out("supernet.keras"))
        self._supernet = model.supernet
        expected = float(model.cost.expected(model.graph))
        settling = trajectory_lib.settling(tracker.records, model.warmup_steps, model.total_steps)
        if self.chief:
            report.plot_search_trajectory(tracker.records, model.warmup_steps, self.path("search_trajectory.png"),
                                          title=f"Search of {model.supernet.name} at {s.budget} (start {s.init!r})",
                                          unit=model.cost.unit)
        return {
            "cost": model.cost.name, "unit": model.cost.unit, "full_cost": model.cost.of(model.graph),
            "target": model.target, "expected_cost": expected, "full_flops": model.full_flops,
            "steps": model.total_steps, "warmup_steps": model.warmup_steps, "resumed_from_step": start or None,
            "replicas": self.strategy.num_replicas_in_sync, "init": s.init, "start_cost": start_cost,
            "settling": settling, "history": saver.history, "trajectory": tracker.records,
        }

    def _sample(self):
        graph = ChannelGraph(self.supernet)
        cost, target = self.budget.cost, self.target(graph)
        cfg = self.config.sample
        rng = np.random.default_rng(self.config.seed)
        chosen = sampling.round_config(graph, sampling.expected_config(graph), cfg.round_to)
        sampling.save_config(self.path("channels.json"), chosen)
        direct, note = [], None
        try:
            for _ in range(cfg.direct_samples):
                sample = sampling.sample_within_budget(graph, target, rng, cost=cost, tolerance=cfg.tolerance)
                direct.append({"channels": sample, "cost": cost.of(graph, sample), "flops": graph.flops(sample)})
        except RuntimeError as error:
            note = str(error)
        stats = sampling.cost_statistics(graph, rng, cfg.statistics_samples, cost)
        dists = sampling.channel_distributions(graph, rng, target, cost=cost, count=cfg.statistics_samples,
                                               tolerance=cfg.tolerance)
        report.plot_cost_histogram(stats["values"], target, self.path("cost_histogram.png"), tolerance=cfg.tolerance,
                                   title=f"{cost.unit} of {cfg.statistics_samples} direct samples", unit=cost.unit)
        report.plot_channel_distributions(dists, {g.name: g.channels for g in graph.gates},
                                          self.path("channel_distributions.png"), expected=chosen)
        structure = report.structure_markdown(graph.gate_rows(chosen), graph.layer_rows(chosen),
                                              f"{self.supernet.name} at {self.config.search.budget} (expected sampling"
                                              + (f", rounded to multiples of {cfg.round_to})" if cfg.round_to > 1 else ")"))
        atomic_write_text(self.path("structure.md"), structure)
        atomic_write_json(self.path("samples.json"), {"direct": direct, "note": note})
        self.log(f"expected sampling: {cost.format(cost.of(graph, chosen))} (budget {cost.format(target)}); "
                 f"direct samples: mean {cost.format(stats['mean'])}")
        return {
            "cost": cost.name, "unit": cost.unit, "target": target, "expected_cost": float(cost.expected(graph)),
            "es_cost": cost.of(graph, chosen), "es_flops": graph.flops(chosen), "es_params": graph.params(chosen),
            "round_to": cfg.round_to, "direct_mean_cost": stats["mean"], "direct_std_cost": stats["std"],
            "direct_samples": len(direct), "within_budget_samples": int(len(next(iter(dists.values())))),
        }

    def _calibrate(self, model):
        batches = self.data.calibration_batches(self.config.sample.calibration_batches)
        calibration.calibrate_batch_norm(model, batches)

    def _retrain(self):
        r = self.config.retrain
        channels = sampling.load_config(self.path("channels.json"))
        graph = ChannelGraph(self.supernet)
        graph.validate_config(channels, complete=True)
        keras.utils.set_random_seed(self.config.seed)
        steps = self._steps_per_epoch(r.steps_per_epoch)
        resuming = bool(list_checkpoints(self.path("checkpoints", "retrain")))
        inherited = None
        with self.strategy.scope():
            slim = rebuild(self.supernet, channels, copy_weights=not r.from_scratch)
        if not r.from_scratch and not resuming:
            # Under several workers the BN calibration and the evaluation of the
            # inherited weights run on a local copy (Keras 3 evaluate does not run
            # under MultiWorkerMirroredStrategy), whose weights are then copied in.
            local = rebuild(self.supernet, channels) if self.multi_worker else slim
            with self._local_scope():
                self._calibrate(local)
                if self.chief:
                    inherited = training.evaluate(local, self.data.test)
                    self.log(f"inherited weights after BN calibration: top-1 {inherited['accuracy']:.4f}")
            if local is not slim:
                slim.set_weights(local.get_weights())
        with self.strategy.scope():
            training.compile_classifier(slim, r, steps * r.epochs)
            slim.optimizer.build(slim.trainable_variables)  # its variables exist before a restore
        identity = self._checkpoint_identity("retrain", steps, channels=channels,
                                             supernet_sha256=file_sha256(self.path("supernet.keras")))
        objects = {"model": slim, "optimizer": slim.optimizer, "random_state": seed_generator_states(slim)}
        manager = self._checkpoint_manager("retrain", objects, identity)
        start, extra = self._restore(manager, steps * r.epochs)
        inherited = extra.get("inherited", inherited)
        saver = CheckpointCallback(manager, r.checkpoint_every_steps, history=extra.get("history"),
                                   extra={"inherited": inherited})
        if start < steps * r.epochs:
            # Several workers: no per-epoch validation (the eval step measures the result).
            self._train(slim, epochs=r.epochs, steps_per_epoch=steps, initial_step=start,
                        callbacks=self._tensorboard("retrain") + [
                            training.NonFiniteGuard("retrain", "retrain.learning_rate"), saver],
                        validation_data=None if self.multi_worker else self.data.test)
        uniform = self._train_uniform(graph, self.budget.cost.of(graph, channels), steps) if r.compare_uniform else None
        _save_model(training.portable_copy(slim), self.out("slim.keras"))  # loads with plain Keras
        self._slim = None if self.multi_worker else slim
        return {
            "from_scratch": r.from_scratch, "inherited": inherited, "resumed_from_step": start or None,
            "history": saver.history, "uniform": uniform,
        }

    def _train_uniform(self, graph, target, steps):
        """Trains the uniform-width network of the slim model's cost (`target`) from scratch as the slim model was.

        `graph` is the supernet's `ChannelGraph`; returns the uniform network's test results.

        What DMCP's structure is worth: the same training, the same cost (of the
        budget's kind), widths chosen by one factor instead of the search.
        """
        r = self.config.retrain
        try:
            config, fraction, _ = baselines.uniform_config(graph, target, cost=self.budget.cost, tolerance=0.03)
        except ValueError as error:
            self.log(f"no uniform-width baseline: {error}")
            return {"note": str(error)}
        keras.utils.set_random_seed(self.config.seed)
        with self.strategy.scope():
            model = rebuild(self.supernet, config, copy_weights=False, name=f"{self.supernet.name}_uniform")
            training.compile_classifier(model, r, steps * r.epochs)
        macs = graph.flops(config)
        self.log(f"uniform width {fraction:.3f} ({costs.MACS.format(macs)}): training {r.epochs} epochs")
        self._train(model, epochs=r.epochs, steps_per_epoch=steps, initial_step=0, callbacks=[])
        measured = {"fraction": fraction, "flops": macs, "params": graph.params(config), "unit": self.budget.cost.unit}
        if self.multi_worker:
            return dict(measured, note="not evaluated")
        return dict(training.evaluate(model, self.data.test), channels=config, **measured)

    def full_model(self):
        """The unpruned supernet as a plain model, batch norm calibrated for the full width."""
        if self._full is None:
            with self._local_scope():
                self._full = rebuild(self.supernet, name=f"{self.supernet.name}_full")
                self._calibrate(self._full)
        return self._full

    def _eval(self):
        results = {}
        for label, model in (("full", self.full_model()), ("slim", self.slim)):
            graph = ChannelGraph(model)
            results[label] = dict(training.evaluate(model, self.data.test), flops=graph.flops(), params=graph.params())
            self.log(f"{label}: top-1 {results[label]['accuracy']:.4f}, {costs.MACS.format(graph.flops())}")
        return results

    def _export(self):
        e = self.config.export
        images = self.data.representative_images(e.representative_images)
        test = _test_images(self.data.test, e.parity_images)
        export.export_saved_model(self.slim, self.path("export", "saved_model"))
        variants = [("slim", self.slim, q) for q in config_lib.quantizations(self.config)]
        variants.append(("full", self.full_model(), "float32"))
        results = {}
        for label, model, quantization in variants:
            path = export.export_tflite(model, self.path("export", f"{label}_{quantization}.tflite"),
                                        quantization=quantization, representative_images=images)
            parity = export.tflite_parity(path, model, test)
            results[f"{label}_{quantization}"] = {
                "path": os.path.relpath(path, self.run_dir), "bytes": export.tflite_model_size_bytes(path),
                "latency_ms": export.tflite_latency_ms(path, threads=e.latency_threads, runs=e.latency_runs),
                "top1_agreement": parity.top1_agreement, "max_abs_diff": parity.max_abs_diff,
            }
            self.log(f"{label} {quantization}: {results[f'{label}_{quantization}']}")
        return results

    def _latency_table(self):
        """Measures the supernet's per-layer TFLite latency (`latency.measure_latency_table`); returns the table."""
        return latency_lib.measure_latency_table(
            self._new_supernet(), quantizations=config_lib.quantizations(self.config),
            threads=self.config.export.latency_threads, log=self.log).to_json()

    # --- report -------------------------------------------------------------
    def _load_json(self, name):
        path = self.path(name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def summary_rows(self):
        """Before/after rows of the console table and the report."""
        evaluated, exported = self._load_json("eval.json") or {}, self._load_json("export.json") or {}
        uniform = (self._load_json("retrain.json") or {}).get("uniform") or {}
        rows = []
        for label, title in (("full", "unpruned supernet (searched, not retrained)"), ("slim", "DMCP slim"),
                             ("uniform", f"{UNIFORM_ROW}, same {uniform.get('unit', 'MACs')}")):
            ev = uniform if label == "uniform" else evaluated.get(label, {})
            if label == "uniform" and "accuracy" not in ev:
                continue
            tfl = exported.get(f"{label}_float32", {})
            int8 = exported.get(f"{label}_int8", {})
            rows.append({
                "model": title, "macs": _fmt(ev.get("flops")), "params": _fmt(ev.get("params")),
                "top1": ev.get("accuracy"), "fp32_kb": _kb(tfl.get("bytes")), "fp32_ms": tfl.get("latency_ms"),
                "int8_kb": _kb(int8.get("bytes")), "int8_ms": int8.get("latency_ms"),
            })
        return rows

    def _comparison_section(self, rows):
        """The line that says what DMCP's structure bought over uniform width (if both were trained)."""
        top1 = {row["model"]: row["top1"] for row in rows}
        uniform_row = next((row["model"] for row in rows if row["model"].startswith(UNIFORM_ROW)), None)
        slim, uniform = top1.get("DMCP slim"), top1.get(uniform_row)
        if slim is None or uniform is None:
            return []
        unit = uniform_row.rsplit(" ", 1)[-1]
        return [("DMCP against uniform width", (
            f"DMCP slim {slim:.4f} against uniform width {uniform:.4f} at the same {unit}, trained the same way: "
            f"{100 * (slim - uniform):+.2f} points top-1 (one seed; `docs/benchmarks.md` section 3 has the "
            "comparison over seeds)."))]

    SUMMARY_COLUMNS = [("model", "model"), ("macs", "MACs"), ("params", "params"), ("top1", "top-1"),
                       ("fp32_kb", "TFLite fp32 KB"), ("fp32_ms", "fp32 ms"), ("int8_kb", "int8 KB"),
                       ("int8_ms", "int8 ms")]

    def write_report(self):
        """Writes report.md from whatever the run directory holds; returns the summary rows."""
        rows = self.summary_rows()
        search, sample = self._load_json("search.json"), self._load_json("sample.json")
        sections = [("Summary", report.markdown_table(rows, self.SUMMARY_COLUMNS))]
        sections += self._comparison_section(rows)
        if search:
            sections.append(("Search", (
                f"Budget `{self.config.search.budget}` = {_fmt(search['target'])} {search['unit']} of "
                f"{_fmt(search['full_cost'])}; expected {search['unit']} after search {_fmt(search['expected_cost'])} "
                f"({search['expected_cost'] / search['target']:.3f} of the budget), "
                f"{search['steps']} steps ({search['warmup_steps']} warm-up), {search['seconds']} s. "
                f"Start `{search.get('init', 'authors')}`.\n\n"
                f"{trajectory_lib.verdict(search.get('settling'))}\n\n"
                "![search trajectory](search_trajectory.png)")))
        if sample:
            sections.append(("Sampling", (
                f"Expected sampling: {_fmt(sample['es_cost'])} {sample['unit']} "
                f"({sample['es_cost'] / sample['target']:.3f} of the budget). "
                f"Direct samples: mean {_fmt(sample['direct_mean_cost'])} {sample['unit']}.\n\n"
                f"![{sample['unit']} histogram](cost_histogram.png)\n\n![channels](channel_distributions.png)")))
        exported = self._load_json("export.json")
        if exported:
            parity_rows = [dict(name=k, **{m: v[m] for m in ("bytes", "latency_ms", "top1_agreement", "max_abs_diff")})
                           for k, v in exported.items() if isinstance(v, dict)]
            sections.append(("TFLite", report.markdown_table(parity_rows, [
                ("name", "model"), ("bytes", "bytes"), ("latency_ms", "latency ms"),
                ("top1_agreement", "top-1 agreement with Keras"), ("max_abs_diff", "max |prob diff|")])))
        if os.path.exists(self.path("structure.md")):
            with open(self.path("structure.md")) as f:
                sections.append(("Structure", f.read()))
        report.write_report(self.path("report.md"), sections)
        return rows


def _started(step):
    """The marker a step leaves in the run directory while it runs (removed when it finishes)."""
    return f".{step}.started"


def _lookup(tree, dotted):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _identity_value(tree, dotted):
    """`_lookup`, without the keys that do not change results (`NOT_IDENTITY`)."""
    value = _lookup(tree, dotted)
    if value is None:
        value = IDENTITY_DEFAULTS.get(dotted)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if f"{dotted}.{k}" not in NOT_IDENTITY}
    return value


def _save_model(model, path):
    """Saves a `.keras` file atomically (Keras needs the suffix on the temporary name)."""
    tmp = f"{path}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def _test_images(dataset, count):
    images = []
    for x, _ in dataset:
        images.append(np.asarray(x))
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count]


def _fmt(value):
    return None if value is None else report.format_count(value)


def _kb(value):
    return None if value is None else round(value / 1024, 1)
