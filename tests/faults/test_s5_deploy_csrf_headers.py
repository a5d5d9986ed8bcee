"""S5: production settings pass `manage.py check --deploy`, session writes need the CSRF
token, and the security headers are set on every answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.faults.abuse import ScenarioParts

pytestmark = [pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "k3y-" + "aZ9$" * 20,
    "ALLOWED_HOSTS": "acp.example.com",
}
HEADER_PROBE = """
import json, django
django.setup()
from django.test import Client
client = Client(HTTP_HOST="acp.example.com")
answers = {}
for path in ("/healthz", "/api/runs/", "/admin/login/", "/api/schema/"):
    response = client.get(path, secure=True)
    answers[path] = {"status": response.status_code, "headers": dict(response.headers)}
print(json.dumps(answers))
"""
REQUIRED_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@pytest.fixture(scope="module")
def s5():
    parts = ScenarioParts.of("S5", "Deploy checks, CSRF, security headers")
    yield parts
    parts.record()


def _production(tmp_path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(PRODUCTION, VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    command = [sys.executable, "-c", code] if code else [sys.executable, "manage.py", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_s5_check_deploy_reports_nothing(s5, tmp_path):
    with s5.part("check_deploy") as figures:
        result = _production(tmp_path, "check", "--deploy", "--fail-level", "DEBUG")
        issues = [line for line in result.stdout.splitlines() if line.startswith("?:")]
        figures["exit_code"] = result.returncode
        figures["issues"] = len(issues)
        figures["output"] = result.stdout.strip().splitlines()[-1] if result.stdout else ""
        assert result.returncode == 0, result.stdout + result.stderr
        assert "System check identified no issues" in result.stdout


def test_s5_security_headers_in_production(s5, tmp_path):
    with s5.part("security_headers") as figures:
        result = _production(tmp_path, code=HEADER_PROBE)
        assert result.returncode == 0, result.stderr[-2000:]
        answers = json.loads(result.stdout.strip().splitlines()[-1])
        missing = {
            path: [
                name
                for name, value in REQUIRED_HEADERS.items()
                if answer["headers"].get(name) != value
            ]
            for path, answer in answers.items()
        }
        figures["paths"] = {path: answer["status"] for path, answer in answers.items()}
        figures["headers_checked"] = sorted(REQUIRED_HEADERS)
        figures["missing"] = {path: names for path, names in missing.items() if names}
        assert not figures["missing"], missing


@pytest.mark.django_db
def test_s5_csrf_is_enforced_on_session_writes(s5, tenant_a):
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenant_a.member.user)
    org = {"HTTP_X_ORGANIZATION": tenant_a.organization.slug}
    with s5.part("csrf") as figures:
        reads = client.get("/api/agents/", **org)
        writes = {
            "POST /api/agents/": client.post(
                "/api/agents/", {"name": "NoToken"}, content_type="application/json", **org
            ),
            "POST /api/orchestrate": client.post(
                "/api/orchestrate", {"intent": "x"}, content_type="application/json", **org
            ),
        }
        # With the token (the cookie from a page the session loaded, echoed in the header).
        client.get("/admin/login/")
        token = client.cookies["csrftoken"].value
        with_token = client.post(
            "/api/agents/",
            {"name": "WithToken"},
            content_type="application/json",
            HTTP_X_CSRFTOKEN=token,
            **org,
        )
        # An API key needs no token: it is not a browser credential.
        by_key = tenant_a.client.post("/api/agents/", {"name": "ByKey"}, format="json")
        figures["session_read"] = reads.status_code
        figures["session_write_without_token"] = {k: r.status_code for k, r in writes.items()}
        figures["session_write_with_token"] = with_token.status_code
        figures["api_key_write"] = by_key.status_code
        assert reads.status_code == 200
        for response in writes.values():
            assert response.status_code == 403
            body = response.json()
            assert body["success"] is False and body["error"]["code"] == "FORBIDDEN"
            assert "CSRF" in body["error"]["message"]
        assert with_token.status_code == 201, with_token.json()
        assert by_key.status_code == 201
