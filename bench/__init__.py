"""Benchmarks (not timed tests): ``python -m bench.NAME``; each prints medians and a ratio vs a baseline."""
