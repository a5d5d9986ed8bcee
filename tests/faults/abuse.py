"""One record per abuse scenario (S2..S6) whose checks are split over several tests.

figures.record() writes one document per scenario id; report.py shows one row per id.
ScenarioParts gathers the figures of each test under the test's part name and records
the scenario, as passed only if every part passed. pytest-django runs database tests
before the others, so one module's tests may be split in two runs of its module fixture:
the parts live for the whole session (ScenarioParts.of) and every record() writes all of
them gathered so far.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.faults.figures import record


class ScenarioParts:
    _session: dict[str, ScenarioParts] = {}

    @classmethod
    def of(cls, scenario_id: str, title: str) -> ScenarioParts:
        """The scenario's parts for this test session (created on first use)."""
        if scenario_id not in cls._session:
            cls._session[scenario_id] = cls(scenario_id, title)
        return cls._session[scenario_id]

    def __init__(self, scenario_id: str, title: str) -> None:
        self.scenario_id = scenario_id
        self.title = title
        self.figures: dict = {}
        self.passed = True

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[dict]:
        figures: dict = {}
        self.figures[name] = figures
        try:
            yield figures
        except BaseException as exc:
            figures.setdefault("failure", f"{type(exc).__name__}: {str(exc)[:300]}")
            self.passed = False
            raise

    def record(self) -> None:
        if self.figures:
            record(self.scenario_id, self.title, self.figures, passed=self.passed)
