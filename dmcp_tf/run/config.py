"""The run configuration: every key a config file may set, with defaults, and its validation.

Config files (`configs/*.py`) start from `base_config()` (`dmcp_tf/configs/base.py`) and override what their
experiment needs; `main.py --config=configs/x.py --config.search.budget=0.3x`
overrides further. Unknown keys are rejected because the ConfigDict is locked.

`validate` reads the names a key may take from the module that defines them
(data sets, models, gate kinds, ...) and imports those modules only when it runs,
so that reading a config file stays light.
"""

import functools
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

    The budget (with its latency table) first, then the rows of `_checks` in order.

    Returns:
        The `costs.Budget` of `search.budget`: the run reads this one, it is not parsed again.

    Raises:
        ValueError: the message names the key and says what it may be.
    """
    budget = _budget(config)
    for key, ok, message in _checks():
        section, _, name = key.rpartition(".")
        value = config[section][name] if section else config[name]
        try:
            if not ok(value, config):
                raise ValueError(message.format(value=value, config=config))
        except ValueError as error:
            _fail(key, error)
    return budget


def _fail(key, message):
    """Raises the ValueError of a bad `key`."""
    raise ValueError(f"Config key `{key}`: {message}")


def _budget(config):
    """The `costs.Budget` of `search.budget`, priced by the latency table `search.latency_table` if one is named."""
    from dmcp_tf import costs  # noqa: PLC0415

    try:
        latency = costs.configured_cost(config.search)
    except ValueError as error:
        _fail("search.latency_table", error)
    try:
        return costs.Budget.parse(config.search.budget, latency=latency)
    except ValueError as error:
        _fail("search.budget", error)


def _checks():
    """The checks in order: rows `(key, ok(value, config), message)`.

    A row fails when `ok` is false (the message is formatted with the key's `value`
    and `config`) or raises a ValueError, whose text is the message (the checks
    that need code: `_regular_expressions`, `_known_quantizations`).
    """
    # What a key may be is defined beside the code that reads it.
    from dmcp_tf.channels.gates import GATE_TYPES  # noqa: PLC0415
    from dmcp_tf.data import DATASETS, PREPROCESSING  # noqa: PLC0415
    from dmcp_tf.deploy.export import QUANTIZATIONS  # noqa: PLC0415
    from dmcp_tf.models import SUPERNETS  # noqa: PLC0415
    from dmcp_tf.search.recipes import WEIGHT_DECAY_TYPES  # noqa: PLC0415
    from dmcp_tf.search.search_init import INITS  # noqa: PLC0415

    trained_model = "give a trained model saved with model.save('x.keras') whose layer names match the supernet's " \
        "(or leave it empty)."
    return (
        _choice("data.name", DATASETS, "data set ", sorted(DATASETS)),
        _choice("data.preprocess", PREPROCESSING, "", ", ".join(PREPROCESSING)),
        ("model.exclude", lambda v, c: not v or c.model.path,
         "keeps layers of a --model network whole; the zoo's supernets place their gates themselves. Give --model, "
         "or leave model.exclude empty."),
        ("model.exclude", _regular_expressions, None),
        ("model.name", lambda v, c: c.model.path or v in SUPERNETS,
         f"unknown model {{value!r}}; choose one of {sorted(SUPERNETS)}."),
        _choice("model.gate_kind", GATE_TYPES, "gate kind ", sorted(GATE_TYPES)),
        _choice("mixed_precision", DTYPE_POLICIES, "dtype policy ", ", ".join(DTYPE_POLICIES)),
        ("seed", lambda v, c: v >= 0, "must be a non-negative integer, got {value}."),
        ("sample.tolerance", lambda v, c: 0 < v < 1,
         "must be a fraction of the budget in (0, 1), e.g. 0.01; got {value}."),
        ("data.batch_size", lambda v, c: v != 1,
         "must be at least 2: batch normalization trains on each batch's statistics, and one image has none "
         "(oneDNN's kernels even crash on it). Use 2 or more (e.g. 32)."),
        *((key, lambda v, c: v >= 1, "must be at least 1, got {value}.")
          for key in ("data.batch_size", "search.epochs", "retrain.epochs")),
        *((key, lambda v, c: v >= 0, "must be 0 (epoch ends only) or a number of steps, got {value}.")
          for key in ("search.checkpoint_every_steps", "retrain.checkpoint_every_steps")),
        ("sample.over_budget", lambda v, c: v >= 0, "must be a fraction of the budget >= 0, e.g. 0.05; got {value}."),
        ("sample.round_to", lambda v, c: v >= 0,
         "must be 0 (no rounding) or a channel multiple such as 8, got {value}."),
        ("sample.fit_to_budget", lambda v, c: not (v and c.sample.round_to > 1),
         "cannot be combined with sample.round_to={config.sample.round_to}: rounding to multiples moves the cost off "
         "the fitted budget again. Set one of them (round_to=0 or fit_to_budget=False)."),
        ("checkpoints_to_keep", lambda v, c: v >= 1, "must be at least 1, got {value}."),
        ("search.warmup_fraction", lambda v, c: 0 <= v < 1, "must be in [0, 1), got {value}."),
        _choice("search.init", INITS, "start ", ", ".join(INITS)),
        _choice("retrain.weight_decay_type", WEIGHT_DECAY_TYPES, "", ", ".join(WEIGHT_DECAY_TYPES)),
        *((key, lambda v, c: math.isfinite(v) and v > 0, "must be positive (and a number), got {value}.")
          for key in ("search.learning_rate", "search.arch_learning_rate", "retrain.learning_rate",
                      "search.budget_weight")),
        ("search.min_learning_rate", lambda v, c: 0 <= v <= c.search.learning_rate,
         "must be in [0, search.learning_rate={config.search.learning_rate}], got {value}."),
        ("search.arch_final_learning_rate", lambda v, c: 0 < v <= c.search.arch_learning_rate,
         "must be in (0, search.arch_learning_rate={config.search.arch_learning_rate}], got {value}."),
        ("search.budget_weight_growth", lambda v, c: not v < 0,  # NaN passes, as it always has
         "must be >= 0 (0: a fixed budget weight), got {value}."),
        ("search.trajectory_every_steps", lambda v, c: v >= 1, "must be at least 1, got {value}."),
        ("search.train_weights", lambda v, c: v or c.search.initial_weights or c.model.path,
         "False keeps the supernet's weights as they are, and freshly initialised weights tell the gates nothing: "
         "give a trained model with --config.search.initial_weights=PATH.keras, or leave search.train_weights True."),
        ("search.initial_weights", lambda v, c: not v or os.path.isfile(v),
         f"{{value!r}} does not exist; {trained_model}"),
        ("search.initial_weights", lambda v, c: not v or v.endswith(".keras"),
         f"{{value!r}} is not a .keras file; {trained_model}"),
        _choice("retrain.inherit", INHERITED_WEIGHTS, "", ", ".join(INHERITED_WEIGHTS)),
        ("retrain.inherit",
         lambda v, c: v != "initial_weights" or not c.retrain.from_scratch and c.search.initial_weights,
         "\"initial_weights\" fine-tunes the trained model the search started from: it needs "
         "--config.search.initial_weights=PATH.keras and --config.retrain.from_scratch=False."),
        ("export.quantizations", functools.partial(_known_quantizations, QUANTIZATIONS), None),
        ("export.latency_runs", lambda v, c: v >= 1,
         "must be at least 1 (the latency is the median of the runs), got {value}."),
    )


def _choice(key, names, what, listed):
    """A row: `key` must be one of `names` (`unknown <what><value>; choose one of <listed>.`)."""
    return key, lambda v, c: v in names, f"unknown {what}{{value!r}}; choose one of {listed}."


def _regular_expressions(value, config):
    """Each pattern of `model.exclude` compiles."""
    for pattern in excluded_layers(config):
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{pattern!r} is not a regular expression ({error}).") from error
    return True


def _known_quantizations(known, value, config):
    """`export.quantizations` names at least one TFLite variant, each of them `known`."""
    unknown = set(quantizations(config)) - set(known)
    if unknown:
        raise ValueError(f"unknown {sorted(unknown)}; choose from {', '.join(known)}.")
    if not quantizations(config):
        raise ValueError(f"names no TFLite variant ({value!r}); choose from {', '.join(known)}, comma-separated.")
    return True


def quantizations(config):
    """The TFLite variants to export, from the comma-separated config value."""
    return [q.strip() for q in config.export.quantizations.split(",") if q.strip()]
