"""Step time with TensorFlow's oneDNN CPU kernels off and on (`TF_ENABLE_ONEDNN_OPTS`).

TensorFlow turns these kernels on by default only on CPUs with AVX-512
neural-network instructions; elsewhere `TF_ENABLE_ONEDNN_OPTS=1` turns them on
(docs/benchmarks.md section 7: faster here, but multi-worker runs lose their
reproducibility). The switch is read once, when TensorFlow loads, so each
setting runs `benchmarks/step_time.py` in its own process; the settings alternate round by round so machine noise hits both, and
the table reports the medians over rounds and their ratio.

    python benchmarks/onednn.py                         # fashion_resnet, 3 rounds
    python benchmarks/onednn.py --models=mobilenet_v2,fashion_resnet --json_out=docs/onednn.json

Arguments it does not know go to `step_time.py` (e.g. `--fashion_batch=32`).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

SETTINGS = {"off": "0", "on": "1"}
STEPS = ("plain_s", "dmcp_s")  # step_time.py's plain training step and DMCP search step


def step_times(models, steps, setting, extra=()):
    """step_time.py's results (`extra`: more of its arguments) in a child process with TF_ENABLE_ONEDNN_OPTS=`setting`."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "step_time.json")
        command = [sys.executable, str(common.ROOT / "benchmarks" / "step_time.py"), f"--models={models}",
                   f"--steps={steps}", "--profile=never", f"--json_out={out}", *extra]
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting)
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            written = json.load(f)
    if written["machine"]["onednn"] not in (None, setting == "1"):  # None: TensorFlow does not say
        raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={setting} did not reach TensorFlow in step_time.py")
    return written["results"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="fashion_resnet", help="step_time.py's --models")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per setting, alternating")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind per process")
    parser.add_argument("--json_out", default=None, help="write the numbers here as JSON")
    return parser.parse_known_args(argv)


def main(argv=None):
    args, step_time_args = parse_args(argv)
    seconds = {}  # (model, step, setting) -> one median per round
    for round_ in range(args.rounds):
        for name, setting in SETTINGS.items():
            print(f"[onednn] round {round_ + 1}/{args.rounds}, oneDNN {name}...", flush=True)
            for result in step_times(args.models, args.steps, setting, step_time_args):
                for step in STEPS:
                    seconds.setdefault((result["model"], step, name), []).append(result[step])
    results, rows = [], []
    for model in dict.fromkeys(key[0] for key in seconds):
        for step in STEPS:
            off, on = (common.median(seconds[(model, step, name)]) for name in SETTINGS)
            results.append({"model": model, "step": step, "off_s": off, "on_s": on, "speedup": off / on,
                            "rounds": {name: seconds[(model, step, name)] for name in SETTINGS}})
            rows.append([f"{model} {step[:-2]}", f"{off * 1000:.0f}", f"{on * 1000:.0f}", f"{off / on:.2f}x"])
    print("\n" + common.format_table(["step", "oneDNN off (ms)", "oneDNN on (ms)", "speed-up"], rows))
    common.write_results(args, results)
    return results


if __name__ == "__main__":
    main()
