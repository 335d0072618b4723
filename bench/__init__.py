"""Benchmarks: run from the repository root as ``python -m bench.<name>``.

Figures go to ``BENCHMARKS.md``; tests never assert timings.
"""
