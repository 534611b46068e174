"""`dmcp_tf.prune`: a trained Keras classifier in, a slim fine-tuned Keras classifier out, one call."""

import dataclasses
import math
import os
import time

import keras

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.configs.base import base_config
from dmcp_tf.io_utils import atomic_save_model, atomic_write_json, atomic_write_text, read_json
from dmcp_tf.pruning import checks
from dmcp_tf.pruning.inputs import Batches, top1
from dmcp_tf.search import pretrained, recipes, sampling
from dmcp_tf.search.calibration import calibrate_batch_norm
from dmcp_tf.search.supernet import ends_in_softmax
from dmcp_tf.tables import structure_markdown

# Default lengths, in steps, of the measured recipe (docs/benchmarks.md section 3, `dmcp_pretrained`):
# its frozen-weight search (1 epoch of 468 steps) settled, and it fine-tuned for 3 epochs (1,404 steps).
SEARCH_STEPS = 400
FINETUNE_STEPS = 1400
MAX_DEFAULT_EPOCHS = 30  # a tiny data set: at most this many passes by default
CALIBRATION_BATCHES = 20  # batch-norm re-estimation of the slim model before and after fine-tuning


@dataclasses.dataclass
class PruneResult:
    """What `prune` returns.

    Attributes:
        model: the slim, fine-tuned model: a plain Keras model (loads without dmcp_tf),
            compiled with the loss the training labels need.
        channels: gate name -> channels kept (the gate follows the layer it prunes: `conv1_gate`).
        summary: MACs and parameters before and after, top-1 on `validation_data` before,
            after batch-norm calibration of the slim model (`accuracy_inherited`) and after
            fine-tuning, the budget, its target and the fraction of it the slim model spends.
    """

    model: keras.Model
    channels: dict
    summary: dict


