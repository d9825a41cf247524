"""Benchmarks that print numbers (never timed tests): ``python -m cogvx_mini.bench NAME``."""
