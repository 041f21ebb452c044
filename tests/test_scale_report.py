"""benchmarks/scale_report.py: the cost exponents in docs/performance.md come from the recorded
cells (log-log slopes), in the catalogue along the diagonal and in the interactions at 10k."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def report(benchmark_script):
    return benchmark_script("scale_report")


def cell(scale: str, items: int, interactions: int, fit: float, evaluation: float, rss: float,
         outcome: str = "ok") -> dict:
    return {"scale": scale, "model": "M", "outcome": outcome, "peak_rss_gb": rss,
            "dataset": {"items": items, "interactions": interactions},
            "phases": {"build": {"s": fit / 2}, "epoch": {"s": fit / 2, "complete": True},
                       "eval": {"s": evaluation, "complete": True}}}


def test_slopes_in_the_catalogue_and_in_the_interactions(report):
    # fit ~ |I|^1 N^1, eval ~ |I|^2 N^0, RSS ~ N^1 (|I| fixed) with N = 100 |I| on the diagonal
    records = [cell("10k", 10_000, 1_000_000, 10.0, 2.0, 1.0),
               cell("100k", 100_000, 10_000_000, 1000.0, 200.0, 10.0),
               cell("10k@3M", 10_000, 3_000_000, 30.0, 2.0, 3.0)]
    diagonal = report.exponents(records)
    assert "| M | 2.00 | 2.00 | 1.00 | 10k, 100k |" in diagonal
    assert "| M | 1.00 | 0.00 | 1.00 | 1.00 | 2.00 |" in report.interaction_exponents(records)


def test_cells_that_did_not_finish_give_no_slope(report):
    records = [cell("10k", 10_000, 1_000_000, 10.0, 2.0, 1.0),
               cell("10k@3M", 10_000, 3_000_000, 30.0, 2.0, 3.0, outcome="timed out in build"),
               cell("100k", 100_000, 10_000_000, 1000.0, 200.0, 10.0, outcome="timed out")]
    assert "| M |" not in report.exponents(records)
    assert report.interaction_exponents(records).startswith("(no model has both")
