"""The run's `report.md`: every section its run directory's results allow."""

import os

from dmcp_tf import costs
from dmcp_tf.io_utils import atomic_write_text
from dmcp_tf.run.report.tables import SUMMARY_COLUMNS, TFLITE_COLUMNS, UNIFORM_ROW, summary_rows, tflite_rows
from dmcp_tf.search.trajectory import budget_verdict, verdict
from dmcp_tf.tables import markdown_table


def write_report(path, sections):
    """Writes `# DMCP run report` then `## heading` + body per section; returns path.

    Args:
        path: destination markdown file.
        sections: list of `(heading, body_markdown)`.
    """
    parts = ["# DMCP run report"] + [f"## {heading}\n\n{body.strip()}" for heading, body in sections]
    atomic_write_text(path, "\n\n".join(parts) + "\n")
    return os.fspath(path)


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
        sections.append(("TFLite", markdown_table(tflite_rows(exported), TFLITE_COLUMNS)
                         + _paragraph(_slower_int8_note(exported))))
    if os.path.exists(rundir.path("structure.md")):
        with open(rundir.path("structure.md")) as f:
            sections.append(("Structure", f.read()))
    write_report(rundir.path("report.md"), sections)
    return rows


def _missing_steps_section(rundir):
    """The line that names the steps without results after one that has them (not run yet, or since it was redone)."""
    missing = rundir.steps_left()
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


def _cost(record, value):
    """`value` with its unit, as the cost kind that `record` (search.json, sample.json) names formats it."""
    return costs.COSTS[record.get("cost", "macs")].format(value)
