"""Benchmarks: the in-process limit, `scrapvision serve` under load, and a naive baseline.

Run from the repository root as modules, e.g. `python -m bench.run_all`; see README.md.
"""
