"""The run configuration: every key a config file may set, with defaults.

Config files (`configs/*.py`) start from `base_config()` and override what their
experiment needs; `main.py --config=configs/x.py --config.search.budget=0.3x`
overrides further. Unknown keys are rejected because the ConfigDict is locked.

`validate` reads the names a key may take from the module that defines them
(data sets, models, gate kinds, ...) and imports those modules only when it runs,
so that reading a config file stays light.
"""

import math
import os
import re

import ml_collections


# Keras dtype policies a run may train under (`mixed_precision`): variables stay float32,
# activations are half precision under the mixed ones.
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# What a fine-tuned slim model inherits (`retrain.inherit`, with `retrain.from_scratch=False`).
INHERITED_WEIGHTS = ("supernet", "initial_weights")


def excluded_layers(config):
    """The patterns of `model.exclude` (comma-separated), as a tuple."""
    return tuple(p.strip() for p in config.model.exclude.split(",") if p.strip())


def base_config():
    """Defaults: the Fashion-MNIST run that `python main.py` performs."""
    c = ml_collections.ConfigDict()
    c.name = "fashion_mnist"
    c.seed = 0
    c.checkpoints_to_keep = 3     # newest checkpoints kept per training step (search, retrain)
    c.mixed_precision = "float32" # Keras dtype policy of the run: "mixed_float16" (GPUs, loss scaling) or
                                  # "mixed_bfloat16" (TPUs, recent GPUs and CPUs); exports are float32

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"
    c.data.data_dir = ""          # empty: the data set's default location
    c.data.batch_size = 128       # global batch, split over replicas
    c.data.train_limit = 0        # 0: every training example
    c.data.test_limit = 0
    c.data.image_size = 0         # 0: the data set's native size
    c.data.augment = True
    c.data.preprocess = "normalize"  # or "raw": pixels 0-255, for a model with its own Rescaling (--model sets it)

    c.model = ml_collections.ConfigDict()
    c.model.name = "fashion_resnet"
    c.model.gate_kind = "markov"  # or "bernoulli" (the paper's ablation)
    c.model.options = ml_collections.ConfigDict()  # keyword arguments of the model builder
    c.model.path = ""             # --model: a trained .keras classifier, or keras.applications.<Name> (run/user_model.py)
    c.model.exclude = ""          # --model: comma-separated layer names or regular expressions kept whole

    c.search = ml_collections.ConfigDict()
    c.search.budget = "0.5x"      # MACs "210M", "2.8G", a fraction "0.5x"; "params:1.5M", "params:0.4x";
                                  # "latency:3.2ms", "latency:0.5x" with a latency table:
    c.search.latency_table = ""   # latency_table.json (--mode=latency_table writes one; dmcp_tf/deploy/latency.py)
    c.search.latency_quantization = "float32"  # which of the table's times a latency budget means ("int8")
    c.search.epochs = 2
    c.search.steps_per_epoch = 0  # 0: one pass over the training data
    c.search.warmup_fraction = 0.5
    c.search.init = "authors"     # where the gates start: "authors" (alpha=0), "full", "budget" (search_init.py)
    c.search.initial_weights = "" # a trained model (.keras) whose weights the search starts from
    c.search.sort_initial_channels = True  # with initial_weights: order each layer's channels by L1 norm first
    c.search.train_weights = True  # False (with initial_weights): the gates learn on frozen trained weights,
                                   # no warm-up, every step projected onto the budget (DMCPModel
                                   # project_to_budget); then retrain.from_scratch=False fine-tunes them
    c.search.learning_rate = 0.1
    c.search.warmup_epochs = 0.0  # linear learning-rate warm-up ...
    c.search.warmup_start_learning_rate = 0.0  # ... from this rate to `learning_rate`
    c.search.min_learning_rate = 0.0  # the cosine's floor (the authors' min_lr: 0.08 on ImageNet)
    c.search.weight_decay = 1e-4
    c.search.label_smoothing = 0.0
    c.search.arch_label_smoothing = 0.0  # in the architecture stage's cross-entropy
    c.search.arch_learning_rate = 0.5
    c.search.arch_final_learning_rate = 0.1
    c.search.budget_weight = 0.1
    c.search.budget_weight_growth = 0.0  # >0: the budget weight grows while E[cost] > budget (DMCPModel)
    c.search.uniform_decay = 0.9999
    c.search.uniform_decay_every = 10
    c.search.checkpoint_every_steps = 100  # and at every epoch end; 0: epoch ends only
    c.search.trajectory_every_steps = 10   # E[MACs]/budget and gate widths logged (TensorBoard, plot)

    c.sample = ml_collections.ConfigDict()
    c.sample.statistics_samples = 3000  # direct samples for the FLOPs histogram (Fig. 6)
    c.sample.direct_samples = 3         # budget-constrained direct samples saved beside the ES result
    c.sample.tolerance = 0.01
    c.sample.round_to = 0               # >1: round kept channels to a multiple (faster kernels on phones)
    c.sample.fit_to_budget = False      # scale the expected-sampling widths together to meet the budget (authors: no)
    c.sample.over_budget = 0.05         # a sampled structure costing more than (1 + this) x the budget stops the run
    c.sample.calibration_batches = 20   # batch-norm re-estimation before evaluating a sub-network

    c.retrain = ml_collections.ConfigDict()
    c.retrain.from_scratch = True   # as the paper; False fine-tunes the supernet's weights (worse at
                                    # equal epochs on Fashion-MNIST: docs/benchmarks.md, section 3)
    c.retrain.inherit = "supernet"  # with from_scratch=False, the weights fine-tuned: "supernet" (searched) or
                                    # "initial_weights": search.initial_weights, channels sorted by L1 norm
                                    # (L1-norm pruning at DMCP's widths: dmcp_l1 in docs/benchmarks.md)
    c.retrain.epochs = 3
    c.retrain.steps_per_epoch = 0
    c.retrain.learning_rate = 0.05
    c.retrain.weight_decay = 1e-4
    c.retrain.weight_decay_type = "decoupled"  # Keras' weight decay, or "coupled": the authors' L2 term
    c.retrain.label_smoothing = 0.0
    c.retrain.checkpoint_every_steps = 100
    c.retrain.compare_uniform = False  # also train the uniform-width network of the slim model's MACs, the same
                                       # way (from scratch, or fine-tuned from the same inherited weights)

    c.export = ml_collections.ConfigDict()
    c.export.quantizations = "float32,int8"
    c.export.representative_images = 100
    c.export.parity_images = 500
    c.export.latency_runs = 50
    c.export.latency_threads = 1
    c.lock()
    return c


