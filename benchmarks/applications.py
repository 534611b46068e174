"""Which keras.applications CNNs dmcp-tf can prune, checked end to end.

For every family (random weights with random batch-norm statistics, logits, the
smallest input the family accepts), in stages:

- gates: `dmcp_tf.insert_gates`; the share of the MACs in layers a gate can
  shrink, the smallest sub-network's MACs over the full network's, and the
  largest group of channels left whole inside the network and why;
- full: the gated model at full width against the original (max abs difference);
- subnet: a random sub-network (a uniform draw on every gate's grid) rebuilt by
  `dmcp_tf.rebuild`: its output against the gated model's masked output at that
  configuration, and its MACs and parameters (counted on the slim model) against
  the graph's prediction (`costs.MACS.of`, `costs.PARAMS.of`);
- tflite: the slim model converted to TFLite float32 (`export.export_tflite`),
  run, and compared with the slim Keras model;
- search: a `DMCPModel` on the gated model, 2 steps of `fit` (a warm-up step,
  then one with the architecture stage): losses finite and the gates moved.

Each finished family is appended to the JSON file (`--json_out`), which a rerun
reads to skip the families already there; the markdown table (`--out`) is
rewritten after every family. Progress goes to stdout:

    nohup nice -n 5 python benchmarks/applications.py --out=docs/applications.md \\
        --json_out=docs/applications.json > /tmp/apps.log 2>&1 &
    python benchmarks/applications.py --models=MobileNetV2,EfficientNetB0   # a few, nothing written
    python benchmarks/applications.py --stages=gates --size=64                # the graph figures only
    python benchmarks/applications.py --out=docs/applications.md --json_out=docs/applications.json \
        --merge=/tmp/other_half.json --redraw     # a sweep split across processes, put together
"""

import argparse
import contextlib
import json
import os
import pathlib
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dmcp_tf import costs  # noqa: E402
from dmcp_tf.channels import autogate  # noqa: E402
from dmcp_tf.channels.graph import INPUT_REASON, OUTPUT_REASON, ChannelGraph  # noqa: E402
from dmcp_tf.channels.rebuild import rebuild  # noqa: E402
from dmcp_tf.deploy import export  # noqa: E402
from dmcp_tf.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from dmcp_tf.run import report  # noqa: E402
from dmcp_tf.channels import gates  # noqa: E402
from dmcp_tf.search.supernet import DMCPModel  # noqa: E402
from tests.helpers import grid_config, randomize_batch_norm, unit_layer_scales  # noqa: E402

WIDTH = (0.1, 1.0, 0.1)
RELATIVE_TOLERANCE = 1e-4  # outputs agree if max |a - b| <= RELATIVE_TOLERANCE * max(1, max |b|)
STAGES = ("gates", "full", "subnet", "tflite", "search")
SEARCH_STEPS = 2
# Batch norm over 2 images at 1x1 spatial size (the deep families' last stages at 32x32) gives
# gradients that turn EfficientNetB3's weights to NaN in 2 steps; 8 images do not.
SEARCH_BATCH = 8
FIRST_SEARCH_BATCH = 2  # rows written before the batch was recorded searched batches of 2
# The smallest input each family accepts with random weights; the families first, cheap extras last.
MODELS = {
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
    "EfficientNetB0": 32, "EfficientNetB3": 32, "EfficientNetV2B0": 32, "EfficientNetV2S": 32,
    "ResNet50": 32, "ResNet101": 32, "ResNet50V2": 32, "ResNet101V2": 32, "DenseNet121": 32,
    "NASNetMobile": 32, "Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75, "VGG16": 32,
    "ConvNeXtTiny": 32,
    "EfficientNetB1": 32, "EfficientNetB2": 32, "EfficientNetV2B1": 32, "EfficientNetV2B2": 32,
    "EfficientNetV2B3": 32,
}
LOW_SHARE = 0.5  # a family whose share of prunable MACs is below this says why


def build(name, size):
    """The family `name` at `size` x `size`, random weights, 10 classes, logits out."""
    return getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None, classes=10,
                                             classifier_activation=None)


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


def graph_figures(graph):
    """Gates, MACs, share of MACs in gated layers, smallest / full MACs and the largest boundary of a gated graph."""
    smallest = graph.smallest_config()
    full_layers, small_layers = costs.MACS.per_layer(graph), costs.MACS.per_layer(graph, smallest)
    full = costs.MACS.of(graph)
    prunable = sum(f for (_, f), (_, s) in zip(full_layers, small_layers) if s != f)
    boundary = largest_boundary(graph)
    return {
        "gates": len(graph.gates), "macs": report.format_count(full), "full_macs": full,
        "prunable": round(prunable / full, 3),
        "smallest": round(costs.MACS.of(graph, smallest) / full, 3),
        "boundary": "-" if boundary is None else
        f"{boundary[1]} channels, {boundary[0] / full:.1%} of MACs: {boundary[2]}",
    }


