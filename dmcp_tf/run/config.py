"""The run configuration: every key a config file may set, with defaults, and its validation.

Config files (`configs/*.py`) start from `base_config()` (`dmcp_tf/configs/base.py`) and override what their
experiment needs; `main.py --config=configs/x.py --config.search.budget=0.3x`
overrides further. Unknown keys are rejected because the ConfigDict is locked.

`validate` reads the names a key may take from the module that defines them
(data sets, models, gate kinds, ...) and imports those modules only when it runs,
so that reading a config file stays light.
"""

import math
import os
import re

from dmcp_tf.configs.base import base_config  # noqa: F401 (the defaults; `from dmcp_tf.run.config import base_config`)


# Keras dtype policies a run may train under (`mixed_precision`): variables stay float32,
# activations are half precision under the mixed ones.
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# What a fine-tuned slim model inherits (`retrain.inherit`, with `retrain.from_scratch=False`).
INHERITED_WEIGHTS = ("supernet", "initial_weights")


def excluded_layers(config):
    """The patterns of `model.exclude` (comma-separated), as a tuple."""
    return tuple(p.strip() for p in config.model.exclude.split(",") if p.strip())


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
    from dmcp_tf.channels.gates import GATE_TYPES  # noqa: PLC0415
    from dmcp_tf.search.recipes import WEIGHT_DECAY_TYPES  # noqa: PLC0415
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
    from dmcp_tf.costs import configured_cost  # noqa: PLC0415 (reads the table file, if one is named)

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
