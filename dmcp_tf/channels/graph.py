"""The channel graph of a functional Keras model.

Every tensor's channel axis is described by a *layout*: a tuple of channel spaces,
one per segment of the axis (more than one after a channel `Concatenate`). A
channel space is a set of channel axes that must be pruned together: a producing
layer (Conv2D, Dense) opens a new space, layers that treat channels one by one
(BatchNorm, activations, depthwise conv, gates) pass it on, and element-wise
merges (Add, Multiply) join the spaces of their inputs. A grouped convolution with as
many filters as inputs passes its space on too, and asks it to keep whole groups
(`Space.conv_group` channels at a time). A gate placed on a space governs it: the
space keeps the gate's number of channels, always the first ones.

Everything else reads this graph: costs (`dmcp_tf.costs`: MACs, parameters, real and
expected), sampling and the slim rebuild.
"""

import dataclasses
import math
import re

import keras
import numpy as np

from dmcp_tf.channels import layer_rules as rules
from dmcp_tf.channels import walk as walk_lib
from dmcp_tf.channels.gates import ChannelGate


# Why a model's own input and output channels are never pruned.
INPUT_REASON, OUTPUT_REASON = "they are a model input", "they are a model output"


class GraphError(ValueError):
    """The model's channels cannot be pruned as its gates ask."""


@dataclasses.dataclass
class Space:
    """One channel space: `size` channels, optionally governed by a gate."""

    size: int
    gate: ChannelGate = None
    frozen: str = None  # why its channels must not be pruned
    conv_group: int = 1  # channels kept or pruned together (a grouped convolution's channels per group)
    grouped_convs: tuple = ()  # names of the grouped convolutions that ask for `conv_group`


def _grouped_names(space):
    """The names of the grouped convolutions on a space, quoted, for messages."""
    return ", ".join(repr(name) for name in space.grouped_convs)


def whole_groups_reason(space, prefix, step):
    """Why keeping `prefix + k * step` channels of `space` would split a convolution group, or None."""
    if prefix % space.conv_group == 0 and step % space.conv_group == 0:
        return None
    return (f"keeping {prefix} + k * {step} channels would split the groups of {space.conv_group} channels "
            f"of grouped convolution {_grouped_names(space)}")


@dataclasses.dataclass
class TensorInfo:
    """What the walk knows about one symbolic tensor."""

    layout: tuple  # space ids, one per channel segment
    masked: tuple  # per segment: channels past the kept ones are exactly zero here
    shape: tuple


@dataclasses.dataclass
class NodeRecord:
    """One call of one layer, with the layouts of its input and output channels."""

    layer: object
    rule: object
    in_info: TensorInfo  # the (first) input
    out_info: TensorInfo

    @property
    def in_layout(self):
        return self.in_info.layout

    @property
    def out_layout(self):
        return self.out_info.layout

    @property
    def in_shape(self):
        return self.in_info.shape

    @property
    def out_shape(self):
        return self.out_info.shape


def _kind(operation):
    """How messages call a node's operation: a layer, or a keras operation that is not one."""
    return "layer" if isinstance(operation, keras.layers.Layer) else "keras operation"


def _passed_on(layer, rule, info, out_shape):
    """The output of a layer that keeps its input's channels: zero where they were, if the layer keeps zeros."""
    keep_zero = rule.zero_preserving(layer)
    return TensorInfo(info.layout, tuple(m and keep_zero for m in info.masked), out_shape)


def _constants(operands):
    """The operands of a call that are not tensors (`3.0` in `x + 3.0`)."""
    return [o for o in operands if not isinstance(o, TensorInfo)]


