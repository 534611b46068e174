"""Top-1 accuracy of DMCP against simpler ways of choosing channels, on Fashion-MNIST.

For every seed and budget, on a supernet with room to choose, trained with the
default config's hyperparameters (`--set` changes any of them). The supernet
(`--model`) is by default a constant-width ResNet, 10 channels everywhere (12 gates
on the 10% grid, 1 to 10 channels; a channel of the first stage costs 16x the MACs
of one of the last; narrow enough that a quarter of its MACs loses several points);
`--model=mobilenet_v2` is the zoo's MobileNetV2 at `--width` with CIFAR's stride-1
stem, gates on a grid of eighths of that width; `--model=keras.applications.<Name>`
is that network with gates inserted automatically (its batch norms' momentum capped
at 0.99: Keras' MobileNetV3 keeps 0.999, too slow for a few epochs). Mobile networks
take `--image_size=32` (bilinear RGB copies of the images).

  dmcp_budget      DMCP search started at the uniform width of the budget, expected
                   sampling, trained from scratch
  dmcp_fit         `dmcp_budget`'s structure with its widths scaled together to the
                   budget as uniform width is (`sample.fit_to_budget`), from scratch
  dmcp_authors     the same, started where the authors start (alpha = 0)
  dmcp_full        the same, started near full width
  uniform          every layer narrowed by one factor to the budget, from scratch
  random           random relative widths scaled to the budget, from scratch
  l1               Li et al. (2017): the uniform widths, keeping each layer's filters
                   of largest L1 norm in the trained unpruned network, fine-tuned
  dmcp_pretrained  DMCP from the trained unpruned network: channels sorted by L1
                   norm, the gates searched on its frozen weights (architecture
                   stage only, `search.train_weights=False`, every step projected
                   back onto the budget: `DMCPModel(project_to_budget)`, the authors'
                   architecture learning rate 0.5 to 0.1), its widths
                   scaled together to the budget (`sample.fit_to_budget`), the slim model
                   fine-tuned from the inherited channels after batch-norm
                   calibration for as many epochs as `l1`
  dmcp_l1          `dmcp_budget`'s structure (searched from scratch), each layer keeping
                   its filters of largest L1 norm in the trained unpruned network,
                   fine-tuned as `l1` is: L1 pruning with DMCP's widths instead of
                   uniform ones
  dmcp_finetune    `dmcp_budget`'s structure, the searched supernet's weights fine-tuned
  bernoulli        DMCP with Bernoulli gates (the paper's ablation), from scratch
  from_full        DMCP whose warm-up is replaced by the trained unpruned network
                   (the paper's other ablation), from scratch

Every model trains for `--retrain_epochs` on the same batches; with `--calibrate_batches=N`
its batch norms' statistics are then re-estimated on its first N training batches, augmented
as in training, before the test (as `retrain.calibrate_after` does): moving averages lag a network trained for
a few hundred steps, and MobileNetV3Small's put every model near chance without it.
The unpruned network, trained as long from scratch, is the reference and the source of `l1`, `dmcp_pretrained` and `from_full`. The
warm-up does not depend on the budget, the start or the gate kind, so it runs
once per seed and every search continues from a copy of its state.

With `--latency`, every row's structure (each distinct one once, rebuilt untrained) is
converted to float32 and int8 TFLite and timed at batch 1 on 1 thread (LiteRT
interpreter, the thread's CPU time), all structures interleaved over `--latency_rounds`
rounds; each row keeps its `latency_ms`, and the tables gain latency columns. With
`--from_json` it times an earlier run's rows and writes them back into that file.

Every finished model is appended to `--json_out` at once; run again with the same
settings, the script skips the models the file holds (and the trained unpruned
network and warm-up it cached beside it), so a run cut short continues.

    TF_ENABLE_ONEDNN_OPTS=1 nohup python benchmarks/accuracy.py --json_out=docs/accuracy.json > /tmp/accuracy.log &
    python benchmarks/accuracy.py --from_json=docs/accuracy.json --plot=docs/accuracy_vs_flops.png  # redraw
    nohup python benchmarks/accuracy.py --model=mobilenet_v2 --image_size=32 --train_limit=12000 \
        --budgets=0.5x,0.25x --methods=uniform,dmcp_fit,l1,dmcp_pretrained \
        --json_out=docs/accuracy_mobilenet_v2.json > /tmp/accuracy_mnv2.log &
"""

