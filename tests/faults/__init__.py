"""Fault and abuse scenarios (docs/RELIABILITY.md): real processes, measured figures."""
