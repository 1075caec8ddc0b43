"""Benchmarks: each module prints markdown tables and writes JSON under bench/out; run one from
the repository root as `python -m bench.<name>` (bench/README.md lists them)."""