import argparse
import ast
import functools
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets up the path and TF logging)
from benchmarks import plots  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dmcp_tf import costs  # noqa: E402
from dmcp_tf import data as data_lib  # noqa: E402
from dmcp_tf.channels.graph import ChannelGraph  # noqa: E402
from dmcp_tf.channels.rebuild import rebuild  # noqa: E402
from dmcp_tf.deploy import export  # noqa: E402
from dmcp_tf.configs import fashion_mnist  # noqa: E402
from dmcp_tf.io_utils import atomic_write_json  # noqa: E402
from dmcp_tf.models import build_supernet  # noqa: E402
from dmcp_tf.run import config as config_lib  # noqa: E402
from dmcp_tf.run import report, user_model  # noqa: E402
from dmcp_tf.search import recipes  # noqa: E402
from dmcp_tf.search import baselines, calibration, pretrained, sampling, search_init  # noqa: E402
from dmcp_tf.search import trajectory as trajectory_lib  # noqa: E402

METHODS = {
    "dmcp_budget": "DMCP (start: budget), from scratch",
    "dmcp_fit": "DMCP (start: budget) scaled to the budget, from scratch",
    "dmcp_authors": "DMCP (start: authors), from scratch",
    "dmcp_full": "DMCP (start: full), from scratch",
    "uniform": "uniform width, from scratch",
    "random": "random widths, from scratch",
    "l1": "L1-norm filter pruning, fine-tuned",
    "dmcp_pretrained": "DMCP from the trained network, fine-tuned",
    "dmcp_l1": "DMCP widths, L1-norm channels of the trained network, fine-tuned",
    "dmcp_finetune": "DMCP (start: budget), supernet fine-tuned",
    "bernoulli": "DMCP Bernoulli gates, from scratch",
    "from_full": "DMCP from full model (no warm-up), from scratch",
}
# What the defaults compare (about 35 min a seed on 2 cores with TF_ENABLE_ONEDNN_OPTS=1, docs/benchmarks.md
# section 3): DMCP against uniform width from scratch, as searched and scaled to the budget, and DMCP's widths
# against uniform ones in L1 pruning of the trained network. Others by --methods.
DEFAULT_METHODS = ("dmcp_budget", "dmcp_fit", "uniform", "l1", "dmcp_l1")
TAKES_DMCP_BUDGET = ("dmcp_fit", "dmcp_l1")  # methods built from dmcp_budget's structure (searched if not listed)
FULL = "full"  # the unpruned network, trained from scratch
# The search each method needs: (gate kind, origin, start of the gates).
SEARCHES = {"dmcp_budget": ("markov", "warmup", "budget"), "dmcp_authors": ("markov", "warmup", "authors"),
            "dmcp_full": ("markov", "warmup", "full"), "dmcp_finetune": ("markov", "warmup", "budget"),
            "bernoulli": ("bernoulli", "warmup", "budget"), "from_full": ("markov", "full", "budget")}
# Settings that do not change a row's result: a rerun may differ in them and still skip finished rows.
SELECTION = ("seeds", "budgets", "methods", "json_out", "from_json", "plot", "trajectory_plots", "latency",
             "latency_rounds", "latency_invokes")
QUANTIZATIONS = ("float32", "int8")
MODEL_FLAGS = ("model", "channels", "blocks", "width", "image_size", "set")  # what builds a file's supernet