def max_diff(actual, expected):
    """`(max |actual - expected|, whether that is within the tolerance for `expected`'s scale)`."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    diff = float(np.max(np.abs(actual - expected)))
    return diff, diff <= RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected))))


def subnet_check(gated, graph, config, x):
    """Rebuilds `config`: output against the masked gated model, MACs and params against the graph's prediction."""
    slim = rebuild(gated, config, graph=graph)
    with gates.selection(gates.Selection(gates.SUBNET, {g: config[g.name] for g in graph.gates})):
        masked = np.asarray(gated(x, training=False))
    diff, exact = max_diff(slim(x, training=False), masked)
    slim_graph = ChannelGraph(slim)
    macs, params = costs.MACS.of(slim_graph), slim.count_params()
    predicted_macs, predicted_params = costs.MACS.of(graph, config), costs.PARAMS.of(graph, config)
    return slim, {
        "subnet_macs": macs, "subnet_params": params, "subnet_diff": diff, "subnet_exact": exact,
        "predicted": macs == predicted_macs and params == predicted_params,
        "predicted_macs": predicted_macs, "predicted_params": predicted_params,
    }


def tflite_check(slim, x):
    """Converts `slim` to TFLite float32, runs it on `x`; max abs difference to the Keras outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_tflite(slim, pathlib.Path(tmp) / "slim.tflite")
        parity = export.tflite_parity(path, slim, x, outputs_are_logits=False)
        size = export.tflite_model_size_bytes(path)
    expected = np.asarray(slim(x, training=False))
    return {"tflite_diff": parity.max_abs_diff, "tflite_bytes": size,
            "tflite_ok": parity.max_abs_diff <= RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected))))}


def search_check(gated, x, y, steps=SEARCH_STEPS, batch=SEARCH_BATCH):
    """`steps` steps of DMCP on the gated model (half warm-up): losses finite, every gate moved."""
    model = DMCPModel(gated, budget="0.5x", total_steps=steps, warmup_fraction=0.5)
    model.compile(run_eagerly=True)  # two steps: tracing both phases would cost more than running them
    before = [g.alpha.numpy().copy() for g in model.gates]
    history = model.fit(x[:batch * steps], y[:batch * steps], batch_size=batch, epochs=1, verbose=0).history
    moved = sum(not np.array_equal(b, g.alpha.numpy()) for b, g in zip(before, model.gates))
    nonfinite = sorted(k for k, v in history.items() if not np.isfinite(v).all())
    return {"search_ran": bool(not nonfinite and moved == len(model.gates) and model.searching),
            "search_gates_moved": moved, "search_nonfinite": nonfinite, "search_batch": batch,
            "search_expected": round(float(history["expected_cost"][-1]) / model.full_macs, 3)}


def search_cell(row):
    """The table's "search ran" cell: yes or no, the batch size, and what went wrong."""
    if "search_ran" not in row:
        return None
    text = f"{yes_no(row, 'search_ran')} (batch {row.get('search_batch', FIRST_SEARCH_BATCH)}"
    if row.get("search_nonfinite"):
        text += f"; {', '.join(row['search_nonfinite'])} not finite"
    elif not row["search_ran"] and "search_nonfinite" in row:
        text += f"; {row['search_gates_moved']}/{row['gates']} gates moved"
    elif not row["search_ran"]:  # rows written before the losses were recorded
        text += "; a loss not finite or a gate unmoved: this row predates recording which"
    return text + ")"


