"""`DMCPModel`: a gated supernet whose `fit` runs the DMCP search.

Every training step runs the weight stage (variant sandwich rule with in-place
distillation) and, after warm-up, the architecture stage (spec, section 5). With
`train_weights=False` only the architecture stage runs, on frozen weights.
"""

import warnings

import keras
import tensorflow as tf
from keras import ops

from dmcp_tf import costs
from dmcp_tf.channels import gates as gates_lib
from dmcp_tf.channels import layer_rules as rules
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.slicing import SlicedForward
from dmcp_tf.channels.walk import producer_of
from dmcp_tf.search import losses as losses_lib
from dmcp_tf.search import search_init


def default_weight_optimizer(total_steps, learning_rate=0.2, warmup_steps=0, *, warmup_start=0.0,
                             min_learning_rate=0.0):
    """SGD with Nesterov momentum 0.9, linear warm-up, then cosine decay (the authors' schedule).

    Args:
        total_steps: steps of the whole search.
        learning_rate: the peak, reached after `warmup_steps`.
        warmup_steps: linear warm-up from `warmup_start` to `learning_rate`.
        min_learning_rate: the cosine's floor at the last step (the authors' `min_lr`, 0.08 on ImageNet).
    """
    if not 0.0 <= min_learning_rate <= learning_rate:
        raise ValueError(f"min_learning_rate must be in [0, learning_rate={learning_rate}], got {min_learning_rate}.")
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=warmup_start if warmup_steps else learning_rate,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=min_learning_rate / learning_rate if learning_rate else 0.0,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, name="weight_sgd")


def default_arch_optimizer(search_steps, learning_rate=0.5, final_learning_rate=0.1):
    """SGD with Nesterov momentum 0.9, cosine from 0.5 to 0.1 over the search steps."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, search_steps), alpha=final_learning_rate / learning_rate
    )
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, name="arch_sgd")


# `DMCPModel._project_to_budget`: Newton steps on the common shift of `alpha`
# (one architecture step moves the cost a little and two reach the band; five
# bring a start at full width, 4x the budget, into it at once), and the largest
# shift of one step (a logit of 2 moves a transition probability from 0.5 to 0.88).
PROJECTION_STEPS = 5
MAX_PROJECTION_SHIFT = 2.0


def seed_generator_states(model):
    """The state variables of every Keras `SeedGenerator` a model (or layer) owns (checkpointed with it)."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