class Benchmark:
    """Every method at every budget for one seed; `rows` collects one dict per trained model.

    Args:
        args: the parsed command line.
        seed: seed of data order, initial weights, random widths and sub-network sampling.
        done: (method, budget) -> the row an earlier run already wrote (skipped).
        save: called with every new row.
        cache: a folder for the trained unpruned network and the warm-up, or None.
    """

    def __init__(self, args, seed, *, done=None, save=None, cache=None, log=print):
        self.args, self.seed, self.log = args, seed, log
        self.done, self.save, self.cache = dict(done or {}), save or (lambda row: None), cache
        self.config = benchmark_config(args)
        self.data = data_lib.load("fashion_mnist", batch_size=args.batch_size, data_dir=args.data_dir or None,
                                  train_limit=args.train_limit or None, test_limit=args.test_limit or None,
                                  image_size=args.image_size or None, seed=seed,
                                  preprocess=self.config.data.preprocess)
        self.steps = self.data.train_examples // args.batch_size
        self.template = self.supernet("markov")
        self.graph = ChannelGraph(self.template)
        self.rows = []

    def supernet(self, gate_kind):
        return supernet(self.args, self.config, self.data.input_shape, self.data.num_classes, gate_kind)

    def _cached(self, name):
        return None if self.cache is None else self.cache / f"seed{self.seed}_{name}"

    # --- training ------------------------------------------------------------
    def train(self, model, epochs):
        """Trains `model` for `epochs` on the seed's batches (from the first); returns test top-1."""
        recipes.compile_classifier(model, self.config.retrain, self.steps * epochs)
        if epochs:
            model.fit(self.data.train_stream(0, self.steps * epochs), epochs=epochs, steps_per_epoch=self.steps,
                      shuffle=False, verbose=0)
        if epochs and self.args.calibrate_batches:
            batches = self.data.calibration_batches(self.args.calibrate_batches, augmented=True)
            calibration.calibrate_batch_norm(model, batches)
        return recipes.evaluate(model, self.data.test)["accuracy"]

    def record(self, method, budget, model, **extra):
        """Trains and evaluates `model`, keeping (and saving) a row with its MACs, top-1 and training time."""
        macs = costs.MACS.of(ChannelGraph(model))
        start = time.time()
        accuracy = self.train(model, self.args.retrain_epochs)
        row = dict(seed=self.seed, method=method, budget=budget, macs=macs, accuracy=accuracy,
                   seconds=round(time.time() - start, 1), **extra)
        self.rows.append(row)
        self.save(row)
        self.log(f"[accuracy] seed {self.seed} {budget:>5} {method:<15} {report.format_count(macs):>8} MACs  "
                 f"top-1 {accuracy:.4f}  ({row['seconds']} s)")
        return row

    def full_network(self):
        """The unpruned network trained from scratch (cached per seed); records its row if missing."""
        keras.utils.set_random_seed(self.seed)
        full = rebuild(self.template, copy_weights=False, name="full")
        path = self._cached("full.weights.h5")
        if path is not None and path.exists():
            full.load_weights(path)
        elif (FULL, "1.0x") in self.done:  # its row is kept; its weights were not
            self.train(full, self.args.retrain_epochs)
        else:
            self.record(FULL, "1.0x", full)
        if path is not None and not path.exists():
            full.save_weights(path)
        return full

    # --- searches ---------------------------------------------------------------
    def search_model(self, gate_kind, epochs=None, train_weights=True):
        """A compiled search model; its budget is set per search (`DMCPModel.set_budget`)."""
        keras.utils.set_random_seed(self.seed)
        search = self.config.search.copy_and_resolve_references()
        search.train_weights = train_weights
        if not train_weights:  # every step is an architecture step: no need to speed the gates up
            search.arch_learning_rate = self.args.pretrained_arch_learning_rate
            search.arch_final_learning_rate = self.args.pretrained_arch_final_learning_rate
        if epochs is not None:
            search.epochs = epochs
        return recipes.build_search_model(self.supernet(gate_kind), search, self.steps, seed=self.seed)

    def search(self, model, budget, init, *, state=None, start_step=None):
        """Searches at `budget` from `state` (or the model as it is), the gates starting at `init`.

        Returns the expected-sampling configuration and what the row keeps of the
        search (seconds, expected MACs, trajectory, settling).
        """
        began = time.time()
        if state is not None:
            _set_search_state(model, state)
        if start_step is not None:
            model.optimizer.iterations.assign(start_step)
        model.set_budget(budget)
        model.initialize_gates(init)
        first = int(model.optimizer.iterations.numpy())
        tracker = trajectory_lib.SearchTrajectory(self.args.trajectory_every)
        model.fit(self.data.train_stream(first, model.total_steps), epochs=1,
                  steps_per_epoch=model.total_steps - first, shuffle=False, verbose=0, callbacks=[tracker])
        extra = {"search_seconds": round(time.time() - began, 1), "expected_macs": float(costs.MACS.expected(model.graph)),
                 "search_init": init, "trajectory": _compact(tracker.records), "warmup_steps": model.warmup_steps,
                 "settling": trajectory_lib.settling(tracker.records, model.warmup_steps, model.total_steps)}
        return sampling.expected_config(model.graph), extra

    def warmup(self, model, initial):
        """The warm-up shared by every search of this seed (cached), from the search state `initial`.

        Returns the search state after it.
        """
        path = self._cached("warmup.npz")
        if path is not None and path.exists():
            with np.load(path) as saved:
                return [saved[f"v{i}"] for i in range(len(saved.files))]
        start = time.time()
        _set_search_state(model, initial)
        model.fit(self.data.train_stream(0, model.warmup_steps), epochs=1, steps_per_epoch=model.warmup_steps,
                  shuffle=False, verbose=0)
        state = [v.numpy() for v in _search_state(model)]
        self.log(f"[accuracy] seed {self.seed} warm-up: {time.time() - start:.0f} s")
        if path is not None:
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, **{f"v{i}": v for i, v in enumerate(state)})
            os.replace(tmp, path)
        return state

    # --- one seed ---------------------------------------------------------------
    def run(self, budgets, methods):
        todo = [(m, b) for b in budgets for m in methods if (m, b) not in self.done]
        if not todo and (FULL, "1.0x") in self.done:
            return self.rows
        # Baselines matched to every budget first: a budget they cannot meet fails before any training.
        targets = {b: costs.Budget.parse(b).target(self.graph) for b in budgets}
        uniforms = {b: baselines.uniform_config(self.graph, t, tolerance=self.args.tolerance)[0]
                    for b, t in targets.items()}
        full = self.full_network()
        if not todo:
            return self.rows
        kinds = sorted({SEARCHES[_searched_as(m)][0] for m, _ in todo if _searched_as(m) in SEARCHES})
        models = {kind: self.search_model(kind) for kind in kinds}
        initial = {kind: [v.numpy() for v in _search_state(model)] for kind, model in models.items()}
        # Warmed up on first use (a search cached by an earlier run needs none), from the
        # state as built. The same for every gate kind (their alpha have equal shapes).
        kind = "markov" if "markov" in models else "bernoulli"
        warm = functools.cache(lambda: self.warmup(models[kind], initial[kind]))
        l1_supernet = self.supernet("markov")
        pretrained.copy_weights_by_name(full, l1_supernet)
        l1_order = baselines.l1_channel_order(ChannelGraph(l1_supernet))
        pretrained_search = None
        if any(m == "dmcp_pretrained" for m, _ in todo):
            model = self.search_model("markov", self.args.pretrained_search_epochs, train_weights=False)
            pretrained_search = (model, [v.numpy() for v in _search_state(model)])
        for budget in budgets:
            target, uniform = targets[budget], uniforms[budget]
            pending = [m for m in methods if (m, budget) not in self.done]
            needs_search = any(m in TAKES_DMCP_BUDGET for m in pending) and ("dmcp_budget", budget) not in self.done
            searched = self.searched_structures(budget, pending + ["dmcp_budget"] * needs_search, models, initial,
                                                warm, full)
            rng = np.random.default_rng([self.seed, budgets.index(budget)])
            for method in pending:
                keras.utils.set_random_seed(self.seed)
                extra = {}
                if method in searched:
                    slim, config, extra = searched[method]
                elif method == "uniform":
                    config, slim = uniform, rebuild(self.template, uniform, copy_weights=False)
                elif method == "l1":
                    config, slim = uniform, rebuild(l1_supernet, uniform, channel_order=l1_order)
                elif method in TAKES_DMCP_BUDGET:  # dmcp_budget's widths (its row, or its search just now)
                    _, config, extra = searched["dmcp_budget"] if "dmcp_budget" in searched else \
                        (None, self.done["dmcp_budget", budget]["config"], {})
                    if method == "dmcp_l1":
                        slim = rebuild(l1_supernet, config, channel_order=l1_order)
                    else:
                        config, _ = sampling.fit_to_budget(self.graph, config, target)
                        slim = rebuild(self.template, config, copy_weights=False)
                elif method == "dmcp_pretrained":
                    slim, config, extra = self.pretrained_structure(*pretrained_search, budget, full)
                else:  # random
                    config, _ = baselines.random_config(self.graph, target, rng, tolerance=self.args.tolerance)
                    slim = rebuild(self.template, config, copy_weights=False)
                self.record(method, budget, slim, target_macs=target, config=config, **extra)
        return self.rows

    def searched_structures(self, budget, methods, models, initial, warm, full):
        """Runs the searches `methods` need at `budget`; returns method -> (slim model, config, extra).

        `warm()` gives the search state after the seed's warm-up.
        """
        out = {}
        for search in sorted({SEARCHES[m] for m in methods if m in SEARCHES}):
            gate_kind, origin, init = search
            model = models[gate_kind]
            cached = self._cached(f"search_{gate_kind}_{origin}_{init}_{budget}.json")
            if cached is not None and cached.exists() and "dmcp_finetune" not in methods:
                config, extra = json.loads(cached.read_text())  # the structure; its model is retrained anyway
            elif origin == "warmup":
                config, extra = self.search(model, budget, init, state=warm())
            else:  # the trained full network instead of a warm-up
                _set_search_state(model, initial[gate_kind])
                pretrained.copy_weights_by_name(full, model.supernet)
                config, extra = self.search(model, budget, init, start_step=model.warmup_steps)
            if cached is not None:
                atomic_write_json(cached, [config, extra])
            for method in (m for m in methods if SEARCHES.get(m) == search):
                keras.utils.set_random_seed(self.seed)  # every scratch model starts from the same seed
                # Rebuilt now: the next search overwrites the supernet's weights.
                slim = rebuild(model.supernet, config, copy_weights=method == "dmcp_finetune")
                out[method] = (slim, config, extra)
        return out

    def pretrained_structure(self, model, initial, budget, full):
        """DMCP from the trained network: sorted channels, gates searched on its frozen weights; the slim model inherits.

        `initial` is `model`'s search state as built (optimiser slots and counters at zero).
        """
        _set_search_state(model, initial)
        pretrained.copy_weights_by_name(full, model.supernet)
        pretrained.sort_channels_by_l1(model.supernet)
        config, extra = self.search(model, budget, self.args.init, start_step=0)
        if self.config.sample.fit_to_budget:  # as the pipeline samples with this config
            config, _ = sampling.fit_to_budget(model.graph, config, model.target)
        slim = rebuild(model.supernet, config)
        calibration.calibrate_batch_norm(slim, self.data.calibration_batches(20))
        extra["inherited_accuracy"] = recipes.evaluate(slim, self.data.test)["accuracy"]
        return slim, config, extra


