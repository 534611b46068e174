"""Human-readable outputs of a DMCP run: its plots, its tables and its markdown report.

Works on plain Python / numpy data and the JSON files of a run directory:
`plots` (PNG files), `tables` (the summary and TFLite rows, formatted by
`dmcp_tf.tables`) and `markdown` (`report.md`). The names callers use are here.
"""

from dmcp_tf.run.report.markdown import write_report, write_run_report
from dmcp_tf.run.report.plots import (
    histogram_summary, plot_channel_distributions, plot_cost_histogram, plot_search_trajectory,
)
from dmcp_tf.run.report.tables import SUMMARY_COLUMNS, UNIFORM_ROW, summary_rows
from dmcp_tf.tables import format_count, markdown_table, structure_markdown, summary_table

__all__ = [
    "SUMMARY_COLUMNS", "UNIFORM_ROW", "format_count", "histogram_summary", "markdown_table",
    "plot_channel_distributions", "plot_cost_histogram", "plot_search_trajectory", "structure_markdown",
    "summary_rows", "summary_table", "write_report", "write_run_report",
]
