"""Training-step time of DMCP against a plain step of the same network.

For each model, side by side in one process:
  plain: forward + backward + SGD step of the full network without gates, cross-entropy;
  DMCP:  one search-phase step of `DMCPModel` (weight stage with the 4 sandwich
         sub-networks, then the architecture stage), with the sub-networks at their
         real width (sliced kernels, the default) and masked at full width.
Both are `tf.function`s, traced and warmed up first, then timed in alternation
(one plain step, one DMCP step, ...) and reported as medians. When DMCP/plain exceeds
`--target_ratio` (or with `--profile=always`) the DMCP step is split into its parts,
each timed on its own.

`--mixed_precision` runs every step under a Keras dtype policy (the run's
`--config.mixed_precision`); `--input_pipeline=DATASET` also measures how many
training images per second `dmcp_tf.data` delivers (what a GPU step must not wait on).
`benchmarks/gpu.sh` runs the GPU set of these.

    python benchmarks/step_time.py                       # MobileNetV2 1.5x @224 b16, fashion_resnet b128
    python benchmarks/step_time.py --models=fashion_resnet --steps=10 --json_out=step_time.json
    python benchmarks/step_time.py --models=mobilenet_v2 --mobilenet_batch=64 --mixed_precision=mixed_float16
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dmcp_tf import costs, data as data_lib  # noqa: E402
from dmcp_tf.models import fashion_resnet, mobilenet_v2  # noqa: E402
from dmcp_tf.run.config import DTYPE_POLICIES  # noqa: E402
from dmcp_tf.run.pipeline import dtype_policy  # noqa: E402
from dmcp_tf.search import losses  # noqa: E402
from dmcp_tf.search.supernet import DMCPModel, default_weight_optimizer  # noqa: E402

# name -> (builder(gate_kind) -> model, default batch, budget of the DMCP search)
MODELS = {
    "mobilenet_v2": (lambda gate_kind: mobilenet_v2(1.5, gate_kind=gate_kind), 16, "210M"),
    "fashion_resnet": (lambda gate_kind: fashion_resnet(gate_kind=gate_kind), 128, "0.5x"),
}
TOTAL_STEPS = 1000  # only sets the schedules; the measured step is in the search phase


def random_batch(model, batch, seed=0):
    """Random images and labels shaped for `model` (values do not change the step time)."""
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(model.input_shape[1:])
    x = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, model.output_shape[-1], batch).astype(np.int32)
    return tf.constant(x), tf.constant(y)


def make_plain_step(model, optimizer, variables=None):
    """A compiled forward + backward + SGD step on `model` with cross-entropy; returns the loss."""
    variables = list(variables if variables is not None else model.trainable_variables)
    if not optimizer.built:
        optimizer.build(variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = losses.cross_entropy(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def make_dmcp(supernet, budget, slice_subnetworks=True):
    """A compiled `DMCPModel` in the search phase (weight and architecture stages every step)."""
    dmcp = DMCPModel(supernet, budget=budget, total_steps=TOTAL_STEPS, warmup_fraction=0.5,
                     slice_subnetworks=slice_subnetworks)
    dmcp.compile()
    dmcp.searching = True
    return dmcp


def make_dmcp_step(dmcp):
    """One full DMCP step (`DMCPModel.train_step`) as a `tf.function`; returns the loss."""
    train_step = tf.function(dmcp.train_step)
    return lambda x, y: train_step((x, y))["loss"]


def make_profile_steps(dmcp):
    """The parts of a DMCP step, each as its own compiled step (for the profile).

    - "1 full-width pass": forward + backward + SGD of the gated supernet with its gates
      inactive (what one sandwich pass costs at full width, gate overhead included);
    - "weight stage": the 4 sandwich sub-networks (sliced, or masked at full width) + SGD;
    - "architecture stage": one pass with gates scaling by their probabilities, gradients to alpha;
    - "weight stage, widths repeated": the weight stage with the two random sub-networks'
      widths drawn once and read from variables every step, so the tensors keep dynamic
      shapes but the shapes repeat (what shape novelty costs: new oneDNN primitives).
    """
    full = make_plain_step(dmcp.supernet, dmcp.optimizer, dmcp.weight_variables)
    drawn = [dmcp._random_widths(dmcp.optimizer.iterations) for _ in range(2)]  # pylint: disable=protected-access
    repeated = [{g: tf.Variable(w) for g, w in widths.items()} for widths in drawn]

    @tf.function
    def weight_stage(x, y):
        dmcp._weight_stage(x, y, dmcp.optimizer.iterations)  # pylint: disable=protected-access
        return dmcp.trackers["loss"].result()

    @tf.function
    def arch_stage(x, y):
        dmcp._arch_stage(x, y)  # pylint: disable=protected-access
        return dmcp.trackers["arch_loss"].result()

    @tf.function
    def weight_stage_repeated(x, y):
        reads = iter([{g: v.read_value() for g, v in widths.items()} for widths in repeated])
        draw = dmcp._random_widths  # pylint: disable=protected-access
        dmcp._random_widths = lambda step: next(reads)  # pylint: disable=protected-access
        try:
            dmcp._weight_stage(x, y, dmcp.optimizer.iterations)  # pylint: disable=protected-access
        finally:
            dmcp._random_widths = draw  # pylint: disable=protected-access
        return dmcp.trackers["loss"].result()

    return {"1 full-width pass (gated, gates off)": full, "weight stage (4 sandwich passes)": weight_stage,
            "architecture stage (1 pass, grads to alpha)": arch_stage,
            "weight stage, widths repeated every step": weight_stage_repeated}


def sandwich_macs(graph, samples=2000, seed=0):
    """MACs of the sandwich sub-networks as fractions of the full network's.

    Returns `(smallest, random)`: the smallest sub-network, and the mean of random
    sub-networks drawn uniformly from every gate's width grid (the warm-up rule).
    """
    rng = np.random.default_rng(seed)
    full = costs.MACS.of(graph)
    configs = {g.name: g.prefix + g.group * rng.integers(0, g.num_groups + 1, samples) for g in graph.gates}
    return costs.MACS.of(graph, graph.smallest_config()) / full, float(np.mean(costs.MACS.of(graph, configs))) / full


def _synced(step, x, y):
    """A zero-argument callable running `step` and waiting for its result."""
    return lambda: np.asarray(step(x, y))


def benchmark_model(name, *, batch=None, steps=5, warmup=1, profile="auto", target_ratio=3.5, builder=None,
                    budget=None):
    """Times plain and DMCP steps of one model, interleaved; optionally profiles the DMCP step.

    Args:
        name: a key of `MODELS` (or any label when `builder` is given).
        batch: batch size (the model's default if None).
        steps: timed steps of each kind (medians are reported).
        warmup: untimed steps of each kind after tracing.
        profile: "auto" (when the ratio exceeds `target_ratio`), "always" or "never".
        builder: `builder(gate_kind)` -> model, instead of the `MODELS` entry.
        budget: the DMCP budget, instead of the `MODELS` entry.

    Returns:
        A dict with `plain_s`, `dmcp_s` (medians, seconds per step), `ratio`, the raw
        times, trace times, and `profile` (or None).
    """
    default_builder, default_batch, default_budget = MODELS.get(name, (None, 16, "0.5x"))
    builder = builder or default_builder
    batch = batch or default_batch
    keras.utils.set_random_seed(0)
    plain_model = builder(None)
    dmcp = make_dmcp(builder("markov"), budget or default_budget)
    masked = make_dmcp(builder("markov"), budget or default_budget, slice_subnetworks=False)
    x, y = random_batch(plain_model, batch)
    fns = {
        "plain": _synced(make_plain_step(plain_model, default_weight_optimizer(TOTAL_STEPS)), x, y),
        "dmcp": _synced(make_dmcp_step(dmcp), x, y),
        "dmcp_masked": _synced(make_dmcp_step(masked), x, y),
    }
    trace = {k: common.timed(fn)() for k, fn in fns.items()}  # first call traces
    times = common.interleaved({k: common.timed(fn) for k, fn in fns.items()}, steps, warmup)
    plain_s, dmcp_s = common.median(times["plain"]), common.median(times["dmcp"])
    masked_s = common.median(times["dmcp_masked"])
    result = {
        "model": name, "batch": batch, "full_macs": dmcp.full_macs, "plain_s": plain_s, "dmcp_s": dmcp_s,
        "ratio": dmcp_s / plain_s, "masked_s": masked_s, "masked_ratio": masked_s / plain_s,
        "subnetworks": dmcp.slicing_note, "plain_times": times["plain"], "dmcp_times": times["dmcp"],
        "masked_times": times["dmcp_masked"], "trace_s": trace, "profile": None,
    }
    if profile == "always" or (profile == "auto" and result["ratio"] > target_ratio):
        result["profile"] = profile_dmcp(dmcp, x, y, fns, steps, warmup)
    return result


def profile_dmcp(dmcp, x, y, main_fns, steps, warmup):
    """Times the parts of the DMCP step, interleaved with the plain and full DMCP steps again."""
    parts = {k: _synced(fn, x, y) for k, fn in make_profile_steps(dmcp).items()}
    for fn in parts.values():
        fn()  # trace
    fns = {**main_fns, **parts}
    times = common.interleaved({k: common.timed(fn) for k, fn in fns.items()}, steps, warmup)
    medians = {k: common.median(v) for k, v in times.items()}
    plain_s, dmcp_s = medians.pop("plain"), medians.pop("dmcp")
    medians.pop("dmcp_masked")
    full_s, weight_s, arch_s, _ = medians.values()
    smallest, random_mean = sandwich_macs(dmcp.graph)
    return {
        "plain_s": plain_s, "dmcp_s": dmcp_s, "parts_s": medians, "times": times,
        "weight_stage_passes": weight_s / full_s, "arch_stage_passes": arch_s / full_s,
        "smallest_macs_fraction": smallest, "random_macs_fraction": random_mean,
    }


def input_pipeline_rate(name, batch, *, data_dir=None, batches=50, image_size=None):
    """Training images per second that `dmcp_tf.data` delivers for the data set `name` (after one warm-up batch)."""
    bundle = data_lib.load(name, batch_size=batch, data_dir=data_dir, image_size=image_size)
    stream = iter(bundle.train_stream(0, batches + 1))
    next(stream)  # the first batch fills the shuffle buffer and the prefetch
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batch * batches / (time.perf_counter() - start)


def results_table(results):
    rows = [(r["model"], r["batch"], r.get("mixed_precision", "float32"), f"{r['plain_s']:.3f}", f"{r['dmcp_s']:.3f}",
             f"{r['ratio']:.2f}", f"{r['masked_s']:.3f}", f"{r['masked_ratio']:.2f}") for r in results]
    return common.format_table(("model", "batch", "policy", "plain s/step", "DMCP sliced s/step", "sliced/plain",
                                "DMCP masked s/step", "masked/plain"), rows)


def profile_table(result):
    p = result["profile"]
    rows = [("plain step (ungated network)", f"{p['plain_s']:.3f}", "1.00")]
    rows += [(k, f"{v:.3f}", f"{v / p['plain_s']:.2f}") for k, v in p["parts_s"].items()]
    rows.append(("full DMCP step (weight + architecture stage)", f"{p['dmcp_s']:.3f}", f"{p['dmcp_s'] / p['plain_s']:.2f}"))
    table = common.format_table((f"{result['model']} b{result['batch']}: part", "s/step", "x plain"), rows)
    notes = (
        f"weight stage = {p['weight_stage_passes']:.2f} full-width passes, architecture stage = "
        f"{p['arch_stage_passes']:.2f}; MACs of the sandwich sub-networks vs full: smallest "
        f"{p['smallest_macs_fraction']:.3f}, uniform random {p['random_macs_fraction']:.3f} (mean): sliced, "
        f"the 4 passes compute 1 + {p['smallest_macs_fraction']:.3f} + 2 x {p['random_macs_fraction']:.3f} = "
        f"{1 + p['smallest_macs_fraction'] + 2 * p['random_macs_fraction']:.2f} full networks' MACs instead of 4."
    )
    return table + "\n" + notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,fashion_resnet",
                        help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--mobilenet_batch", type=int, default=MODELS["mobilenet_v2"][1])
    parser.add_argument("--fashion_batch", type=int, default=MODELS["fashion_resnet"][1])
    parser.add_argument("--fashion_channels", default="",
                        help="fashion_resnet's channels per stage, comma-separated (default: the model's 32,64,128)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each kind after tracing")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                        help="split the DMCP step into its parts (auto: when the ratio exceeds --target_ratio)")
    parser.add_argument("--target_ratio", type=float, default=3.5)
    parser.add_argument("--mixed_precision", choices=DTYPE_POLICIES, default="float32",
                        help="Keras dtype policy of every step")
    parser.add_argument("--input_pipeline", default="", choices=("",) + data_lib.DATASETS,
                        help="also measure the training images/s this data set's input pipeline delivers")
    parser.add_argument("--data_dir", default=None, help="the data set's files, for --input_pipeline")
    parser.add_argument("--json_out", default=None, help="write the numbers here as JSON")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    batches = {"mobilenet_v2": args.mobilenet_batch, "fashion_resnet": args.fashion_batch}
    builders = {}
    if args.fashion_channels:
        channels = tuple(int(c) for c in args.fashion_channels.split(","))
        builders["fashion_resnet"] = lambda gate_kind: fashion_resnet(channels=channels, gate_kind=gate_kind)
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            raise SystemExit(f"Unknown model {name!r}; choose from {sorted(MODELS)}.")
        print(f"[step_time] {name}: tracing and timing ({args.steps} steps each, interleaved)...", flush=True)
        with dtype_policy(args.mixed_precision):
            result = benchmark_model(name, batch=batches[name], steps=args.steps, warmup=args.warmup,
                                     profile=args.profile, target_ratio=args.target_ratio, builder=builders.get(name))
        result["mixed_precision"] = args.mixed_precision
        results.append(result)
        print(f"[step_time] {name}: plain {result['plain_s']:.3f} s, DMCP {result['dmcp_s']:.3f} s "
              f"({result['subnetworks']}), masked {result['masked_s']:.3f} s", flush=True)
    print("\n" + results_table(results))
    for result in results:
        if result["profile"]:
            print(f"\nProfile of the DMCP step (ratio {result['ratio']:.2f} > target {args.target_ratio}):"
                  if result["ratio"] > args.target_ratio else "\nProfile of the DMCP step:")
            print(profile_table(result))
    if args.input_pipeline:
        batch = max(batches.values())
        rate = input_pipeline_rate(args.input_pipeline, batch, data_dir=args.data_dir)
        results.append({"input_pipeline": args.input_pipeline, "batch": batch, "images_per_s": rate})
        print(f"\ninput pipeline {args.input_pipeline}, batch {batch}: {rate:.0f} training images/s")
    common.write_results(args, results)
    return results


if __name__ == "__main__":
    main()
