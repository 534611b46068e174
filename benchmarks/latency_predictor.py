"""Predicted against measured TFLite latency of random sub-networks of the 1.5x MobileNetV2 supernet.

The prediction is the `latency` cost kind (`dmcp_tf.costs.Latency`) on a per-layer
table measured with `dmcp_tf.latency.measure_latency_table` (written to `--table`
first if that file does not exist). The measurement: each random sub-network is
rebuilt as a plain model (`rebuild`, fresh weights), converted to TFLite float32 and
int8 (`export_tflite`, int8 calibrated on 2 random images) and timed at batch 1 with
the `ai_edge_litert` interpreter (XNNPACK) on `--threads` threads (with 1, in the
thread's CPU time, as the table: `latency.clock_of`): `--batch`
sub-networks at a time, interleaved over `--rounds` rounds of `--runs` invokes
(median of medians). Even-numbered sub-networks keep, per gate, a width drawn
uniformly from the gate's grid (what the search samples); odd-numbered ones any
channel count between the gate's smallest and full width (what expected sampling
gives, between the table's points).

Every finished batch is appended to `--json_out` with the load average; run again
with the same settings, the script skips the sub-networks the file holds.

    nohup nice -n 5 python benchmarks/latency_predictor.py > /tmp/latency_predictor.log 2>&1 &
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import numpy as np  # noqa: E402

from dmcp_tf import costs, latency  # noqa: E402
from dmcp_tf.export import export_tflite, latency_timer  # noqa: E402
from dmcp_tf.graph import ChannelGraph  # noqa: E402
from dmcp_tf.io_utils import atomic_write_json  # noqa: E402
from dmcp_tf.models import mobilenet_v2  # noqa: E402
from dmcp_tf.rebuild import rebuild  # noqa: E402

QUANTIZATIONS = ("float32", "int8")
# Settings that change a sub-network's result: a rerun must share them to continue the file.
IDENTITY = ("seed", "input_size", "threads", "table")


def random_config(graph, rng, on_grid):
    """Per gate a width drawn uniformly from its grid, or (`on_grid` False) any count from its smallest to full."""
    if on_grid:
        return {g.name: int(rng.choice(g.widths_grid())) for g in graph.gates}
    return {g.name: int(rng.integers(g.prefix, g.channels + 1)) for g in graph.gates}


def measure(supernet, graph, configs, args, log):
    """Measured latency (ms) per sub-network index and quantization: `--rounds` interleaved rounds, median."""
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as directory:
        timers = {}
        for index, config in configs.items():
            model = rebuild(supernet, config, copy_weights=False, graph=graph)
            images = rng.normal(size=(2,) + tuple(model.input_shape[1:])).astype(np.float32)
            for q in QUANTIZATIONS:
                path = export_tflite(model, os.path.join(directory, f"net{index}_{q}.tflite"), quantization=q,
                                     representative_images=images if q == "int8" else None)
                timers[index, q] = latency_timer(path, threads=args.threads, runs=args.runs, warmup=args.warmup,
                                                 clock=latency.clock_of(args.threads))
            log(f"[latency_predictor] converted sub-network {index}")
        rounds = common.interleaved(timers, args.rounds)
    return {index: {q: rounds[index, q] for q in QUANTIZATIONS} for index in configs}


def errors(rows):
    """Per quantization: median and worst absolute relative error of the prediction, over `rows`."""
    out = {}
    for q in QUANTIZATIONS:
        rel = [abs(r["predicted_ms"][q] - r["measured_ms"][q]) / r["measured_ms"][q] for r in rows]
        out[q] = {"median": statistics.median(rel), "worst": max(rel), "count": len(rel)}
    return out


def results_table(rows):
    headers = ["sub-network", "grid", "MACs"] + [f"{q} {kind}" for q in QUANTIZATIONS for kind in
                                                  ("measured ms", "predicted ms", "error")]
    body = []
    for r in rows:
        cells = [str(r["index"]), "yes" if r["on_grid"] else "no", f"{r['macs'] / 1e6:.1f}M"]
        for q in QUANTIZATIONS:
            m, p = r["measured_ms"][q], r["predicted_ms"][q]
            cells += [f"{m:.3f}", f"{p:.3f}", f"{100 * (p - m) / m:+.1f}%"]
        body.append(cells)
    return common.format_table(headers, body)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", default="runs/latency_predictor/latency_table.json",
                        help="the supernet's latency table; measured and written here if missing")
    parser.add_argument("--points", type=int, default=3, help="table: channel counts per axis")
    parser.add_argument("--networks", type=int, default=20, help="random sub-networks")
    parser.add_argument("--batch", type=int, default=5, help="sub-networks converted and timed together")
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30, help="timed invokes per measurement (median)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurements per model (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed invokes before each measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json_out", default="docs/latency_predictor.json",
                        help="results, appended batch by batch; an existing file is continued")
    return parser.parse_args(argv)


def _load(path, settings):
    """The rows an earlier run with the same settings wrote to `path` (none if there is no file)."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    changed = [k for k in IDENTITY if saved["settings"].get(k) != settings[k]]
    if changed:
        raise SystemExit(f"{path} was written with other settings ({', '.join(changed)} differ): pass another "
                         "--json_out, or delete the file to start again.")
    return saved["rows"]


def main(argv=None):
    args = parse_args(argv)
    log = lambda message: print(message, flush=True)  # noqa: E731
    settings = vars(args)
    out = pathlib.Path(args.json_out)
    rows = _load(out, settings)
    supernet = mobilenet_v2(1.5, input_shape=(args.input_size, args.input_size, 3), num_classes=1000)
    graph = ChannelGraph(supernet)
    if not os.path.exists(args.table):
        log(f"[latency_predictor] measuring the latency table into {args.table} (load {os.getloadavg()})")
        latency.measure_latency_table(supernet, quantizations=QUANTIZATIONS, threads=args.threads,
                                      points=args.points, path=args.table, log=log,
                                      keep_models=os.path.join(os.path.dirname(args.table), "models"))
    table = latency.load_latency_table(args.table)
    predictors = {q: costs.Latency(table, q) for q in QUANTIZATIONS}
    rng = np.random.default_rng(args.seed)
    configs = {i: random_config(graph, rng, on_grid=i % 2 == 0) for i in range(args.networks)}
    todo = [i for i in configs if i not in {r["index"] for r in rows}]
    for start in range(0, len(todo), args.batch):
        batch = {i: configs[i] for i in todo[start:start + args.batch]}
        load_before = os.getloadavg()
        measured = measure(supernet, graph, batch, args, log)
        for index, config in batch.items():
            rows.append({
                "index": index, "on_grid": index % 2 == 0, "channels": config, "macs": graph.flops(config),
                "predicted_ms": {q: predictors[q].of(graph, config) for q in QUANTIZATIONS},
                "measured_ms": {q: common.median(measured[index][q]) for q in QUANTIZATIONS},
                "rounds_ms": measured[index], "load_average_before": list(load_before),
                "load_average_after": list(os.getloadavg()),
            })
        rows.sort(key=lambda r: r["index"])
        atomic_write_json(out, {"machine": common.machine_info(), "settings": settings, "rows": rows,
                                "errors": errors(rows)})
        log(f"[latency_predictor] {len(rows)}/{args.networks} sub-networks measured; errors so far {errors(rows)}")
    print("\n" + results_table(rows))
    for q, e in errors(rows).items():
        print(f"{q}: median |error| {100 * e['median']:.1f}%, worst {100 * e['worst']:.1f}% over {e['count']}")
    return rows


if __name__ == "__main__":
    main()
