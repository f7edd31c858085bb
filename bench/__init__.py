"""Benchmarks: run with `make bench` (or `python -m bench [--quick] [name ...]`), never as tests."""
