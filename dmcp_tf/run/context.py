"""What the steps of a run share: config, budget, run directory, strategy, data, models, trainer."""

import contextlib
import zipfile

import keras

from dmcp_tf import data as data_lib
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.models import build_supernet
from dmcp_tf.run import config as config_lib
from dmcp_tf.run import distributed, user_model
from dmcp_tf.run.rundir import PipelineError
from dmcp_tf.run.trainer import Trainer
from dmcp_tf.search import recipes
from dmcp_tf.search.calibration import calibrate_batch_norm


class _RunModel:
    """A model of the run directory: the one the step that makes it set, else loaded from `file`.

    A damaged file is a `PipelineError` that names it and `step`, the step that writes it again.
    """

    def __init__(self, file, step):
        self.file, self.step = file, step

    def __set_name__(self, owner, name):
        self.attribute = f"_{name}"

    def __get__(self, ctx, owner=None):
        if ctx is None:
            return self
        if getattr(ctx, self.attribute) is None:
            setattr(ctx, self.attribute, ctx.load_model(self.file, self.step))
        return getattr(ctx, self.attribute)

    def __set__(self, ctx, model):
        setattr(ctx, self.attribute, model)


class RunContext:
    """The state one run's steps share; each step is a function of it.

    The data and the models are made when first used: the supernet and the slim
    model are loaded from the run directory (an earlier run wrote them) unless the
    step that makes them set them in this run.

    Args:
        config: the run's ConfigDict.
        rundir: its `RunDirectory` (None for `--mode=macs`, which writes nothing).
        strategy: a `tf.distribute` strategy (models are built in its scope).
        log: where progress lines go (the chief's only).

    Attributes:
        budget: the `costs.Budget` of `config.search.budget`, parsed once by the
            pipeline's preflight (`config.validate`); every step reads this one.
    """

    supernet = _RunModel("supernet.keras", "search")  # the searched supernet
    slim = _RunModel("slim.keras", "retrain")  # the retrained slim model

    def __init__(self, config, rundir, *, strategy, log=print):
        self.config = config
        self.dir = rundir
        self.strategy = strategy
        self.multi_worker = distributed.is_multi_worker(strategy)
        self.chief = distributed.is_chief(strategy)
        self.log = log if self.chief else (lambda *args, **kwargs: None)
        self.budget = None
        self.trainer = Trainer(self)
        self._data = self._supernet = self._slim = self._full = None

    def local_scope(self):
        """Scope for models used on one machine (evaluation, export): not multi-worker."""
        return contextlib.nullcontext() if self.multi_worker else self.strategy.scope()

    @property
    def data(self):
        """The `data.DataBundle` of `config.data` (loaded on first use)."""
        if self._data is None:
            d = self.config.data
            self._data = data_lib.load(
                d.name, batch_size=d.batch_size, data_dir=d.data_dir or None,
                train_limit=d.train_limit or None, test_limit=d.test_limit or None,
                image_size=d.image_size or None, augment=d.augment, seed=self.config.seed, preprocess=d.preprocess,
            )
        return self._data

    def new_supernet(self, sync_bn=False, *, load_data=True):
        """A new supernet of `config.model` for the data set (fresh weights; `--model`: the user's, gated).

        `load_data=False` takes the data set's image shape and classes as known without reading it
        (`data.DATASET_SHAPES`; `--mode=macs`).
        """
        m, d = self.config.model, self.config.data
        shape, classes = (self.data.input_shape, self.data.num_classes) if load_data \
            else data_lib.DATASET_SHAPES[d.name](d.image_size or None)
        if m.path:
            return user_model.supernet(m.path, shape, classes, gate_kind=m.gate_kind,
                                       exclude=config_lib.excluded_layers(self.config), sync_bn=sync_bn)
        return build_supernet(m.name, input_shape=shape, num_classes=classes, gate_kind=m.gate_kind, sync_bn=sync_bn,
                              **m.options.to_dict())

    def build_search_model(self, steps_per_epoch):
        """A new supernet of `config.model` in a compiled `DMCPModel` for `config.search` and the budget."""
        with self.strategy.scope():
            supernet = self.new_supernet(sync_bn=self.strategy.num_replicas_in_sync > 1)
            return recipes.build_search_model(supernet, self.config.search, steps_per_epoch,
                                              seed=self.config.seed, budget=self.budget)

    def full_model(self):
        """The unpruned supernet as a plain model, batch norm calibrated for the full width."""
        if self._full is None:
            with self.local_scope():
                self._full = rebuild(self.supernet, name=f"{self.supernet.name}_full")
                self.calibrate(self._full)
        return self._full

    def calibrate(self, model, augmented=False):
        """Re-estimates the batch-norm statistics of a sub-network on `sample.calibration_batches` batches.

        `augmented`: on training batches as training sees them (after training), not
        test-time preprocessed ones (see `DataBundle.calibration_batches`).
        """
        batches = self.data.calibration_batches(self.config.sample.calibration_batches, augmented=augmented)
        calibrate_batch_norm(model, batches)

    def load_model(self, name, step):
        """Loads a model the run wrote; a damaged file is an error that names it and `step`, which rewrites it."""
        path = self.dir.path(name)
        try:
            with self.local_scope():
                return keras.models.load_model(path, safe_mode=True, compile=False)
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
            raise PipelineError(f"{path} cannot be read ({type(error).__name__}: {error}): the file is damaged "
                                f"or incomplete. Write it again with --mode={step} --overwrite (the steps after "
                                "it then need rerunning too).") from None
