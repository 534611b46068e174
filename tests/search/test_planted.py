"""DMCP finds a structure planted by construction (benchmarks/planted.py, short version)."""

import pytest

from benchmarks import planted


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_finds_the_teachers_narrow_layer(seed):
    # The adaptive budget weight: with the authors' fixed one about one search in ten misses its
    # budget, and which one depends on the kernels (seed 2 ended at 2.88x the budget with oneDNN
    # off on an AVX-512 EPYC, within it with oneDNN on). With it every seed met the budget under
    # both settings (0.99-1.00), as in docs/benchmarks.md section 4's 10 of 10.
    row = planted.run((64, 8, 64), seed, budget_weight_growth=0.1)
    assert 0.95 <= row["expected_over_budget"] <= 1.01
    # Nearer the teacher's widths than uniform width of the same MACs, and the
    # teacher's narrow layer narrower than uniform.
    assert row["dmcp_distance"] < row["uniform_distance"], row
    assert row["dmcp"][1] < row["uniform"][1], row
