"""Observability: Prometheus metrics (/metrics) and structured logs. See docs/OBSERVABILITY.md.

Importing this package must stay cheap and free of models: the logging module is loaded
by Django's logging set-up, before the apps are ready.
"""
