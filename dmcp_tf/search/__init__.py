"""The DMCP search: gates, the search model, and choosing a channel configuration.

- `supernet`: `DMCPModel`, whose `fit` runs the weight and architecture stages;
- `autogate`: `make_supernet`, the `DMCPModel` of any functional model, and `analyze`;
- `losses`, `search_init`, `trajectory`: its losses, where the gates start, what they did;
- `pretrained`: starting the search from a trained network;
- `sampling`: expected and direct sampling of a configuration from the searched gates;
- `baselines`: configurations chosen without a search (uniform, random, L1) at equal cost;
- `calibration`: batch-norm re-estimation of a chosen sub-network;
- `recipes`: the search model and the classifier compiled from a config section.

(`gates` is `dmcp_tf.channels.gates` now; the old path re-exports it.)
"""
