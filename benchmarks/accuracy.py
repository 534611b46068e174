"""Top-1 accuracy of DMCP against simpler ways of choosing channels, on Fashion-MNIST.

For every seed, on the default supernet (`configs/fashion_mnist.py`, trained with
its hyperparameters), and for every budget:

  dmcp_finetune  DMCP search, expected sampling, the supernet's weights fine-tuned
  dmcp_scratch   the same structure trained from scratch
  uniform        every layer narrowed by one factor to the budget, from scratch
  l1             Li et al. (2017): the uniform widths, keeping each layer's filters of
                 largest L1 norm in the trained full network, fine-tuned
  random         random relative widths scaled to the budget, from scratch
  bernoulli      DMCP with Bernoulli gates (the paper's ablation), from scratch
  from_full      DMCP whose warm-up is replaced by the trained full network (the
                 paper's other ablation), from scratch

After its structure is chosen every model trains for the same `--retrain_epochs`
on the same batches, with the config's retraining settings. The full network,
trained as long from scratch, is the reference (and the source of `l1` and
`from_full`). The warm-up does not depend on the budget or the gate kind (it
trains weights on uniformly drawn sub-networks), so it runs once per seed and every
search continues from a copy of its state: the same computation as separate
searches, each on the same batches.

    python benchmarks/accuracy.py --json_out=/tmp/accuracy.json --plot=docs/accuracy_vs_flops.png
    python benchmarks/accuracy.py --train_limit=0 --search_epochs=10 --retrain_epochs=20   # full length
    python benchmarks/accuracy.py --from_json=docs/accuracy.json --plot=docs/accuracy_vs_flops.png  # redraw

The default (the first 15,000 training images, 2 search and 2 retraining epochs,
all 10,000 test images) takes about 50 minutes on 2 CPU cores; it compares the
methods after short training, not at convergence.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dmcp_tf import baselines, report, training  # noqa: E402
from dmcp_tf import data as data_lib  # noqa: E402
from dmcp_tf import flops as flops_lib  # noqa: E402
from dmcp_tf.configs import fashion_mnist  # noqa: E402
from dmcp_tf.graph import ChannelGraph  # noqa: E402
from dmcp_tf.models import build_supernet  # noqa: E402
from dmcp_tf.rebuild import rebuild  # noqa: E402
from dmcp_tf.sampling import expected_config  # noqa: E402

METHODS = {
    "dmcp_finetune": "DMCP, fine-tuned",
    "dmcp_scratch": "DMCP, from scratch",
    "uniform": "uniform width, from scratch",
    "l1": "L1-norm filter pruning, fine-tuned",
    "random": "random widths, from scratch",
    "bernoulli": "DMCP Bernoulli gates, from scratch",
    "from_full": "DMCP from full model (no warm-up), from scratch",
}
FULL = "full"  # the unpruned network, trained from scratch
# The search each method needs: (gate kind, start) with start "warmup" or "full".
SEARCHES = {"dmcp_finetune": ("markov", "warmup"), "dmcp_scratch": ("markov", "warmup"),
            "bernoulli": ("bernoulli", "warmup"), "from_full": ("markov", "full")}


class Benchmark:
    """Every method at every budget for one seed; `rows` collects one dict per trained model."""

    def __init__(self, args, seed, log=print):
        self.args, self.seed, self.log = args, seed, log
        self.config = fashion_mnist.get_config()
        self.config.search.epochs = args.search_epochs
        self.config.search.steps_per_epoch = 0
        self.config.retrain.epochs = args.retrain_epochs
        self.config.model.options = {"channels": tuple(args.channels)}
        self.data = data_lib.load("fashion_mnist", batch_size=args.batch_size, data_dir=args.data_dir or None,
                                  train_limit=args.train_limit or None, test_limit=args.test_limit or None,
                                  seed=seed)
        self.steps = self.data.train_examples // args.batch_size
        self.template = self.supernet("markov")
        self.graph = ChannelGraph(self.template)
        self.rows = []

    def supernet(self, gate_kind):
        return build_supernet(self.config.model.name, input_shape=self.data.input_shape,
                              num_classes=self.data.num_classes, gate_kind=gate_kind,
                              **self.config.model.options.to_dict())

    # --- training ------------------------------------------------------------
    def train(self, model):
        """Retrains `model` for `--retrain_epochs` on the seed's batches; returns test top-1."""
        r = self.config.retrain
        training.compile_classifier(model, r, self.steps * r.epochs)
        model.fit(self.data.train_stream(0, self.steps * r.epochs), epochs=r.epochs, steps_per_epoch=self.steps,
                  shuffle=False, verbose=0)
        return training.evaluate(model, self.data.test)["accuracy"]

    def record(self, method, budget, model, **extra):
        """Trains and evaluates `model`, keeping a row with its MACs, top-1 and training time."""
        macs = ChannelGraph(model).flops()
        start = time.time()
        accuracy = self.train(model)
        row = dict(seed=self.seed, method=method, budget=budget, macs=macs, accuracy=accuracy,
                   seconds=round(time.time() - start, 1), **extra)
        self.rows.append(row)
        self.log(f"[accuracy] seed {self.seed} {budget:>5} {method:<14} {flops_lib.format_flops(macs):>8} MACs  "
                 f"top-1 {accuracy:.4f}  ({row['seconds']} s)")
        return row

    def search_model(self, gate_kind):
        """A compiled search model; its budget is set per search (`DMCPModel.set_budget`)."""
        keras.utils.set_random_seed(self.seed)
        return training.build_search_model(self.supernet(gate_kind), self.config.search, self.steps, seed=self.seed)

    def search(self, model, budget, state, full=None):
        """The search phase at `budget`, from `state`; with `full`, from the trained full network's weights.

        One model per gate kind serves every search, so its step is traced once.
        Returns the expected-sampling configuration and the expected MACs.
        """
        for variable, value in zip(_search_state(model), state, strict=True):
            variable.assign(value)
        if full is not None:
            _copy_weights_by_name(full, model.supernet)
            model.optimizer.iterations.assign(model.warmup_steps)  # the search phase's schedules and steps
        model.set_budget(budget)
        model.fit(self.data.train_stream(model.warmup_steps, model.total_steps), epochs=1,
                  steps_per_epoch=model.total_steps - model.warmup_steps, shuffle=False, verbose=0)
        return expected_config(model.graph), float(model.graph.expected_flops())

    def searched_structures(self, budget, models, states, full, methods):
        """Runs the searches `methods` need at `budget`; returns method -> (slim model, config, extra)."""
        out = {}
        for gate_kind, origin in sorted({SEARCHES[m] for m in methods if m in SEARCHES}):
            start = time.time()
            model = models[gate_kind]
            if origin == "warmup":
                config, expected = self.search(model, budget, states["warmup"])
            else:
                config, expected = self.search(model, budget, states["initial"], full)
            extra = {"search_seconds": round(time.time() - start, 1), "expected_macs": expected}
            for method in (m for m in methods if SEARCHES.get(m) == (gate_kind, origin)):
                keras.utils.set_random_seed(self.seed)  # every scratch model starts from the same seed
                # Rebuilt now: the next search overwrites the supernet's weights.
                slim = rebuild(model.supernet, config, copy_weights=method == "dmcp_finetune")
                out[method] = (slim, config, extra)
        return out

    # --- one seed ---------------------------------------------------------------
    def run(self, budgets, methods):
        keras.utils.set_random_seed(self.seed)
        full = rebuild(self.template, copy_weights=False, name="full")
        self.record(FULL, "1.0x", full)
        models = {kind: self.search_model(kind) for kind in sorted({SEARCHES[m][0] for m in methods if m in SEARCHES})}
        states = {}
        if models:
            first = models.get("markov") or models["bernoulli"]
            states["initial"] = [v.numpy() for v in _search_state(first)]
            start = time.time()
            # The warm-up trains weights on uniformly drawn sub-networks: the same for
            # every budget and gate kind (whose alpha have the same shapes).
            first.fit(self.data.train_stream(0, first.warmup_steps), epochs=1, steps_per_epoch=first.warmup_steps,
                      shuffle=False, verbose=0)
            states["warmup"] = [v.numpy() for v in _search_state(first)]
            self.log(f"[accuracy] seed {self.seed} warm-up: {time.time() - start:.0f} s")
        l1_supernet = self.supernet("markov")
        _copy_weights_by_name(full, l1_supernet)
        l1_order = baselines.l1_channel_order(ChannelGraph(l1_supernet))
        rng = np.random.default_rng(self.seed)
        for budget in budgets:
            target = flops_lib.parse_budget(budget, self.graph.flops())
            candidates = self.searched_structures(budget, models, states, full, methods)
            uniform, _, _ = baselines.uniform_config(self.graph, target, tolerance=self.args.tolerance)
            for method in methods:
                keras.utils.set_random_seed(self.seed)
                if method in candidates:
                    slim, config, extra = candidates[method]
                elif method == "uniform":
                    config, extra = uniform, {}
                    slim = rebuild(self.template, uniform, copy_weights=False)
                elif method == "l1":
                    config, extra = uniform, {}
                    slim = rebuild(l1_supernet, uniform, channel_order=l1_order)
                else:  # random
                    config, _ = baselines.random_config(self.graph, target, rng, tolerance=self.args.tolerance)
                    extra, slim = {}, rebuild(self.template, config, copy_weights=False)
                self.record(method, budget, slim, target_macs=target, config=config, **extra)
        return self.rows


