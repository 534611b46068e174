"""Smoke tests of the benchmark scripts on tiny settings (well-formed outputs, no timing thresholds)."""

import json

import numpy as np
import pytest

from benchmarks import common, latency, step_time
from dmcp_tf.graph import ChannelGraph
from dmcp_tf.models import fashion_resnet, mobilenet_v2, mobilenet_v2_config


def _tiny(gate_kind="markov"):
    """One-stage fashion_resnet: the same layer types as the default supernet, quick to trace."""
    return fashion_resnet(channels=(16,), gate_kind=gate_kind)


def test_interleaved_alternates_and_format_table():
    calls = []
    values = common.interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0},
                                rounds=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert values == {"a": [1.0, 1.0], "b": [2.0, 2.0]}
    table = common.format_table(("x", "y"), [("long name", 1)]).splitlines()
    assert len(table) == 3 and len({len(line) for line in table}) == 1


def test_step_time_plain_and_dmcp_with_profile(tmp_path):
    result = step_time.benchmark_model("tiny", builder=_tiny, batch=4, steps=2, warmup=0, profile="always")
    assert len(result["plain_times"]) == len(result["dmcp_times"]) == 2
    assert all(t > 0 for t in result["plain_times"] + result["dmcp_times"])
    assert result["ratio"] == pytest.approx(result["dmcp_s"] / result["plain_s"])
    assert result["masked_ratio"] == pytest.approx(result["masked_s"] / result["plain_s"])
    assert len(result["masked_times"]) == 2 and result["subnetworks"] == "sliced"
    profile = result["profile"]
    assert len(profile["parts_s"]) == 3 and all(t > 0 for t in profile["parts_s"].values())
    assert 0 < profile["smallest_macs_fraction"] < profile["random_macs_fraction"] < 1
    table = step_time.results_table([result])
    assert "sliced/plain" in table and "masked/plain" in table
    assert "sliced" in step_time.profile_table(result)
    path = common.write_json(tmp_path / "out.json", {"results": [result]})
    assert json.loads(path.read_text())["results"][0]["batch"] == 4


def test_round_config_multiples_within_bounds():
    graph = ChannelGraph(fashion_resnet())
    rng = np.random.default_rng(0)
    config = {g.name: int(rng.integers(1, g.channels + 1)) for g in graph.gates}
    config[graph.gates[0].name] = 1  # rounds up to N, never to 0
    for multiple in (4, 8, 48):
        rounded = latency.round_config(graph, config, multiple)
        for gate in graph.gates:
            kept = rounded[gate.name]
            assert 1 <= kept <= gate.channels
            assert kept % multiple == 0 or kept == gate.channels
            assert kept >= min(multiple, gate.channels)
            assert abs(kept - config[gate.name]) <= multiple / 2 or kept == min(multiple, gate.channels)
    assert latency.round_config(graph, config, 0) == config


def test_uniform_config_matches_paper_structures_macs():
    graph = ChannelGraph(mobilenet_v2(1.5))
    for name in ("300M", "59M"):
        target = graph.flops(mobilenet_v2_config(name))
        config, fraction, macs = latency.uniform_config(graph, target)
        assert macs == graph.flops(config) and abs(macs - target) <= 0.01 * target
        assert config == latency.fraction_config(graph, fraction) and 0 < fraction < 1
        assert all(abs(config[g.name] - fraction * g.channels) <= 0.5 + 1e-9 for g in graph.gates)
    with pytest.raises(ValueError):  # a coarse model cannot always get within 1%: said, not hidden
        tiny = ChannelGraph(fashion_resnet())
        latency.uniform_config(tiny, 2 * tiny.flops())


def test_latency_tiny_model(tmp_path):
    supernet = _tiny()
    graph = ChannelGraph(supernet)
    structure = {g.name: max(g.prefix, g.channels // 2 + 1) for g in graph.gates}  # odd widths
    rows = latency.benchmark_supernet(supernet, {"half": structure}, round_to=4, quantizations=("float32",),
                                      threads=(1,), runs=3, rounds=1, warmup=1, out_dir=str(tmp_path))
    assert [r["kind"] for r in rows] == ["full", "dmcp", "uniform", "rounded"]
    assert rows[0]["latency_ratio"]["float32"][1] == pytest.approx(1.0)
    for row in rows:
        assert row["latency_ms"]["float32"][1] > 0
        assert row["macs"] == graph.flops(row["config"])
        assert row["macs_ratio"] == pytest.approx(row["macs"] / rows[0]["macs"])
        assert (tmp_path / row["paths"]["float32"].split("/")[-1]).exists()
    assert abs(rows[2]["macs"] - rows[1]["macs"]) <= 0.01 * rows[1]["macs"]
    assert all(v % 4 == 0 or v == g.channels for g in graph.gates for v in [rows[3]["config"][g.name]])
    table = latency.latency_table("tiny", rows, ("float32",), (1,))
    assert "float32 1T ms" in table and len(table.splitlines()) == 2 + len(rows)
