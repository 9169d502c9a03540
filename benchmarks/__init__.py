"""Reproducible benchmarks for pgrouter; the entry point is ``benchmarks/run.py``."""
