"""Channel gates: Keras layers that model how many channels a layer keeps.

A gate sits on a tensor's channel axis (last axis, NHWC or 2-D). Its `C` channels
are a fixed prefix of `m` channels that are always kept plus `G` groups of `g`
channels that can be dropped from the end (DMCP, section 2 of the spec).

The forward pass depends on the *gate selection* active while the model is called
(see `selection`):
- none or `FULL`: identity (every channel kept);
- `SUBNET`: keep the first `c` channels, zero the rest (weight-stage sub-networks);
- `SCALE`: multiply channel `j` of group `k` by its marginal probability `q_k`
  (architecture stage).
"""

import contextlib
import threading

import keras
import numpy as np
from keras import ops

FULL = "full"
# Saved in every gate's config (`ChannelGate.get_config`), for whoever loads a
# gated model without dmcp_tf.
LOAD_HINT = ("import dmcp_tf before keras.saving.load_model: this layer is a DMCP channel gate (dmcp_tf.channels.gates); "
             "the pruned slim.keras of a run loads without it")
SUBNET = "subnet"
SCALE = "scale"


class Selection:
    """What every gate does during one forward pass.

    Args:
        mode: `FULL`, `SUBNET` or `SCALE`.
        widths: for `SUBNET`, a mapping from gate (the layer object) to the number
            of channels it keeps (a Python int or a scalar tensor). Gates not in
            the mapping keep every channel.
    """

    def __init__(self, mode, widths=None):
        if mode not in (FULL, SUBNET, SCALE):
            raise ValueError(f"Unknown gate mode {mode!r}; use one of {FULL}, {SUBNET}, {SCALE}.")
        self.mode = mode
        self.widths = dict(widths or {})
        self._by_id = {id(gate): width for gate, width in self.widths.items()}

    def width_of(self, gate):
        return self._by_id.get(id(gate))


# The selection is per thread (MirroredStrategy traces each replica in a thread of
# its own); a selection made in the main thread is the fallback for all threads.
_thread_state = threading.local()
_process_state = []


def current_selection():
    """The innermost active `Selection`, or None."""
    stack = getattr(_thread_state, "stack", None)
    if stack:
        return stack[-1]
    return _process_state[-1] if _process_state else None


@contextlib.contextmanager
def _pushed(stack, sel):
    stack.append(sel)
    try:
        yield sel
    finally:
        stack.pop()


def _thread_stack():
    return _thread_state.__dict__.setdefault("stack", [])


def selection(sel):
    """Activates `sel` for model calls made inside the block.

    The selection is read when a gate's `call` runs, i.e. in eager calls and while
    a `tf.function` is traced. Inside a training step the widths are tensors, so
    the traced graph serves every sub-network.
    """
    in_main = threading.current_thread() is threading.main_thread()
    return _pushed(_process_state if in_main else _thread_stack(), sel)


def thread_selection(sel):
    """Like `selection`, but visible to the calling thread only (used in train steps)."""
    return _pushed(_thread_stack(), sel)


def check_width_grid(width):
    """`(min_width, max_width, width_offset)` as floats, or ValueError naming what is wrong with the grid."""
    try:
        min_width, max_width, offset = (float(v) for v in width)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid width grid {width!r}: give three numbers (min_width, max_width, "
                         "width_offset), e.g. (0.1, 1.0, 0.1).") from None
    if not 0 <= min_width < max_width or offset <= 0 or offset > max_width - min_width:
        raise ValueError(f"Invalid width grid {width}: need 0 <= min_width < max_width and 0 < width_offset <= "
                         "max_width - min_width, e.g. (0.1, 1.0, 0.1).")
    return min_width, max_width, offset


