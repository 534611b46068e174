"""DMCP finds a structure planted by construction (benchmarks/planted.py, short version)."""

import pytest

from benchmarks import planted


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_finds_the_teachers_narrow_layer(seed):
    row = planted.run((64, 8, 64), seed)
    assert 0.95 <= row["expected_over_budget"] <= 1.01
    # Nearer the teacher's widths than uniform width of the same MACs, and the
    # teacher's narrow layer narrower than uniform.
    assert row["dmcp_distance"] < row["uniform_distance"], row
    assert row["dmcp"][1] < row["uniform"][1], row
