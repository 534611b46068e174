import os

import numpy as np
import pytest
from matplotlib import image

from dmcp_tf.io_utils import atomic_write_json
from dmcp_tf.run import report as R
from dmcp_tf.run.rundir import RunDirectory

GATE_ROWS = [
    {"gate": "stem/gate", "kept": 24, "channels": 48, "expected": 23.6},
    {"gate": "block_1/gate", "kept": 96, "channels": 144, "expected": 95.2},
]
LAYER_ROWS = [
    {"layer": "stem_conv", "type": "Conv2D", "in_kept": 3, "in_full": 3, "out_kept": 24, "out_full": 48,
     "macs_kept": 8_128_512, "macs_full": 16_257_024},
    {"layer": "block_1_expand", "type": "Conv2D", "in_kept": 24, "in_full": 48, "out_kept": 96, "out_full": 144,
     "macs_kept": 28_901_376, "macs_full": 86_704_128},
    {"layer": "predictions", "type": "Dense", "in_kept": 96, "in_full": 144, "out_kept": 1000, "out_full": 1000,
     "macs_kept": 96_000, "macs_full": 144_000},
]


def test_format_count():
    assert R.format_count(672_832_704) == "672.8M"
    assert R.format_count(4.09e9) == "4.1G"
    assert R.format_count(950_300) == "950.3K"
    assert R.format_count(12) == "12"


def test_structure_markdown():
    text = R.structure_markdown(GATE_ROWS, LAYER_ROWS, "MobileNetV2 210M")
    assert text.splitlines()[0] == "### MobileNetV2 210M"
    for row in GATE_ROWS:
        assert row["gate"] in text
        assert f"{row['kept']} / {row['channels']}" in text
    assert "| 50.0% |" in text and "| 66.7% |" in text and "| 23.6 |" in text
    for row in LAYER_ROWS:
        assert f"| {row['layer']} | {row['type']} | {row['in_kept']} / {row['in_full']} " in text
        assert f"| {row['out_kept']} / {row['out_full']} |" in text
    assert "| 28.9M | 86.7M |" in text
    kept = sum(row["macs_kept"] for row in LAYER_ROWS)
    full = sum(row["macs_full"] for row in LAYER_ROWS)
    totals = text.strip().splitlines()[-1]
    assert f"{R.format_count(kept)} kept / {R.format_count(full)} full" in totals
    assert f"{100 * kept / full:.2f}%" in totals
    assert f"{kept / full:.4f}" in totals


def test_histogram_summary_exact():
    stats = R.histogram_summary(np.array([98.0, 100.0, 101.0, 105.0]), 100.0, 0.01)
    assert stats["mean"] == pytest.approx(101.0)
    assert stats["std"] == pytest.approx(np.sqrt((9 + 1 + 0 + 16) / 4))
    assert stats["within_budget_fraction"] == pytest.approx(0.5)


def _assert_png(path, folder):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"\x89PNG")
    assert len(data) > 5_000
    height, width = image.imread(path).shape[:2]
    assert height > 200 and width > 200
    assert os.listdir(folder) == [os.path.basename(path)]  # no temporary files left
    return width


def test_plot_cost_histogram(tmp_path):
    macs = np.random.default_rng(0).normal(305e6, 10e6, 3000)
    path = tmp_path / "hist.png"
    assert R.plot_cost_histogram(macs, 300e6, path, title="budget 300M") == str(path)
    _assert_png(path, tmp_path)


