from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from runs.choices import RunStatus
from runs.models import AgentRun, InvalidRunTransition
from tests.factories import AgentFactory, RunFactory


@pytest.mark.django_db
class TestRunStatusMachine:
    def test_pending_run_runs_and_succeeds_with_timings(self):
        run = RunFactory()
        run.save(update_fields=run.mark_running(node_id="node-1"))
        assert run.attempt == 1
        run.save(update_fields=run.mark_succeeded(output={"ok": True}))
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCESS
        assert run.output == {"ok": True}
        assert run.completed_at >= run.started_at
        assert run.duration_ms is not None

    @pytest.mark.parametrize("terminal", [RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED])
    def test_terminal_run_never_moves_again(self, terminal):
        run = RunFactory(status=terminal)
        with pytest.raises(InvalidRunTransition):
            run.mark_running()
        for move in (
            lambda: run.mark_succeeded(output=None),
            lambda: run.mark_failed(error_code="X", error_message="x"),
            run.mark_cancelled,
        ):
            with pytest.raises(InvalidRunTransition):
                move()
        run.refresh_from_db()
        assert run.status == terminal

    def test_pending_cannot_succeed_without_running(self):
        run = RunFactory()
        with pytest.raises(InvalidRunTransition):
            run.mark_succeeded(output={})

    def test_status_check_constraint_rejects_unknown_status(self):
        run = RunFactory()
        with pytest.raises(IntegrityError), transaction.atomic():
            AgentRun.objects.filter(pk=run.pk).update(status="EXPLODED")


@pytest.mark.django_db
class TestConstraints:
    def test_duplicate_agent_slug_in_one_organization_is_rejected(self):
        agent = AgentFactory(slug="writer")
        with pytest.raises(IntegrityError), transaction.atomic():
            AgentFactory(organization=agent.organization, slug="writer", name="Other")

    def test_same_agent_slug_in_two_organizations_is_fine(self):
        AgentFactory(slug="writer")
        AgentFactory(slug="writer", name="Writer 2")

    def test_idempotency_key_unique_per_organization(self):
        first = RunFactory(idempotency_key="k-1")
        with pytest.raises(IntegrityError), transaction.atomic():
            RunFactory(agent=first.agent, idempotency_key="k-1")
        # Another organization may use the same key, and runs without a key never clash.
        RunFactory(idempotency_key="k-1")
        RunFactory(agent=first.agent, idempotency_key=None)
        RunFactory(agent=first.agent, idempotency_key=None)

    def test_agent_with_runs_cannot_be_deleted(self):
        from django.db.models import ProtectedError

        run = RunFactory()
        with pytest.raises(ProtectedError):
            run.agent.delete()
