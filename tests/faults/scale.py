"""How big the fault scenarios are: FAULTS_SCALE=ci (the default) or full.

ci is what `make test` (and so CI) runs: bounded counts and durations, each scenario well
under a minute. full is `make faults`: the figures the reliability issue asks for.
Scenarios read their sizes with pick(ci=..., full=...).
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

CI = "ci"
FULL = "full"
SCALES = (CI, FULL)


def current() -> str:
    value = os.environ.get("FAULTS_SCALE", CI).strip().lower() or CI
    if value not in SCALES:
        raise ValueError(f"FAULTS_SCALE must be one of {', '.join(SCALES)}, not {value!r}")
    return value


def is_full() -> bool:
    return current() == FULL


def pick(*, ci: T, full: T) -> T:
    """The value for the scale this session runs at."""
    return full if is_full() else ci
