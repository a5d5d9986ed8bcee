"""S3: credentials. Revoked and expired keys fail on the very next request, no table
holds a key in clear, failed authentications are throttled per client, and the admin
login is rate-limited."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from agents.choices import Scope
from agents.models import ApiKey
from agents.services import api_key_create, api_key_revoke
from tests.factories import UserFactory
from tests.faults.abuse import ScenarioParts
from tests.faults.scale import pick

pytestmark = [pytest.mark.faults, pytest.mark.django_db]

TEXT_TYPES = ("character varying", "text", "json", "jsonb", "character")


def _network() -> str:
    """A /24 of this test run alone: throttle counters live in Redis across runs."""
    return f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


@pytest.fixture(scope="module")
def s3():
    parts = ScenarioParts.of("S3", "Credentials")
    yield parts
    parts.record()


def _client(raw_key: str, address: str) -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def test_s3_revoked_and_expired_keys_fail_on_the_next_request(s3, tenant_a):
    rounds = pick(ci=5, full=50)
    with s3.part("revocation") as figures:
        answers = {"before": [], "after_revoke": [], "after_expiry": []}
        for n in range(rounds):
            issued = api_key_create(
                organization=tenant_a.organization, name=f"r{n}", scopes=list(Scope.values)
            )
            client = _client(issued.raw_key, f"10.3.0.{n % 250}")
            answers["before"].append(client.get("/api/runs/").status_code)
            if n % 2:
                api_key_revoke(api_key=issued.api_key)
                answers["after_revoke"].append(client.get("/api/runs/").status_code)
            else:
                ApiKey.objects.filter(pk=issued.api_key.pk).update(
                    expires_at=timezone.now() - timedelta(seconds=1)
                )
                answers["after_expiry"].append(client.get("/api/runs/").status_code)
        figures["keys"] = rounds
        figures["accepted_after_revoke"] = sum(c != 401 for c in answers["after_revoke"])
        figures["accepted_after_expiry"] = sum(c != 401 for c in answers["after_expiry"])
        assert set(answers["before"]) == {200}
        assert set(answers["after_revoke"]) == {401}
        assert set(answers["after_expiry"]) == {401}


def test_s3_no_table_holds_a_key_in_clear(s3, tenant_a, make_agent):
    make_agent("Napper", "test-sleep", intents=["nap"])
    issued = api_key_create(
        organization=tenant_a.organization, name="scan", scopes=list(Scope.values)
    )
    client = _client(issued.raw_key, "10.3.1.1")
    # Use it the way programs do, so whatever requests leave behind is in the tables too.
    assert client.post("/api/orchestrate", {"intent": "nap"}, format="json").status_code == 200
    assert client.get("/api/runs/").status_code == 200
    secret = issued.raw_key.split("_", 2)[2]
    with s3.part("storage") as figures, connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND data_type = ANY(%s)",
            [list(TEXT_TYPES)],
        )
        columns = cursor.fetchall()
        hits = []
        for table, column in columns:
            cursor.execute(
                f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE %s',  # noqa: S608
                [f"%{secret}%"],
            )
            if cursor.fetchone()[0]:
                hits.append(f"{table}.{column}")
        stored = ApiKey.objects.get(pk=issued.api_key.pk)
        figures["text_columns_scanned"] = len(columns)
        figures["columns_holding_the_secret"] = hits
        assert len(columns) > 50
        assert hits == []
        assert stored.key_hash == ApiKey.hash_key(issued.raw_key) != issued.raw_key


def test_s3_failed_authentications_are_throttled_per_client(s3, tenant_a, settings):
    settings.AUTH_FAILURE_LIMIT = pick(ci=5, full=20)
    settings.AUTH_FAILURE_WINDOW_S = 60
    attempts = settings.AUTH_FAILURE_LIMIT * 3
    net = _network()
    with s3.part("api_throttle") as figures:
        bad = _client("acp_000000000000_not-a-real-secret", f"{net}.1")
        codes = [bad.get("/api/runs/").status_code for _ in range(attempts)]
        last = bad.get("/api/runs/")
        # The same client, now with a valid key: still throttled until the window ends.
        good_same_address = _client(tenant_a.raw_key, f"{net}.1").get("/api/runs/")
        # Another client is not affected.
        good_elsewhere = _client(tenant_a.raw_key, f"{net}.2").get("/api/runs/")
        figures.update(
            {
                "limit": settings.AUTH_FAILURE_LIMIT,
                "attempts": attempts,
                "answered_401": codes.count(401),
                "answered_429": codes.count(429),
                "other_client": good_elsewhere.status_code,
            }
        )
        assert codes[: settings.AUTH_FAILURE_LIMIT] == [401] * settings.AUTH_FAILURE_LIMIT
        assert set(codes[settings.AUTH_FAILURE_LIMIT :]) == {429}
        assert last.status_code == 429
        body = last.json()
        assert body["success"] is False and body["error"]["code"] == "RATE_LIMITED"
        assert 0 < int(last["Retry-After"]) <= 60
        assert good_same_address.status_code == 429
        assert good_elsewhere.status_code == 200


def test_s3_admin_login_is_rate_limited(s3, settings):
    settings.ADMIN_LOGIN_FAILURE_LIMIT = pick(ci=3, full=10)
    settings.ADMIN_LOGIN_WINDOW_S = 300
    limit = settings.ADMIN_LOGIN_FAILURE_LIMIT
    net, ops, ops2 = _network(), f"ops-{secrets.token_hex(4)}", f"ops-{secrets.token_hex(4)}"
    UserFactory(username=ops, is_staff=True, is_superuser=True)
    with s3.part("admin_login") as figures:
        client = Client(REMOTE_ADDR=f"{net}.1")
        wrong = {"username": ops, "password": "wrong", "next": "/admin/"}
        codes = [client.post("/admin/login/", wrong).status_code for _ in range(limit + 3)]
        blocked = client.post("/admin/login/", wrong)
        # The right password from the same address is refused too until the window ends.
        right = client.post(
            "/admin/login/",
            {"username": ops, "password": "correct horse battery staple", "next": "/admin/"},
        )
        # Another address guessing the same account is limited as well (per username).
        elsewhere = Client(REMOTE_ADDR=f"{net}.2").post("/admin/login/", wrong)
        # Another address and account logs in normally.
        UserFactory(username=ops2, is_staff=True, is_superuser=True)
        fresh = Client(REMOTE_ADDR=f"{net}.3").post(
            "/admin/login/",
            {"username": ops2, "password": "correct horse battery staple", "next": "/admin/"},
        )
        figures.update(
            {
                "limit": limit,
                "failed_logins_answered_200": codes.count(200),
                "answered_429": codes.count(429),
                "right_password_while_blocked": right.status_code,
                "same_user_other_address": elsewhere.status_code,
                "other_user_other_address": fresh.status_code,
            }
        )
        assert codes[:limit] == [200] * limit
        assert set(codes[limit:]) == {429}
        assert blocked.status_code == 429 and int(blocked["Retry-After"]) > 0
        assert right.status_code == 429
        assert elsewhere.status_code == 429
        assert fresh.status_code == 302
