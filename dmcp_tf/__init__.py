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

from dmcp_tf import costs, models
from dmcp_tf.channels import layer_rules  # documented as `dmcp_tf.layer_rules` (README)
from dmcp_tf.channels.autogate import insert_gates
from dmcp_tf.channels.gates import BernoulliGate, MarkovGate
from dmcp_tf.channels.graph import ChannelGraph, GraphError
from dmcp_tf.channels.layer_rules import register_rule
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.costs import Budget, count_flops, count_macs, count_params
from dmcp_tf.deploy import export
from dmcp_tf.pruning import PruneResult, prune
from dmcp_tf.search import baselines, sampling  # baselines: documented as `dmcp_tf.baselines` (README)
from dmcp_tf.search.autogate import analyze, make_supernet
from dmcp_tf.search.calibration import calibrate_batch_norm
from dmcp_tf.search.supernet import DMCPModel

__all__ = [
    "BernoulliGate", "Budget", "ChannelGraph", "DMCPModel", "GraphError", "MarkovGate", "analyze", "calibrate_batch_norm",
    "costs", "count_flops", "count_macs", "count_params", "export", "insert_gates", "make_supernet", "models", "prune",
    "PruneResult", "rebuild", "register_rule", "sampling",
]