def prune(model, budget, train_data, *, validation_data=None, search_epochs=None, finetune_epochs=None,
          steps_per_epoch=None, exclude=(), run_dir=None, callbacks=None, verbose=1):
    """Prunes a trained Keras classifier to `budget` and fine-tunes it.

    The recipe is DMCP from a trained network, the one the measurements favour for
    its cost (docs/benchmarks.md section 3, `dmcp_pretrained`: +1.64 / +3.10 points
    over L1-norm pruning at uniform widths at 0.25x / 0.1x of the MACs, level at 0.5x,
    with no weight training in the search):
    1. gates go into a copy of the model (`insert_gates`), and every gated layer's
       channels are sorted by the L1 norm of their filters, so every sub-network keeps
       the filters L1-norm pruning would keep;
    2. the gates start at the budget's uniform width and are searched on the frozen
       trained weights (architecture steps only, every step projected back onto the
       budget, architecture learning rate 0.5 to 0.1 as the authors): the widths the
       trained network tolerates;
    3. expected sampling, its widths scaled together to the budget from below
       (`sampling.fit_to_budget`);
    4. the slim model inherits the kept channels, its batch norms are re-estimated,
       and it is fine-tuned (SGD with Nesterov momentum, cosine from 0.05, weight decay
       1e-4: `config.retrain`'s defaults); then its batch norms are re-estimated again
       (moving averages lag a short fine-tuning).

    Input preprocessing layers (Rescaling, Normalization), a softmax or logits output
    and nested models (a keras.applications base inside a wrapper) are kept; the
    original model is not changed. Everything is checked before training: a bad
    model, budget or data raises a `ValueError` that says what to change.

    Args:
        model: a trained functional or Sequential Keras classifier (one image input of
            a fixed size; one output of a unit per class).
        budget: a `dmcp_tf.Budget` or its text: `"0.5x"` (of the model's MACs),
            `"210M"` MACs, `"params:0.4x"`, `"params:1.5M"`.
        train_data: what `model.fit` accepts: a `tf.data.Dataset` of `(images, labels)`,
            a `keras.utils.PyDataset`, or an `(x, y)` tuple of arrays. Labels are class
            indices or one-hot rows.
        validation_data: the same kinds; top-1 before and after is measured on it.
        search_epochs: passes over `train_data` in the search; by default as many as
            give about `SEARCH_STEPS` steps (at least 1).
        finetune_epochs: passes in fine-tuning; by default about `FINETUNE_STEPS` steps.
        steps_per_epoch: batches per pass (required for data that repeats without end).
        exclude: layer names or regular expressions whose channels stay whole (also
            accepts layers of a type without a channel rule).
        run_dir: a folder where every finished stage is saved (`supernet.keras` after the
            search, `channels.json` and `structure.md` after sampling, `slim.keras` after
            fine-tuning, `summary.json`), and each training stage's last finished epoch
            (`backup_search/`, `backup_finetune/`, removed when the stage ends); called again
            with the same arguments, `prune` skips the finished stages and resumes a training
            stage from its last epoch.
        callbacks: Keras callbacks for both trainings.
        verbose: 0 silent, 1 progress bars and one line per stage, 2 one line per epoch.

    Returns:
        A `PruneResult` (`.model`, `.channels`, `.summary`).

    Raises:
        ValueError: a subclassed model, no prunable layer, a layer type without a channel
            rule, a budget the model cannot meet, labels that do not fit the model's
            outputs, an input of unknown size, or a `run_dir` of another pruning.

    Example:
        model = keras.models.load_model("my_model.keras")
        result = dmcp_tf.prune(model, "0.5x", train_ds, validation_data=val_ds)
        print(result.summary)
        result.model.save("my_model_0.5x.keras")
    """
    log = print if verbose else (lambda *args: None)
    checks.check_classifier(model)
    supernet = checks.gated_supernet(model, exclude)
    graph = ChannelGraph(supernet)
    budget, target = checks.checked_budget(budget, graph)
    train = Batches.read(train_data, model, steps_per_epoch=steps_per_epoch)
    validation = Batches.read(validation_data, model, what="validation_data", shuffle=False, every_class=False) \
        if validation_data is not None else None
    search_epochs = search_epochs or _default_epochs(SEARCH_STEPS, train.steps)
    finetune_epochs = finetune_epochs or _default_epochs(FINETUNE_STEPS, train.steps)
    stages = _Stages(run_dir, {"model": model.name, "budget": str(budget), "search_epochs": search_epochs,
                               "finetune_epochs": finetune_epochs, "steps_per_epoch": train.steps,
                               "exclude": list(exclude)}, log)

    def fit(stage):
        """`fit` arguments of a training stage (its epochs backed up in `run_dir`)."""
        return {"steps_per_epoch": train.steps, "callbacks": list(callbacks or []) + stages.backup(stage),
                "verbose": verbose, "shuffle": False}

    original = ChannelGraph(model)
    summary = {"budget": str(budget), "target": target, "unit": budget.cost.unit,
               "macs_before": costs.MACS.of(original), "params_before": costs.PARAMS.of(original),
               "search_epochs": search_epochs, "finetune_epochs": finetune_epochs, "steps_per_epoch": train.steps,
               "accuracy_before": top1(model, validation) if validation else None}

    supernet = stages.load_model("supernet.keras") or stages.save_model(
        "supernet.keras", _search(supernet, budget, train, search_epochs, fit("search"), log))
    graph = ChannelGraph(supernet)
    channels = stages.load_channels() or stages.save_channels(_sample(graph, budget, target, log), graph)
    slim = stages.load_model("slim.keras")
    if slim is None:
        slim, summary["accuracy_inherited"] = _inherit(supernet, graph, channels, model.name, train, validation, log)
        _finetune(slim, train, validation, finetune_epochs, fit("finetune"), log)
        slim = stages.save_model("slim.keras", _deliverable(slim, train.one_hot))
    pruned = ChannelGraph(slim)
    summary = dict(stages.previous_summary(), **summary, macs_after=costs.MACS.of(pruned),
                   params_after=costs.PARAMS.of(pruned),
                   cost_after=budget.cost.of(pruned), accuracy_after=top1(slim, validation) if validation else None)
    summary["budget_fraction"] = summary["cost_after"] / target
    stages.save_summary(summary)
    log(f"[prune] {costs.MACS.format(summary['macs_before'])} -> {costs.MACS.format(summary['macs_after'])}, "
        f"{summary['budget_fraction']:.3f} of the budget {budget}" + _accuracy_line(summary))
    return PruneResult(slim, channels, summary)


def _default_epochs(steps, per_epoch):
    return max(1, min(MAX_DEFAULT_EPOCHS, math.ceil(steps / per_epoch)))


def _search(supernet, budget, train, epochs, fit, log):
    """The frozen-weight search from L1-sorted channels, started at the budget; returns the searched supernet."""
    began = time.time()
    search = pretrained.trained_search_model(supernet, budget=budget, total_steps=epochs * train.steps,
                                             train_weights=False)
    search.compile()  # architecture SGD, cosine 0.5 -> 0.1 (the authors')
    search.built = True  # its variables are the supernet's (built) and the optimizers' (built by compile)
    start = float(search.cost.expected(search.graph))
    log(f"[prune] search: {len(search.gates)} gates, {epochs} epochs of {train.steps} steps on the frozen weights, "
        f"from the budget's uniform width (expected {search.cost.unit} {start / search.target:.3f} of the budget)")
    search.fit(train.stream(), epochs=epochs, **fit)
    log(f"[prune] search done in {time.time() - began:.0f} s: expected {search.cost.unit} "
        f"{float(search.cost.expected(search.graph)) / search.target:.3f} of the budget")
    return supernet


