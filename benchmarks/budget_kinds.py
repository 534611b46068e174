"""Budgets of every cost kind on the default Fashion-MNIST run: does each slim model meet its budget?

Runs `main.py` (the default config, Fashion-MNIST, the 32/64/128 ResNet) once per
budget, each in its own run directory under `--runs`:

- `latency`: `--mode=latency_table` writes the supernet's table into the run
  directory, then `--config.search.budget=latency:0.5x` reads it;
- `params`: `--config.search.budget=params:0.5x`;
- `macs`: `--config.search.budget=0.5x` (the default run);
- `macs_at_latency`: a MACs budget equal to the MACs of the latency run's slim
  model: at the same MACs, which structure runs faster?

Then every slim model's TFLite file (and the full network's) is timed side by
side, interleaved over `--rounds` rounds (1 thread, the thread's CPU time as the
table measures), and set against its budget. A run directory whose export
finished is reused: run the script again to re-time without training.
`--main_flag` passes a flag to every `main.py`, e.g. another config:

    nohup python benchmarks/budget_kinds.py > /tmp/budget_kinds.log 2>&1 &
    nohup python benchmarks/budget_kinds.py --only=latency,macs_at_latency --runs_dir=runs/budget_kinds_mnv2 \
        --main_flag=--config=configs/fashion_mobilenet_v2.py --json_out=docs/budget_kinds_mobilenet_v2.json &
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

RUNS = ("latency", "params", "macs", "macs_at_latency")


def main_py(run_dir, *flags, main_flags=()):
    """Runs `main.py` in a new process (as a user does); raises if it fails."""
    command = [sys.executable, str(common.ROOT / "main.py"), *main_flags, f"--run_dir={run_dir}",
               "--config.retrain.compare_uniform=False", *flags]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=common.ROOT)


def budget_flags(name, folder):
    table = os.path.join(folder, "latency", "latency_table.json")
    if name == "latency":
        return ["--config.search.budget=latency:0.5x", f"--config.search.latency_table={table}"]
    if name == "params":
        return ["--config.search.budget=params:0.5x"]
    if name == "macs":
        return ["--config.search.budget=0.5x"]
    macs = es_macs(read(folder, "latency", "sample.json"))  # the latency run's slim MACs
    return [f"--config.search.budget={macs}"]


def es_macs(sample):
    """The expected-sampled structure's MACs in a sample.json (`es_flops` in run directories written before)."""
    return sample["es_macs"] if "es_macs" in sample else sample["es_flops"]


def read(folder, run, name):
    with open(os.path.join(folder, run, name)) as f:
        return json.load(f)


def train(folder, names, main_flags=()):
    """Every run of `names` through export, skipping the finished ones."""
    for name in names:
        run_dir = os.path.join(folder, name)
        if os.path.exists(os.path.join(run_dir, "export.json")):
            print(f"[budget_kinds] {name}: finished earlier", flush=True)
            continue
        if name == "latency" and not os.path.exists(os.path.join(run_dir, "latency_table.json")):
            main_py(run_dir, "--mode=latency_table", main_flags=main_flags)
        main_py(run_dir, *budget_flags(name, folder), main_flags=main_flags)


def time_models(folder, names, rounds, runs):
    """ms of every run's slim float32 TFLite and of the full network, interleaved (1 thread, CPU time)."""
    from dmcp_tf.deploy import export  # noqa: PLC0415

    paths = {name: os.path.join(folder, name, "export", "slim_float32.tflite") for name in names}
    paths["full"] = os.path.join(folder, names[0], "export", "full_float32.tflite")
    timers = {key: export.latency_timer(path, threads=1, runs=runs, warmup=10, clock="cpu")
              for key, path in paths.items()}
    values = common.interleaved(timers, rounds=rounds, warmup=1)
    return {key: common.median(v) for key, v in values.items()}, values


def rows_of(folder, names, ms):
    from dmcp_tf.costs import format_count  # noqa: PLC0415

    rows = []
    for name in names:
        search, sample = read(folder, name, "search.json"), read(folder, name, "sample.json")
        channels = read(folder, name, "channels.json")
        target, unit = search["target"], search["unit"]
        # A latency budget against the slim model's measured latency; the others against
        # the expected-sampled structure's cost of the budget's kind.
        achieved = ms[name] if unit == "ms" else sample["es_cost"]
        rows.append({
            "run": name, "budget": budget_flags(name, folder)[0].split("=", 1)[1], "unit": unit, "target": target,
            "achieved": achieved, "achieved_over_target": achieved / target,
            "macs": es_macs(sample), "params": sample.get("es_params"), "float32_ms": ms[name],
            "ms_over_full": ms[name] / ms["full"], "top1": read(folder, name, "eval.json")["slim"]["accuracy"],
            "channels": channels, "macs_text": format_count(es_macs(sample)),
        })
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", default="runs/budget_kinds")
    parser.add_argument("--only", default=",".join(RUNS), help=f"runs, from {','.join(RUNS)}")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (median)")
    parser.add_argument("--invokes", type=int, default=200, help="timed invokes per round (median)")
    parser.add_argument("--main_flag", action="append", default=[], help="a flag for every main.py (repeatable), "
                        "e.g. --main_flag=--config=configs/fashion_mobilenet_v2.py")
    parser.add_argument("--json_out", default="docs/budget_kinds.json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    names = [n for n in RUNS if n in args.only.split(",")]
    train(args.runs_dir, names, args.main_flag)
    ms, rounds = time_models(args.runs_dir, names, args.rounds, args.invokes)
    rows = rows_of(args.runs_dir, names, ms)
    print(common.format_table(
        ["run", "budget", "achieved / target", "MACs", "params", "fp32 ms", "ms / full", "top-1"],
        [[r["run"], f"{r['budget']} = {r['target']:.4g} {r['unit']}", f"{r['achieved_over_target']:.3f}", r["macs_text"],
          r["params"], f"{r['float32_ms']:.4f}", f"{r['ms_over_full']:.3f}", f"{r['top1']:.4f}"] for r in rows]))
    print(f"full network: {ms['full']:.4f} ms")
    common.write_json(args.json_out, {"machine": common.machine_info(), "settings": vars(args), "rows": rows,
                                      "full_ms": ms["full"], "rounds_ms": rounds})
    return rows


if __name__ == "__main__":
    main()