class ChannelGraph:
    """Channel spaces, gates and layer calls of a functional model.

    Args:
        model: a functional (or Sequential) Keras model, gated or not.
        exclude: layer names or regular expressions whose output channels must
            never be pruned.

    Example:
        graph = ChannelGraph(model)
        costs.MACS.of(graph)                       # MACs of the full model
        costs.MACS.of(graph, {"stem_gate": 16})    # MACs with that gate keeping 16 channels
        costs.MACS.expected(graph)                 # differentiable in the gates' alpha
    """

    def __init__(self, model, exclude=(), strict=True):
        self.model = model
        self._parent = []
        self._spaces = []
        self.records = []
        self._consumers = []  # (layer name, TensorInfo) that must only read masked channels
        self._exclude = [re.compile(p) for p in exclude]
        self._layer_layouts = {}
        self._layers = {}  # every layer called, nested models' layers included
        self.tensor_of = {}  # id(TensorInfo) -> the symbolic tensor it describes
        self.readers = {}  # id(TensorInfo) -> layers that read it
        self._walk()
        unmatched = [p.pattern for p in self._exclude if not any(p.fullmatch(l.name) for l in self._layers.values())]
        if unmatched:
            raise GraphError(f"exclude={unmatched} matches no layer of {model.name!r}: give layer names, or regular "
                             "expressions that match whole names (e.g. 'Conv_1' or 'block_1_.*').")
        self.gates = self._collect_gates()
        self.violations = self._unmasked_reads()
        if strict and self.violations:
            consumer, _, gate = self.violations[0]
            raise GraphError(
                f"{consumer} reads channels governed by gate {gate.name!r} that the gate does "
                "not reach (a path skips it, or a layer such as BatchNormalization or a bias "
                "between gate and consumer turns the zeroed channels non-zero). Place the gate "
                "so that every consumer reads its output."
            )

    # --- union-find over channel spaces ------------------------------------
    def _new_space(self, size, frozen=None):
        self._parent.append(len(self._parent))
        self._spaces.append(Space(int(size), frozen=frozen))
        return len(self._parent) - 1

    def find(self, space_id):
        """The representative id of a space (after all merges)."""
        while self._parent[space_id] != space_id:
            self._parent[space_id] = self._parent[self._parent[space_id]]
            space_id = self._parent[space_id]
        return space_id

    def space(self, space_id):
        return self._spaces[self.find(space_id)]

    def _union(self, a, b, where):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        sa, sb = self._spaces[a], self._spaces[b]
        if sa.size != sb.size:
            raise GraphError(f"{where}: joins {sa.size} and {sb.size} channels.")
        if sa.gate is not None and sb.gate is not None and sa.gate is not sb.gate:
            raise GraphError(
                f"{where} couples channels governed by two different gates, {sa.gate.name!r} "
                f"and {sb.gate.name!r}. Coupled channels (e.g. the inputs of an Add) must share "
                "one gate: use the same gate instance on every branch."
            )
        self._parent[b] = a
        sa.gate = sa.gate or sb.gate
        sa.frozen = sa.frozen or sb.frozen
        sa.conv_group = math.lcm(sa.conv_group, sb.conv_group)
        sa.grouped_convs = sa.grouped_convs + sb.grouped_convs
        self._check_gate(a)

    def _freeze(self, layout, reason):
        for space_id in layout:
            space = self.space(space_id)
            space.frozen = space.frozen or reason
            self._check_gate(self.find(space_id))

    def _keep_whole_groups(self, layout, layer, channels):
        """Asks every space of `layout` to keep whole groups of `channels` (grouped convolution `layer`)."""
        for space_id in layout:
            root = self.find(space_id)
            space = self._spaces[root]
            space.conv_group = math.lcm(space.conv_group, channels)
            space.grouped_convs = space.grouped_convs + (layer.name,)
            self._check_gate(root)

    def _check_gate(self, root):
        space = self._spaces[root]
        if space.gate is None:
            return
        if space.frozen:
            raise GraphError(
                f"Gate {space.gate.name!r} governs channels that must not be pruned: {space.frozen}. "
                "Remove the gate or move it to a prunable layer."
            )
        split = whole_groups_reason(space, space.gate.prefix, space.gate.group)
        if split:
            raise GraphError(f"Gate {space.gate.name!r}: {split}. Choose a width grid whose prefix and "
                             f"step are multiples of {space.conv_group}.")
        if space.gate.channel_multiple % space.conv_group:
            raise GraphError(f"Gate {space.gate.name!r} governs channels of grouped convolution "
                             f"{_grouped_names(space)}: make it with "
                             f"channel_multiple={space.conv_group}, so that expected sampling keeps whole groups.")

    # --- the walk ----------------------------------------------------------
    def _walk(self):
        model = walk_lib.as_functional(self.model)
        inputs = [self._fresh(t.shape, INPUT_REASON) for t in model.inputs]
        self.tensor_of.update((id(i), t) for i, t in zip(inputs, model.inputs))
        outputs = walk_lib.walk(model, inputs, self._visit_node)
        for tensor, info in zip(model.outputs, outputs):
            self._freeze(info.layout, OUTPUT_REASON)
            self._consumers.append((f"model output {tensor.name!r}", info))

    def _visit_node(self, layer, args, kwargs, node):
        self._layers[id(layer)] = layer
        inputs = [a for a in keras.tree.flatten((args, kwargs)) if isinstance(a, TensorInfo)]
        outputs = self._visit(layer, inputs, node.outputs, operands=keras.tree.flatten(args))
        self._tie_shared_layer(layer, inputs, outputs)
        self.tensor_of.update((id(i), t) for i, t in zip(outputs, node.outputs))
        for info in inputs:
            self.readers.setdefault(id(info), []).append(layer)
        return outputs

    def _tie_shared_layer(self, layer, inputs, outputs):
        """A layer called several times has one set of weights: its calls keep the same channels."""
        if not walk_lib.weights_of(layer) or isinstance(layer, ChannelGate) or len(inputs) != 1:
            return
        first = self._layer_layouts.setdefault(id(layer), (inputs[0].layout, outputs[0].layout))
        for old, new in zip(first, (inputs[0].layout, outputs[0].layout)):
            if len(old) != len(new):
                self._freeze(old + new, f"layer {layer.name!r} is called on differently split channels")
                continue
            for a, b in zip(old, new):
                self._union(a, b, f"Shared layer {layer.name!r}")

    def _fresh(self, shape, frozen=None):
        space = self._new_space(shape[-1], frozen)
        return TensorInfo((space,), (False,), tuple(shape))

    def _visit(self, layer, inputs, output_tensors, operands):
        out_shape = tuple(output_tensors[0].shape)
        if isinstance(layer, ChannelGate):
            return [self._visit_gate(layer, inputs[0])]
        rule = rules.rule_for(layer)
        reason = self._unprunable_reason(layer, rule, inputs, operands)
        if reason:
            kind = _kind(layer)
            for info in inputs:
                self._freeze(info.layout, f"they feed {kind} {layer.name!r} ({reason})")
                self._consumers.append((layer.name, info))
            outputs = [self._fresh(t.shape, f"they come from {kind} {layer.name!r} ({reason})")
                       for t in output_tensors]
            if rule is not None and inputs:  # a known layer used unprunably still costs its MACs
                self.records.append(NodeRecord(layer, rule, inputs[0], outputs[0]))
            return outputs
        first = inputs[0]
        if rule.role == rules.PRODUCE and rule.group_channels(layer):
            out = self._visit_grouped(layer, rule, first, out_shape)
        elif rule.role == rules.PRODUCE:
            self._consumers.append((layer.name, first))
            frozen = "the layer is excluded from pruning" if self._excluded(layer) else None
            out = self._fresh(out_shape, frozen)
        elif rule.role == rules.THROUGH:
            out = _passed_on(layer, rule, first, out_shape)
        elif rule.role == rules.COUPLE:
            out = self._visit_couple(layer, rule, operands, out_shape)
        elif rule.role == rules.CONCAT:
            out = TensorInfo(
                sum((i.layout for i in inputs), ()), sum((i.masked for i in inputs), ()), out_shape
            )
        else:  # FLATTEN
            positions = int(np.prod(first.shape[1:-1]))
            out = TensorInfo(first.layout * positions, first.masked * positions, out_shape)
        self.records.append(NodeRecord(layer, rule, first, out))
        return [out]

    def _unprunable_reason(self, layer, rule, inputs, operands):
        if rule is None:
            return f"{type(layer).__name__} is not a {_kind(layer)} type whose channels dmcp_tf understands"
        if len(inputs) != 1 and rule.role not in (rules.COUPLE, rules.CONCAT):
            return "it takes several inputs"
        if rule.role == rules.CONCAT and layer.axis not in (-1, len(inputs[0].shape) - 1):
            return "it concatenates along an axis other than channels"
        if rule.role == rules.COUPLE and any(np.shape(o)[-1:] not in ((), (1,)) for o in _constants(operands)):
            return "it combines the channels with a constant array of their own"
        return rule.check(layer, inputs[0].shape)

    def _visit_grouped(self, layer, rule, info, out_shape):
        """A grouped convolution: its output channels are its input's space, kept in whole groups."""
        channels = rule.group_channels(layer)
        self._keep_whole_groups(info.layout, layer, channels)
        if any(self.space(s).size % channels for s in info.layout):
            self._freeze(info.layout, f"they are concatenated across the groups of grouped convolution {layer.name!r}")
        if self._excluded(layer):
            self._freeze(info.layout, "the layer is excluded from pruning")
        return _passed_on(layer, rule, info, out_shape)

    def _visit_gate(self, gate, info):
        if len(info.layout) != 1:
            raise GraphError(
                f"Gate {gate.name!r} sits on a tensor made of {len(info.layout)} concatenated channel "
                "groups; put one gate on each branch before the Concatenate instead."
            )
        root = self.find(info.layout[0])
        space = self._spaces[root]
        if space.gate is not None and space.gate is not gate:
            raise GraphError(
                f"Gates {space.gate.name!r} and {gate.name!r} govern the same channels; "
                "coupled channels must share one gate instance."
            )
        space.gate = gate
        self._check_gate(root)
        out = TensorInfo(info.layout, (True,), info.shape)
        self.records.append(NodeRecord(gate, rules.rule_for(gate), info, out))
        return out

    def _visit_couple(self, layer, rule, operands, out_shape):
        # Operands whose channel axis has size 1 (and constants) broadcast over channels: not coupled.
        channels = out_shape[-1]
        coupled = [o for o in operands if isinstance(o, TensorInfo) and o.shape[-1] == channels]
        base = coupled[0]
        for other in coupled[1:]:
            sizes = [self.space(s).size for s in base.layout], [self.space(s).size for s in other.layout]
            if sizes[0] != sizes[1]:
                reason = "its inputs are split into different channel groups"
                self._freeze(base.layout + other.layout, f"they meet in layer {layer.name!r} ({reason})")
                continue
            for a, b in zip(base.layout, other.layout):
                self._union(a, b, f"Layer {layer.name!r}")
        coupled_ids = {id(o) for o in coupled}
        masked = tuple(
            rule.output_masked([id(o) in coupled_ids and o.masked[k] for o in operands])
            for k in range(len(base.layout))
        )
        return TensorInfo(base.layout, masked, out_shape)

    def _excluded(self, layer):
        return any(p.fullmatch(layer.name) for p in self._exclude)

    def _collect_gates(self):
        """The distinct gates, in the order the walk met them."""
        gates = []
        for record in self.records:
            if isinstance(record.layer, ChannelGate) and all(record.layer is not g for g in gates):
                gates.append(record.layer)
        return gates

    def _unmasked_reads(self):
        """`(consumer, TensorInfo, gate)` for every read of gated channels the gate does not reach."""
        found = []
        for consumer, info in self._consumers:
            for space_id, masked in zip(info.layout, info.masked):
                gate = self.space(space_id).gate
                if gate is not None and not masked:
                    found.append((consumer, info, gate))
        return found

    # --- channel counts ----------------------------------------------------
    def kept(self, space_id, config=None):
        """Channels kept in a space under `config` (gate name -> channels)."""
        space = self.space(space_id)
        if space.gate is None or config is None or space.gate.name not in config:
            return space.size
        return config[space.gate.name]

    def count(self, layout, config=None):
        return sum(self.kept(s, config) for s in layout)

    def expected_widths(self):
        """`{gate name: expected channels}`, differentiable in the gates' alpha."""
        return {g.name: g.expected_channels() for g in self.gates}

    def expected_count(self, layout, widths):
        """Expected channels of a layout, given the gates' `expected_widths()`."""
        total = 0.0
        for s in layout:
            gate = self.space(s).gate
            total = total + (widths[gate.name] if gate is not None else self.space(s).size)
        return total

    def kept_indices(self, layout, config=None, expansion=1, order=None):
        """Indices of the kept channels (by default the first ones of each segment).

        With `expansion` > 1 every channel owns that many consecutive rows (the
        pointwise kernel after a depthwise conv with a depth multiplier). `order`
        (gate name -> channel indices, most important first) makes a gated segment
        keep the first channels of its order instead.
        """
        indices, offset = [], 0
        for s in layout:
            gate = self.space(s).gate
            ranked = order.get(gate.name) if order and gate is not None else None
            kept = self.kept(s, config)
            indices.append(offset + (np.asarray(ranked[:kept]) if ranked is not None else np.arange(kept)))
            offset += self.space(s).size
        kept = np.concatenate(indices) if indices else np.zeros((0,), int)
        if expansion > 1:
            kept = (kept[:, None] * expansion + np.arange(expansion)).reshape(-1)
        return kept

    # --- configurations ----------------------------------------------------
    def full_config(self):
        return {g.name: g.channels for g in self.gates}

    def smallest_config(self):
        return {g.name: g.prefix for g in self.gates}

    def validate_config(self, config, *, complete=False):
        """Raises a clear error if `config` does not fit this graph's gates.

        With `complete`, every gate must be named (a file a user wrote: a gate
        left out would silently keep every channel).
        """
        names = {g.name for g in self.gates}
        unknown = sorted(set(config) - names)
        if unknown:
            raise GraphError(f"Channel configuration names unknown gates {unknown}; the gates are {sorted(names)}.")
        missing = sorted(names - set(config))
        if complete and missing:
            raise GraphError(f"Channel configuration leaves out gates {missing}; name every gate "
                             f"({sorted(names)}) with the channels it keeps.")
        for gate in self.gates:
            c = config.get(gate.name, gate.channels)
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 1 <= c <= gate.channels:
                raise GraphError(
                    f"Gate {gate.name!r} has {gate.channels} channels; a configuration must keep an "
                    f"integer between 1 and {gate.channels}, got {c!r}."
                )
            group = self.conv_group(gate)
            if c % group:
                raise GraphError(f"Gate {gate.name!r} keeps whole groups of {group} channels (grouped "
                                 f"convolutions); a configuration must keep a multiple of {group}, got {c}.")

    def conv_group(self, gate):
        """Channels `gate` keeps or prunes together (1 unless its space feeds grouped convolutions)."""
        return math.lcm(*(s.conv_group for i, s in enumerate(self._spaces) if self.find(i) == i and s.gate is gate))

    def weighted_layers(self):
        """Every layer that holds weights but the gates (their parameters are the search's, not the network's)."""
        return [layer for layer in self._layers.values()
                if not isinstance(layer, ChannelGate) and walk_lib.weights_of(layer)]

    def weight_axes(self, record):
        """`(weight, [(axis, layout), ...])` for every weight of a recorded layer."""
        out = []
        for weight in walk_lib.weights_of(record.layer):
            axes = []
            in_axis, out_axis = record.rule.weight_axes.get(weight.name, (None, None))
            for axis, layout in ((in_axis, record.in_layout), (out_axis, record.out_layout)):
                # An axis shorter than its channels (a grouped kernel's per-group inputs) does not follow them.
                if axis is not None and weight.shape[axis] >= self.count(layout):
                    axes.append((axis, layout))
            out.append((weight, axes))
        return out

    def kept_weight_indices(self, weight, axes, config=None, order=None):
        """Per axis of `weight`, the indices it keeps under `config` (and channel `order`)."""
        indices = [np.arange(d) for d in weight.shape]
        for axis, layout in axes:
            reordered = order and any(self.space(s).gate is not None and self.space(s).gate.name in order
                                      for s in layout)
            if self.count(layout, config) == self.count(layout) and not reordered:
                continue  # nothing pruned on this axis
            expansion = weight.shape[axis] // self.count(layout)
            indices[axis] = self.kept_indices(layout, config, expansion, order)
        return indices

    def layer_rows(self, config=None):
        """Per conv/dense call: channels and MACs kept under `config` and in full (for reports)."""
        rows = []
        for r in self.records:
            full = r.rule.macs(r.layer, r.in_shape, r.out_shape, self.count(r.in_layout), self.count(r.out_layout))
            if not full:
                continue
            cin, cout = self.count(r.in_layout, config), self.count(r.out_layout, config)
            rows.append({
                "layer": r.layer.name, "type": type(r.layer).__name__,
                "in_kept": cin, "in_full": self.count(r.in_layout),
                "out_kept": cout, "out_full": self.count(r.out_layout),
                "macs_kept": int(round(r.rule.macs(r.layer, r.in_shape, r.out_shape, cin, cout))),
                "macs_full": int(round(full)),
            })
        return rows

    def gate_rows(self, config):
        """Per gate: kept channels under `config`, all channels, and `E[c]` (for reports)."""
        return [
            {"gate": g.name, "kept": int(config.get(g.name, g.channels)), "channels": g.channels,
             "expected": float(g.expected_channels())}
            for g in self.gates
        ]

    def first_records(self):
        """`id(layer)` -> the record of the layer's first call (shared layers keep one width)."""
        records = {}
        for r in self.records:
            records.setdefault(id(r.layer), r)
        return records

    def record_reading(self, layer, info):
        """The record of `layer`'s call on the tensor `info`."""
        return next(r for r in self.records if r.layer is layer and r.in_info is info)

    def describe(self, reason=None):
        """A readable summary of the channel spaces: which layers share channels, and why some are not pruned.

        Args:
            reason: optional `reason(space) -> str or None` explaining why an
                ungated space cannot be pruned.
        """
        members = {}
        for r in self.records:
            if r.rule.role in (rules.PRODUCE, rules.THROUGH) and not isinstance(r.layer, ChannelGate):
                for s in r.out_layout:
                    members.setdefault(self.find(s), []).append(r.layer.name)
        lines = []
        for root, names in members.items():
            space = self._spaces[root]
            why = space.frozen or (reason(space) if reason else None)
            status = f"gate {space.gate.name!r}" if space.gate else f"not pruned: {why}" if why else "prunable"
            lines.append(f"{space.size:6d} channels  {status}\n                 layers: {', '.join(dict.fromkeys(names))}")
        return "\n".join(lines)