def validate(config):
    """Checks every value that cannot work, before any training; returns the budget, parsed.

    Returns:
        The `costs.Budget` of `search.budget`: the run reads this one, it is not parsed again.

    Raises:
        ValueError: the message names the key and says what it may be.
    """
    # What a key may be is defined beside the code that reads it.
    from dmcp_tf import costs  # noqa: PLC0415
    from dmcp_tf.data import DATASETS, PREPROCESSING  # noqa: PLC0415
    from dmcp_tf.deploy.export import QUANTIZATIONS  # noqa: PLC0415
    from dmcp_tf.models import SUPERNETS  # noqa: PLC0415
    from dmcp_tf.run.recipes import WEIGHT_DECAY_TYPES  # noqa: PLC0415
    from dmcp_tf.search.gates import GATE_TYPES  # noqa: PLC0415
    from dmcp_tf.search.search_init import INITS  # noqa: PLC0415

    def fail(key, message):
        raise ValueError(f"Config key `{key}`: {message}")

    if config.data.name not in DATASETS:
        fail("data.name", f"unknown data set {config.data.name!r}; choose one of {sorted(DATASETS)}.")
    if config.data.preprocess not in PREPROCESSING:
        fail("data.preprocess", f"unknown {config.data.preprocess!r}; choose one of {', '.join(PREPROCESSING)}.")
    if config.model.exclude and not config.model.path:
        fail("model.exclude", "keeps layers of a --model network whole; the zoo's supernets place their gates "
             "themselves. Give --model, or leave model.exclude empty.")
    for pattern in excluded_layers(config):
        try:
            re.compile(pattern)
        except re.error as error:
            fail("model.exclude", f"{pattern!r} is not a regular expression ({error}).")
    if not config.model.path and config.model.name not in SUPERNETS:
        fail("model.name", f"unknown model {config.model.name!r}; choose one of {sorted(SUPERNETS)}.")
    if config.model.gate_kind not in GATE_TYPES:
        fail("model.gate_kind", f"unknown gate kind {config.model.gate_kind!r}; choose one of {sorted(GATE_TYPES)}.")
    from dmcp_tf.deploy.latency import configured_cost  # noqa: PLC0415 (reads the table file, if one is named)

    try:
        latency = configured_cost(config.search)
    except ValueError as error:
        fail("search.latency_table", str(error))
    try:
        budget = costs.Budget.parse(config.search.budget, latency=latency)
    except ValueError as error:
        fail("search.budget", str(error))
    if config.mixed_precision not in DTYPE_POLICIES:
        fail("mixed_precision", f"unknown dtype policy {config.mixed_precision!r}; choose one of "
             f"{', '.join(DTYPE_POLICIES)}.")
    if config.seed < 0:
        fail("seed", f"must be a non-negative integer, got {config.seed}.")
    if not 0 < config.sample.tolerance < 1:
        fail("sample.tolerance", f"must be a fraction of the budget in (0, 1), e.g. 0.01; got {config.sample.tolerance}.")
    if config.data.batch_size == 1:
        fail("data.batch_size", "must be at least 2: batch normalization trains on each batch's statistics, and "
             "one image has none (oneDNN's kernels even crash on it). Use 2 or more (e.g. 32).")
    for key in ("data.batch_size", "search.epochs", "retrain.epochs"):
        section, name = key.split(".")
        if config[section][name] < 1:
            fail(key, f"must be at least 1, got {config[section][name]}.")
    for key in ("search.checkpoint_every_steps", "retrain.checkpoint_every_steps"):
        section, name = key.split(".")
        if config[section][name] < 0:
            fail(key, f"must be 0 (epoch ends only) or a number of steps, got {config[section][name]}.")
    if not config.sample.over_budget >= 0:
        fail("sample.over_budget", f"must be a fraction of the budget >= 0, e.g. 0.05; got {config.sample.over_budget}.")
    if config.sample.round_to < 0:
        fail("sample.round_to", f"must be 0 (no rounding) or a channel multiple such as 8, got {config.sample.round_to}.")
    if config.sample.fit_to_budget and config.sample.round_to > 1:
        fail("sample.fit_to_budget", f"cannot be combined with sample.round_to={config.sample.round_to}: rounding to "
             "multiples moves the cost off the fitted budget again. Set one of them (round_to=0 or fit_to_budget=False).")
    if config.checkpoints_to_keep < 1:
        fail("checkpoints_to_keep", f"must be at least 1, got {config.checkpoints_to_keep}.")
    if not 0 <= config.search.warmup_fraction < 1:
        fail("search.warmup_fraction", f"must be in [0, 1), got {config.search.warmup_fraction}.")
    if config.search.init not in INITS:
        fail("search.init", f"unknown start {config.search.init!r}; choose one of {', '.join(INITS)}.")
    if config.retrain.weight_decay_type not in WEIGHT_DECAY_TYPES:
        fail("retrain.weight_decay_type", f"unknown {config.retrain.weight_decay_type!r}; choose one of "
             f"{', '.join(WEIGHT_DECAY_TYPES)}.")
    for key in ("search.learning_rate", "search.arch_learning_rate", "retrain.learning_rate", "search.budget_weight"):
        section, name = key.split(".")
        if not (math.isfinite(config[section][name]) and config[section][name] > 0):
            fail(key, f"must be positive (and a number), got {config[section][name]}.")
    if not 0 <= config.search.min_learning_rate <= config.search.learning_rate:
        fail("search.min_learning_rate", f"must be in [0, search.learning_rate={config.search.learning_rate}], "
             f"got {config.search.min_learning_rate}.")
    if not 0 < config.search.arch_final_learning_rate <= config.search.arch_learning_rate:
        fail("search.arch_final_learning_rate", "must be in (0, search.arch_learning_rate="
             f"{config.search.arch_learning_rate}], got {config.search.arch_final_learning_rate}.")
    if config.search.budget_weight_growth < 0:
        fail("search.budget_weight_growth", f"must be >= 0 (0: a fixed budget weight), got "
             f"{config.search.budget_weight_growth}.")
    if config.search.trajectory_every_steps < 1:
        fail("search.trajectory_every_steps", f"must be at least 1, got {config.search.trajectory_every_steps}.")
    weights = config.search.initial_weights
    if not config.search.train_weights and not weights and not config.model.path:
        fail("search.train_weights", "False keeps the supernet's weights as they are, and freshly initialised "
             "weights tell the gates nothing: give a trained model with --config.search.initial_weights=PATH.keras, "
             "or leave search.train_weights True.")
    if weights and not os.path.isfile(weights):
        fail("search.initial_weights", f"{weights!r} does not exist; give a trained model saved with "
             "model.save('x.keras') whose layer names match the supernet's (or leave it empty).")
    if weights and not weights.endswith(".keras"):
        fail("search.initial_weights", f"{weights!r} is not a .keras file; give a trained model saved with "
             "model.save('x.keras') whose layer names match the supernet's (or leave it empty).")
    if config.retrain.inherit not in INHERITED_WEIGHTS:
        fail("retrain.inherit", f"unknown {config.retrain.inherit!r}; choose one of {', '.join(INHERITED_WEIGHTS)}.")
    if config.retrain.inherit == "initial_weights" and (config.retrain.from_scratch or not weights):
        fail("retrain.inherit", "\"initial_weights\" fine-tunes the trained model the search started from: it needs "
             "--config.search.initial_weights=PATH.keras and --config.retrain.from_scratch=False.")
    unknown = set(quantizations(config)) - set(QUANTIZATIONS)
    if unknown or not quantizations(config):
        fail("export.quantizations", f"unknown {sorted(unknown)}; choose from {', '.join(QUANTIZATIONS)}." if unknown
             else f"names no TFLite variant ({config.export.quantizations!r}); choose from {', '.join(QUANTIZATIONS)}, "
             "comma-separated.")
    if config.export.latency_runs < 1:
        fail("export.latency_runs", f"must be at least 1 (the latency is the median of the runs), got "
             f"{config.export.latency_runs}.")
    return budget


def quantizations(config):
    """The TFLite variants to export, from the comma-separated config value."""
    return [q.strip() for q in config.export.quantizations.split(",") if q.strip()]
