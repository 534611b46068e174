"""Plots of the benchmarks (the run's own plots are in `dmcp_tf.run.report.plots`)."""

import numpy as np

from dmcp_tf.run.report import plots


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
    figure = plots.new_figure(8, 6.5)
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
    return plots.save_png(figure, path)