def _sample(graph, budget, target, log):
    """Expected sampling, scaled to the budget from below."""
    channels, cost = sampling.fit_to_budget(graph, sampling.expected_config(graph), target, cost=budget.cost,
                                            at_most=True)
    log(f"[prune] structure: {budget.cost.format(cost)} ({cost / target:.3f} of the budget)")
    return channels


def _inherit(supernet, graph, channels, name, train, validation, log):
    """The slim model with the kept (L1-sorted) channels' weights, batch norm re-estimated; and its top-1."""
    slim = rebuild(supernet, channels, graph=graph, name=f"{name}_pruned")
    calibrate_batch_norm(slim, train.first(CALIBRATION_BATCHES))
    accuracy = top1(slim, validation) if validation else None
    if accuracy is not None:
        log(f"[prune] inherited weights after batch-norm calibration: top-1 {accuracy:.4f}")
    return slim, accuracy


def _finetune(slim, train, validation, epochs, fit, log):
    began = time.time()
    recipes.compile_classifier(slim, base_config().retrain, epochs * train.steps)
    slim.fit(train.stream(), epochs=epochs, validation_data=validation.dataset if validation else None, **fit)
    calibrate_batch_norm(slim, train.first(CALIBRATION_BATCHES))
    log(f"[prune] fine-tuning: {epochs} epochs in {time.time() - began:.0f} s, then batch norm re-estimated")


def _deliverable(slim, one_hot):
    """A plain Keras copy of `slim`, compiled with the loss of the user's labels (one-hot or class indices)."""
    copy = recipes.portable_copy(slim)
    if one_hot:
        copy.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=not ends_in_softmax(copy)),
                     metrics=["accuracy"])
    return copy


def _accuracy_line(summary):
    if summary["accuracy_before"] is None:
        return ""
    return f"; top-1 {summary['accuracy_before']:.4f} -> {summary['accuracy_after']:.4f}"


class _Stages:
    """The finished stages of one pruning in `run_dir` (nothing is saved without one).

    `prune.json` holds the arguments; a `run_dir` of other arguments is refused. A
    training stage cut short resumes from its last finished epoch (`backup`).
    """

    def __init__(self, run_dir, arguments, log):
        self.root, self.log = run_dir, log
        if run_dir is None:
            return
        os.makedirs(run_dir, exist_ok=True)
        saved = self._json("prune.json")
        if saved is not None and saved != arguments:
            changed = sorted(k for k in set(saved) | set(arguments) if saved.get(k) != arguments.get(k))
            raise ValueError(f"{run_dir} holds a pruning with other arguments ({', '.join(changed)} differ): pass "
                             "another run_dir, or delete it to start again.")
        atomic_write_json(self._path("prune.json"), arguments)

    def _path(self, name):
        return os.path.join(self.root, name)

    def _json(self, name):
        return read_json(self._path(name))

    def _found(self, name):
        found = self.root is not None and os.path.exists(self._path(name))
        if found:
            self.log(f"[prune] {name} found in {self.root}: that stage is skipped")
        return found

    def backup(self, stage):
        """Callbacks that save a training stage at every epoch end and resume it from there when called again."""
        if self.root is None:
            return []
        return [keras.callbacks.BackupAndRestore(self._path(f"backup_{stage}"))]

    def load_model(self, name):
        return keras.models.load_model(self._path(name), safe_mode=True) if self._found(name) else None

    def save_model(self, name, model):
        if self.root is not None:
            atomic_save_model(model, self._path(name))
        return model

    def load_channels(self):
        return sampling.load_config(self._path("channels.json")) if self._found("channels.json") else None

    def save_channels(self, channels, graph):
        if self.root is not None:
            title = f"{graph.model.name}: channels kept (expected sampling, widths scaled to the budget)"
            atomic_write_text(self._path("structure.md"),
                              structure_markdown(graph.gate_rows(channels), graph.layer_rows(channels), title))
            sampling.save_config(self._path("channels.json"), channels)
        return channels

    def previous_summary(self):
        """What an earlier call measured in stages now skipped (`accuracy_inherited`)."""
        saved = (self._json("summary.json") if self.root else None) or {}
        return {"accuracy_inherited": saved.get("accuracy_inherited")}

    def save_summary(self, summary):
        if self.root is not None:
            atomic_write_json(self._path("summary.json"), summary)
