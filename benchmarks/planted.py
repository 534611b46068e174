"""A planted structure: does DMCP find per-layer widths that are known by construction?

Teacher-student. A teacher network with strongly non-uniform widths (one layer
far narrower than the others) labels random inputs; the student supernet is the
same architecture at full width everywhere. At a budget equal to the teacher's
MACs, DMCP's expected-sampled structure should be nearer the teacher's per-gate
width fractions than the uniform structure of the same MACs is (mean absolute
difference of the fractions).

The architecture is a 3-layer perceptron (32 inputs, 64-64-64 hidden units, 10
classes; a gate after every hidden layer): fast on a CPU, and a gate on a dense
layer's units is the same channel gate as on a conv's channels.

    python benchmarks/planted.py                      # seeds 0-4, both teachers
    python benchmarks/planted.py --teachers=64-8-64 --seeds=0,1,2
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402,F401  (sets up the path and TF logging)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dmcp_tf import costs  # noqa: E402
from dmcp_tf.channels.graph import ChannelGraph  # noqa: E402
from dmcp_tf.search import baselines, sampling  # noqa: E402
from dmcp_tf.channels.gates import MarkovGate  # noqa: E402
from dmcp_tf.search.supernet import DMCPModel, default_arch_optimizer, default_weight_optimizer  # noqa: E402

INPUTS, CLASSES, FULL = 32, 10, (64, 64, 64)


def perceptron(widths, gated=True):
    """Dense layers of `widths` units with ReLU (gated: a `MarkovGate` on each, grid of 1/8), then 10 logits."""
    inputs = keras.Input((INPUTS,))
    x = inputs
    for i, units in enumerate(widths):
        x = keras.layers.Dense(units, name=f"dense{i}")(x)
        if gated:
            x = MarkovGate(width=(0.125, 1.0, 0.125), name=f"gate{i}")(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(x), name="perceptron")


def teacher_task(teacher_widths, seed, examples):
    """Random Gaussian inputs labelled by a random teacher (logits centred per class, so classes are balanced)."""
    keras.utils.set_random_seed(seed)
    teacher = perceptron(teacher_widths, gated=False)
    x = np.random.default_rng(seed).normal(size=(examples, INPUTS)).astype("float32")
    logits = np.array(teacher(x))
    return x, (logits - logits.mean(axis=0)).argmax(axis=1).astype("int32")


def run(teacher_widths, seed, *, examples=8192, epochs=30, batch_size=128, init="budget", budget_weight_growth=0.0):
    """One search of the student at the teacher's MACs; the structures' distances to the teacher's."""
    start = time.time()
    x, y = teacher_task(teacher_widths, seed, examples)
    keras.utils.set_random_seed(seed)
    student = perceptron(FULL)
    graph = ChannelGraph(student)
    teacher = {f"gate{i}": w for i, w in enumerate(teacher_widths)}
    target = costs.MACS.of(graph, teacher)
    total = epochs * (examples // batch_size)
    model = DMCPModel(student, budget=target, total_steps=total, warmup_fraction=0.5, seed=seed,
                      budget_weight_growth=budget_weight_growth)
    model.compile(weight_optimizer=default_weight_optimizer(total, 0.1),
                  arch_optimizer=default_arch_optimizer(total - model.warmup_steps, 2.0, 0.5))
    model.initialize_gates(init)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    uniform, _, _ = baselines.uniform_config(graph, target, tolerance=0.1)
    found = sampling.expected_config(graph)

    def fractions(config):
        return [config[g.name] / g.channels for g in graph.gates]

    def distance(config):
        return float(np.mean(np.abs(np.subtract(fractions(config), fractions(teacher)))))

    return {"teacher": list(teacher_widths), "seed": seed, "dmcp": fractions(found), "uniform": fractions(uniform),
            "teacher_fractions": fractions(teacher), "dmcp_distance": distance(found),
            "uniform_distance": distance(uniform), "expected_over_budget": float(costs.MACS.expected(graph)) / target,
            "seconds": round(time.time() - start, 1)}


def _verdict(row):
    """Whether DMCP's structure is nearer the teacher's; a search that missed its budget does not count."""
    if not 0.95 <= row["expected_over_budget"] <= 1.01:
        return "no (budget missed)"
    return "yes" if row["dmcp_distance"] < row["uniform_distance"] else "no"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", default="64-8-64,64-64-8", help="comma-separated teacher widths a-b-c")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--budget_weight_growth", type=float, default=0.0,
                        help="search.budget_weight_growth (0: the authors' fixed budget weight)")
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args(argv)
    rows = []
    for teacher in args.teachers.split(","):
        widths = tuple(int(w) for w in teacher.split("-"))
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run(widths, seed, epochs=args.epochs, budget_weight_growth=args.budget_weight_growth)
            rows.append(row)
            print(f"[planted] teacher {teacher} seed {seed}: DMCP {np.round(row['dmcp'], 3)} uniform "
                  f"{np.round(row['uniform'], 3)} distance {row['dmcp_distance']:.3f} vs {row['uniform_distance']:.3f} "
                  f"({row['seconds']} s)", flush=True)
    table = [[f"{'-'.join(map(str, r['teacher']))}", r["seed"], " ".join(f"{f:.2f}" for f in r["teacher_fractions"]),
              " ".join(f"{f:.2f}" for f in r["dmcp"]), " ".join(f"{f:.2f}" for f in r["uniform"]),
              f"{r['expected_over_budget']:.3f}", f"{r['dmcp_distance']:.3f}", f"{r['uniform_distance']:.3f}",
              _verdict(r)] for r in rows]
    print("\n" + common.format_table(["teacher", "seed", "teacher fractions", "DMCP", "uniform", "E[MACs]/budget",
                                      "DMCP distance", "uniform distance", "DMCP nearer"], table))
    common.write_results(args, {"rows": rows})
    return rows


if __name__ == "__main__":
    main()