def _search_state(model):
    """The variables of everything a DMCP search carries from step to step (`DMCPModel.search_state`)."""
    return [v for part in model.search_state().values() for v in (part if isinstance(part, list) else part.variables)]


def _copy_weights_by_name(source, target):
    """Copies every layer's weights from `source` into the layer of the same name in `target`."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


# --- results ------------------------------------------------------------------
def summarize(rows):
    """Mean and standard deviation (over seeds) of top-1 and MACs per (method, budget)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["budget"]), []).append(row)
    summary = []
    for (method, budget), members in groups.items():
        accuracy = np.array([m["accuracy"] for m in members])
        macs = np.array([m["macs"] for m in members], dtype=np.float64)
        target = members[0].get("target_macs")
        summary.append({
            "method": method, "budget": budget, "seeds": len(members),
            "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std(ddof=1 if len(members) > 1 else 0)),
            "macs_mean": float(macs.mean()), "macs_over_budget": float(macs.mean() / target) if target else None,
        })
    return summary


def tables(summary, budgets, methods):
    """Markdown tables: top-1 (mean ± std over seeds) and MACs met, methods by budget."""
    cell = {(s["method"], s["budget"]): s for s in summary}
    header = "| method | " + " | ".join(budgets) + " |\n|---|" + "---:|" * len(budgets)

    def table(render):
        lines = [header]
        for method in methods:
            cells = [render(cell[method, b]) if (method, b) in cell else "" for b in budgets]
            lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    full = cell.get((FULL, "1.0x"))
    accuracy = table(lambda s: f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}")
    macs = table(lambda s: f"{flops_lib.format_flops(s['macs_mean'])} ({s['macs_over_budget']:.3f})")
    reference = (f"Unpruned network ({flops_lib.format_flops(full['macs_mean'])} MACs), from scratch: "
                 f"{100 * full['accuracy_mean']:.2f} ± {100 * full['accuracy_std']:.2f} "
                 f"({full['seeds']} seeds).") if full else ""
    return (f"Test top-1 (%), mean ± standard deviation over seeds:\n\n{accuracy}\n\n{reference}\n\n"
            f"MACs met, mean over seeds (ratio to the budget):\n\n{macs}")


