"""Where each scenario writes down what it measured: artifacts/faults/<ID>.json.

`python -m tests.faults.report` turns those files into docs/RELIABILITY.md's tables.
A scenario either calls record() itself or wraps its body in scenario(), which records
the figures gathered so far and whether the body passed, even when an assertion fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tests.faults import scale

ROOT = Path(__file__).resolve().parents[2]
# The full-size figures, which docs/RELIABILITY.md is written from (tests.faults.report).
FULL_ARTIFACTS = ROOT / "artifacts" / "faults"
# Where this session writes: a shortened run (any pytest run but `make faults`) keeps its
# figures apart, so it never replaces a full-size figure in the report.
ARTIFACTS = Path(
    os.environ.get(
        "FAULTS_ARTIFACTS",
        FULL_ARTIFACTS if scale.is_full() else ROOT / "artifacts" / "faults-ci",
    )
)


def _command() -> str:
    """The command this session was started with, as someone would type it."""
    argv = list(sys.argv)
    if argv:
        program = Path(argv[0])
        with contextlib.suppress(ValueError):
            program = program.relative_to(ROOT)
        if program.name == "__main__.py":  # python -m pytest
            program = Path("pytest")
        argv[0] = str(program)
    return f"FAULTS_SCALE={scale.current()} {shlex.join(argv)}"


def record(scenario_id: str, title: str, figures: dict, passed: bool) -> Path:
    """Write one scenario's figures; the newest run of a scenario replaces the last."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{scenario_id}.json"
    document = {
        "id": scenario_id,
        "title": title,
        "passed": bool(passed),
        "scale": scale.current(),
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "command": _command(),
        "figures": figures,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


@contextlib.contextmanager
def scenario(scenario_id: str, title: str) -> Iterator[dict]:
    """Collect figures in the yielded dict; recorded as passed only if the body passes."""
    figures: dict = {}
    try:
        yield figures
    except BaseException as exc:
        figures.setdefault("failure", f"{type(exc).__name__}: {str(exc)[:300]}")
        record(scenario_id, title, figures, passed=False)
        raise
    record(scenario_id, title, figures, passed=True)
