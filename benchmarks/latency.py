"""TFLite latency of DMCP structures against the full network and uniform narrowing.

For each model family: the full network, the paper's DMCP structures (Tables 7/8),
for each structure the uniformly narrowed network of the same MACs (every gate keeps
the same fraction of its channels, found by bisection to within 1%), and with
`--round_to=N` the DMCP structure with every gate's channels rounded to a multiple of N.
All are rebuilt from the gated supernet as plain models, converted to TFLite
(float32 and int8; int8 calibrated on random images) and timed at batch 1 with the
`ai_edge_litert` interpreter (XNNPACK) on 1 and 2 threads. Each latency is the median
over `--rounds` interleaved rounds of `tflite_latency_ms` (itself a median of `--runs`).

    python benchmarks/latency.py                    # MobileNetV2 210M, 59M; ResNet-50 2.8G; round_to 8
    python benchmarks/latency.py --models=mobilenet_v2 --mobilenet_structures=300M,97M --round_to=0
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import numpy as np  # noqa: E402

from dmcp_tf import costs  # noqa: E402
from dmcp_tf.channels.graph import ChannelGraph  # noqa: E402
from dmcp_tf.channels.rebuild import rebuild  # noqa: E402
from dmcp_tf.deploy.export import export_tflite, tflite_latency_ms  # noqa: E402
from dmcp_tf.models import mobilenet_v2, mobilenet_v2_config, resnet50, resnet50_config  # noqa: E402
from dmcp_tf.search.baselines import uniform_config  # noqa: E402
from dmcp_tf.search.sampling import round_config  # noqa: E402

# family -> (supernet builder(input_size), structure name -> channel configuration)
FAMILIES = {
    "mobilenet_v2": (lambda size: mobilenet_v2(1.5, input_shape=(size, size, 3), num_classes=1000),
                     mobilenet_v2_config),
    "resnet50": (lambda size: resnet50(input_shape=(size, size, 3), num_classes=1000), resnet50_config),
}


def variants(graph, structures, round_to=0):
    """The networks to time: full, then per structure DMCP, uniform of equal MACs, rounded DMCP.

    Args:
        graph: `ChannelGraph` of the gated supernet.
        structures: structure name -> channel configuration.
        round_to: also add each structure rounded by `round_config` (0 or 1: not).

    Returns:
        A list of dicts with `label`, `kind` ("full", "dmcp", "uniform", "rounded"),
        `structure`, `config`, `macs`, `macs_ratio` (vs full) and for uniform `fraction`.
    """
    full = costs.MACS.of(graph)
    out = [{"label": "full", "kind": "full", "structure": None, "config": graph.full_config(), "macs": full}]
    for name, config in structures.items():
        macs = costs.MACS.of(graph, config)
        out.append({"label": f"DMCP {name}", "kind": "dmcp", "structure": name, "config": dict(config), "macs": macs})
        uniform, fraction, uniform_macs = uniform_config(graph, macs)
        out.append({"label": f"uniform x{fraction:.3f} (={name})", "kind": "uniform", "structure": name,
                    "config": uniform, "macs": uniform_macs, "fraction": fraction})
        if round_to > 1:
            rounded = round_config(graph, config, round_to)
            out.append({"label": f"DMCP {name} round_to {round_to}", "kind": "rounded", "structure": name,
                        "config": rounded, "macs": costs.MACS.of(graph, rounded)})
    for v in out:
        v["macs_ratio"] = v["macs"] / full
    return out


def convert(supernet, graph, variant, out_dir, quantizations, calibration_images):
    """Rebuilds `variant` as a plain model and writes one `.tflite` per quantization; returns their paths."""
    model = rebuild(supernet, variant["config"], copy_weights=False, graph=graph)
    slug = "".join(c if c.isalnum() else "_" for c in f"{supernet.name}_{variant['label']}")
    paths = {}
    for quantization in quantizations:
        path = os.path.join(out_dir, f"{slug}_{quantization}.tflite")
        images = calibration_images if quantization == "int8" else None
        paths[quantization] = export_tflite(model, path, quantization=quantization, representative_images=images)
    return paths


def benchmark_supernet(supernet, structures, *, round_to=0, quantizations=("float32", "int8"), threads=(1, 2),
                       runs=50, rounds=3, warmup=5, calibration_images=4, out_dir=None, log=print):
    """Converts and times the `variants` of one supernet.

    Returns:
        The variants, each with `latency_ms[quantization][threads]` and the ratios
        `latency_ratio[quantization][threads]` against the full network.
    """
    graph = ChannelGraph(supernet)
    rows = variants(graph, structures, round_to)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(calibration_images,) + tuple(supernet.input_shape[1:])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        target = out_dir or tmp
        os.makedirs(target, exist_ok=True)
        for row in rows:
            log(f"[latency] {supernet.name}: converting {row['label']} ({row['macs'] / 1e6:.1f}M MACs)...")
            row["paths"] = convert(supernet, graph, row, target, quantizations, images)
        fns = {
            (i, q, t): (lambda p=row["paths"][q], t=t: tflite_latency_ms(p, threads=t, runs=runs, warmup=warmup))
            for i, row in enumerate(rows) for q in quantizations for t in threads
        }
        log(f"[latency] {supernet.name}: timing {len(fns)} (model, quantization, threads) in {rounds} rounds...")
        medians = common.interleaved(fns, rounds)
        for i, row in enumerate(rows):
            row["latency_rounds_ms"] = {q: {t: medians[(i, q, t)] for t in threads} for q in quantizations}
            row["latency_ms"] = {q: {t: common.median(medians[(i, q, t)]) for t in threads} for q in quantizations}
            if out_dir is None:
                row.pop("paths")
    full = rows[0]["latency_ms"]
    for row in rows:
        row["latency_ratio"] = {q: {t: row["latency_ms"][q][t] / full[q][t] for t in threads} for q in quantizations}
    return rows


def latency_table(family, rows, quantizations, threads):
    headers = [f"{family}", "MACs", "MACs/full"]
    for q in quantizations:
        for t in threads:
            headers += [f"{q} {t}T ms", "/full"]
    body = []
    for row in rows:
        cells = [row["label"], f"{row['macs'] / 1e6:.1f}M", f"{row['macs_ratio']:.3f}"]
        for q in quantizations:
            for t in threads:
                cells += [f"{row['latency_ms'][q][t]:.2f}", f"{row['latency_ratio'][q][t]:.3f}"]
        body.append(cells)
    return common.format_table(headers, body)


def _csv(text):
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50", help=f"comma-separated, from {sorted(FAMILIES)}")
    parser.add_argument("--mobilenet_structures", default="210M,59M", help="Table 8: 300M, 210M, 97M, 59M")
    parser.add_argument("--resnet_structures", default="2.8G", help="Table 7: 2.8G")
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--quantizations", default="float32,int8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=50, help="timed invokes per measurement (median)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements per model (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed invokes before each measurement")
    parser.add_argument("--round_to", type=int, default=8,
                        help="also time each DMCP structure with every gate's channels rounded to a multiple of N "
                             "(at least N, at most the gate's channels); 0 disables")
    parser.add_argument("--calibration_images", type=int, default=4, help="random images calibrating int8")
    parser.add_argument("--out_dir", default=None, help="keep the .tflite files here (default: a temporary directory)")
    parser.add_argument("--json_out", default=None, help="write the numbers here as JSON")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    quantizations, threads = _csv(args.quantizations), [int(t) for t in _csv(args.threads)]
    structure_flags = {"mobilenet_v2": args.mobilenet_structures, "resnet50": args.resnet_structures}
    results = {}
    for family in _csv(args.models):
        if family not in FAMILIES:
            raise SystemExit(f"Unknown model {family!r}; choose from {sorted(FAMILIES)}.")
        build, config_of = FAMILIES[family]
        structures = {name: config_of(name) for name in _csv(structure_flags[family])}
        out_dir = os.path.join(args.out_dir, family) if args.out_dir else None
        results[family] = benchmark_supernet(
            build(args.input_size), structures, round_to=args.round_to, quantizations=quantizations,
            threads=threads, runs=args.runs, rounds=args.rounds, warmup=args.warmup,
            calibration_images=args.calibration_images, out_dir=out_dir,
            log=lambda message: print(message, flush=True))
    for family, rows in results.items():
        print("\n" + latency_table(family, rows, quantizations, threads))
    common.write_results(args, results)
    return results


if __name__ == "__main__":
    main()
