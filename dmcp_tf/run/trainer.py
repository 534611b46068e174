"""Training in a run: checkpointed, resumable, on one machine or several.

A training step (search, retrain) saves checkpoints into `checkpoints/<step>/`
every `checkpoint_every_steps` steps and at every epoch end. Started again, it
resumes from its last intact checkpoint, on the same batches: the seeded training
stream starts again at the resumed step. Under one machine's strategies the model
trains with Keras `fit`; under `MultiWorkerMirroredStrategy`, where Keras 3 `fit`
fails, with `distributed.train_loop`.
"""

import dataclasses
import json
import math
import sys

import keras
import numpy as np

from dmcp_tf.run import distributed
from dmcp_tf.run.checkpoints import CheckpointCallback, CheckpointManager
from dmcp_tf.run.rundir import NOT_IDENTITY
from dmcp_tf.search.supernet import DMCPModel, SearchPhaseSwitch


@dataclasses.dataclass
class Resumed:
    """Where a training step starts: its checkpoints, the step restored (0 on a fresh start), their extra data."""

    manager: CheckpointManager
    start: int
    extra: dict


class Trainer:
    """Trains the models of one run.

    Args:
        run: the `RunContext` (config, run directory, strategy, data, log).
    """

    def __init__(self, run):
        self.run = run

    def steps_per_epoch(self, configured):
        """`configured`, or one pass over the training data if it is 0."""
        return configured or self.run.data.train_examples // self.run.config.data.batch_size

    def identity(self, step, steps_per_epoch, **more):
        """What a checkpoint of `step` must have been written by (config values that change results, and `more`)."""
        config = json.loads(self.run.config.to_json())
        d = config["data"]
        section = {k: v for k, v in config[step].items() if f"{step}.{k}" not in NOT_IDENTITY}
        return dict({
            "step": step, "seed": config["seed"], "mixed_precision": config["mixed_precision"],
            "model": config["model"], step: section,
            "data": {k: d[k] for k in ("name", "image_size", "batch_size", "train_limit", "augment")},
            "steps_per_epoch": steps_per_epoch,
        }, **more)

    def resume(self, step, objects, identity, total_steps):
        """Restores the newest intact checkpoint of `step` into `objects`; returns a `Resumed`.

        Args:
            step: `"search"` or `"retrain"`.
            objects: name -> what the checkpoints hold (`CheckpointManager`).
            identity: `identity(step, ...)`; a checkpoint of another identity is refused.
            total_steps: the step's training steps, for the log line.
        """
        run = self.run
        manager = CheckpointManager(run.dir.path("checkpoints", step), objects, identity=identity,
                                    keep=run.config.checkpoints_to_keep, is_chief=run.chief, log=run.log)
        manager.clean_temporary()
        restored = manager.restore()
        start = restored.step if restored else 0
        distributed.agree(run.strategy, start, f"the checkpoint to resume from in {manager.directory}")
        if not restored:
            return Resumed(manager, 0, {})
        run.log(f"resuming from step {start} of {total_steps} ({restored.path})")
        return Resumed(manager, start, restored.extra)

    def fit(self, model, resumed, *, step, epochs, steps_per_epoch, callbacks=(), extra=None, validation_data=None):
        """Trains `model` from `resumed.start` to the end, checkpointed; returns the per-epoch history.

        Training stops at the first non-finite loss (`NonFiniteGuard`, before any
        checkpoint of that step is saved). The history holds every epoch, across
        restarts.

        Args:
            model: a compiled model whose optimizer's `iterations` count the steps.
            resumed: what `resume` returned.
            step: `"search"` or `"retrain"` (its config section, TensorBoard folder, messages).
            epochs, steps_per_epoch: the whole training's length.
            callbacks: more callbacks, run before the checkpoint is saved.
            extra: JSON data saved with every checkpoint (it comes back as `resumed.extra`).
            validation_data: evaluated at every epoch end (one machine only).
        """
        saver = CheckpointCallback(resumed.manager, self.run.config[step].checkpoint_every_steps,
                                   history=resumed.extra.get("history"), extra=extra)
        if resumed.start < epochs * steps_per_epoch:
            tensorboard = [keras.callbacks.TensorBoard(self.run.dir.path("logs", step))] if self.run.chief else []
            guard = NonFiniteGuard(step, f"{step}.learning_rate")
            self.train(model, epochs=epochs, steps_per_epoch=steps_per_epoch, initial_step=resumed.start,
                       callbacks=[*tensorboard, guard, *callbacks, saver], validation_data=validation_data)
        return saver.history

    def train(self, model, *, epochs, steps_per_epoch, initial_step=0, callbacks=(), validation_data=None):
        """Trains from global step `initial_step` to the end, on the batches an uninterrupted run sees.

        The training data is one seeded stream (`DataBundle.train_stream`), started
        at `initial_step`: `fit` under one machine's strategies (finishing an
        interrupted epoch first); under MultiWorkerMirroredStrategy a loop through
        `strategy.run`.
        """
        data, stop = self.run.data, epochs * steps_per_epoch
        if self.run.multi_worker:
            if isinstance(model, DMCPModel):
                callbacks = [*callbacks, SearchPhaseSwitch()]
            distributed.train_loop(model, data.train_stream(initial_step, stop), epochs=epochs,
                                   steps_per_epoch=steps_per_epoch, initial_step=initial_step, callbacks=callbacks,
                                   verbose=progress_verbosity())
            return
        epoch, batch = divmod(initial_step, steps_per_epoch)
        if batch:  # finish the interrupted epoch, then the others
            model.fit(data.train_stream(initial_step, stop), initial_epoch=epoch, epochs=epoch + 1,
                      steps_per_epoch=steps_per_epoch - batch, validation_data=validation_data, shuffle=False,
                      callbacks=list(callbacks), verbose=progress_verbosity())
            epoch += 1
        if epoch < epochs:
            model.fit(data.train_stream(epoch * steps_per_epoch, stop), initial_epoch=epoch, epochs=epochs,
                      steps_per_epoch=steps_per_epoch, validation_data=validation_data, shuffle=False,
                      callbacks=list(callbacks), verbose=progress_verbosity())


