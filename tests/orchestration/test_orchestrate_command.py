"""`manage.py orchestrate`: the API's orchestrate() from a shell, envelope printed as JSON."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from runs.choices import RunStatus
from runs.models import AgentRun

pytestmark = pytest.mark.django_db


def orchestrate_cli(*args: str) -> tuple[dict, str]:
    """(envelope, raw stdout) of a command that succeeds."""
    out = StringIO()
    call_command("orchestrate", *args, stdout=out)
    return json.loads(out.getvalue()), out.getvalue()


def orchestrate_cli_failing(*args: str, match: str) -> dict:
    """The envelope printed by a command that exits non-zero (CommandError)."""
    out = StringIO()
    with pytest.raises(CommandError, match=match):
        call_command("orchestrate", *args, stdout=out)
    return json.loads(out.getvalue())


def test_success_prints_the_envelope_and_records_the_run(make_agent):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    body, raw = orchestrate_cli("--org", "org-a", "--intent", "nap", "--payload", '{"sleep_ms": 5}')
    assert raw.startswith("{\n")  # pretty-printed for a human at a terminal
    assert body["success"] is True
    assert body["status"] == "completed"
    assert body["agent"] == "Sleeper"
    assert body["data"] == {"slept": 5, "echo": {"sleep_ms": 5}}
    run = AgentRun.objects.get(pk=body["runId"])
    assert run.status == RunStatus.SUCCESS
    assert run.input == {"sleep_ms": 5}
    assert run.user is None
    # The command-line caller has its own stable identity, not the empty "user:".
    assert run.meta["principal"].startswith("cli")


def test_named_agent_objective_and_idempotency_key_are_passed_through(make_agent):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    args = ("--org", "org-a", "--intent", "nap", "--agent", "sleeper", "--objective", "rest")
    first, _ = orchestrate_cli(*args, "--idempotency-key", "k-1")
    again, _ = orchestrate_cli(*args, "--idempotency-key", "k-1")
    assert first["runId"] == again["runId"]
    run = AgentRun.objects.get()
    assert (run.objective, run.idempotency_key, run.input) == ("rest", "k-1", None)


def test_failing_handler_exits_non_zero_and_still_records_the_failed_run(make_agent):
    make_agent("Breaker", "test-fail", intents=["break"])
    body = orchestrate_cli_failing(
        "--org", "org-a", "--intent", "break", "--payload", "{}", match="AGENT_EXECUTION_FAILED"
    )
    assert body["success"] is False
    assert body["error"]["code"] == "AGENT_EXECUTION_FAILED"
    run = AgentRun.objects.get(pk=body["runId"])
    assert run.status == RunStatus.FAILED
    assert run.error_code == "AGENT_EXECUTION_FAILED"


def test_refused_request_exits_non_zero_without_a_run(tenant_a):
    body = orchestrate_cli_failing(
        "--org", "org-a", "--intent", "nobody-serves-this", match="AGENT_REQUIRED"
    )
    assert body["success"] is False
    assert not AgentRun.objects.exists()


def test_async_prints_accepted_and_leaves_the_run_pending(
    make_agent, django_capture_on_commit_callbacks
):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    # Not executed: the broker is real in the test settings and no worker runs here.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        body, _ = orchestrate_cli("--org", "org-a", "--intent", "nap", "--async")
    assert body["success"] is True
    assert body["status"] == "accepted"
    assert len(callbacks) == 1  # the enqueue waits for the commit of the PENDING row
    run = AgentRun.objects.get(pk=body["runId"])
    assert run.status == RunStatus.PENDING
    assert run.meta["mode"] == "async"


def test_unknown_organization_is_a_command_error(tenant_a):
    with pytest.raises(CommandError, match="Unknown organization 'nope'"):
        orchestrate_cli("--org", "nope", "--intent", "nap")


def test_invalid_payload_json_is_a_command_error(make_agent):
    make_agent("Sleeper", "test-sleep", intents=["nap"])
    with pytest.raises(CommandError, match="--payload is not valid JSON"):
        orchestrate_cli("--org", "org-a", "--intent", "nap", "--payload", "{not json")
    assert not AgentRun.objects.exists()
