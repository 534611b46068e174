"""Losses of the DMCP step and of retraining (hand-written: no strategy-dependent scaling).

Every loss is computed in float32 (or float64), also from the half-precision logits of a
mixed-precision model.
"""

import keras
from keras import ops


def at_least_float32(x):
    """`x` in float32 if it is in half precision (float64 stays)."""
    return ops.cast(x, keras.backend.result_type(x.dtype, "float32"))


def per_example_cross_entropy(labels, logits, label_smoothing=0.0, from_logits=True):
    """Cross-entropy of integer labels against logits (or probabilities: `from_logits=False`), one value per example."""
    logits = at_least_float32(logits)
    classes = ops.shape(logits)[-1]
    targets = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), classes)
    return keras.losses.categorical_crossentropy(targets, logits, from_logits=from_logits,
                                                 label_smoothing=label_smoothing)


def cross_entropy(labels, logits, label_smoothing=0.0):
    """Mean cross-entropy over the (per-replica) batch."""
    return ops.mean(per_example_cross_entropy(labels, logits, label_smoothing))


def distillation(teacher_probs, student_logits):
    """Mean KL(teacher || student) at temperature 1 (in-place distillation)."""
    log_student = ops.log_softmax(at_least_float32(student_logits))
    log_teacher = ops.log(ops.maximum(teacher_probs, 1e-12))
    return ops.mean(ops.sum(teacher_probs * (log_teacher - log_student), axis=-1))


def smoothed_sparse_cross_entropy(label_smoothing, from_logits=True):
    """A Keras loss function: sparse labels, logits (or probabilities: `from_logits=False`), label smoothing."""
    def loss(labels, logits):
        return per_example_cross_entropy(labels, logits, label_smoothing, from_logits)

    loss.__name__ = "cross_entropy"
    return loss