class Family:
    """The checks of one family, stage by stage; a stage that raises is recorded and ends the family."""

    def __init__(self, name, size, stages=STAGES, seed=0, log=print):
        self.name, self.size, self.stages, self.log = name, size, stages, log
        self.row = {"model": name, "input": f"{size}x{size}", "stage_seconds": {}}
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    @contextlib.contextmanager
    def stage(self, name):
        start = time.time()
        self.log(f"[applications] {self.name}: {name} ...")
        try:
            yield
        except Exception as error:  # noqa: BLE001  (a family that fails is a row of the table, not a crash)
            self.row["error"] = f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            self.log(traceback.format_exc())
            raise _Stop from error
        finally:
            self.row["stage_seconds"][name] = round(time.time() - start, 1)

    def run(self):
        """Every requested stage in order; returns the row."""
        start = time.time()
        with contextlib.suppress(_Stop):
            self._run()
        self.row["seconds"] = round(time.time() - start, 1)
        return self.row

    def _run(self):
        keras.utils.set_random_seed(self.seed)
        x = self.rng.normal(size=(SEARCH_BATCH * SEARCH_STEPS, self.size, self.size, 3)).astype("float32")
        with self.stage("gates"):
            model = unit_layer_scales(build(self.name, self.size))  # ConvNeXt's 1e-6 layer scales would hide pruning
            randomize_batch_norm(model, self.rng)
            gated = autogate.insert_gates(model, width=WIDTH)
            graph = ChannelGraph(gated)
            self.row.update(graph_figures(graph))
        if "full" in self.stages:
            with self.stage("full"):
                self.row["full_diff"], self.row["full_exact"] = max_diff(gated(x[:2], training=False),
                                                                         model(x[:2], training=False))
        if not {"subnet", "tflite"} & set(self.stages):
            return self._search(gated, x)
        with self.stage("subnet"):
            slim, figures = subnet_check(gated, graph, grid_config(graph, self.rng), x[:2])
            self.row.update(figures)
        if "tflite" in self.stages:
            with self.stage("tflite"):
                self.row.update(tflite_check(slim, x[:2]))
        return self._search(gated, x)

    def _search(self, gated, x):
        if "search" in self.stages:
            with self.stage("search"):
                self.row.update(search_check(gated, x, self.rng.integers(0, 10, len(x)).astype("int32")))


class _Stop(Exception):
    """A stage failed; its error is in the row."""


def yes_no(row, key):
    """"yes" / "no" for a boolean of the row, None (shown "-") if that stage did not run."""
    return None if key not in row else ("yes" if row[key] else "no")


def table_row(row):
    """The markdown cells of one family's row."""
    note = row.get("error", "")
    if "prunable" in row and row["prunable"] < LOW_SHARE:
        note = f"share below {LOW_SHARE}: {row['boundary']}" + (f"; {note}" if note else "")
    diffs = {k: None if k not in row else f"{row[k]:.1e} ({yes_no(row, e)})"
             for k, e in (("full_diff", "full_exact"), ("subnet_diff", "subnet_exact"), ("tflite_diff", "tflite_ok"))}
    return {**row, **diffs, "predicted": yes_no(row, "predicted"), "search_ran": search_cell(row),
            "note": note or "-"}


COLUMNS = [("model", "model"), ("input", "input"), ("gates", "gates"), ("macs", "MACs"),
           ("prunable", "MACs in gated layers"), ("smallest", "smallest / full MACs"),
           ("boundary", "largest group kept whole, and why"),
           ("full_diff", "full width: max diff (exact)"), ("subnet_diff", "sub-network: max diff (exact)"),
           ("predicted", "MACs & params as predicted"), ("search_ran", "search ran"),
           ("tflite_diff", "TFLite float32: max diff (ok)"), ("seconds", "s"), ("note", "failure or low share")]


def load(path, settings):
    """The rows already in the JSON file at `path` (none if there is no file); refuses other settings."""
    if path is None or not path.exists():
        return []
    saved = json.loads(path.read_text())
    if saved["settings"] != settings:
        raise SystemExit(f"{path} holds results of other settings ({saved['settings']}); "
                         "pass another --json_out, or delete the file to start again.")
    return saved["rows"]


