"""Benchmarks: run as modules (``python -m bench.<name>``); they are not tests."""
