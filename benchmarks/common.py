"""Helpers shared by the benchmark scripts: imports, interleaved timing, tables, JSON, machine facts."""

import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def timed(fn):
    """A callable that runs `fn()` and returns its wall time in seconds."""
    def run():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


def interleaved(fns, rounds, warmup=0):
    """Calls every function of `fns` once per round, in turn, so machine noise hits all of them.

    Args:
        fns: name -> zero-argument callable returning a number (e.g. seconds).
        rounds: measured rounds.
        warmup: unmeasured rounds first.

    Returns:
        name -> list of the `rounds` values returned.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    values = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            values[name].append(float(fn()))
    return values


def median(values):
    return float(statistics.median(values))


def format_table(headers, rows):
    """A plain fixed-width text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def machine_info():
    """CPU, core count and library versions, for the JSON outputs."""
    import keras
    import tensorflow as tf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "load_average_1_5_15min": list(os.getloadavg()),  # other processes share the machine
        "onednn": onednn_enabled(),
    }


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels (None if TensorFlow no longer says)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private: TensorFlow's only report of it
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def write_json(path, data):
    """Writes `data` as indented JSON, creating the parent directory."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_results(args, results):
    """Writes `results` with the machine and the script's settings to `args.json_out`, if given."""
    if args.json_out:
        settings = {k: v for k, v in vars(args).items() if k != "json_out"}
        write_json(args.json_out, {"machine": machine_info(), "settings": settings, "results": results})
        print(f"\nwrote {args.json_out}")
