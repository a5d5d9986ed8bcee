"""Shared fixtures: three standing principals (a member of org A, one of org B, anonymous)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from agents.choices import MemberRole, Scope
from agents.models import Organization
from agents.services import api_key_create
from tests.factories import MemberFactory, OrganizationFactory


@dataclass
class Tenant:
    organization: Organization
    raw_key: str
    client: APIClient
    member: object


def _tenant(slug: str, scopes: list[str] | None = None) -> Tenant:
    organization = OrganizationFactory(slug=slug)
    member = MemberFactory(organization=organization, role=MemberRole.ADMIN)
    issued = api_key_create(
        organization=organization, name=f"{slug}-key", scopes=scopes or list(Scope.values)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}")
    return Tenant(organization=organization, raw_key=issued.raw_key, client=client, member=member)


@pytest.fixture
def tenant_a(db) -> Tenant:
    return _tenant("org-a")


@pytest.fixture
def tenant_b(db) -> Tenant:
    return _tenant("org-b")


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def fresh_live_configuration():
    """Each test reads the live configuration anew (it is cached per process otherwise)."""
    from orchestration.services.config import config_cache_clear

    config_cache_clear()
    yield
    config_cache_clear()


@pytest.fixture(autouse=True)
def no_background_node(settings):
    """The test process is not a fleet node; worker processes started by tests are."""
    settings.NODE_AUTOREGISTER = False


@pytest.fixture(autouse=True)
def fresh_routing_hint(monkeypatch):
    """Each test's first async run is routed as a new process routes it (in the INSERT's
    statement), whatever an earlier test's runs did (dispatch.run_create_routed)."""
    from orchestration.services import dispatch

    monkeypatch.setattr(dispatch, "_node_bound_last", False)
