"""S6: property-based tests (hypothesis) of the run status machine and of the lease and
attempt fencing, against the real database.

Workers hold copies of a run read at different times -- exactly what goes wrong in a
fleet: a worker that lost its lease still believes it owns the run. Hypothesis
interleaves claims, finishes, cancellations, fails of never-claimed runs and reaper
passes (the real runs_reap, with the clock moved past every lease). After every step:
the row moved only along RUN_TRANSITIONS, a terminal row never changes again, attempts
never go back, a claim or finish took effect exactly when its fence (status and attempt
read) still matched, and a run has a terminal event exactly when it is terminal.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from orchestration.bus import TERMINAL_RUN_EVENTS
from orchestration.models import OrchestratorEvent
from orchestration.services.reaper import runs_reap
from runs import services
from runs.choices import RUN_TRANSITIONS, TERMINAL_RUN_STATES, RunStatus
from runs.models import AgentRun, InvalidRunTransition
from tests.faults.abuse import ScenarioParts
from tests.faults.scale import is_full, pick

pytestmark = [pytest.mark.faults]

OUTCOMES = [RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED]
TERMINAL_FIELDS = ("status", "completed_at", "output", "error_code", "attempt")


@pytest.fixture(scope="module")
def s6():
    parts = ScenarioParts.of(
        "S6", "Property-based tests: status machine, lease and attempt fencing"
    )
    yield parts
    parts.record()


# --- the status machine, in memory ---------------------------------------------------------

MARKS = {
    RunStatus.RUNNING: lambda run: run.mark_running(node_id="n"),
    RunStatus.SUCCESS: lambda run: run.mark_succeeded(output={"ok": True}),
    RunStatus.FAILED: lambda run: run.mark_failed(error_code="X", error_message="x"),
    RunStatus.CANCELLED: lambda run: run.mark_cancelled(),
}


def _status_machine_examples(counter: dict) -> None:
    @given(st.lists(st.sampled_from(list(MARKS)), max_size=12))
    @settings(
        max_examples=pick(ci=200, full=2000),
        derandomize=not is_full(),
        deadline=None,
        database=None,
    )
    def check(targets):
        run = AgentRun(status=RunStatus.PENDING, attempt=0)
        for target in targets:
            before = run.status
            allowed = target in RUN_TRANSITIONS[before]
            try:
                MARKS[target](run)
            except InvalidRunTransition:
                assert not allowed, f"{before} -> {target} refused"
                assert run.status == before
                counter["refused"] += 1
            else:
                assert allowed, f"{before} -> {target} accepted"
                assert run.status == target
                counter["accepted"] += 1
            if before in TERMINAL_RUN_STATES:
                assert run.status == before
        counter["sequences"] += 1

    check()


def test_s6_status_machine_allows_exactly_the_transition_table(s6):
    counter = {"sequences": 0, "accepted": 0, "refused": 0}
    with s6.part("status_machine") as figures:
        _status_machine_examples(counter)
        figures.update(counter)
        assert counter["accepted"] and counter["refused"]


# --- fencing, against the database --------------------------------------------------------


class FencingMachine(RuleBasedStateMachine):
    """One run, several workers with copies of it, and the reaper."""

    tally: dict = {}
    agent = None

    copies = Bundle("copies")

    @initialize()
    def create_run(self):
        self.run = AgentRun.objects.create(
            organization=self.agent.organization,
            agent=self.agent,
            intent="nap",
            status=RunStatus.PENDING,
            queued_at=timezone.now(),
        )
        self.seen = self._row()
        self.terminal: dict | None = None
        self.max_attempt = 0
        self.tally["runs"] += 1

    def _row(self) -> AgentRun:
        return AgentRun.objects.get(pk=self.run.pk)

    @rule(target=copies)
    def read(self):
        # Two workers read the row at the same moment: both believe they may act on it.
        return multiple(self._row(), self._row())

    @rule(copy=copies, node=st.sampled_from(["node-a", "node-b", "node-c"]))
    def claim(self, copy, node):
        if copy.status != RunStatus.PENDING:
            return  # workers claim what they read as PENDING
        row = self._row()
        expected = row.status == RunStatus.PENDING and row.attempt == copy.attempt
        claimed = services.run_claim(run=copy, node_id=node, lease_seconds=60)
        assert claimed == expected, (row.status, row.attempt, copy.attempt)
        self.tally["claims_won" if claimed else "claims_fenced"] += 1

    @rule(copy=copies, outcome=st.sampled_from(OUTCOMES))
    def finish(self, copy, outcome):
        if copy.status != RunStatus.RUNNING:
            return  # only a worker that believes it runs the run finishes it
        row = self._row()
        expected = row.status == RunStatus.RUNNING and row.attempt == copy.attempt
        written = services.run_finish(
            run=copy,
            outcome=services.RunOutcome(
                status=outcome, output={"by": copy.node_id}, error_code="E", error_message="e"
            ),
            metrics={},
            meta={},
        )
        assert written == expected, (row.status, row.attempt, copy.attempt)
        self.tally["finishes_written" if written else "finishes_fenced"] += 1

    @rule(copy=copies, skip=st.integers(min_value=0, max_value=3))
    def cancel(self, copy, skip):
        if skip:
            return  # a cancellation is one step in four: it ends most runs at once
        row = self._row()
        try:
            services.run_cancel(run=copy)
        except services.RunNotActive:
            assert row.status in TERMINAL_RUN_STATES
            self.tally["cancels_refused"] += 1
            return
        after = self._row()
        if row.status == RunStatus.PENDING:
            assert after.status == RunStatus.CANCELLED
        self.tally["cancels"] += 1

    @rule(copy=copies)
    def fail_pending(self, copy):
        if copy.status != RunStatus.PENDING:
            return
        row = self._row()
        written = services.run_fail_pending(run=copy, error_code="DISPATCH", error_message="d")
        assert written == (row.status == RunStatus.PENDING)
        self.tally["pending_failed" if written else "pending_fail_fenced"] += 1

    @rule(skip=st.integers(min_value=0, max_value=3))
    def reap(self, skip):
        if skip:
            return  # a reaper pass is one step in four: workers get to race between passes
        # Every lease and pending timeout has run out: lost RUNNING runs are re-queued
        # (attempts left) or failed; stale PENDING ones re-dispatched or failed.
        runs_reap(now=timezone.now() + timedelta(hours=1))
        self.tally["reaper_passes"] += 1

    @invariant()
    def row_moves_only_along_the_table(self):
        if not hasattr(self, "run"):
            return
        row = self._row()
        before = self.seen
        if row.status != before.status:
            assert row.status in RUN_TRANSITIONS[before.status], (before.status, row.status)
        assert row.attempt >= before.attempt
        if self.terminal is not None:
            assert {f: getattr(row, f) for f in TERMINAL_FIELDS} == self.terminal
        elif row.status in TERMINAL_RUN_STATES:
            self.terminal = {f: getattr(row, f) for f in TERMINAL_FIELDS}
        events = OrchestratorEvent.objects.filter(
            run_id=row.pk, type__in=list(TERMINAL_RUN_EVENTS)
        ).count()
        assert events == (1 if row.status in TERMINAL_RUN_STATES else 0), (row.status, events)
        self.seen = row


@pytest.mark.django_db
def test_s6_lease_and_attempt_fencing(s6, tenant_a, make_agent, queue, fleet):
    tally = dict.fromkeys(
        [
            "runs",
            "claims_won",
            "claims_fenced",
            "finishes_written",
            "finishes_fenced",
            "cancels",
            "cancels_refused",
            "pending_failed",
            "pending_fail_fenced",
            "reaper_passes",
        ],
        0,
    )
    FencingMachine.tally = tally
    FencingMachine.agent = make_agent("Napper", "test-sleep", intents=["nap"])
    with s6.part("fencing") as figures:
        run_state_machine_as_test(
            FencingMachine,
            settings=settings(
                max_examples=pick(ci=100, full=400),
                # CI replays the same interleavings; `make faults` explores new ones.
                derandomize=not is_full(),
                stateful_step_count=pick(ci=30, full=40),
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
        figures.update(tally)
        figures["max_attempts"] = fleet["max_attempts"]
        # The interleavings reached the fences, not only the happy path.
        assert tally["claims_won"] and tally["claims_fenced"]
        assert tally["finishes_written"] and tally["finishes_fenced"]
        assert tally["reaper_passes"]
