"""S1: Schemathesis against /api/schema/ on every operation, with a real API key.

The schema is fetched from the running application (in-process WSGI, the same Django
that gunicorn serves) and every operation is fuzzed with schema-valid and schema-invalid
requests. Every built-in check runs on every answer: no server error, every status code
and body documented, valid data accepted and invalid data refused.

Two answers are told apart rather than counted as findings, each for a stated reason:
- a schema-valid request refused for what it *means* (API.md: an unknown intent without
  an agent is AGENT_REQUIRED, a slug already taken, an organization that is not the
  caller's) -- no schema can say which names exist;
- GET events/stream answers 501 NOT_IMPLEMENTED (documented) when it reaches a WSGI
  server, after checking credentials and query: the stream needs the ASGI server, and a
  200 there would be an endless response. Its limits are tested under uvicorn
  (tests/orchestration/test_events_stream.py).
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode

from agents.choices import ROLE_SCOPES, MemberRole
from agents.models import Agent
from agents.services import agent_definitions_sync, api_key_create
from runs.models import ToolExecution
from tests.factories import DatasetFactory, OrganizationFactory, ToolFactory
from tests.faults.figures import scenario
from tests.faults.scale import is_full, pick

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

# Hypothesis examples per operation and generation mode (positive, negative).
EXAMPLES = pick(ci=4, full=40)
# Refusals of schema-valid data that depend on what exists, not on the request's shape.
SEMANTIC_CODES = frozenset({"AGENT_REQUIRED", "INTENT_AGENT_MISMATCH"})
SEMANTIC_DETAILS = re.compile(r"already exists|^No (organization|agent|dataset) ")
# Documented limits (README "Request limits and throttles"): PostgreSQL stores no U+0000,
# bodies nest at most API_JSON_MAX_DEPTH levels, strings are trimmed (str.strip(), which
# also removes control characters such as U+001C): one of only whitespace is blank and
# refused (minLength cannot say so), in a field or in an item of a list field.
LIMIT_MESSAGES = re.compile(
    r"U\+0000|Null characters are not allowed|nested deeper than|may not be blank"
)
STREAM = "GET /api/orchestration/events/stream"


def _messages(details):
    """The messages of DRF's error details, flattened: lists of child fields nest by index."""
    if isinstance(details, dict):
        for value in details.values():
            yield from _messages(value)
    elif isinstance(details, list):
        for value in details:
            yield from _messages(value)
    else:
        yield details


def _rejection_kind(response) -> str | None:
    """Why a schema-valid request was refused, when the reason is a documented rule."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if error.get("code") in SEMANTIC_CODES:
        return "semantic"
    if error.get("code") != "INVALID_REQUEST":
        return None
    if LIMIT_MESSAGES.search(error.get("message", "")):
        return "limit"
    details = error.get("details")
    if not isinstance(details, dict) or not details:
        return None
    messages = list(_messages(details))
    if not all(isinstance(message, str) for message in messages):
        return None
    if all(LIMIT_MESSAGES.search(message) for message in messages):
        return "limit"
    if all(SEMANTIC_DETAILS.search(m) or LIMIT_MESSAGES.search(m) for m in messages):
        return "semantic"
    return None


class Tally:
    """What the fuzzing saw, over every operation."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.statuses: Counter = Counter()
        self.findings: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.refused: Counter = Counter()
        self.stream_501 = 0

    def judge(self, operation, case, response, failures) -> None:
        for failure in failures:
            name = type(failure).__name__
            kind = _rejection_kind(response) if response.status_code == 400 else None
            if name == "RejectedPositiveData" and kind is not None:
                self.refused[kind] += 1
                continue
            if (
                name in ("ServerError", "UndefinedStatusCode")
                and operation.label == STREAM
                and response.status_code == 501
            ):
                self.stream_501 += name == "ServerError"
                continue
            key = f"{operation.label}: {name}"
            self.findings[key] += 1
            self.examples.setdefault(
                key,
                f"{response.status_code} {case.method} {case.formatted_path}"
                f" query={case.query!r} body={str(case.body)[:200]} -> {str(failure)[:600]}",
            )


def fuzz_operation(operation, mode, auth: dict, tally: Tally) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=EXAMPLES,
        # CI replays the same cases every run; `make faults` explores new ones each time.
        derandomize=not is_full(),
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        response = case.call(headers=auth)
        tally.calls[operation.label] += 1
        tally.statuses[response.status_code] += 1
        try:
            case.validate_response(response, headers=auth)
        except BaseExceptionGroup as group:
            tally.judge(operation, case, response, group.exceptions)
        except AssertionError as failure:
            tally.judge(operation, case, response, [failure])

    fuzz()


def test_s1_schemathesis_every_operation():
    from config.wsgi import application

    organization = OrganizationFactory(slug="fuzz")
    agent_definitions_sync(organization=organization)
    ToolFactory(organization=organization, slug="search")
    DatasetFactory(organization=organization, slug="handbook")
    issued = api_key_create(
        organization=organization, name="fuzz", scopes=sorted(ROLE_SCOPES[MemberRole.ADMIN])
    )
    auth = {"Authorization": f"Bearer {issued.raw_key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    tally = Tally()
    operations = []

    with scenario("S1", "Schemathesis: every operation, all checks") as figures:
        for result in schema.get_all_operations():
            operation = result.ok()
            operations.append(operation.label)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(operation, mode, auth, tally)

        fivexx = sum(n for code, n in tally.statuses.items() if code >= 500)
        server_errors = fivexx - tally.stream_501
        figures.update(
            {
                "operations": len(operations),
                "generated_cases": sum(tally.calls.values()),
                "examples_per_operation_and_mode": EXAMPLES,
                "server_errors": server_errors,
                "findings": sum(tally.findings.values()),
                "findings_by_check": dict(tally.findings),
                "valid_requests_refused_by_rule": dict(tally.refused),
                "stream_501_under_wsgi": tally.stream_501,
                "status_codes": {str(code): n for code, n in sorted(tally.statuses.items())},
            }
        )
        assert len(operations) >= 40, operations
        assert set(tally.calls) == set(operations), set(operations) - set(tally.calls)
        assert sum(tally.calls.values()) >= pick(ci=200, full=2000)
        assert server_errors == 0, tally.statuses
        assert not tally.findings, "\n".join(
            f"{key} x{n}: {tally.examples[key]}" for key, n in tally.findings.items()
        )


def test_s1_deleting_what_runs_recorded_is_a_conflict_not_a_server_error(tenant_a, make_agent):
    """Found by reading what the fuzzer cannot reach: ids of objects with history."""
    make_agent("Napper", "test-sleep", intents=["nap"])
    ran = tenant_a.client.post("/api/orchestrate", {"intent": "nap"}, format="json")
    assert ran.status_code == 200, ran.json()
    tool = ToolExecution.objects.get(run_id=ran.json()["runId"]).tool
    answers = {
        "agent": tenant_a.client.delete("/api/agents/napper/"),
        "tool": tenant_a.client.delete(f"/api/tools/{tool.pk}/"),
    }
    for response in answers.values():
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "IN_USE"
    assert Agent.objects.filter(slug="napper").exists()
