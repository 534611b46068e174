"""Where cutting channels costs accuracy, against where a searched structure cut them.

For a run of `benchmarks/accuracy.py` (`--from_json`): for every seed, the trained
unpruned network (from the run's cache, or trained again as the run did), and for
every gate on its own: that gate's channel space narrowed to `--keep` of its
channels (the largest L1-norm filters kept, as `l1` does), every other layer whole,
batch norms re-estimated on 20 training batches, tested. A gate's sensitivity is the
top-1 it loses per percent of the network's MACs the cut saves (Li et al. 2017's
per-layer analysis, normalised by cost as a budget weighs it).

The run's searched structures (`dmcp_fit`, `dmcp_pretrained`, ... at `--budget`) are
compared with uniform width, gate by gate (DMCP's width over uniform width's). A
search that spends the budget where channels matter widens the sensitive gates: the
table gives the rank correlation (Spearman) between the two, per method.

    python benchmarks/sensitivity.py --from_json=docs/accuracy_mobilenet_v2.json --budget=0.25x \
        --json_out=docs/sensitivity_mobilenet_v2.json
"""

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import accuracy, common  # noqa: E402

import numpy as np  # noqa: E402

from dmcp_tf import costs  # noqa: E402
from dmcp_tf.channels.graph import ChannelGraph  # noqa: E402
from dmcp_tf.channels.rebuild import rebuild  # noqa: E402
from dmcp_tf.io_utils import atomic_write_json  # noqa: E402
from dmcp_tf.search import baselines, calibration, pretrained, recipes  # noqa: E402

SEARCHED = ("dmcp_budget", "dmcp_fit", "dmcp_pretrained", "dmcp_authors", "dmcp_full", "bernoulli", "from_full")


def gate_sensitivity(benchmark, keep, log=print):
    """Top-1 of the seed's trained network with each gate alone narrowed to `keep` of its channels.

    Returns `(reference, rows)`: the whole network's top-1 after the same calibration, and per
    gate its name, channels kept, the share of the network's MACs saved and the top-1.
    """
    full = benchmark.full_network()
    supernet = benchmark.supernet("markov")
    pretrained.copy_weights_by_name(full, supernet)
    graph = ChannelGraph(supernet)
    order = baselines.l1_channel_order(graph)
    whole = {g.name: g.channels for g in graph.gates}
    total = costs.MACS.of(graph, whole)

    def top1(config):
        slim = rebuild(supernet, config, channel_order=order)
        calibration.calibrate_batch_norm(slim, benchmark.data.calibration_batches(20))
        return recipes.evaluate(slim, benchmark.data.test)["accuracy"]

    reference, rows = top1(whole), []
    for gate in graph.gates:
        config = baselines.scaled_config(graph, {g: keep if g == gate.name else 1.0 for g in whole})
        saved = 1.0 - costs.MACS.of(graph, config) / total
        rows.append({"gate": gate.name, "channels": gate.channels, "kept": config[gate.name],
                     "macs_saved": saved, "accuracy": top1(config)})
        log(f"[sensitivity] seed {benchmark.seed} {gate.name:<28} {config[gate.name]:>4}/{gate.channels:<4} "
            f"MACs saved {100 * saved:5.2f}%  top-1 {rows[-1]['accuracy']:.4f} (whole {reference:.4f})")
    return reference, rows


def width_ratios(rows, seed, budget):
    """Method -> gate -> its searched width over uniform width's, for one seed's rows at `budget`."""
    at = {r["method"]: r["config"] for r in rows if r["seed"] == seed and r["budget"] == budget and "config" in r}
    if "uniform" not in at:
        raise SystemExit(f"the file has no uniform row of seed {seed} at {budget}: nothing to compare with")
    return {m: {g: c / at["uniform"][g] for g, c in config.items()} for m, config in at.items() if m in SEARCHED}


