"""Human-readable outputs of a DMCP run: tables, plots, and the run's markdown report.

Works on plain Python / numpy data and the JSON files of a run directory. Plots
use Matplotlib's object API with the Agg canvas (no pyplot state) and every file
is written atomically.
"""

import io
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dmcp_tf import costs
from dmcp_tf.io_utils import atomic_write_bytes, atomic_write_text
from dmcp_tf.run.rundir import STEPS
from dmcp_tf.search.trajectory import budget_verdict, verdict
from dmcp_tf.tables import (  # noqa: F401 (the text tables: report.markdown_table and the others)
    format_count, markdown_table, structure_markdown, summary_table,
)


def write_report(path, sections):
    """Writes `# DMCP run report` then `## heading` + body per section; returns path.

    Args:
        path: destination markdown file.
        sections: list of `(heading, body_markdown)`.
    """
    parts = ["# DMCP run report"] + [f"## {heading}\n\n{body.strip()}" for heading, body in sections]
    atomic_write_text(path, "\n\n".join(parts) + "\n")
    return os.fspath(path)


def histogram_summary(values, budget, tolerance):
    """Statistics of sampled costs against a budget.

    Args:
        values: 1-D array of the costs of sampled structures.
        budget: the target cost.
        tolerance: relative half-width of the accepted band around `budget`.

    Returns:
        dict with `mean`, `std` and `within_budget_fraction` (share of samples
        in `budget * (1 ± tolerance)`).
    """
    values = np.asarray(values, dtype=np.float64)
    within = np.abs(values - budget) <= tolerance * budget
    return {"mean": float(values.mean()), "std": float(values.std()), "within_budget_fraction": float(within.mean())}


def _new_figure(width, height):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path, dpi=120):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return os.fspath(path)


def plot_cost_histogram(values, budget, path, *, tolerance=0.01, title=None, cost=None):
    """Histogram of the costs of sampled structures (DMCP paper, Fig. 6, in MACs).

    Args:
        values: 1-D array of the costs of sampled structures.
        budget: the target, drawn with its band `budget * (1 ± tolerance)`.
        path: destination PNG file.
        tolerance: relative half-width of the band.
        title: plot title; a default names the sample count.
        cost: the cost kind of `values` (`costs.Cost`: its unit, axis and formatting); MACs by default.

    Returns:
        `path`.
    """
    cost = cost or costs.MACS
    scale, label = cost.axis
    stats = histogram_summary(values, budget, tolerance)
    figure = _new_figure(8, 4.5)
    axes = figure.add_subplot()
    axes.hist(np.asarray(values) / scale, bins=40, color="tab:blue", alpha=0.75, label="sampled structures")
    axes.axvspan(
        budget * (1 - tolerance) / scale,
        budget * (1 + tolerance) / scale,
        color="tab:green",
        alpha=0.2,
        label=f"budget ± {100 * tolerance:g}% ({100 * stats['within_budget_fraction']:.1f}% of samples)",
    )
    axes.axvline(budget / scale, color="tab:green", linewidth=2, label=f"budget {cost.format(budget)}")
    axes.axvline(
        stats["mean"] / scale,
        color="tab:red",
        linestyle="--",
        linewidth=2,
        label=f"mean {cost.format(stats['mean'])} (std {cost.format(stats['std'])})",
    )
    axes.set_xlabel(label.format(unit=cost.unit))
    axes.set_ylabel("number of structures")
    axes.set_title(title or f"{cost.unit} of {len(values)} sampled structures")
    axes.legend()
    return _save_png(figure, path)


def plot_search_trajectory(records, warmup_steps, path, *, title=None, unit="MACs"):
    """Expected cost over the budget and every gate's expected width fraction against steps.

    Args:
        records: trajectory points (`trajectory.SearchTrajectory.records`).
        warmup_steps: the warm-up's length, shaded.
        path: destination PNG file.
        unit: the budget's unit (`Cost.unit`), named on the axis.

    Returns:
        `path`.
    """
    steps = [r["step"] for r in records]
    figure = _new_figure(11, 4.5)
    cost, widths = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for axes in (cost, widths):
        if warmup_steps:
            axes.axvspan(0, warmup_steps, color="0.9", label="warm-up")
        axes.set_xlabel("training step")
    cost.plot(steps, [r["expected_over_budget"] for r in records], color="tab:blue", label=f"E[{unit}] / budget")
    cost.axhline(1.0, color="tab:green", linewidth=1.5, label="budget")
    cost.set_ylabel(f"expected {unit} / budget")
    cost.legend()
    names = list(records[0]["fractions"]) if records else []
    colours = _colours(len(names))
    for name, colour in zip(names, colours):
        widths.plot(steps, [r["fractions"][name] for r in records], color=colour, label=name, linewidth=1.2)
    widths.set_ylim(0, 1.02)
    widths.set_ylabel("expected width / channels")
    if len(names) <= 16:
        widths.legend(fontsize=6, ncol=2)
    figure.suptitle(title or "Search trajectory")
    return _save_png(figure, path)


