"""The channel gates' old home: they are `dmcp_tf.channels.gates` now (the bottom of the library)."""

from dmcp_tf.channels.gates import (  # noqa: F401 (re-exported for `from dmcp_tf.search.gates import ...`)
    FULL, GATE_TYPES, LOAD_HINT, SCALE, SUBNET, BernoulliGate, ChannelGate, MarkovGate, Selection, check_width_grid,
    current_selection, make_gate, selection, split_channels, thread_selection,
)
