"""Benchmark stage: grids of models x datasets x seeds through the runner, reports, plots, tests."""