def _searched_as(method):
    """The method whose search gives `method`'s structure."""
    return "dmcp_budget" if method in TAKES_DMCP_BUDGET else method


def supernet(args, config, input_shape, num_classes, gate_kind):
    """The benchmark's gated supernet (`--model`) for images of `input_shape`."""
    if user_model.is_application(args.model):
        model = user_model.supernet(args.model, input_shape, num_classes, gate_kind,
                                    application_options=config.model.options.to_dict())
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(layer.momentum, 0.99)
        return model
    return build_supernet(config.model.name, input_shape=input_shape, num_classes=num_classes, gate_kind=gate_kind,
                          **config.model.options.to_dict())


def _search_state(model):
    """The variables of everything a DMCP search carries from step to step (`DMCPModel.search_state`)."""
    return [v for part in model.search_state().values() for v in (part if isinstance(part, list) else part.variables)]


def _set_search_state(model, values):
    """Assigns `values` (as `_search_state` lists them) to `model`'s search state."""
    for variable, value in zip(_search_state(model), values, strict=True):
        variable.assign(value)


def _compact(records):
    """Trajectory points rounded for the JSON file."""
    return [{"step": r["step"], "expected_over_budget": round(r["expected_over_budget"], 4),
             "fractions": {k: round(v, 4) for k, v in r["fractions"].items()}} for r in records]


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
        timed = [m["latency_ms"] for m in members if "latency_ms" in m]
        latency = {f"{q}_ms_mean": float(np.mean([t[q] for t in timed])) for q in QUANTIZATIONS} if timed else {}
        summary.append({
            "method": method, "budget": budget, "seeds": len(members), **latency,
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
    accuracy = table(lambda s: f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f} (n={s['seeds']})")
    macs = table(lambda s: f"{report.format_count(s['macs_mean'])} ({s['macs_over_budget']:.3f})")
    reference = (f"Unpruned network ({report.format_count(full['macs_mean'])} MACs), from scratch: "
                 f"{100 * full['accuracy_mean']:.2f} ± {100 * full['accuracy_std']:.2f} "
                 f"({full['seeds']} seeds).") if full else ""
    text = (f"Test top-1 (%), mean ± standard deviation over seeds:\n\n{accuracy}\n\n{reference}\n\n"
            f"MACs met, mean over seeds (ratio to the budget):\n\n{macs}")
    latency = latency_table(summary, budgets, methods)
    if latency:
        text += ("\n\nTFLite latency (ms, float32 / int8, batch 1, 1 thread, CPU time; mean over seeds' "
                 f"structures):\n\n{latency}")
    return text


# Each method against the baseline it must beat: from scratch against uniform width, from the trained
# network against L1-norm pruning at uniform widths.
BASELINES = {"dmcp_budget": "uniform", "dmcp_fit": "uniform", "dmcp_authors": "uniform", "dmcp_full": "uniform",
             "random": "uniform", "bernoulli": "uniform", "from_full": "uniform", "dmcp_pretrained": "l1",
             "dmcp_l1": "l1", "dmcp_finetune": "uniform"}


def paired(rows, budgets, methods):
    """Markdown table: each method minus its baseline (`BASELINES`) on the same seed, in points, per budget."""
    by = {(r["method"], r["budget"], r["seed"]): r for r in rows}
    lines = ["| method - baseline | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for method in (m for m in methods if m in BASELINES):
        cells = []
        for budget in budgets:
            diffs = [100 * (r["accuracy"] - by[BASELINES[method], budget, seed]["accuracy"])
                     for (m, b, seed), r in sorted(by.items()) if m == method and b == budget
                     and (BASELINES[method], budget, seed) in by]
            cells.append("" if not diffs else f"{np.mean(diffs):+.2f} ± {np.std(diffs, ddof=1 if len(diffs) > 1 else 0):.2f} "
                         f"({', '.join(f'{d:+.2f}' for d in diffs)})")
        lines.append(f"| {method} - {BASELINES[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_table(summary, budgets, methods):
    """Markdown table: float32 / int8 TFLite ms of each method's structures (mean over seeds), or "" if untimed."""
    cell = {(s["method"], s["budget"]): s for s in summary if "float32_ms_mean" in s}
    if not cell:
        return ""
    lines = ["| method | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for method in methods:
        cells = [f"{cell[method, b]['float32_ms_mean']:.4f} / {cell[method, b]['int8_ms_mean']:.4f}"
                 if (method, b) in cell else "" for b in budgets]
        lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    full = cell.get((FULL, "1.0x"))
    if full:
        lines.append(f"\nUnpruned network: {full['float32_ms_mean']:.4f} / {full['int8_ms_mean']:.4f} ms.")
    return "\n".join(lines)


def time_structures(args, rows, log=print):
    """Adds `latency_ms` {float32, int8} to every row: its structure's TFLite latency, all timed interleaved.

    Each distinct structure is rebuilt once from the untrained supernet (latency does not depend on
    the weights), converted, and timed at batch 1 on 1 thread in the thread's CPU time.
    """
    import tempfile  # noqa: PLC0415 (only this mode writes files of its own)

    config = benchmark_config(args)
    shape = data_lib.DATASET_SHAPES["fashion_mnist"](args.image_size or None)[0]
    keras.utils.set_random_seed(0)
    template = supernet(args, config, shape, 10, "markov")
    graph = ChannelGraph(template)
    key = lambda row: json.dumps(row.get("config") or graph.full_config(), sort_keys=True)  # noqa: E731
    structures = {key(row): row.get("config") or graph.full_config() for row in rows}
    images = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
    timers = {}
    with tempfile.TemporaryDirectory() as folder:
        for i, (name, channels) in enumerate(structures.items()):
            model = rebuild(template, channels, copy_weights=False)
            for quantization in QUANTIZATIONS:
                path = export.export_tflite(model, os.path.join(folder, f"s{i}_{quantization}.tflite"),
                                            quantization=quantization, representative_images=images)
                timers[name, quantization] = export.latency_timer(path, threads=1, runs=args.latency_invokes,
                                                                  warmup=10, clock="cpu")
        log(f"[accuracy] timing {len(structures)} structures x {len(QUANTIZATIONS)} in {args.latency_rounds} "
            "interleaved rounds")
        values = common.interleaved(timers, rounds=args.latency_rounds, warmup=1)
    for row in rows:
        row["latency_ms"] = {q: common.median(values[key(row), q]) for q in QUANTIZATIONS}
    return rows


def plot(summary, methods, path):
    series = {METHODS[m]: [(s["macs_mean"], s["accuracy_mean"], s["accuracy_std"]) for s in summary
                           if s["method"] == m] for m in methods}
    full = next((s for s in summary if s["method"] == FULL), None)
    reference = ("unpruned", full["accuracy_mean"]) if full else None
    return plots.plot_accuracy_vs_macs(series, path, reference=reference,
                                        title="Fashion-MNIST: top-1 against MACs (mean ± std over seeds)")


def plot_trajectories(rows, folder, seed=0):
    """One trajectory plot per (search method, budget) of `seed`; returns the paths written."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows:
        if row["seed"] != seed or not row.get("trajectory") or row["method"] == "dmcp_finetune":
            continue
        path = folder / f"trajectory_{row['method']}_{row['budget']}.png"
        title = (f"{METHODS[row['method']]} at {row['budget']}, seed {seed}: largest change over the last 10% "
                 f"of the search {row['settling']:.3f}" if row.get("settling") is not None else None)
        paths.append(report.plot_search_trajectory(row["trajectory"], row["warmup_steps"], path, title=title))
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="0.5x,0.25x,0.1x", help="comma-separated MACs budgets")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--train_limit", type=int, default=0, help="training images used (0: all 60,000)")
    parser.add_argument("--test_limit", type=int, default=0, help="test images used (0: all 10,000)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--search_epochs", type=int, default=2, help="search epochs (half of them warm-up)")
    parser.add_argument("--pretrained_arch_learning_rate", type=float, default=0.5,
                        help="dmcp_pretrained's architecture learning rate, cosine to the next (the authors' 0.5; "
                        "the config's 2.0 is raised for short searches that also train weights)")
    parser.add_argument("--pretrained_arch_final_learning_rate", type=float, default=0.1,
                        help="dmcp_pretrained's final architecture learning rate (the authors' 0.1)")
    parser.add_argument("--pretrained_search_epochs", type=int, default=1,
                        help="dmcp_pretrained's search epochs on frozen weights (architecture steps only)")
    parser.add_argument("--retrain_epochs", type=int, default=3, help="training epochs of every model")
    parser.add_argument("--calibrate_batches", type=int, default=0, help="re-estimate every trained model's "
                        "batch-norm statistics on its first this many (augmented) training batches before its test "
                        "(0: the moving averages)")
    parser.add_argument("--init", default="budget", choices=search_init.INITS,
                        help="the gates' start for dmcp_pretrained")
    parser.add_argument("--model", default="fashion_resnet", help="fashion_resnet, mobilenet_v2 or "
                        "keras.applications.<Name> (gates inserted automatically)")
    parser.add_argument("--channels", default="10,10,10", help="fashion_resnet's stage widths")
    parser.add_argument("--blocks", type=int, default=3, help="fashion_resnet's basic blocks per stage")
    parser.add_argument("--width", type=float, default=0.5, help="mobilenet_v2's width multiplier")
    parser.add_argument("--image_size", type=int, default=0, help="image side (0: 28x28x1 as stored; "
                        "otherwise RGB copies at that side, e.g. 32 for keras.applications networks)")
    parser.add_argument("--trajectory_every", type=int, default=10, help="steps between trajectory points")
    parser.add_argument("--tolerance", type=float, default=0.08, help="largest relative miss of the budget "
                        "accepted for the uniform, L1 and random widths (integer channels move the MACs in steps)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", type=_key_value,
                        help="a config key changed from configs/fashion_mnist.py, e.g. search.min_learning_rate=0.08 "
                        "or model.options.kernel_initializer=kaiming_fan_out (repeatable)")
    parser.add_argument("--data_dir", default="", help="Fashion-MNIST IDX files (default: the installed copy)")
    parser.add_argument("--plot", default=None, help="write the accuracy-against-MACs plot here (PNG)")
    parser.add_argument("--trajectory_plots", default=None, help="write seed 0's search trajectories into this folder")
    parser.add_argument("--json_out", default=None, help="every finished model is appended here (JSON); "
                        "rerun with the same settings to continue")
    parser.add_argument("--latency", action="store_true", help="time every row's structure as TFLite (float32, "
                        "int8) and add latency columns; with --from_json, writes the times into that file")
    parser.add_argument("--latency_rounds", type=int, default=7, help="interleaved timing rounds (median)")
    parser.add_argument("--latency_invokes", type=int, default=100, help="timed invokes per round (median)")
    parser.add_argument("--from_json", default=None, help="train nothing: print the tables and draw the plots "
                        "of a JSON file an earlier run wrote with --json_out")
    args = parser.parse_args(argv)
    args.budgets = _csv(args.budgets)
    args.seeds = [int(s) for s in _csv(args.seeds)]
    args.channels = [int(c) for c in _csv(args.channels)]
    unknown = sorted(set(_csv(args.methods)) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.methods = [m for m in METHODS if m in _csv(args.methods)]
    if "dmcp_pretrained" in args.methods and args.pretrained_search_epochs < 1:
        parser.error("--pretrained_search_epochs must be at least 1")
    if not 0 < args.pretrained_arch_final_learning_rate <= args.pretrained_arch_learning_rate:
        parser.error("--pretrained_arch_final_learning_rate must be in (0, --pretrained_arch_learning_rate="
                     f"{args.pretrained_arch_learning_rate}], got {args.pretrained_arch_final_learning_rate}")
    if not (args.model in ("fashion_resnet", "mobilenet_v2") or user_model.is_application(args.model)):
        parser.error(f"--model={args.model}: give fashion_resnet, mobilenet_v2 or keras.applications.<Name>")
    try:  # a wrong --set fails here, not after hours of training
        config = benchmark_config(args)
        config_lib.validate(config)
        shape = data_lib.DATASET_SHAPES["fashion_mnist"](args.image_size or None)[0]
        graph = ChannelGraph(supernet(args, config, shape, 10, "markov"))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        parser.error(f"the benchmark's config (--model, --channels, --blocks, --width, --image_size, --set): {error}")
    for budget in args.budgets:
        try:
            parsed = costs.Budget.parse(budget)
            if parsed.cost is not costs.MACS:
                parser.error(f"--budgets are MACs budgets; {budget!r} is not")
            target = parsed.checked_target(graph)  # within the supernet's reach (the gates' grid sets the narrowest)
            baselines.uniform_config(graph, target, tolerance=args.tolerance)  # met by uniform widths
        except ValueError as error:
            parser.error(f"--budgets {budget}: {error}")
    return args


def benchmark_config(args):
    """configs/fashion_mnist.py with the benchmark's supernet, epochs and `--set` keys."""
    config = fashion_mnist.get_config()
    config.search.epochs = args.search_epochs
    config.search.steps_per_epoch = 0
    config.retrain.epochs = args.retrain_epochs
    if args.model == "mobilenet_v2":  # CIFAR's stride-1 stem; 8 widths per gate (its narrowest stage has 8 channels)
        config.model.name = args.model
        config.model.options = {"width_multiplier": args.width, "stem_stride": 1, "min_width": args.width / 8,
                                "width_offset": args.width / 8}
    else:
        config.model.options = {"channels": tuple(args.channels), "blocks": args.blocks}
    if user_model.is_application(args.model):
        config.data.preprocess = "raw"  # keras.applications networks scale their own input
        config.model.options = {}  # the application's keyword arguments: `--set model.options.alpha=0.5`
    for key, value in args.set or ():
        _set_config_key(config, key, value)
    return config


def _key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value  # a string, e.g. kaiming_fan_out


def _set_config_key(config, key, value):
    """Sets a dotted config key that exists (a typo is an error, not a new key); keyword options may be new."""
    *path, leaf = key.split(".")
    section = config
    for name in path:
        section = section[name]
    if leaf not in section and path != ["model", "options"]:
        raise ValueError(f"the config has no key {key!r}")
    section[leaf] = value


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


# Keys of configs/fashion_mnist.py that `benchmark_config` replaces (from the flags) or the searches set
# (the budget): the flags stand for them in a file's identity, so retuning the default run keeps files valid.
SET_BY_THE_BENCHMARK = (("model", "options"), ("search", "budget"), ("search", "epochs"),
                        ("search", "steps_per_epoch"), ("retrain", "epochs"))


def _without_benchmark_keys(config):
    """A config dict (as in a file) without the keys in SET_BY_THE_BENCHMARK."""
    config = json.loads(json.dumps(config))
    for section, key in SET_BY_THE_BENCHMARK:
        config.get(section, {}).pop(key, None)
    return config


def _settings(args):
    """What defines a row's result: the settings that select no rows, and the config it trains with."""
    return dict({k: v for k, v in vars(args).items() if k not in SELECTION},
                config=_without_benchmark_keys(json.loads(fashion_mnist.get_config().to_json())))


def _same(saved, current):
    """Whether a saved setting equals the current one. Config keys added since the file was written
    (absent from `saved`) are taken at their defaults, which keep the behaviour they were added to;
    so are flags (`Results`)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return all(key in current and _same(value, current[key]) for key, value in saved.items())
    return saved == current


class Results:
    """The JSON file of a run: rows appended as they finish, loaded again to continue a run."""

    def __init__(self, args):
        self.path = pathlib.Path(args.json_out) if args.json_out else None
        self.settings = json.loads(json.dumps(_settings(args)))  # as the file will hold it (tuples as lists)
        self.rows, self.minutes = [], 0.0
        if self.path is not None and self.path.exists():
            saved = json.loads(self.path.read_text())
            identity = dict(saved["settings_identity"])
            identity["config"] = _without_benchmark_keys(identity.get("config", {}))  # files written before
            defaults = _settings(parse_args([])) if any(k not in identity for k in self.settings) else {}
            changed = sorted(k for k in self.settings if not _same(identity.get(k, defaults.get(k)), self.settings[k]))
            if changed:
                raise SystemExit(f"{self.path} holds results of other settings ({', '.join(changed)} differ): "
                                 "pass another --json_out, or delete the file to start again.")
            self.rows, self.minutes = saved["results"]["rows"], saved["results"]["minutes"]
        self.cache = None
        if self.path is not None:
            self.cache = self.path.with_name(self.path.name + ".cache")
            self.cache.mkdir(parents=True, exist_ok=True)

    def done(self, seed):
        return {(r["method"], r["budget"]): r for r in self.rows if r["seed"] == seed}

    def add(self, row, args, minutes):
        self.rows.append(row)
        self.write(args, minutes)

    def write(self, args, minutes):
        if self.path is None:
            return
        settings = {k: v for k, v in vars(args).items() if k != "json_out"}
        atomic_write_json(self.path, {
            "machine": common.machine_info(), "settings": settings, "settings_identity": self.settings,
            "results": {"rows": self.rows, "summary": summarize(self.rows), "minutes": round(minutes, 1)}})


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        settings, rows, minutes = saved["settings"], saved["results"]["rows"], saved["results"]["minutes"]
        seeds = sorted({r["seed"] for r in rows})
        # Every budget the rows hold (runs may have added budgets one at a time), largest first.
        budgets = sorted({r["budget"] for r in rows if r["method"] != FULL},
                         key=lambda b: -max(r["target_macs"] for r in rows if r["budget"] == b))
        methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        if args.latency:  # the structures of the file's network (its settings), times written back into it
            saved_args = {k: settings[k] for k in MODEL_FLAGS if k in settings}
            time_structures(argparse.Namespace(**{**vars(args), **saved_args}), rows)
            saved["results"]["summary"] = summarize(rows)
            atomic_write_json(args.from_json, saved)
    else:
        results = Results(args)
        start, earlier = time.time(), results.minutes

        def elapsed():
            return earlier + (time.time() - start) / 60

        for seed in args.seeds:
            Benchmark(args, seed, done=results.done(seed), cache=results.cache, log=lambda m: print(m, flush=True),
                      save=lambda row: results.add(row, args, elapsed())).run(args.budgets, args.methods)
        if args.latency:
            time_structures(args, results.rows, log=lambda m: print(m, flush=True))
        results.write(args, elapsed())
        rows, minutes, seeds = results.rows, elapsed(), args.seeds
        budgets, methods = args.budgets, [m for m in METHODS if any(r["method"] == m for r in rows)]
    summary = summarize(rows)
    print(f"\n{tables(summary, budgets, methods)}\n\nPaired differences in points, mean ± std (per seed):\n\n"
          f"{paired(rows, budgets, methods)}\n\nTotal time: {minutes:.1f} min "
          f"({len(seeds)} seeds, {len(rows)} trained models).")
    if args.plot:
        print(f"wrote {plot(summary, methods, args.plot)}")
    if args.trajectory_plots:
        for path in plot_trajectories(rows, args.trajectory_plots):
            print(f"wrote {path}")
    if args.json_out and not args.from_json:
        print(f"\nwrote {args.json_out}")
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