def plot(summary, methods, path):
    series = {METHODS[m]: [(s["macs_mean"], s["accuracy_mean"], s["accuracy_std"]) for s in summary
                           if s["method"] == m] for m in methods}
    full = next((s for s in summary if s["method"] == FULL), None)
    reference = ("unpruned", full["accuracy_mean"]) if full else None
    return report.plot_accuracy_vs_flops(series, path, reference=reference,
                                         title="Fashion-MNIST: top-1 against MACs (mean ± std over seeds)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="0.5x,0.3x,0.15x", help="comma-separated FLOPs budgets")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--train_limit", type=int, default=15000, help="training images used (0: all 60,000)")
    parser.add_argument("--test_limit", type=int, default=0, help="test images used (0: all 10,000)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--search_epochs", type=int, default=2, help="search epochs (half of them warm-up)")
    parser.add_argument("--retrain_epochs", type=int, default=2, help="training epochs of every model")
    parser.add_argument("--channels", default="32,64,128", help="the supernet's stage widths")
    parser.add_argument("--tolerance", type=float, default=0.03, help="largest relative miss of the budget "
                        "accepted for the uniform, L1 and random widths")
    parser.add_argument("--data_dir", default="", help="Fashion-MNIST IDX files (default: the installed copy)")
    parser.add_argument("--plot", default=None, help="write the accuracy-against-MACs plot here (PNG)")
    parser.add_argument("--json_out", default=None, help="write every run and the summary here as JSON")
    parser.add_argument("--from_json", default=None, help="train nothing: print the tables and draw the plot "
                        "of a JSON file an earlier run wrote with --json_out")
    args = parser.parse_args(argv)
    args.budgets = _csv(args.budgets)
    args.seeds = [int(s) for s in _csv(args.seeds)]
    args.channels = [int(c) for c in _csv(args.channels)]
    unknown = sorted(set(_csv(args.methods)) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.methods = [m for m in METHODS if m in _csv(args.methods)]
    for budget in args.budgets:
        try:
            flops_lib.parse_budget(budget, 1.0)
        except ValueError as error:
            parser.error(str(error))
    return args


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        settings, rows, minutes = saved["settings"], saved["results"]["rows"], saved["results"]["minutes"]
        budgets, methods, seeds = settings["budgets"], settings["methods"], settings["seeds"]
    else:
        start = time.time()
        rows = []
        for seed in args.seeds:
            rows += Benchmark(args, seed, log=lambda m: print(m, flush=True)).run(args.budgets, args.methods)
        minutes = (time.time() - start) / 60
        budgets, methods, seeds = args.budgets, args.methods, args.seeds
    summary = summarize(rows)
    print(f"\n{tables(summary, budgets, methods)}\n\nTotal time: {minutes:.1f} min "
          f"({len(seeds)} seeds, {len(rows)} trained models).")
    if args.plot:
        print(f"wrote {plot(summary, methods, args.plot)}")
    if not args.from_json:
        common.write_results(args, {"rows": rows, "summary": summary, "minutes": round(minutes, 1)})
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