def progress_verbosity():
    """Keras' `verbose` for training: a progress bar with ETA on a terminal, one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite: the training cannot give a usable model."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training with `TrainingDivergedError` at the first non-finite loss (or expected
    MACs), or at the end of an epoch whose weights are no longer all finite.

    Batch norm can keep the loss finite while the weights before it explode to
    infinity (a learning rate far too high); such a model would be saved and then
    crash the TFLite interpreter, so the weights are checked once an epoch.
    Put it before the checkpoint callback: the step that diverged is then not
    saved, and the earlier checkpoints stay.

    Args:
        stage: `"search"` or `"retrain"`, named in the message.
        learning_rate_key: the config key to lower, named in the message.
    """

    WATCHED = ("loss", "arch_loss", "expected_cost")

    def __init__(self, stage, learning_rate_key):
        super().__init__()
        self.stage, self.learning_rate_key = stage, learning_rate_key

    def on_train_batch_end(self, batch, logs=None):
        for key in self.WATCHED:
            if key in (logs or {}) and not math.isfinite(float(logs[key])):
                self._stop(f"{key} is {float(logs[key])}. Nothing of this step was saved (earlier checkpoints "
                           "are kept)")

    def on_epoch_end(self, epoch, logs=None):
        for weight in self.model.weights:
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight))):
                self._stop(f"the weight {weight.path} is no longer finite at the end of epoch {epoch + 1} (the "
                           "loss can stay finite behind batch norm). The epoch's end was not saved; checkpoints "
                           "from within it may hold such weights")

    def _stop(self, what):
        step = int(self.model.optimizer.iterations.numpy())
        raise TrainingDivergedError(
            f"The {self.stage} diverged at step {step}: {what}. Lower the learning rate "
            f"(--config.{self.learning_rate_key}) and redo this step with --mode={self.stage} --overwrite.")