def split_channels(channels, *, width=None, min_channels=None, group_size=None):
    """Splits `channels` into a kept prefix and equal groups.

    Args:
        channels: the number of channels `C` of the gated tensor.
        width: `(min_width, max_width, width_offset)` grid, e.g. `(0.1, 1.0, 0.1)`.
        min_channels, group_size: explicit prefix `m` and group size `g` instead.

    Returns:
        `(prefix, group_size, num_groups)` with `prefix + group_size * num_groups == channels`.
    """
    if width is not None:
        if min_channels is not None or group_size is not None:
            raise ValueError("Give either `width` or `min_channels`/`group_size`, not both.")
        min_width, max_width, offset = check_width_grid(width)
        group_size = int(offset * channels / max_width)
        num_groups = int((max_width - min_width) / offset + 1e-4)
        if group_size < 1:
            raise ValueError(
                f"A gate on {channels} channels cannot use the width grid {width}: each of its "
                f"{num_groups} groups would hold {offset * channels / max_width:.2f} channels. "
                "Use a coarser grid or gate a wider tensor."
            )
        prefix = channels - group_size * num_groups
    else:
        if min_channels is None or group_size is None:
            raise ValueError("A gate needs `width=(min, max, offset)` or both `min_channels` and `group_size`.")
        prefix, group_size = int(min_channels), int(group_size)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}.")
        num_groups = (channels - prefix) // group_size
        if prefix + num_groups * group_size != channels:
            raise ValueError(
                f"{channels} channels do not split into a prefix of {prefix} plus groups of "
                f"{group_size}; choose min_channels so that channels - min_channels is a multiple of group_size."
            )
    if prefix < 1:
        raise ValueError(
            f"The width grid leaves no channel in the always-kept prefix of a gate on {channels} "
            f"channels (prefix {prefix}, {num_groups} groups of {group_size}). Raise min_width "
            "(or min_channels) so that at least one channel is always kept."
        )
    if num_groups < 1:
        raise ValueError(f"A gate on {channels} channels with prefix {prefix} has no prunable group.")
    return prefix, group_size, num_groups


