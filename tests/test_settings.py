"""Settings come from the environment; production refuses to start half-configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "SECRET_KEY",
            "DEBUG",
            "ALLOWED_HOSTS",
            "DJANGO_SETTINGS_MODULE",
        }
    }
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_without_secret_key_fails_loudly(tmp_path):
    result = _run(
        {"DEBUG": "false", "ALLOWED_HOSTS": "example.com", "VAR_DIR": str(tmp_path)}, "check"
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY" in result.stderr


def test_production_without_allowed_hosts_fails_loudly(tmp_path):
    result = _run({"DEBUG": "false", "SECRET_KEY": "x" * 60, "VAR_DIR": str(tmp_path)}, "check")
    assert result.returncode != 0
    assert "ALLOWED_HOSTS" in result.stderr


def test_malformed_boolean_fails_loudly(tmp_path):
    result = _run({"DEBUG": "maybe", "VAR_DIR": str(tmp_path)}, "check")
    assert result.returncode != 0
    assert "DEBUG" in result.stderr


def test_check_deploy_is_clean_in_production(tmp_path):
    result = _run(
        {
            "DEBUG": "false",
            "SECRET_KEY": "k3y-" + "aZ9$" * 20,
            "ALLOWED_HOSTS": "acp.example.com",
            "VAR_DIR": str(tmp_path),
        },
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_embedded_default_uses_sqlite_locmem_and_eager_celery(tmp_path):
    code = (
        "from django.conf import settings;"
        "print(settings.DATABASES['default']['ENGINE']);"
        "print(settings.CACHES['default']['BACKEND']);"
        "print(settings.CELERY_TASK_ALWAYS_EAGER, settings.DEBUG)"
    )
    result = _run({"VAR_DIR": str(tmp_path)}, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    engine, cache, flags = result.stdout.strip().splitlines()
    assert engine == "django.db.backends.sqlite3"
    assert cache.endswith("LocMemCache")
    assert flags == "True True"
    assert (tmp_path / "dev-secret-key").exists()


def test_unknown_policy_fail_mode_fails_loudly(tmp_path):
    result = _run({"POLICY_FAIL_MODE": "sideways", "VAR_DIR": str(tmp_path)}, "check")
    assert result.returncode != 0
    assert "POLICY_FAIL_MODE" in result.stderr


def test_policy_and_event_settings_follow_the_redis_url(tmp_path):
    code = (
        "from django.conf import settings;"
        "print(settings.EVENTS_CHANNEL, settings.POLICY_FAIL_MODE,"
        " repr(getattr(settings, 'POLICY_REDIS_URL', None)))"
    )
    env = {"VAR_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/3"}
    result = _run(env, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["acp:events:3", "open", "None"]

    env |= {"POLICY_REDIS_URL": "", "POLICY_FAIL_MODE": "closed", "EVENTS_CHANNEL": "blue"}
    result = _run(env, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["blue", "closed", "''"]


def test_prepare_threshold_follows_its_setting_on_postgresql_only(tmp_path):
    code = (
        "from django.conf import settings;"
        "print(repr(settings.DATABASES['default'].get('OPTIONS', {}).get('prepare_threshold')))"
    )
    postgres = {"VAR_DIR": str(tmp_path), "DATABASE_URL": "postgres://u@127.0.0.1:5432/x"}
    for env, expected in (
        (postgres, "5"),
        (postgres | {"DATABASE_PREPARE_THRESHOLD": "0"}, "0"),
        (postgres | {"DATABASE_PREPARE_THRESHOLD": "-1"}, "None"),
        ({"VAR_DIR": str(tmp_path)}, "None"),  # embedded SQLite
    ):
        result = _run(env, "shell", "--no-imports", "-c", code)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, env


def test_only_a_redis_broker_gets_the_client_keeping_transport(tmp_path):
    code = (
        "from django.conf import settings;"
        " print(getattr(settings, 'CELERY_BROKER_TRANSPORT', None))"
    )
    cases = (
        ("redis://127.0.0.1:6379/3", "orchestration.broker:Transport"),
        ("amqp://guest:guest@127.0.0.1:5672//", "None"),
    )
    for url, expected in cases:
        env = {"VAR_DIR": str(tmp_path), "CELERY_BROKER_URL": url}
        result = _run(env, "shell", "--no-imports", "-c", code)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, url
