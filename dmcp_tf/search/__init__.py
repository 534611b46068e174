"""The DMCP search: gates, the search model, and choosing a channel configuration.

- `gates`: `MarkovGate` / `BernoulliGate`, the layers that model how many channels a layer keeps;
- `supernet`: `DMCPModel`, whose `fit` runs the weight and architecture stages;
- `losses`, `search_init`, `trajectory`: its losses, where the gates start, what they did;
- `pretrained`: starting the search from a trained network;
- `sampling`: expected and direct sampling of a configuration from the searched gates;
- `baselines`: configurations chosen without a search (uniform, random, L1) at equal cost;
- `calibration`: batch-norm re-estimation of a chosen sub-network.
"""