def test_plot_channel_distributions(tmp_path):
    rng = np.random.default_rng(0)
    channels = {f"gate_{i}": 32 * (i + 1) for i in range(6)}
    distributions = {name: rng.integers(1, full + 1, 200) for name, full in channels.items()}
    distributions["gate_1"] = np.array([], dtype=int)  # no sample met the budget
    distributions["gate_2"] = np.full(50, 48)  # constant samples
    expected = {name: full // 2 for name, full in channels.items()}
    path = tmp_path / "channels.png"
    assert R.plot_channel_distributions(distributions, channels, path, expected=expected) == str(path)
    narrow = _assert_png(path, tmp_path)

    many = {f"block_{i}_expand/gate": 96 for i in range(60)}
    wide_path = tmp_path / "sub" / "many.png"
    R.plot_channel_distributions({name: np.array([], dtype=int) for name in many}, many, wide_path)
    assert _assert_png(wide_path, wide_path.parent) > 2 * narrow  # width grows with gate count


ROWS = [
    {"name": "baseline", "top1": 0.71234567, "macs": 300_774_272, "note": None},
    {"name": "dmcp-210M", "top1": None, "macs": 210_000_000, "note": "pruned"},
]
COLUMNS = [("name", "model"), ("top1", "top-1"), ("macs", "MACs"), ("note", "note")]


def test_summary_table():
    lines = R.summary_table(ROWS, COLUMNS).splitlines()
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["model", "top-1", "MACs", "note"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["baseline", "0.7123", "300774272", "-"]
    assert lines[3].split() == ["dmcp-210M", "-", "210000000", "pruned"]
    assert lines[2].index("0.7123") + len("0.7123") == lines[0].index("top-1") + len("top-1")  # right-aligned


def test_markdown_table():
    lines = R.markdown_table(ROWS, COLUMNS).splitlines()
    assert lines == [
        "| model | top-1 | MACs | note |",
        "| --- | ---: | ---: | --- |",
        "| baseline | 0.7123 | 300774272 | - |",
        "| dmcp-210M | - | 210000000 | pruned |",
    ]


def test_write_report(tmp_path):
    path = tmp_path / "report.md"
    sections = [("Budget", "300M"), ("Structure", "| a |\n| --- |\n"), ("Accuracy", "71.2%")]
    assert R.write_report(path, sections) == str(path)
    text = path.read_text()
    assert text.startswith("# DMCP run report\n")
    positions = [text.index(f"## {heading}\n") for heading, _ in sections]
    assert positions == sorted(positions)
    assert "## Structure\n\n| a |\n| --- |\n\n## Accuracy" in text
    assert os.listdir(tmp_path) == ["report.md"]


def test_run_report_warns_when_the_search_ended_off_its_budget(tmp_path):
    search = {"target": 1e6, "unit": "MACs", "full_cost": 4e6, "steps": 10, "warmup_steps": 5, "seconds": 1.0,
              "init": "budget", "settling": 0.001, "budget_weight_growth": 0.0}
    for expected, warning in ((1.8e6, "missed its budget"), (0.99e6, None), (0.5e6, "stopped short of its budget")):
        atomic_write_json(tmp_path / "search.json", dict(search, expected_cost=expected))
        R.write_run_report(RunDirectory(str(tmp_path)), "1M")
        text = (tmp_path / "report.md").read_text()
        assert ("Warning: the search" in text) == (warning is not None), text
        if warning:
            assert warning in text and "--config.search." in text, text


def test_run_report_writes_costs_in_their_unit(tmp_path):
    search = {"cost": "latency", "unit": "ms", "target": 0.08351, "full_cost": 0.16702, "expected_cost": 0.0811,
              "steps": 10, "warmup_steps": 5, "seconds": 1.0, "init": "budget", "settling": 0.001}
    sample = {"cost": "latency", "unit": "ms", "target": 0.08351, "es_cost": 0.0817, "direct_mean_cost": 0.0834}
    atomic_write_json(tmp_path / "search.json", search)
    atomic_write_json(tmp_path / "sample.json", sample)
    R.write_run_report(RunDirectory(str(tmp_path)), "latency:0.5x")
    text = (tmp_path / "report.md").read_text()
    assert "Budget `latency:0.5x` = 0.08351 ms of 0.167 ms; expected ms after search 0.0811 ms" in text, text
    assert "Expected sampling: 0.0817 ms (0.978 of the budget). Direct samples: mean 0.0834 ms." in text, text
    atomic_write_json(tmp_path / "search.json", dict(search, cost="macs", unit="MACs", target=5.1e6, full_cost=10.2e6,
                                                     expected_cost=5e6))
    R.write_run_report(RunDirectory(str(tmp_path)), "0.5x")
    assert "Budget `0.5x` = 5.1M MACs of 10.2M MACs; expected MACs after search 5.0M MACs" in (
        tmp_path / "report.md").read_text()


def test_run_report_flags_an_int8_model_slower_than_float32(tmp_path):
    entry = {"bytes": 1000, "top1_agreement": 1.0, "max_abs_diff": 0.0}
    for int8_ms, flagged in ((0.2, True), (0.05, False)):
        atomic_write_json(tmp_path / "export.json", {"slim_float32": dict(entry, latency_ms=0.1),
                                                     "slim_int8": dict(entry, latency_ms=int8_ms),
                                                     "full_float32": dict(entry, latency_ms=0.3)})
        R.write_run_report(RunDirectory(str(tmp_path)), "0.5x")
        text = (tmp_path / "report.md").read_text()
        assert ("`slim_int8` ran slower than float32" in text) == flagged, text


def test_summary_rows_read_macs_and_the_flops_keys_of_older_runs(tmp_path):
    evaluated = {"full": {"accuracy": 0.9, "macs": 4_000_000, "params": 1000},
                 "slim": {"accuracy": 0.8, "flops": 2_000_000, "params": 500}}  # "flops": written before the rename
    atomic_write_json(tmp_path / "eval.json", evaluated)
    atomic_write_json(tmp_path / "retrain.json", {"uniform": {"accuracy": 0.7, "flops": 1_900_000, "unit": "MACs"}})
    rows = R.summary_rows(RunDirectory(str(tmp_path)))
    assert [row["macs"] for row in rows] == ["4.0M", "2.0M", "1.9M"]
