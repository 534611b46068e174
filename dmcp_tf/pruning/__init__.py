"""`dmcp_tf.prune`: one call from a trained Keras classifier to a slim, fine-tuned one (`api`).

`checks` tests the model and the budget before training, `inputs` reads the user's data.
"""

from dmcp_tf.pruning.api import PruneResult, prune

__all__ = ["PruneResult", "prune"]
