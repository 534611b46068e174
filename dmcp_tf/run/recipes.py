"""The training recipes' old home: they are `dmcp_tf.search.recipes` now (`dmcp_tf.prune` uses them too)."""

from dmcp_tf.search.recipes import (  # noqa: F401 (re-exported for `from dmcp_tf.run.recipes import ...`)
    WEIGHT_DECAY_TYPES, CoupledSGD, build_search_model, compile_classifier, evaluate, portable_copy,
)