def spearman(a, b):
    """Rank correlation of two equal-length sequences (tied values share their mean rank); NaN if one is constant."""
    def ranks(values):
        values = np.asarray(values, dtype=np.float64)
        ranked = np.empty(len(values))
        ranked[np.argsort(values, kind="stable")] = np.arange(len(values))
        for value in np.unique(values):
            ranked[values == value] = ranked[values == value].mean()
        return ranked

    a, b = ranks(a), ranks(b)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def summarize(per_seed):
    """Per gate: sensitivity (top-1 points lost per % MACs saved) and each method's width ratio, means over
    seeds; per method the rank correlation of the two."""
    gates = [r["gate"] for r in per_seed[0]["gates"]]
    table = []
    for i, gate in enumerate(gates):
        lost = [100 * (s["reference"] - s["gates"][i]["accuracy"]) for s in per_seed]
        saved = [100 * s["gates"][i]["macs_saved"] for s in per_seed]
        table.append({"gate": gate, "macs_saved": float(np.mean(saved)), "points_lost": float(np.mean(lost)),
                      "sensitivity": float(np.mean([p / max(m, 1e-9) for p, m in zip(lost, saved)])),
                      "ratios": {m: float(np.mean([s["ratios"][m][gate] for s in per_seed]))
                                 for m in per_seed[0]["ratios"]}})
    methods = list(per_seed[0]["ratios"])
    correlation = {m: spearman([t["sensitivity"] for t in table], [t["ratios"][m] for t in table]) for m in methods}
    return table, correlation


def format_summary(table, correlation, keep, budget):
    methods = list(correlation)
    headers = ["gate", f"MACs saved at {keep:g} (%)", "top-1 lost (points)", "points per % MACs",
               *[f"{m} / uniform at {budget}" for m in methods]]
    body = [[t["gate"], f"{t['macs_saved']:.2f}", f"{t['points_lost']:+.2f}", f"{t['sensitivity']:+.3f}",
             *[f"{t['ratios'][m]:.2f}" for m in methods]] for t in table]
    lines = [common.format_table(headers, body), "",
             "Rank correlation, sensitivity against the searched width over uniform width's:"]
    lines += [f"  {m}: {correlation[m]:+.2f}" for m in methods]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from_json", required=True, help="a file benchmarks/accuracy.py wrote with --json_out")
    parser.add_argument("--budget", default="0.25x", help="the budget whose searched structures are compared")
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of a gate's channels kept when it is cut")
    parser.add_argument("--seeds", default="", help="seeds to analyse (default: every seed of the file)")
    parser.add_argument("--json_out", default=None, help="write the per-seed results and the summary here; "
                        "seeds it holds are not measured again")
    args = parser.parse_args(argv)
    if not 0 < args.keep < 1:
        parser.error(f"--keep must be in (0, 1), got {args.keep}")
    return args


def main(argv=None):
    args = parse_args(argv)
    path = pathlib.Path(args.from_json)
    if not path.exists():
        raise SystemExit(f"{path} does not exist: pass a file benchmarks/accuracy.py wrote with --json_out")
    saved = json.loads(path.read_text())
    rows = saved["results"]["rows"]
    run_args = argparse.Namespace(**{**vars(accuracy.parse_args([])), **saved["settings"]})
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else sorted({r["seed"] for r in rows})
    out = pathlib.Path(args.json_out) if args.json_out else None
    done = json.loads(out.read_text()) if out is not None and out.exists() else {"keep": args.keep, "seeds": []}
    if done["keep"] != args.keep:
        raise SystemExit(f"{out} holds results at --keep={done['keep']}: pass another --json_out")
    cache = path.with_name(path.name + ".cache")  # the run's trained networks, or where this run keeps them
    for seed in seeds:
        if any(s["seed"] == seed for s in done["seeds"]):
            continue
        cache.mkdir(exist_ok=True)
        ratios = width_ratios(rows, seed, args.budget)
        finished = {(r["method"], r["budget"]): r for r in rows if r["seed"] == seed}
        benchmark = accuracy.Benchmark(run_args, seed, done=finished, cache=cache,
                                       log=lambda m: print(m, flush=True))
        reference, gates = gate_sensitivity(benchmark, args.keep, log=lambda m: print(m, flush=True))
        done["seeds"].append({"seed": seed, "reference": reference, "gates": gates, "ratios": ratios})
        if out is not None:
            atomic_write_json(out, done)
    per_seed = [s for s in done["seeds"] if s["seed"] in seeds]
    table, correlation = summarize(per_seed)
    print(format_summary(table, correlation, args.keep, args.budget))
    return {"table": table, "correlation": correlation, "seeds": per_seed}


if __name__ == "__main__":
    main()
