"""The search's trajectory: expected cost over the budget and every gate's expected width.

`SearchTrajectory` records them every few steps of a `DMCPModel.fit` (and writes
them as TensorBoard scalars); `settling` says how much the gates still moved at
the end, which tells whether the search ran long enough.
"""

import keras
import numpy as np
import tensorflow as tf

# A gate whose expected width still moves by more than this (a fraction of its
# channels) over the last 10% of the search steps has not settled. It is a fifth
# of the default width grid's step (0.1 of the channels): expected sampling rounds
# the expected width, so a smaller move changes the chosen channels by at most a
# fifth of a group.
SETTLED_THRESHOLD = 0.02
SETTLING_WINDOW = 0.1


def snapshot(model, step):
    """One trajectory point of a `DMCPModel`: step, E[cost] / budget, gate -> expected width fraction."""
    fractions = {g.name: float(g.expected_channels()) / g.channels for g in model.gates}
    expected = float(model.cost.expected(model.graph))
    return {"step": int(step), "expected_cost": expected, "expected_over_budget": expected / model.target,
            "fractions": fractions}


class SearchTrajectory(keras.callbacks.Callback):
    """Records the search's trajectory every `every_steps` steps (and at the start and end of `fit`).

    Args:
        every_steps: recording interval in training steps.
        log_dir: if given, the points are also written there as TensorBoard scalars
            (`search/expected_cost_over_budget`, `search/width/<gate>`).
        records: the points recorded before a resume (the list is extended in place).
    """

    def __init__(self, every_steps=10, log_dir=None, records=None):
        super().__init__()
        self.every_steps = max(1, int(every_steps))
        self.records = records if records is not None else []
        self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def record(self):
        step = self._step()
        if self.records and self.records[-1]["step"] == step:
            return
        point = snapshot(self.model, step)
        self.records.append(point)
        if self._writer is not None:
            with self._writer.as_default(step=step):
                tf.summary.scalar("search/expected_cost_over_budget", point["expected_over_budget"])
                for name, fraction in point["fractions"].items():
                    tf.summary.scalar(f"search/width/{name}", fraction)
            self._writer.flush()

    def on_train_begin(self, logs=None):
        self.record()

    def on_train_batch_end(self, batch, logs=None):
        if self._step() % self.every_steps == 0:
            self.record()

    def on_train_end(self, logs=None):
        self.record()


def settling(records, warmup_steps, total_steps, window=SETTLING_WINDOW):
    """The largest change of any gate's expected width fraction over the last `window` of the search steps.

    The change of a gate is the range (max - min) of its fraction among the
    points recorded in that window. None if fewer than two points fall in it.
    """
    start = total_steps - window * (total_steps - warmup_steps)
    points = [r for r in records if r["step"] >= start]
    if len(points) < 2:
        return None
    names = points[0]["fractions"]
    return max(float(np.ptp([p["fractions"][n] for p in points])) for n in names)


def verdict(change, threshold=SETTLED_THRESHOLD):
    """A sentence on whether the search settled, for the report."""
    if change is None:
        return "Too few trajectory points at the end of the search to tell whether it settled."
    if change <= threshold:
        return (f"The search had settled: over the last {SETTLING_WINDOW:.0%} of the search steps no gate's "
                f"expected width moved by more than {change:.3f} of its channels (threshold {threshold}).")
    return (f"**Warning: the search was still moving** (a gate's expected width changed by {change:.3f} of its "
            f"channels over the last {SETTLING_WINDOW:.0%} of the search steps; threshold {threshold}). "
            "Run it longer: --config.search.epochs; if the trajectory plot jitters rather than drifts (a "
            "frozen-weight search at the short configs' raised rate), lower --config.search.arch_learning_rate.")


# A search whose expected cost ends more than this above its target has missed the
# budget: expected sampling rounds the expected widths by under a channel per gate,
# which moves the cost by a few percent at most, never by a fifth.
MISSED_BUDGET_RATIO = 1.05
# ... and below this, it stopped short of it: the budget loss is flat on [0.95, 1]
# of the target, and rounding moves the cost by a few percent more.
SHORT_OF_BUDGET_RATIO = 0.9


def budget_verdict(expected_over_budget, growth):
    """A warning for the report and log when the search ended off its budget; None when it met it.

    Args:
        expected_over_budget: the expected cost at the end of the search over the target.
        growth: the search's `budget_weight_growth`.
    """
    if expected_over_budget < SHORT_OF_BUDGET_RATIO:
        return (f"**Warning: the search stopped short of its budget**: its expected cost ended at "
                f"{expected_over_budget:.2f}x the target, so the sampled structure leaves part of the budget "
                "unspent. Run the search longer (--config.search.epochs), start it at the budget "
                "(--config.search.init=budget), or scale the structure up to the budget "
                "(--config.sample.fit_to_budget=True).")
    if expected_over_budget <= MISSED_BUDGET_RATIO:
        return None
    advice = ("let the budget weight grow while the cost is above the budget: "
              "--config.search.budget_weight_growth=0.1" if not growth else
              "raise --config.search.budget_weight_growth, or run the search longer: --config.search.epochs")
    return (f"**Warning: the search missed its budget**: its expected cost ended at {expected_over_budget:.2f}x "
            f"the target, so the sampled structure is over budget too. The task loss outweighed the budget "
            f"loss; {advice}.")
