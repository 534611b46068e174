"""dmcp-tf: Differentiable Markov Channel Pruning (CVPR 2020) for TensorFlow / Keras 3.

Main entry points:
- `prune`: a trained functional or Sequential classifier in, the slim fine-tuned model out (one call);
- `MarkovGate` (and `BernoulliGate`): channel gates to place in a Keras model;
- `insert_gates` / `make_supernet` / `analyze`: the same for any functional model;
- `DMCPModel`: a gated supernet whose `fit` runs the DMCP search;
- `register_rule`: what a layer type of your own means for channels, costs and slicing;
- `ChannelGraph`: channel groups; `costs`: real and expected MACs and parameters, `Budget`;
- `sampling`: expected / direct sampling of a channel configuration;
- `rebuild`: the slim standalone model of a configuration;
- `export`: SavedModel and TFLite, with parity and latency checks.
"""

from dmcp_tf import startup

startup.import_tensorflow()  # before anything loads it: without TensorFlow's C++ start-up lines

from dmcp_tf import costs, models  # noqa: E402
from dmcp_tf.channels import layer_rules  # noqa: E402  (documented as `dmcp_tf.layer_rules`, README)
from dmcp_tf.channels.autogate import insert_gates  # noqa: E402
from dmcp_tf.channels.gates import BernoulliGate, MarkovGate  # noqa: E402
from dmcp_tf.channels.graph import ChannelGraph, GraphError  # noqa: E402
from dmcp_tf.channels.layer_rules import register_rule  # noqa: E402
from dmcp_tf.channels.rebuild import rebuild  # noqa: E402
from dmcp_tf.costs import Budget, count_flops, count_macs, count_params  # noqa: E402
from dmcp_tf.deploy import export  # noqa: E402
from dmcp_tf.pruning import PruneResult, prune  # noqa: E402
from dmcp_tf.search import baselines, sampling  # noqa: E402  (baselines: `dmcp_tf.baselines`, README)
from dmcp_tf.search.autogate import analyze, make_supernet  # noqa: E402
from dmcp_tf.search.calibration import calibrate_batch_norm  # noqa: E402
from dmcp_tf.search.supernet import DMCPModel  # noqa: E402

__all__ = [
    "BernoulliGate", "Budget", "ChannelGraph", "DMCPModel", "GraphError", "MarkovGate", "analyze", "calibrate_batch_norm",
    "costs", "count_flops", "count_macs", "count_params", "export", "insert_gates", "make_supernet", "models", "prune",
    "PruneResult", "rebuild", "register_rule", "sampling",
]
