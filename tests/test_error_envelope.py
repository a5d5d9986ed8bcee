"""Every error under /api/ is the contract's JSON envelope, never an HTML page."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from agents.choices import MemberRole
from tests.factories import MemberFactory, OrganizationFactory


def _assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "timestamp" in body
    return body


@pytest.mark.django_db
class TestErrorEnvelope:
    def test_400_names_the_fields(self, tenant_a):
        response = tenant_a.client.post("/api/agents/", {"kind": "BOGUS"}, format="json")
        body = _assert_envelope(response, 400, "INVALID_REQUEST")
        assert {"name", "kind"} <= set(body["error"]["details"])

    def test_400_on_a_bad_query_parameter(self, tenant_a):
        body = _assert_envelope(
            tenant_a.client.get("/api/runs/", {"status": "NOPE"}), 400, "INVALID_REQUEST"
        )
        assert "status" in body["error"]["details"]

    def test_400_on_malformed_json(self, tenant_a):
        response = tenant_a.client.generic(
            "POST", "/api/agents/", '{"name": ', content_type="application/json"
        )
        _assert_envelope(response, 400, "INVALID_REQUEST")

    def test_401_without_credentials(self, anonymous_client):
        response = anonymous_client.get("/api/runs/")
        _assert_envelope(response, 401, "UNAUTHENTICATED")
        assert response["WWW-Authenticate"]

    def test_401_with_garbage_key(self):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION="Bearer acp_nothere_xxxxxxxx")
        _assert_envelope(client.get("/api/runs/"), 401, "UNAUTHENTICATED")

    def test_403_for_a_role_without_the_right(self):
        organization = OrganizationFactory(slug="viewers")
        member = MemberFactory(organization=organization, role=MemberRole.VIEWER)
        client = APIClient()
        client.force_login(member.user)
        assert client.get("/api/agents/").status_code == 200
        response = client.post("/api/agents/", {"name": "X"}, format="json")
        _assert_envelope(response, 403, "FORBIDDEN")

    def test_404_for_an_unknown_object_and_an_unknown_url(self, tenant_a):
        _assert_envelope(
            tenant_a.client.get("/api/runs/00000000-0000-7000-8000-000000000000/"), 404, "NOT_FOUND"
        )
        _assert_envelope(tenant_a.client.get("/api/runs/not-a-uuid/"), 404, "NOT_FOUND")
        _assert_envelope(tenant_a.client.get("/api/no-such-thing/"), 404, "NOT_FOUND")

    def test_405_for_a_wrong_method(self, tenant_a):
        _assert_envelope(tenant_a.client.delete("/api/runs/"), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.django_db
class TestSessionOrganization:
    def test_member_of_one_organization_needs_no_header(self):
        member = MemberFactory(role=MemberRole.VIEWER)
        client = APIClient()
        client.force_login(member.user)
        assert client.get("/api/runs/").status_code == 200

    def test_member_of_two_organizations_names_one(self):
        member = MemberFactory(role=MemberRole.VIEWER)
        MemberFactory(user=member.user, role=MemberRole.VIEWER)
        client = APIClient()
        client.force_login(member.user)
        _assert_envelope(client.get("/api/runs/"), 403, "FORBIDDEN")
        response = client.get("/api/runs/", HTTP_X_ORGANIZATION=member.organization.slug)
        assert response.status_code == 200

    def test_non_member_naming_an_organization_is_refused(self):
        member = MemberFactory(role=MemberRole.OWNER)
        stranger = OrganizationFactory(slug="stranger")
        client = APIClient()
        client.force_login(member.user)
        _assert_envelope(
            client.get("/api/runs/", HTTP_X_ORGANIZATION=stranger.slug), 403, "FORBIDDEN"
        )

    def test_session_writes_require_csrf(self):
        member = MemberFactory(role=MemberRole.ADMIN)
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(member.user)
        response = client.post("/api/agents/", {"name": "X"}, format="json")
        _assert_envelope(response, 403, "FORBIDDEN")
        assert not User.objects.filter(username="X").exists()
