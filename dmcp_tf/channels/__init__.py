"""The bottom of the library: the channel gates, and the channel graph of a functional Keras model.

- `gates`: `MarkovGate` / `BernoulliGate`, the layers that model how many channels a layer keeps;
- `walk`: the one traversal of a model's layer calls (nested models inlined);
- `layer_rules`: what each layer type means for channels, costs and slicing (one rule per type);
- `graph`: `ChannelGraph`, the channel spaces a model's layers share and the gates that prune them;
- `autogate`: finds the coupled channels of any model and inserts the gates (`insert_gates`);
- `slicing`: runs a sub-network at its real width by slicing weights;
- `rebuild`: the standalone slim model of a channel configuration.
"""