def _colours(count):
    """`count` distinguishable colours."""
    from matplotlib import colormaps  # noqa: PLC0415

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(count)]


def plot_channel_distributions(distributions, channels, path, *, expected=None, title=None):
    """Violin per gate of the sampled fraction of channels kept (DMCP paper, Fig. 7).

    Args:
        distributions: gate name -> 1-D array of sampled channel counts; an
            empty array draws no violin for that gate.
        channels: gate name -> full channel count.
        path: destination PNG file.
        expected: optional gate name -> chosen channel count, drawn as a dot.
        title: plot title.

    Returns:
        `path`.
    """
    names = list(distributions)
    filled = [i for i, name in enumerate(names) if len(distributions[name])]
    figure = _new_figure(max(6.0, 2.0 + 0.3 * len(names)), 5)
    axes = figure.add_subplot()
    if filled:
        fractions = [np.asarray(distributions[names[i]]) / channels[names[i]] for i in filled]
        axes.violinplot(fractions, positions=filled, widths=0.8, showmedians=True)
    if expected:
        marked = [i for i, name in enumerate(names) if name in expected]
        axes.scatter(
            marked,
            [expected[names[i]] / channels[names[i]] for i in marked],
            color="tab:red",
            zorder=3,
            label="chosen structure",
        )
        axes.legend()
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axes.set_xlim(-0.75, len(names) - 0.25)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("fraction of channels kept")
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(title or "Sampled channels per gate")
    return _save_png(figure, path)


def plot_accuracy_vs_macs(series, path, *, reference=None, title=None):
    """Top-1 accuracy against MACs, one line with error bars per method.

    Args:
        series: method label -> list of `(macs, mean accuracy, std)` points.
        path: destination PNG file.
        reference: optional `(label, accuracy)` drawn as a horizontal line
            (e.g. the unpruned network).
        title: plot title.

    Returns:
        `path`.
    """
    figure = _new_figure(8, 6.5)
    axes = figure.add_subplot()
    markers = "osD^vP*Xh<>"
    for i, (label, points) in enumerate(series.items()):
        points = sorted(points)
        macs, means, stds = (np.asarray(v, dtype=np.float64) for v in zip(*points))
        axes.errorbar(macs / 1e6, 100 * means, yerr=100 * stds, marker=markers[i % len(markers)], capsize=3,
                      linewidth=1.2, label=label)
    if reference is not None:
        axes.axhline(100 * reference[1], color="black", linestyle="--", linewidth=1, label=reference[0])
    axes.set_xlabel("MACs (M)")
    axes.set_ylabel("test top-1 (%)")
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8)
    if title:
        axes.set_title(title)
    return _save_png(figure, path)


plot_accuracy_vs_flops = plot_accuracy_vs_macs  # its old name


# --- the report of a run directory ------------------------------------------------
UNIFORM_ROW = "uniform width"  # the summary row of the uniform baseline: "uniform width, same <unit>"
SUMMARY_COLUMNS = [("model", "model"), ("macs", "MACs"), ("params", "params"), ("top1", "top-1"),
                   ("fp32_kb", "TFLite fp32 KB"), ("fp32_ms", "fp32 ms"), ("int8_kb", "int8 KB"),
                   ("int8_ms", "int8 ms")]


def summary_rows(rundir):
    """Before/after rows of the console table and the report (`SUMMARY_COLUMNS`), from a `RunDirectory`."""
    evaluated, exported = rundir.load_json("eval.json") or {}, rundir.load_json("export.json") or {}
    uniform = (rundir.load_json("retrain.json") or {}).get("uniform") or {}
    user_model = ((rundir.load_json("config.json") or {}).get("model") or {}).get("path")
    full = f"{os.path.basename(user_model)} (unpruned, batch norm re-estimated)" if user_model else \
        "unpruned supernet (searched, not retrained)"
    inherited = " (inherited weights, fine-tuned)" if uniform.get("inherited") else ""
    rows = []
    for label, title in (("full", full), ("slim", "DMCP slim"),
                         ("uniform", f"{UNIFORM_ROW}{inherited}, same {uniform.get('unit', 'MACs')}")):
        ev = uniform if label == "uniform" else evaluated.get(label, {})
        if label == "uniform" and "accuracy" not in ev:
            continue
        tfl = exported.get(f"{label}_float32", {})
        int8 = exported.get(f"{label}_int8", {})
        rows.append({
            "model": title, "macs": _count(ev.get("macs", ev.get("flops"))), "params": _count(ev.get("params")),
            "top1": ev.get("accuracy"), "fp32_kb": _kb(tfl.get("bytes")), "fp32_ms": tfl.get("latency_ms"),
            "int8_kb": _kb(int8.get("bytes")), "int8_ms": int8.get("latency_ms"),
        })
    return rows


