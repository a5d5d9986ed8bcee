"""Real Celery worker processes for tests, consuming a queue private to this test session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.db import connection

from config.celery import app

ROOT = Path(__file__).resolve().parents[2]
TEST_HANDLER_MODULES = "agents.handlers.http,agents.reference,tests.orchestration.handlers"


def test_database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


class WorkerProcess:
    def __init__(self, name: str, queue: str, concurrency: int = 2, env: dict | None = None):
        self.name = name
        self.queue = queue
        self.concurrency = concurrency
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 45.0) -> WorkerProcess:
        env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            "AGENT_HANDLER_MODULES": TEST_HANDLER_MODULES,
            "ORCHESTRATOR_NODE_ID": self.name,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            **self.extra_env,
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                self.queue,
                "-n",
                f"{self.name}@%h",
                "-c",
                str(self.concurrency),
                "-P",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}")
            replies = app.control.ping(
                destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5
            )
            if replies:
                return self
        self.stop()
        raise RuntimeError(f"worker {self.name} did not start within {timeout}s")

    def stop(self, sig: int | None = None) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig or signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def private_queue() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
