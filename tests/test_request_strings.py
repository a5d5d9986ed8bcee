"""Strings in JSON bodies: refused when longer than the schema allows as sent, then trimmed.

README "Request limits and throttles": the schema's maxLength holds for the string the
client sent; within it, leading and trailing whitespace (str.strip()) is removed before the
field's own checks, and a required string of only whitespace is refused as blank.
"""

from __future__ import annotations

import pytest

from agents.models import Agent
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

LIMIT = 120  # AgentSerializer: name and each intent


def _agent(tenant, **body):
    return tenant.client.post("/api/agents/", {"kind": "WORKFLOW", **body}, format="json")


def _details(response) -> dict:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    return error["details"]


@pytest.mark.parametrize("padding", [" ", "\x0b\x1f", "\u001c", "\t\n"])
def test_a_string_over_the_limit_as_sent_is_refused_even_if_it_fits_trimmed(tenant_a, padding):
    too_long = padding + "n" * (LIMIT - len(padding) + 1)
    assert len(too_long) == LIMIT + 1 and len(too_long.strip()) <= LIMIT

    details = _details(_agent(tenant_a, name=too_long))
    assert details["name"] == [f"Ensure this field has no more than {LIMIT} characters."]

    details = _details(_agent(tenant_a, name="Lengths", intents=["short", too_long]))
    assert details["intents"] == [f"Ensure this field has no more than {LIMIT} characters."]
    assert not Agent.objects.filter(organization=tenant_a.organization, name="Lengths").exists()


def test_a_padded_string_within_the_limit_is_trimmed(tenant_a):
    name = "  " + "n" * (LIMIT - 4) + "\x1c\t"
    assert len(name) == LIMIT
    response = _agent(tenant_a, name=name, intents=["\x0b lengths-probe \u0085"])
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "n" * (LIMIT - 4)
    assert body["intents"] == ["lengths-probe"]


def test_a_string_of_only_whitespace_is_blank(tenant_a):
    details = _details(_agent(tenant_a, name=" \x1c\t "))
    assert details["name"] == ["This field may not be blank."]


def test_a_wrong_json_type_is_refused_not_converted(tenant_a):
    details = _details(_agent(tenant_a, name=5, intents=["ok", 6]))
    assert details["name"] == ["Expected string, got integer."]
    assert details["intents"] == ["Expected string, got integer."]


@pytest.mark.parametrize("path", ["/api/runs/", "/api/orchestration/events"])
def test_a_query_value_over_the_limit_as_sent_is_refused(tenant_a, path):
    too_long = "\x1c" + "s" * LIMIT  # fits once trimmed; the schema refuses it
    details = _details(tenant_a.client.get(path, {"agent": too_long}))
    assert details["agent"] == [f"Ensure this field has no more than {LIMIT} characters."]

    AgentFactory(organization=tenant_a.organization, name="Strings", slug="strings")
    response = tenant_a.client.get(path, {"agent": "\t strings \x1c"})  # trimmed, found
    assert response.status_code == 200, response.content