class DMCPModel(keras.Model):
    """A supernet trained by DMCP's alternating step.

    Args:
        supernet: a functional model with gates (hand-written or inserted).
        budget: the cost target (`costs.Budget` or its text): MACs as `"210M"`, `"2.8G"`,
            `"0.5x"` (of the full model) or a number; parameters as `"params:1.5M"`, `"params:0.4x"`.
        total_steps: training steps of the whole search (warm-up included).
        warmup_fraction: share of the steps that trains weights only.
        budget_weight: `lambda`, the weight of the budget loss.
        budget_weight_growth: 0 keeps `lambda` fixed (the authors). Above 0,
            `lambda` acts as a Lagrange multiplier: after every architecture step
            it is multiplied by `exp(growth * (E / T - 1))` and never falls below
            `budget_weight`, so it grows while the expected cost `E` stays above
            the target `T` and relaxes back once it is met (while it is large, it
            also pulls a cost that fell below the target back up). This holds the budget
            where the task loss' pull outweighs the authors' log-shaped budget
            loss, whose gradient weakens as `1 / (E - 0.95 T)` far above the target
            (frozen trained weights, small budgets). 0.1 is a moderate rate: 1.1x
            the budget doubles `lambda` in about 70 steps, 3x in about 4.
        label_smoothing: for the largest sub-network's cross-entropy.
        arch_label_smoothing: for the architecture stage's cross-entropy (the
            authors use the training's label smoothing there too).
        weight_decay: L2 on the weights layer rules name in `decayed_weights`: conv and
            dense kernels (none on biases, BN, gates) unless a registered rule says otherwise.
        uniform_decay, uniform_decay_every: after warm-up a random sub-network is
            uniform with probability `s`, multiplied by `uniform_decay` every
            `uniform_decay_every` steps, and Markov-sampled otherwise.
        seed: seed of the sub-network sampling.
        train_weights: False learns the gates only, on every step, and leaves the
            weights as they are (no weight stage, no warm-up): widths for a trained
            network whose weights should not move. Batch-norm statistics still
            follow the batches; calibrate them before evaluating a sub-network.
        project_to_budget: after every architecture step, shift every gate's
            `alpha` by one common amount so that the expected cost returns into
            the budget loss' flat band `[0.95 T, T]` (a few Newton steps on the
            shift). The budget then holds at every step and the task gradient only
            moves widths between layers. None (default) projects when
            `train_weights` is False: on frozen trained weights the task loss pulls
            every gate towards full width, and the budget loss alone lets the cost
            run far above the target, or, with `budget_weight_growth`, overshoot
            far below it with the gates saturated.
        slice_subnetworks: run the weight stage's sub-networks at their real width
            (sliced kernels) where the graph allows it; otherwise, or when False,
            they run at full width with pruned channels zeroed (masking).

    Example:
        model = DMCPModel(mobilenet_v2(1.5), budget="210M", total_steps=1000)
        model.compile()
        model.fit(train_data, epochs=2)
    """

    def __init__(
        self,
        supernet,
        *,
        budget,
        total_steps,
        warmup_fraction=0.5,
        budget_weight=0.1,
        budget_weight_growth=0.0,
        label_smoothing=0.0,
        arch_label_smoothing=0.0,
        weight_decay=0.0,
        uniform_decay=0.9999,
        uniform_decay_every=10,
        seed=0,
        train_weights=True,
        project_to_budget=None,
        slice_subnetworks=True,
        name="dmcp",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.supernet = supernet
        self.graph = ChannelGraph(supernet)
        if not self.graph.gates:
            raise ValueError(
                f"Model {supernet.name!r} has no channel gates. Build a supernet with gates "
                "(dmcp_tf.models) or place MarkovGate layers after the batch norms to prune."
            )
        self.outputs_probabilities = ends_in_softmax(supernet)
        sliced = SlicedForward(self.graph)
        self.sliced = sliced if slice_subnetworks and sliced.supported else None
        self.slicing_note = "sliced" if self.sliced else sliced.reason or "masking requested"
        self.full_macs = costs.MACS.of(self.graph)
        # A variable, so that `set_budget` changes the target without retracing the step.
        self._target = self.add_weight(name="target_cost", shape=(), trainable=False, dtype="float32")
        self.set_budget(budget)
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}.")
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps}.")
        self.total_steps = int(total_steps)
        self.train_weights = bool(train_weights)
        self.warmup_steps = int(round(warmup_fraction * total_steps)) if train_weights else 0
        self.project_to_budget = not self.train_weights if project_to_budget is None else bool(project_to_budget)
        self.budget_weight = float(budget_weight)
        if budget_weight_growth < 0:
            raise ValueError(f"budget_weight_growth must be >= 0, got {budget_weight_growth}.")
        self.budget_weight_growth = float(budget_weight_growth)
        # The current `lambda` (a variable: it adapts when `budget_weight_growth` > 0).
        self._budget_multiplier = self.add_weight(
            name="budget_weight", shape=(), trainable=False, dtype="float32",
            initializer=keras.initializers.Constant(self.budget_weight), aggregation="only_first_replica")
        self.label_smoothing = float(label_smoothing)
        self.arch_label_smoothing = float(arch_label_smoothing)
        self.weight_decay = float(weight_decay)
        self.uniform_decay = float(uniform_decay)
        self.uniform_decay_every = int(uniform_decay_every)
        self.seed_generator = keras.random.SeedGenerator(seed, name="subnet_sampling")
        self.searching = False  # Python flag: the traced step includes the architecture stage
        self.arch_variables = [g.alpha for g in self.graph.gates]
        arch_ids = {id(v) for v in self.arch_variables}
        self.weight_variables = [v for v in supernet.trainable_variables if id(v) not in arch_ids]
        decayed = rules.decayed_weight_ids(supernet)
        self._decayed = [v for v in self.weight_variables if id(v) in decayed]
        names = ("loss", "accuracy", "loss_full", "loss_smallest", "loss_random1", "loss_random2",
                 "arch_loss", "budget_loss", "expected_cost")
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.trackers["accuracy"] = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.trackers["expected_cost"] = LatestValue(name="expected_cost")
        if self.budget_weight_growth:
            self.trackers["budget_weight"] = LatestValue(name="budget_weight")

    def set_budget(self, budget):
        """Sets the architecture stage's target (a `costs.Budget` or its text, as `budget` above).

        The warm-up does not depend on the budget, so searches for several budgets
        can continue one warm-up: restore its state, `set_budget`, `fit` on. The
        cost kind is fixed when the step is traced: change the target, not the kind.

        Raises:
            ValueError: the budget is unreadable, or not between the smallest and the full sub-network.
        """
        budget = costs.Budget.parse(budget)
        if getattr(self, "budget", None) is not None and budget.cost is not self.cost:
            raise ValueError(f"This model searches a {self.cost.name} budget; build another DMCPModel "
                             f"for a {budget.cost.name} budget.")
        self.target = budget.checked_target(self.graph)
        self.budget, self.cost = budget, budget.cost
        self._target.assign(float(self.target))

    def initialize_gates(self, init):
        """Sets where the search starts (`"authors"`, `"full"`, `"budget"`: `search_init`); returns the expected cost there."""
        return search_init.initialize(self.graph, init, self.target, cost=self.cost)

    def search_state(self):
        """Everything the rest of a search depends on, by name (what a checkpoint saves).

        Weights, gate parameters and batch-norm statistics (`supernet`), both
        optimisers with their step counters, and the sub-network sampler's random
        state. Available after `compile`.
        """
        state = {"supernet": self.supernet, "optimizer": self.optimizer, "arch_optimizer": self.arch_optimizer,
                 "random_state": seed_generator_states(self)}
        if self.budget_weight_growth:  # the adapted `lambda` (constant otherwise)
            state["budget_weight"] = [self._budget_multiplier]
        return state

    @property
    def gates(self):
        return self.graph.gates

    @property
    def full_flops(self):
        """Deprecated: `full_macs` (the same number)."""
        warnings.warn("DMCPModel.full_flops is deprecated: use full_macs (the same number).", DeprecationWarning,
                      stacklevel=2)
        return self.full_macs

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        return self.supernet(inputs, training=training)

    def compile(self, weight_optimizer=None, arch_optimizer=None, **kwargs):
        """Builds both optimisers on their own variables (needed under a distribution strategy).

        Args:
            weight_optimizer: updates the network weights; defaults to
                `default_weight_optimizer(total_steps)`.
            arch_optimizer: updates the gates' `alpha`; defaults to
                `default_arch_optimizer(total_steps - warmup_steps)`.

        Under the `mixed_float16` dtype policy both are wrapped in a
        `keras.optimizers.LossScaleOptimizer` (dynamic loss scaling).
        """
        weight_optimizer = weight_optimizer or default_weight_optimizer(self.total_steps)
        self.arch_optimizer = arch_optimizer or default_arch_optimizer(self.total_steps - self.warmup_steps)
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=weight_optimizer, **kwargs)  # wraps it in a LossScaleOptimizer under mixed_float16
        if self.dtype_policy.name == "mixed_float16" and not isinstance(self.arch_optimizer,
                                                                         keras.optimizers.LossScaleOptimizer):
            # The gates' gradients also flow back through float16 activations.
            self.arch_optimizer = keras.optimizers.LossScaleOptimizer(self.arch_optimizer, name="arch_loss_scale")
        self.optimizer.build(self.weight_variables)
        self.arch_optimizer.build(self.arch_variables)

    # --- one training step -------------------------------------------------
    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        step = self.optimizer.iterations
        if self.train_weights:
            self._weight_stage(x, y, step)
        else:
            step.assign_add(1)  # the step counter every callback and checkpoint reads
        # Gate parameters change only in the architecture stage, which computes the
        # expected cost (before its update) anyway.
        expected = self._arch_stage(x, y) if self.searching else self.cost.expected(self.graph)
        self.trackers["expected_cost"].update_state(expected)
        return {name: self.trackers[name].result() for name in self._logged()}

    def _logged(self):
        """The metrics this phase computes."""
        arch_only = ("arch_loss", "budget_loss", "budget_weight")
        if not self.train_weights:
            return [name for name in self.trackers if name in arch_only + ("expected_cost", "accuracy")]
        return [name for name in self.trackers if self.searching or name not in arch_only]

    def _forward(self, x, selection, training=True):
        """Logits of the supernet under a gate selection (log-probabilities if it ends in a softmax)."""
        if selection.mode == gates_lib.SUBNET and self.sliced is not None:
            outputs = self.sliced(x, selection.widths, training=training)
        else:
            with gates_lib.thread_selection(selection):
                outputs = self.supernet(x, training=training)
        outputs = losses_lib.at_least_float32(outputs)  # a mixed-precision model's outputs are half precision
        return ops.log(ops.maximum(outputs, 1e-12)) if self.outputs_probabilities else outputs

    def _weight_stage(self, x, y, step):
        subnets = [("loss_smallest", {g: g.prefix for g in self.gates})]
        subnets += [(f"loss_random{i}", self._random_widths(step)) for i in (1, 2)]
        with tf.GradientTape() as tape:
            logits = self._forward(x, gates_lib.Selection(gates_lib.FULL))
            loss_full = losses_lib.cross_entropy(y, logits, self.label_smoothing)
            teacher = ops.stop_gradient(ops.softmax(logits))
            losses = {"loss_full": loss_full}
            for name, widths in subnets:
                student = self._forward(x, gates_lib.Selection(gates_lib.SUBNET, widths))
                losses[name] = losses_lib.distillation(teacher, student)
            total = sum(losses.values()) + self._l2()
            scaled = self._scaled(self.optimizer, total)
        self._apply(self.optimizer, tape.gradient(scaled, self.weight_variables), self.weight_variables)
        self.trackers["loss"].update_state(total)
        self.trackers["accuracy"].update_state(y, logits)
        for name, value in losses.items():
            self.trackers[name].update_state(value)

    def _arch_stage(self, x, y):
        """One update of the gate parameters; returns the expected cost before it."""
        with tf.GradientTape() as tape:
            logits = self._forward(x, gates_lib.Selection(gates_lib.SCALE))
            task = losses_lib.cross_entropy(y, logits, self.arch_label_smoothing)
            expected = self.cost.expected(self.graph)
            budget = costs.budget_loss(expected, self._target)
            loss = task + self._budget_multiplier * budget
            scaled = self._scaled(self.arch_optimizer, loss)
        self._apply(self.arch_optimizer, tape.gradient(scaled, self.arch_variables), self.arch_variables)
        if self.budget_weight_growth:
            self._adapt_budget_weight(expected)
        if self.project_to_budget:
            self._project_to_budget()
        if not self.train_weights:  # the only forward pass of the step
            self.trackers["accuracy"].update_state(y, logits)
        self.trackers["arch_loss"].update_state(loss)
        self.trackers["budget_loss"].update_state(budget)
        return expected

    def _adapt_budget_weight(self, expected):
        """Dual ascent on `lambda`: up while the expected cost is above the target, back down to `budget_weight` after."""
        excess = ops.cast(expected, "float32") / self._target - 1.0
        grown = self._budget_multiplier * ops.exp(self.budget_weight_growth * ops.minimum(excess, 10.0))
        self._budget_multiplier.assign(ops.clip(grown, self.budget_weight, 1e4 * self.budget_weight))
        self.trackers["budget_weight"].update_state(self._budget_multiplier)

    def _project_to_budget(self):
        """Shifts every gate's `alpha` by one common offset `c` so that `0.95 T <= E[cost] <= T`.

        `E` increases with `c`; each Newton step aims at the nearest edge of the
        band (no move inside it), and a step is at most `MAX_PROJECTION_SHIFT`
        (saturated gates make the slope tiny).
        """
        for _ in range(PROJECTION_STEPS):
            with tf.GradientTape() as tape:
                expected = ops.cast(self.cost.expected(self.graph), "float32")
            slope = sum(ops.sum(g) for g in tape.gradient(expected, self.arch_variables))
            goal = ops.clip(expected, costs.FLAT_BAND_LOW * self._target, self._target)
            shift = ops.clip((goal - expected) / ops.maximum(slope, 1e-12 * self._target),
                             -MAX_PROJECTION_SHIFT, MAX_PROJECTION_SHIFT)
            for variable in self.arch_variables:
                variable.assign_add(ops.broadcast_to(shift, variable.shape))

    @staticmethod
    def _scaled(optimizer, loss):
        """The loss to differentiate: divided by the replicas (their gradients are summed), then
        multiplied by the optimizer's loss scale (a `LossScaleOptimizer`'s; 1 for others)."""
        return optimizer.scale_loss(loss / tf.distribute.get_strategy().num_replicas_in_sync)

    @staticmethod
    def _apply(optimizer, grads, variables):
        """`optimizer.apply`; a step that loss scaling skips (non-finite gradients) still counts.

        The step counter (`optimizer.iterations`) then stays the number of batches
        trained on, which the phase switch, the schedules and the resumed data stream read.
        """
        if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer.apply(grads, variables)
            return
        skipped = ops.logical_not(optimizer.check_finite(grads))
        optimizer.apply(grads, variables)
        optimizer.iterations.assign_add(ops.cast(skipped, optimizer.iterations.dtype))

    def _random_widths(self, step):
        """Widths of one random sub-network: uniform on the grid, or Markov-sampled after warm-up."""
        if self.searching:
            decays = ops.floor(ops.cast(step - self.warmup_steps, "float32") / self.uniform_decay_every)
            uniform_prob = ops.power(self.uniform_decay, ops.maximum(decays, 0.0))
            use_uniform = keras.random.uniform((), seed=self.seed_generator) < uniform_prob
        widths = {}
        for gate in self.gates:
            groups = keras.random.randint((), 0, gate.num_groups + 1, seed=self.seed_generator)
            if self.searching:
                chain = gate.sample_groups(keras.random.uniform((gate.num_groups,), seed=self.seed_generator))
                groups = ops.where(use_uniform, groups, chain)
            widths[gate] = gate.prefix + gate.group * groups
        return widths

    def _l2(self):
        if not self.weight_decay or not self._decayed:
            return 0.0
        return 0.5 * self.weight_decay * sum(ops.sum(ops.square(v)) for v in self._decayed)

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        logits = self._forward(x, gates_lib.Selection(gates_lib.FULL), training=False)
        self.trackers["loss"].update_state(losses_lib.cross_entropy(y, logits))
        self.trackers["accuracy"].update_state(y, logits)
        return {n: self.trackers[n].result() for n in ("loss", "accuracy")}

    # --- phases -------------------------------------------------------------
    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, plus the switch from warm-up to search at `warmup_steps`.

        Warns when the steps this call runs (known from `steps_per_epoch`, or from the
        length of a finite dataset) do not fit `total_steps`: past its end, or ending
        inside the warm-up, so that no architecture step would run.
        """
        data = args[0] if args else kwargs.get("x")
        steps = planned_steps(data, kwargs.get("epochs", 1), kwargs.get("initial_epoch", 0),
                              kwargs.get("steps_per_epoch"))
        if steps is not None:
            self._check_planned_steps(steps)
        callbacks = list(callbacks or []) + [SearchPhaseSwitch()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _check_planned_steps(self, steps):
        start = int(self.optimizer.iterations.numpy()) if self.compiled else 0
        end, fix = start + steps, ("Build it with total_steps = epochs * steps_per_epoch of the whole search "
                                   "(every fit call together).")
        if end > self.total_steps:
            warnings.warn(f"This fit runs to step {end}, but the DMCPModel was built for total_steps="
                          f"{self.total_steps}: its warm-up and learning-rate schedules end before the training. "
                          + fix, stacklevel=3)
        elif start == 0 and end < self.warmup_steps:
            warnings.warn(f"This fit ends at step {end}, inside the warm-up of {self.warmup_steps} steps "
                          f"(warmup_fraction of total_steps={self.total_steps}): no architecture step will run. " + fix, stacklevel=3)

    def update_phase(self):
        """Enters the search phase once warm-up is over; retraces the step if the phase changed."""
        searching = int(self.optimizer.iterations.numpy()) >= self.warmup_steps
        if searching != self.searching:
            self.searching = searching
            if self.train_function is not None:
                self.make_train_function(force=True)
        return searching


def planned_steps(data, epochs, initial_epoch=0, steps_per_epoch=None):
    """The training steps a `fit(data, epochs=...)` call runs, or None if Keras learns it only by running out of data."""
    if steps_per_epoch is None:
        if isinstance(data, tf.data.Dataset) and int(data.cardinality()) >= 0:
            steps_per_epoch = int(data.cardinality())
        elif isinstance(data, keras.utils.PyDataset) and data.num_batches is not None:
            steps_per_epoch = data.num_batches
        else:
            return None
    return max(0, epochs - initial_epoch) * steps_per_epoch


def ends_in_softmax(model):
    """Whether the model's output is a softmax (as in keras.applications) rather than logits."""
    layer = producer_of(model.outputs[0])
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax"


class LatestValue(keras.metrics.Metric):
    """A metric that reports the last value it was given (not an epoch average).

    Every replica holds the same value; it is averaged, not summed, across replicas
    (a metric's default), so the reported value does not grow with their number.
    """

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable(shape=(), initializer="zeros", name="value", aggregation="mean")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.value.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)


class SearchPhaseSwitch(keras.callbacks.Callback):
    """Switches a `DMCPModel` from warm-up to search at the right step."""

    def on_train_begin(self, logs=None):
        self.model.update_phase()

    def on_train_batch_begin(self, batch, logs=None):
        if not self.model.searching:
            self.model.update_phase()
