"""Which keras.applications CNNs dmcp-tf can prune, and how much of each.

For every family (random weights, a small input): gates inserted by
`dmcp_tf.insert_gates`, the share of the MACs in layers a gate can shrink, the
smallest sub-network's MACs over the full network's, the largest group of
channels left whole inside the network (by the MACs of the layers that read or
write it; the image's channels and the logits never count) and why, and the
seconds it took. Writes a markdown table.

    python benchmarks/applications.py --out=docs/applications.md
    python benchmarks/applications.py --models=MobileNetV2,EfficientNetB0   # a few
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import keras  # noqa: E402

from dmcp_tf import costs  # noqa: E402
from dmcp_tf.channels import autogate  # noqa: E402
from dmcp_tf.channels.graph import INPUT_REASON, OUTPUT_REASON, ChannelGraph  # noqa: E402
from dmcp_tf.io_utils import atomic_write_text  # noqa: E402
from dmcp_tf.run import report  # noqa: E402

WIDTH = (0.1, 1.0, 0.1)
# Input sizes: the smallest each family accepts with random weights, 64 where that is smaller.
MODELS = {
    "MobileNet": 64, "MobileNetV2": 64, "MobileNetV3Small": 64, "MobileNetV3Large": 64,
    "EfficientNetB0": 64, "EfficientNetB3": 64, "EfficientNetV2B0": 64, "EfficientNetV2S": 64,
    "ResNet50": 64, "ResNet101": 64, "ResNet50V2": 64, "ResNet101V2": 64, "DenseNet121": 64,
    "NASNetMobile": 64, "Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75, "VGG16": 64,
    "ConvNeXtTiny": 64,
}


def build(name, size):
    """The family `name` at `size` x `size`, random weights, 10 classes."""
    return getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None, classes=10)


def largest_boundary(graph):
    """`(MACs, channels, reason)` of the ungated channel group inside the network that the most MACs touch."""
    touching = {}
    for record, cost in zip(graph.records, (c for _, c in costs.MACS.per_layer(graph))):
        for space_id in dict.fromkeys(record.in_layout + record.out_layout):
            root = graph.find(space_id)
            space = graph.space(root)
            if space.gate is None and space.frozen not in (INPUT_REASON, OUTPUT_REASON):
                touching[root] = touching.get(root, 0) + cost
    if not touching:
        return None
    root = max(touching, key=touching.get)
    space = graph.space(root)
    reason = autogate.unprunable_reason(space, WIDTH) or "no gate could be placed on them"
    return touching[root], space.size, reason


def measure(name, size):
    """One row of the table for the family `name`."""
    start = time.time()
    gated = autogate.insert_gates(build(name, size), width=WIDTH)
    graph = ChannelGraph(gated)
    smallest = graph.smallest_config()
    full_layers, small_layers = costs.MACS.per_layer(graph), costs.MACS.per_layer(graph, smallest)
    full = costs.MACS.of(graph)
    prunable = sum(f for (_, f), (_, s) in zip(full_layers, small_layers) if s != f)
    boundary = largest_boundary(graph)
    return {
        "model": name, "input": f"{size}x{size}", "gates": len(graph.gates), "macs": report.format_count(full),
        "prunable": round(prunable / full, 3), "smallest": round(costs.MACS.of(graph, smallest) / full, 3),
        "boundary": "-" if boundary is None else
        f"{boundary[1]} channels, {boundary[0] / full:.1%} of MACs: {boundary[2]}",
        "seconds": round(time.time() - start, 1),
    }


COLUMNS = [("model", "model"), ("input", "input"), ("gates", "gates"), ("macs", "MACs"),
           ("prunable", "MACs in gated layers"), ("smallest", "smallest / full MACs"),
           ("boundary", "largest group kept whole, and why"),
           ("seconds", "s")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keras.applications names")
    parser.add_argument("--size", type=int, default=0, help="one input size for every model (0: the table's)")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    rows = []
    for name in names:
        rows.append(measure(name, args.size or MODELS[name]))
        print(f"[applications] {rows[-1]}", flush=True)
        keras.backend.clear_session()
    table = report.markdown_table(rows, COLUMNS)
    print(table)
    if args.out:
        atomic_write_text(args.out, PAGE.format(table=table, width=WIDTH))
    return rows


PAGE = """# keras.applications families in dmcp-tf

Written by `python benchmarks/applications.py --out=docs/applications.md` (random weights,
10 classes, the input size shown; width grid {width}). "MACs in gated layers": the share of
the MACs in layers that some gate shrinks; "smallest / full MACs": the smallest
sub-network's MACs over the full network's (how far the gates can shrink it); the largest
group kept whole is the ungated channel group inside the network (the image's channels
and the logits never count) that the most MACs read or write, with the reason
`dmcp_tf.analyze()` gives. "s": seconds to insert the gates and read the graph.

{table}
"""


if __name__ == "__main__":
    main()