def write_run_report(rundir, budget):
    """Writes `report.md` from whatever the run directory holds; returns the summary rows.

    Args:
        rundir: the `RunDirectory`.
        budget: the budget as the config wrote it (`config.search.budget`).
    """
    rows = summary_rows(rundir)
    search, sample = rundir.load_json("search.json"), rundir.load_json("sample.json")
    sections = [("Summary", markdown_table(rows, SUMMARY_COLUMNS))]
    sections += _comparison_section(rows)
    sections += _missing_steps_section(rundir)
    if search:
        sections.append(("Search", (
            f"Budget `{budget}` = {_cost(search, search['target'])} of {_cost(search, search['full_cost'])}; "
            f"expected {search['unit']} after search {_cost(search, search['expected_cost'])} "
            f"({search['expected_cost'] / search['target']:.3f} of the budget), "
            f"{search['steps']} steps ({search['warmup_steps']} warm-up), {search['seconds']} s. "
            f"Start `{search.get('init', 'authors')}`.\n\n"
            f"{verdict(search.get('settling'))}\n\n"
            + _paragraph(budget_verdict(search['expected_cost'] / search['target'],
                                        search.get('budget_weight_growth', 0.0)))
            + "![search trajectory](search_trajectory.png)")))
    if sample:
        expected_sampling = "Expected sampling: "
        if sample.get("fit_to_budget"):
            expected_sampling += (f"{_cost(sample, sample['unfitted_es_cost'])} "
                                  f"({sample['unfitted_es_cost'] / sample['target']:.3f} of the budget), its widths "
                                  "scaled together to the budget (`sample.fit_to_budget`): ")
        sections.append(("Sampling", (
            expected_sampling
            + f"{_cost(sample, sample['es_cost'])} ({sample['es_cost'] / sample['target']:.3f} of the budget). "
            f"Direct samples: mean {_cost(sample, sample['direct_mean_cost'])}.\n\n"
            f"![{sample['unit']} histogram](cost_histogram.png)\n\n![channels](channel_distributions.png)")))
    exported = rundir.load_json("export.json")
    if exported:
        parity_rows = [dict(name=k, **{m: v[m] for m in ("bytes", "latency_ms", "top1_agreement", "max_abs_diff")})
                       for k, v in exported.items() if isinstance(v, dict)]
        sections.append(("TFLite", markdown_table(parity_rows, [
            ("name", "model"), ("bytes", "bytes"), ("latency_ms", "latency ms"),
            ("top1_agreement", "top-1 agreement with Keras"), ("max_abs_diff", "max |prob diff|")])
            + _paragraph(_slower_int8_note(exported))))
    if os.path.exists(rundir.path("structure.md")):
        with open(rundir.path("structure.md")) as f:
            sections.append(("Structure", f.read()))
    write_report(rundir.path("report.md"), sections)
    return rows


def _missing_steps_section(rundir):
    """The line that names the steps without results after one that has them (not run yet, or since it was redone)."""
    done = [os.path.exists(rundir.path(f"{step}.json")) for step in STEPS]
    if True not in done:
        return []
    missing = [step for step, ran in zip(STEPS, done) if not ran and STEPS.index(step) > done.index(True)]
    if not missing:
        return []
    return [("Steps without results", (
        f"{', '.join(missing)}: no results here, as they have not run since the steps before them last ran (a "
        "redone step removes the outputs of the steps after it, made from what it replaced). Run them "
        f"(`--mode={missing[0]}`, one step at a time) to complete the report."))]


def _slower_int8_note(exported):
    """A warning when an int8 model ran slower than its float32 one here (None otherwise)."""
    slower = [name for name, entry in exported.items() if name.endswith("_int8") and isinstance(entry, dict)
              and (entry.get("latency_ms") or 0) > (exported.get(name[:-5] + "_float32", {}).get("latency_ms") or 1e99)]
    if not slower:
        return None
    return ("\n\n**Warning**: " + ", ".join(f"`{name}`" for name in slower) + " ran slower than float32 on this "
            "machine. Interpreters on x86 CPUs often lack fast int8 kernels for some layers; measure on the target "
            "phone before choosing int8 for speed (it still is 4x smaller).")


def _comparison_section(rows):
    """The line that says what DMCP's structure bought over uniform width (if both were trained)."""
    top1 = {row["model"]: row["top1"] for row in rows}
    uniform_row = next((row["model"] for row in rows if row["model"].startswith(UNIFORM_ROW)), None)
    slim, uniform = top1.get("DMCP slim"), top1.get(uniform_row)
    if slim is None or uniform is None:
        return []
    unit = uniform_row.rsplit(" ", 1)[-1]
    return [("DMCP against uniform width", (
        f"DMCP slim {slim:.4f} against uniform width {uniform:.4f} at the same {unit}, trained the same way: "
        f"{100 * (slim - uniform):+.2f} points top-1. One seed backs this line: this run's. The default run over "
        "3 seeds, and the benchmark over seeds and budgets, are in `docs/benchmarks.md` section 3."))]


def _paragraph(text):
    """`text` as a Markdown paragraph, or nothing when it is None."""
    return f"{text}\n\n" if text else ""


def _count(value):
    return None if value is None else format_count(value)


def _cost(record, value):
    """`value` with its unit, as the cost kind that `record` (search.json, sample.json) names formats it."""
    return costs.COSTS[record.get("cost", "macs")].format(value)


def _kb(value):
    return None if value is None else round(value / 1024, 1)
