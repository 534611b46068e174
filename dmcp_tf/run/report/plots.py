"""The run's plots: sampled costs against the budget, the search trajectory, channels per gate.

Matplotlib's object API with the Agg canvas (no pyplot state); every file is written atomically.
"""

import io
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dmcp_tf import costs
from dmcp_tf.io_utils import atomic_write_bytes


def new_figure(width, height):
    """A Matplotlib figure on the Agg canvas (no pyplot state), laid out to fit."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path, dpi=120):
    """Writes `figure` as a PNG atomically; returns `path`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
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
    figure = new_figure(8, 4.5)
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
    return save_png(figure, path)


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
    figure = new_figure(11, 4.5)
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
    return save_png(figure, path)


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
    figure = new_figure(max(6.0, 2.0 + 0.3 * len(names)), 5)
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
    return save_png(figure, path)