def write_page(path, rows, names, command):
    """The markdown page: the rows in `MODELS` order, and which of `names` are not measured yet."""
    rows = sorted(rows, key=lambda r: list(MODELS).index(r["model"]))
    missing = [n for n in names if not any(r["model"] == n for r in rows)]
    table = report.markdown_table([table_row(r) for r in rows], COLUMNS)
    text = PAGE.format(table=table, width=WIDTH, tolerance=RELATIVE_TOLERANCE, command=command,
                       steps=SEARCH_STEPS, load=" / ".join(f"{v:.1f}" for v in os.getloadavg()),
                       missing=f"\nNot measured yet: {', '.join(missing)}.\n" if missing else "")
    atomic_write_text(path, text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keras.applications names")
    parser.add_argument("--size", type=int, default=0, help="one input size for every model (0: the table's)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages among {', '.join(STAGES)} (gates always runs)")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--json_out", default=None, help="append each family here; families already in it are skipped")
    parser.add_argument("--redo", default="", help="comma-separated families to measure again even if in the JSON")
    parser.add_argument("--merge", action="append", default=[],
                        help="another run's JSON file (same settings); its families replace these (repeatable)")
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: write the JSON (with --merge) and the page from the families done")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.models.split(",") if n.strip()]
    args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.names) - set(MODELS)) + sorted(set(args.stage_list) - set(STAGES))
    if unknown:
        parser.error(f"unknown models or stages {unknown}; models: {', '.join(MODELS)}; stages: {', '.join(STAGES)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = {"size": args.size, "stages": args.stage_list, "width": list(WIDTH), "search_steps": SEARCH_STEPS,
                "relative_tolerance": RELATIVE_TOLERANCE}
    json_path = pathlib.Path(args.json_out) if args.json_out else None
    redo = {n.strip() for n in args.redo.split(",") if n.strip()}
    rows = load(json_path, settings)
    for other in args.merge:  # runs split across processes or machines
        merged = load(pathlib.Path(other), settings)
        rows = [r for r in rows if r["model"] not in {m["model"] for m in merged}] + merged
    rows = [r for r in rows if r["model"] not in redo]
    command = " ".join(["python benchmarks/applications.py"] + [
        a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith(("--merge", "--redo", "--redraw"))])
    for name in args.names:
        if args.redraw or any(r["model"] == name for r in rows):
            print(f"[applications] {name}: {'not measured (--redraw)' if args.redraw else 'done already'}, skipped",
                  flush=True)
            continue
        row = Family(name, args.size or MODELS[name], args.stage_list, log=lambda m: print(m, flush=True)).run()
        rows.append(row)
        print(f"[applications] {json.dumps(row)}", flush=True)
        keras.backend.clear_session()
        if json_path is not None:
            atomic_write_json(json_path, {"machine": common.machine_info(), "settings": settings, "rows": rows})
        if args.out:
            write_page(args.out, rows, args.names, command)
    if json_path is not None and args.merge:
        atomic_write_json(json_path, {"machine": common.machine_info(), "settings": settings, "rows": rows})
    if args.out:
        write_page(args.out, rows, args.names, command)  # a rerun with every family done redraws the page
    print(report.markdown_table([table_row(r) for r in rows], COLUMNS))
    return rows


PAGE = """# keras.applications families in dmcp-tf

Written by `{command}`
(random weights with random batch-norm statistics, ConvNeXt's layer scales set to 1, 10 classes,
logits, the smallest input size each family accepts; width grid {width}). A run cut short
continues where it stopped: the JSON file keeps every finished family.

- "MACs in gated layers": the share of the MACs in layers that some gate shrinks;
  "smallest / full MACs": the smallest sub-network's MACs over the full network's.
- The largest group kept whole is the ungated channel group inside the network (the image's
  channels and the logits never count) that the most MACs read or write, with the reason
  `dmcp_tf.analyze()` gives.
- "full width": max abs difference between the gated model at full width and the original;
  "sub-network": between a random sub-network (a uniform draw on every gate's grid) rebuilt
  by `dmcp_tf.rebuild` and the gated model masked to it. "exact" means within
  {tolerance} x max(1, max |output|) (float32 through the whole network).
- "MACs & params as predicted": the slim model's MACs (counted on its own graph) and its
  `count_params()` equal `costs.MACS.of` / `costs.PARAMS.of` of the gated graph at that
  configuration.
- "search ran": {steps} steps of `DMCPModel.fit` with the default optimisers on the gated
  model (one warm-up step, one with the architecture stage, budget 0.5x; the batch size in
  the cell): losses finite and every gate's parameters moved. Batches of 2 images were the
  first setting; batch norm over 2 values (the deep families' last stages are 1x1 at 32x32)
  can blow the weights up to NaN in the second step, so the later rows use 8.
- "TFLite float32": the slim model converted by `dmcp_tf.export.export_tflite`, run by the
  TFLite interpreter; max abs difference to the Keras slim model's logits (ok: within the
  same tolerance).
- "s": seconds for all of it (wall time; "stage_seconds" in the JSON splits it) on a 2-core
  machine shared with other jobs (load average {load} when this page was written), so
  they are upper bounds.

In the test suite, the slow test `tests/channels/test_applications.py` asserts full-width and
sub-network exactness, MACs and parameters as predicted and TFLite float32 conversion for
the cheap families (MobileNet, MobileNetV3Small, EfficientNetB0 at 32x32), and the slow
sweep of `tests/channels/test_ops_nodes.py` asserts exactness and MACs/parameters for
MobileNetV3Small/Large, EfficientNetB0, EfficientNetV2B0 and ConvNeXtTiny (every inner 4x
expansion of ConvNeXt has its own gate); `tests/channels/test_autogate.py` does so for ResNet50 and
MobileNetV2 and runs a search and a TFLite export of MobileNetV2. The heavy families, and
the search of every family, are covered by this script, with the command above.
{missing}
{table}
"""


if __name__ == "__main__":
    main()