class ChannelGate(keras.layers.Layer):
    """Base class of the gates: channel split, `alpha`, forward behaviours.

    `alpha` starts at `initial_alpha` (0 in the paper: every transition 0.5; a
    positive value starts the chains nearer full width, as the authors' code does).
    Subclasses define `keep_probabilities()`, the marginal probability that each
    group is kept, and `sample_groups(uniform)`, the number of kept groups for a
    draw of uniform random numbers.

    `channel_multiple`: every kept channel count is a multiple of it (the channels
    per group of grouped convolutions on the gated channels); expected sampling
    rounds to one.
    """

    def __init__(self, width=None, min_channels=None, group_size=None, initial_alpha=0.0, channel_multiple=1,
                 **kwargs):
        super().__init__(**kwargs)
        self.initial_alpha = float(initial_alpha)
        self.channel_multiple = int(channel_multiple)
        if width is None and (min_channels is None or group_size is None):
            raise ValueError("A gate needs `width=(min, max, offset)` or both `min_channels` and `group_size`.")
        if width is not None:
            check_width_grid(width)  # now, not when the layer is first called
        self.width = tuple(width) if width is not None else None
        self.min_channels = min_channels
        self.group_size = group_size
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"Gate {self.name!r} needs a known channel count, got shape {input_shape}.")
        self.channels = int(channels)
        try:
            self.prefix, self.group, self.num_groups = split_channels(
                self.channels, width=self.width, min_channels=self.min_channels, group_size=self.group_size
            )
        except ValueError as error:
            raise ValueError(f"Gate {self.name!r}: {error}") from None
        # float32 under a mixed dtype policy too (no autocast): probabilities and
        # expected costs stay float32; `call` casts them to the activations' dtype.
        # Every replica computes the same `alpha`: an assignment inside the step (the
        # budget projection) takes the first replica's value.
        self.alpha = self.add_weight(
            name="alpha", shape=(self.num_groups,), trainable=True, dtype="float32", autocast=False,
            initializer=keras.initializers.Constant(self.initial_alpha), aggregation="only_first_replica",
        )
        self.alpha.is_architecture = True

    def compute_output_shape(self, input_shape):
        return input_shape

    # --- probabilities -----------------------------------------------------
    def keep_probabilities(self):
        """Marginal probability that each group is kept, shape `(G,)`."""
        raise NotImplementedError

    def expected_channels(self):
        """`E[c] = m + g * sum_k q_k`, differentiable in `alpha`."""
        return self.prefix + self.group * ops.sum(self.keep_probabilities())

    def channel_probabilities(self):
        """Per-channel keep probabilities, shape `(C,)`: prefix 1, then `q_k` repeated `g` times."""
        q = ops.repeat(self.keep_probabilities(), self.group)
        return ops.concatenate([ops.ones((self.prefix,), dtype=q.dtype), q])

    # --- sampling (NumPy, outside the training graph) ----------------------
    def expected_sample(self):
        """Expected sampling: `E[c]` rounded to a multiple of `channel_multiple` (not snapped to the grid)."""
        expected = float(ops.convert_to_numpy(self.expected_channels()))
        return int(np.round(expected / self.channel_multiple)) * self.channel_multiple

    def direct_sample(self, rng, size=None):
        """Direct sampling of kept channel counts with a NumPy `Generator`."""
        shape = (self.num_groups,) if size is None else (size, self.num_groups)
        kept = self.sample_groups_numpy(rng.random(shape))
        return self.prefix + self.group * kept

    def widths_grid(self):
        """Every channel count a sampled sub-network can have."""
        return [self.prefix + self.group * k for k in range(self.num_groups + 1)]

    # --- forward -------------------------------------------------------------
    def call(self, inputs):
        sel = current_selection()
        if sel is None or sel.mode == FULL:
            return inputs
        if sel.mode == SCALE:
            return inputs * ops.cast(self.channel_probabilities(), inputs.dtype)
        width = sel.width_of(self)
        if width is None:
            return inputs
        mask = ops.arange(self.channels, dtype="int32") < ops.cast(width, "int32")
        return inputs * ops.cast(mask, inputs.dtype)

    def get_config(self):
        # First in the saved config: Keras prints the config of a class it cannot
        # find ("Could not locate class 'MarkovGate' ... Full object config: {...}"),
        # so a supernet loaded without dmcp_tf says what to do.
        config = {"requires": LOAD_HINT, **super().get_config()}
        config.update(width=self.width, min_channels=self.min_channels, group_size=self.group_size,
                      initial_alpha=self.initial_alpha, channel_multiple=self.channel_multiple)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("requires", None)  # the hint above (absent from files saved before it)
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="dmcp_tf")
class MarkovGate(ChannelGate):
    """DMCP's Markov-chain channel gate.

    Group `k` is kept with probability `p_k = sigmoid(alpha_k)` if group `k-1` is
    kept and dropped otherwise, so its marginal probability is the cumulative
    product `q_k = p_1 ... p_k`.

    Example:
        x = keras.layers.Conv2D(64, 3)(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = MarkovGate(width=(0.1, 1.0, 0.1), name="conv1_gate")(x)
        x = keras.layers.ReLU()(x)
    """

    def transition_probabilities(self):
        return ops.sigmoid(self.alpha)

    def keep_probabilities(self):
        return ops.cumprod(self.transition_probabilities())

    def sample_groups_numpy(self, uniform):
        p = ops.convert_to_numpy(self.transition_probabilities())
        return np.cumprod(uniform < p, axis=-1).sum(axis=-1)

    def sample_groups(self, uniform):
        """Kept groups of the chain for uniform draws of shape `(G,)` (graph-friendly)."""
        kept = ops.cast(uniform < self.transition_probabilities(), "int32")
        return ops.sum(ops.cumprod(kept))


@keras.saving.register_keras_serializable(package="dmcp_tf")
class BernoulliGate(ChannelGate):
    """Ablation gate: groups kept independently with probability `sigmoid(alpha_k)`.

    A sampled layer keeps the prefix plus as many groups as were drawn, so the
    channel count follows a sum of independent Bernoulli variables.
    """

    def keep_probabilities(self):
        return ops.sigmoid(self.alpha)

    def sample_groups_numpy(self, uniform):
        p = ops.convert_to_numpy(self.keep_probabilities())
        return (uniform < p).sum(axis=-1)

    def sample_groups(self, uniform):
        return ops.sum(ops.cast(uniform < self.keep_probabilities(), "int32"))


GATE_TYPES = {"markov": MarkovGate, "bernoulli": BernoulliGate}


def make_gate(kind="markov", **kwargs):
    """Builds a gate of the given kind (`"markov"` or `"bernoulli"`)."""
    try:
        return GATE_TYPES[kind](**kwargs)
    except KeyError:
        raise ValueError(f"Unknown gate kind {kind!r}; use one of {sorted(GATE_TYPES)}.") from None
