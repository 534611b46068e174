"""Predicted against measured TFLite latency of random sub-networks of the 1.5x MobileNetV2 supernet.

The prediction is the `latency` cost kind (`dmcp_tf.costs.Latency`) on a per-layer
table measured with `dmcp_tf.deploy.latency.measure_latency_table` (written to `--table`
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

The table's whole calibration networks (`latency.calibration_networks`) are timed in
the same rounds, so the errors come twice: of the table as measured, and of the table
recalibrated to its whole networks as timed beside the sub-networks ("recalibrated"),
which removes the drift of a shared machine between the table's measurement and now.

Every finished batch is appended to `--json_out` with the load average; run again
with the same settings, the script skips the sub-networks the file holds (and
predicts every one again from the table, which may have been measured again).

    nohup nice -n 5 python benchmarks/latency_predictor.py > /tmp/latency_predictor.log 2>&1 &
"""

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import numpy as np  # noqa: E402

from dmcp_tf import costs  # noqa: E402
from dmcp_tf.deploy import latency  # noqa: E402
from dmcp_tf.deploy.export import export_tflite, latency_timer  # noqa: E402
from dmcp_tf.channels.graph import ChannelGraph  # noqa: E402
from dmcp_tf.io_utils import atomic_write_json  # noqa: E402
from dmcp_tf.models import mobilenet_v2  # noqa: E402
from dmcp_tf.channels.rebuild import rebuild  # noqa: E402

QUANTIZATIONS = ("float32", "int8")
# Settings that change a sub-network's result: a rerun must share them to continue the file.
IDENTITY = ("seed", "input_size", "threads", "table")


def random_config(graph, rng, on_grid):
    """Per gate a width drawn uniformly from its grid, or (`on_grid` False) any count from its smallest to full."""
    if on_grid:
        return {g.name: int(rng.choice(g.widths_grid())) for g in graph.gates}
    return {g.name: int(rng.integers(g.prefix, g.channels + 1)) for g in graph.gates}


