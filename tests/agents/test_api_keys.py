from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import ApiKey
from agents.services import api_key_create, api_key_revoke
from tests.factories import OrganizationFactory


def _client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


@pytest.mark.django_db
class TestApiKeys:
    def test_database_never_contains_the_plaintext_key(self):
        issued = api_key_create(organization=OrganizationFactory(), name="ci")
        secret = issued.raw_key.split("_", 2)[2]
        assert len(secret) >= 43  # 32 random bytes, url-safe base64
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM api_keys")
            rows = cursor.fetchall()
        dump = repr(rows)
        assert issued.raw_key not in dump
        assert secret not in dump
        assert issued.api_key.key_hash in dump  # the hash is what is stored

    def test_valid_key_authenticates(self):
        issued = api_key_create(organization=OrganizationFactory(), name="ci")
        assert _client(issued.raw_key).get("/api/runs/").status_code == 200

    def test_revoked_key_answers_401_on_the_next_request(self):
        issued = api_key_create(organization=OrganizationFactory(), name="ci")
        client = _client(issued.raw_key)
        assert client.get("/api/runs/").status_code == 200
        api_key_revoke(api_key=issued.api_key)
        response = client.get("/api/runs/")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHENTICATED"

    def test_expired_key_answers_401(self):
        issued = api_key_create(
            organization=OrganizationFactory(),
            name="ci",
            expires_at=timezone.now() - timedelta(seconds=1),
        )
        response = _client(issued.raw_key).get("/api/runs/")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHENTICATED"

    def test_wrong_secret_with_a_real_prefix_answers_401(self):
        issued = api_key_create(organization=OrganizationFactory(), name="ci")
        forged = issued.raw_key[:-4] + "AAAA"
        assert _client(forged).get("/api/runs/").status_code == 401

    def test_last_used_at_is_written_at_most_once_a_minute(self, django_assert_num_queries):
        issued = api_key_create(organization=OrganizationFactory(), name="ci")
        client = _client(issued.raw_key)
        client.get("/api/runs/")
        first = ApiKey.objects.get(pk=issued.api_key.pk).last_used_at
        assert first is not None
        client.get("/api/runs/")
        assert ApiKey.objects.get(pk=issued.api_key.pk).last_used_at == first
        ApiKey.objects.filter(pk=issued.api_key.pk).update(
            last_used_at=first - timedelta(minutes=2)
        )
        client.get("/api/runs/")
        assert ApiKey.objects.get(pk=issued.api_key.pk).last_used_at > first

    def test_key_without_the_scope_gets_403(self):
        issued = api_key_create(organization=OrganizationFactory(), name="ro", scopes=["runs:read"])
        response = _client(issued.raw_key).post(
            "/api/agents/", {"name": "X", "intents": []}, format="json"
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "FORBIDDEN"


@pytest.mark.django_db
class TestCreateApiKeyCommand:
    def test_prints_the_key_once_as_the_last_line(self):
        organization = OrganizationFactory(slug="acme")
        out = StringIO()
        call_command(
            "create_api_key",
            "--org",
            "acme",
            "--name",
            "deploy",
            "--scopes",
            "runs:read",
            stdout=out,
        )
        lines = out.getvalue().strip().splitlines()
        raw_key = lines[-1].strip()
        api_key = ApiKey.objects.get(organization=organization, name="deploy")
        assert api_key.matches(raw_key)
        assert api_key.scopes == ["runs:read"]
        assert out.getvalue().count(raw_key) == 1
        assert _client(raw_key).get("/api/runs/").status_code == 200

    def test_unknown_organization_is_an_error(self):
        with pytest.raises(CommandError):
            call_command("create_api_key", "--org", "nope", "--name", "x", stdout=StringIO())

    def test_unknown_scope_is_an_error(self):
        OrganizationFactory(slug="acme")
        with pytest.raises(CommandError):
            call_command(
                "create_api_key",
                "--org",
                "acme",
                "--name",
                "x",
                "--scopes",
                "god",
                stdout=StringIO(),
            )
