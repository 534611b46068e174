"""A user's own trained model pruned by the command line: `main.py --model=PATH.keras`.

As a user would: a keras.applications network is trained by plain Keras on
Fashion-MNIST at 32x32 RGB (an image folder of PNGs written once), saved as
`.keras`, then pruned to each budget by

    python main.py --model=<name>.keras --config.data.name=image_folder \\
        --config.data.data_dir=<folder> --config.search.budget=<budget> --run_dir=<run>

The report's rows give top-1 before (the trained model), after (the DMCP slim model,
fine-tuned) and the L1-norm baseline (the same model pruned at uniform widths, fine-tuned
the same way), with MACs, int8 TFLite size and latency and the wall time of the command.

Every finished (model, budget) is appended to `--json_out` at once; run again with the
same settings, it skips what the file holds (and the trained models and the image
folder it left in `--work_dir`), so a run cut short continues.

    TF_ENABLE_ONEDNN_OPTS=1 nohup python benchmarks/own_model.py --json_out=docs/own_model.json > /tmp/own.log &
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dmcp_tf import data as data_lib  # noqa: E402
from dmcp_tf.io_utils import atomic_write_json  # noqa: E402

MODELS = {
    "MobileNetV3Small": lambda: keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10, include_preprocessing=True),
    "MobileNetV2_0.35": lambda: keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1),
        keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)]),
}


def fashion_mnist(per_class):
    """Fashion-MNIST's `(x_train, y_train), (x_test, y_test)`; the first `per_class` images of each class (0: all)."""
    splits = data_lib.load_fashion_mnist()
    if not per_class:
        return splits
    first = lambda y: np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)]))  # noqa: E731
    return tuple((x[first(y)], y[first(y)]) for x, y in splits)


def image_folder(work_dir, per_class):
    """Those images as 32x32 RGB PNGs in `work_dir/fashion32[_<per_class>]/{train,test}/<class>/` (written once)."""
    from PIL import Image  # noqa: PLC0415 (matplotlib's dependency)

    root = os.path.join(work_dir, "fashion32" + (f"_{per_class}" if per_class else ""))
    done = os.path.join(root, ".complete")
    if not os.path.exists(done):
        (x_train, y_train), (x_test, y_test) = fashion_mnist(per_class)
        for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
            for i, (x, y) in enumerate(zip(xs, ys)):
                folder = os.path.join(root, split, f"class{y}")
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(x[..., 0]).convert("RGB").resize((32, 32), Image.BILINEAR).save(
                    os.path.join(folder, f"{i:05d}.png"))
        open(done, "w").close()
    return root


def rgb32(x):
    """uint8 (N, 28, 28, 1) -> float32 (N, 32, 32, 3) pixel values 0-255, resized as the PNGs are."""
    return keras.ops.convert_to_numpy(keras.ops.image.resize(np.repeat(x, 3, axis=-1).astype("float32"), (32, 32)))


def all_layers(model):
    """Every layer of `model`, nested models' included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def trained_model(name, work_dir, epochs, seed, per_class):
    """`name` trained by plain Keras on Fashion-MNIST 32x32 RGB and saved; returns `(path, test top-1, seconds)`."""
    path = os.path.join(work_dir, f"{name}.keras")
    record = path + ".json"
    if os.path.exists(record):
        with open(record) as f:
            return path, *json.load(f)
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = fashion_mnist(per_class)
    model = MODELS[name]()
    for layer in all_layers(model):
        # Keras' MobileNetV3 keeps batch-norm statistics with momentum 0.999: after 3 epochs they are
        # still mostly their initial values (test top-1 0.10 against 0.88 in training, measured).
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, 0.99)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.time()
    model.fit(rgb32(x_train), y_train, batch_size=128, epochs=epochs, verbose=2)
    seconds = time.time() - start
    accuracy = model.evaluate(rgb32(x_test), y_test, verbose=0, return_dict=True)["accuracy"]
    model.save(path)
    atomic_write_json(record, [accuracy, seconds])
    return path, accuracy, seconds


def prune_by_command(model_path, folder, budget, run_dir, retrain_epochs, main_flags=()):
    """Runs `main.py --model=... *main_flags`; returns the row of the results file."""
    command = [sys.executable, str(common.ROOT / "main.py"), f"--model={model_path}",
               "--config.data.name=image_folder", f"--config.data.data_dir={folder}",
               f"--config.search.budget={budget}", f"--config.retrain.epochs={retrain_epochs}",
               f"--run_dir={run_dir}", *main_flags]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.time() - start
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    def read(name):
        with open(os.path.join(run_dir, name)) as f:
            return json.load(f)

    evaluated, exported, retrained = read("eval.json"), read("export.json"), read("retrain.json")
    return {"command": " ".join(command[1:]), "seconds": round(seconds, 1), "eval": evaluated,
            "export": exported, "uniform": retrained.get("uniform")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--budgets", default="0.5x,0.25x")
    parser.add_argument("--train_epochs", type=int, default=3, help="plain Keras training of the original model")
    parser.add_argument("--retrain_epochs", type=int, default=2, help="fine-tuning epochs (slim and L1 baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default="/tmp/dmcp_own_model", help="image folder, trained models, runs")
    parser.add_argument("--images_per_class", type=int, default=0, help="the first N images of each class "
                        "in each split (0: all 60,000 and 10,000)")
    parser.add_argument("--main_flag", action="append", default=[], help="a flag for every main.py (repeatable)")
    parser.add_argument("--json_out", default=None, help="every finished (model, budget) is appended here")
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    settings = lambda values: {k: v for k, v in vars(values).items() if k != "json_out"}  # noqa: E731
    results = {"settings": settings(args), "machine": common.machine_info(), "rows": []}
    if args.json_out and os.path.exists(args.json_out):
        with open(args.json_out) as f:
            saved = json.load(f)
        if {**settings(parser.parse_args([])), **saved["settings"]} == results["settings"]:  # flags added since: defaults
            results["rows"] = saved["rows"]
    folder = image_folder(args.work_dir, args.images_per_class)
    for name in args.models.split(","):
        path, accuracy, train_seconds = trained_model(name, args.work_dir, args.train_epochs, args.seed,
                                                      args.images_per_class)
        for budget in args.budgets.split(","):
            if any(r["model"] == name and r["budget"] == budget for r in results["rows"]):
                continue
            row = prune_by_command(path, folder, budget, os.path.join(args.work_dir, f"run_{name}_{budget}"),
                                   args.retrain_epochs, args.main_flag)
            results["rows"].append(dict(model=name, budget=budget, trained_top1=accuracy,
                                        train_seconds=round(train_seconds, 1), **row))
            if args.json_out:
                atomic_write_json(args.json_out, results)
            print(json.dumps({k: results["rows"][-1][k] for k in ("model", "budget", "seconds")}), flush=True)
    return results


if __name__ == "__main__":
    main()