def measure(supernet, graph, configs, calibration_files, args, log):
    """Latency (ms) per sub-network index (and per table calibration network label) and quantization.

    Every model is timed once per round, in turn, over `--rounds` rounds; returns the rounds.
    """
    rng = np.random.default_rng(args.seed)
    clock = latency.clock_of(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        timers = {(label, q): latency_timer(path, threads=args.threads, runs=args.runs, warmup=args.warmup,
                                            clock=clock) for (label, q), path in calibration_files.items()}
        for index, config in configs.items():
            model = rebuild(supernet, config, copy_weights=False, graph=graph)
            images = rng.normal(size=(2,) + tuple(model.input_shape[1:])).astype(np.float32)
            for q in QUANTIZATIONS:
                path = export_tflite(model, os.path.join(directory, f"net{index}_{q}.tflite"), quantization=q,
                                     representative_images=images if q == "int8" else None)
                timers[index, q] = latency_timer(path, threads=args.threads, runs=args.runs, warmup=args.warmup,
                                                 clock=clock)
            log(f"[latency_predictor] converted sub-network {index}")
        return common.interleaved(timers, args.rounds)


def save(path, settings, rows, graph, table, calibration_configs):
    """Writes the rows with the table's predictions for each, and the errors, to the JSON `path`.

    `predicted_ms` uses the table as measured; `recalibrated_ms` the table with its
    calibration fitted again to its whole networks as timed in the sub-network's own rounds.
    """
    for row in rows:
        row["predicted_ms"] = {q: costs.Latency(table, q).of(graph, row["channels"]) for q in QUANTIZATIONS}
        if "calibration_ms" not in row:
            continue  # measured by this script's first version, which did not time the calibration networks
        now = {(label, q): ms for q, times in row["calibration_ms"].items() for label, ms in times.items()}
        timed = {label: config for label, config in calibration_configs.items() if (label, QUANTIZATIONS[0]) in now}
        again = dataclasses.replace(table, calibration=latency.calibration_of(table, graph, timed, now,
                                                                              log=lambda message: None))
        row["recalibrated_ms"] = {q: costs.Latency(again, q).of(graph, row["channels"]) for q in QUANTIZATIONS}
    atomic_write_json(path, {"machine": common.machine_info(), "settings": settings, "rows": rows,
                             "errors": errors(rows)})


def errors(rows):
    """Per prediction and quantization: median and worst absolute relative error, over `rows`."""
    out = {}
    for kind in ("predicted_ms", "recalibrated_ms"):
        for q in QUANTIZATIONS:
            rel = [abs(r[kind][q] - r["measured_ms"][q]) / r["measured_ms"][q] for r in rows if kind in r]
            out[f"{kind[:-3]} {q}"] = {"median": statistics.median(rel), "worst": max(rel), "count": len(rel)}
    return out


def results_table(rows):
    headers = ["sub-network", "grid", "MACs"] + [f"{q} {kind}" for q in QUANTIZATIONS for kind in
                                                  ("measured ms", "predicted", "error", "recalibrated", "error")]
    body = []
    for r in rows:
        cells = [str(r["index"]), "yes" if r["on_grid"] else "no", f"{r['macs'] / 1e6:.1f}M"]
        for q in QUANTIZATIONS:
            m, p, a = r["measured_ms"][q], r["predicted_ms"][q], r.get("recalibrated_ms", {}).get(q)
            cells += [f"{m:.3f}", f"{p:.3f}", f"{100 * (p - m) / m:+.1f}%"]
            cells += ["-", "-"] if a is None else [f"{a:.3f}", f"{100 * (a - m) / m:+.1f}%"]
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
    models_dir = os.path.join(os.path.dirname(args.table), "models")
    if not os.path.exists(args.table):
        log(f"[latency_predictor] measuring the latency table into {args.table} (load {os.getloadavg()})")
        latency.measure_latency_table(supernet, quantizations=QUANTIZATIONS, threads=args.threads,
                                      points=args.points, path=args.table, log=log, keep_models=models_dir)
    table = latency.load_latency_table(args.table)
    calibration_configs, calibration_files = latency.calibration_networks(
        supernet, graph, latency.CALIBRATION_WIDTHS, models_dir, QUANTIZATIONS, log=log)
    rng = np.random.default_rng(args.seed)
    configs = {i: random_config(graph, rng, on_grid=i % 2 == 0) for i in range(args.networks)}
    todo = [i for i in configs if i not in {r["index"] for r in rows}]
    for start in range(0, len(todo), args.batch):
        batch = {i: configs[i] for i in todo[start:start + args.batch]}
        load_before = os.getloadavg()
        measured = measure(supernet, graph, batch, calibration_files, args, log)
        calibration_ms = {q: {label: common.median(measured[label, q]) for label in calibration_configs}
                          for q in QUANTIZATIONS}
        for index, config in batch.items():
            rows.append({
                "index": index, "on_grid": index % 2 == 0, "channels": config, "macs": costs.MACS.of(graph, config),
                "measured_ms": {q: common.median(measured[index, q]) for q in QUANTIZATIONS},
                "rounds_ms": {q: measured[index, q] for q in QUANTIZATIONS}, "calibration_ms": calibration_ms,
                "load_average_before": list(load_before),
                "load_average_after": list(os.getloadavg()),
            })
        rows.sort(key=lambda r: r["index"])
        save(out, settings, rows, graph, table, calibration_configs)
        log(f"[latency_predictor] {len(rows)}/{args.networks} sub-networks measured; errors so far {errors(rows)}")
    save(out, settings, rows, graph, table, calibration_configs)  # predictions follow the table, if refitted
    print("\n" + results_table(rows))
    for kind, e in errors(rows).items():
        print(f"{kind}: median |error| {100 * e['median']:.1f}%, worst {100 * e['worst']:.1f}% over {e['count']}")
    return rows


if __name__ == "__main__":
    main()
