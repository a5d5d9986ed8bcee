"""Graceful shutdown of real processes: a Celery worker and API servers on SIGTERM, and
shutdown_orchestrator handing a node's runs to a live worker. Plus bootstrap in the
embedded mode (SQLite, no Redis, no broker), as `make run` does it.

Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from orchestration.choices import EventType, NodeStatus
from orchestration.models import OrchestratorEvent, OrchestratorNode
from orchestration.services.lifecycle import agents_registered_on
from orchestration.tasks import execute_run
from runs import services as run_services
from runs.choices import ACTIVE_RUN_STATES, RunMode, RunStatus
from runs.models import AgentRun
from tests.orchestration.test_lifecycle import pending_on, run, running_on
from tests.orchestration.workers import (
    ROOT,
    TEST_HANDLER_MODULES,
    WorkerProcess,
    private_queue,
)
from tests.orchestration.workers import test_database_url as worker_database_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def node_status(node_id: str) -> str | None:
    return OrchestratorNode.objects.filter(node_id=node_id).values_list("status", flat=True).first()


def assert_left_cleanly(node_id: str, announced: set) -> None:
    """OFFLINE, DRAINING on the way, and every agent it announced unregistered."""
    assert node_status(node_id) == NodeStatus.OFFLINE
    events = OrchestratorEvent.objects.filter(node_id=node_id)
    assert events.filter(
        type=EventType.NODE_STATUS_CHANGED, payload__to=NodeStatus.DRAINING
    ).exists()
    assert events.filter(type=EventType.NODE_UNREGISTERED).exists()
    unregistered = events.filter(type=EventType.AGENT_UNREGISTERED)
    assert set(unregistered.values_list("agent_id", flat=True)) == announced
    assert agents_registered_on(node_id=node_id) == set()


def create_runs(agent, count: int, sleep_ms: int) -> list[AgentRun]:
    return [
        run_services.run_create(
            organization=agent.organization,
            agent=agent,
            intent="nap",
            input={"sleep_ms": sleep_ms},
            mode=RunMode.ASYNC,
        )
        for _ in range(count)
    ]


def test_sigterm_on_a_worker_lets_its_runs_finish_and_leaves_the_node_offline(
    tenant_a, make_agent, settings
):
    queue = private_queue()
    settings.RUN_DEFAULT_QUEUE = queue
    node_id = f"leaver-{uuid.uuid4().hex[:8]}"
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    # The worker takes over the node bootstrap registered, with the agents it announced.
    run("bootstrap_orchestrator", "--org", "org-a", "--node", node_id)
    announced = agents_registered_on(node_id=node_id)
    assert agent.pk in announced

    env = {"NODE_AUTOREGISTER": "true", "RUN_DEFAULT_QUEUE": queue}
    worker = WorkerProcess(node_id, queue, concurrency=4, env=env)
    try:
        worker.start()
        wait_for(
            lambda: OrchestratorNode.objects.filter(
                node_id=node_id, status=NodeStatus.ACTIVE, metadata__kind="celery-worker"
            ).exists(),
            timeout=15,
            what="the worker to register",
        )
        runs = create_runs(agent, 4, sleep_ms=400)
        for run_ in runs:
            execute_run.apply_async(args=[str(run_.pk)], queue=queue)
        mine = AgentRun.objects.filter(node_id=node_id, status=RunStatus.RUNNING)
        wait_for(lambda: mine.count() == len(runs), timeout=15, what="all runs in flight")
        in_flight = set(mine.values_list("pk", flat=True))

        # SIGTERM to the main process only (Kubernetes' way; systemd: KillMode=mixed):
        # Celery's warm shutdown waits for the tasks its pool is executing.
        os.kill(worker.process.pid, signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0
    finally:
        worker.stop()

    ended = dict(AgentRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("pk", "status"))
    assert all(ended[pk] == RunStatus.SUCCESS for pk in in_flight), ended
    assert_left_cleanly(node_id, announced)


def test_shutdown_command_hands_a_nodes_runs_to_a_live_worker(tenant_a, make_agent, settings):
    queue = private_queue()
    settings.RUN_DEFAULT_QUEUE = queue
    suffix = uuid.uuid4().hex[:8]
    survivor_id, leaving_id = f"survivor-{suffix}", f"leaving-{suffix}"
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    run("bootstrap_orchestrator", "--org", "org-a", "--node", leaving_id)
    announced = agents_registered_on(node_id=leaving_id)

    env = {"NODE_AUTOREGISTER": "true", "RUN_DEFAULT_QUEUE": queue}
    survivor = WorkerProcess(survivor_id, queue, concurrency=2, env=env)
    try:
        survivor.start()
        wait_for(
            lambda: node_status(survivor_id) == NodeStatus.ACTIVE,
            timeout=15,
            what="the survivor to register",
        )
        # Runs the leaving node holds but will never finish (its process is gone), and one
        # routed to its own queue, where nobody else would ever look.
        stuck = [*running_on(leaving_id, agent, 2), pending_on(leaving_id, agent)]

        out = run("shutdown_orchestrator", "--node", leaving_id, "--grace", "0.5")
        assert f"reassigned to node {survivor_id}" in out

        runs = AgentRun.objects.filter(pk__in=[r.pk for r in stuck])
        wait_for(
            lambda: not runs.filter(status__in=ACTIVE_RUN_STATES).exists(),
            timeout=30,
            what="the survivor to run the handed-over runs",
        )
        assert set(runs.values_list("status", flat=True)) == {RunStatus.SUCCESS}
        assert set(runs.values_list("node_id", flat=True)) == {survivor_id}
        assert node_status(survivor_id) == NodeStatus.ACTIVE
    finally:
        survivor.stop()
    assert_left_cleanly(leaving_id, announced)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API_SERVERS = {
    "wsgi-runserver": lambda port: [
        sys.executable,
        "manage.py",
        "runserver",
        "--noreload",
        f"127.0.0.1:{port}",
    ],
    "asgi-uvicorn": lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ],
}


@pytest.mark.parametrize("server", sorted(API_SERVERS))
def test_sigterm_on_an_api_process_waits_for_its_sync_run_and_leaves_the_node_offline(
    tenant_a, make_agent, server
):
    node_id = f"api-{uuid.uuid4().hex[:8]}"
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    run("bootstrap_orchestrator", "--org", "org-a", "--node", node_id)
    announced = agents_registered_on(node_id=node_id)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "AGENT_HANDLER_MODULES": TEST_HANDLER_MODULES,
        "ORCHESTRATOR_NODE_ID": node_id,
        "NODE_AUTOREGISTER": "true",
    }
    process = subprocess.Popen(
        API_SERVERS[server](port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    answers: list = []
    try:
        # The process registers when its application loads, before any run.
        wait_for(
            lambda: OrchestratorNode.objects.filter(
                node_id=node_id, status=NodeStatus.ACTIVE, metadata__kind="api"
            ).exists(),
            timeout=30,
            what="the API process to register",
            interval=0.1,
        )

        def orchestrate() -> None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/orchestrate",
                data=json.dumps({"intent": "nap", "payload": {"sleep_ms": 1500}}).encode(),
                headers={
                    "Authorization": f"Bearer {tenant_a.raw_key}",
                    "Content-Type": "application/json",
                },
            )
            try:
                # An http:// URL built above, never a file: one.
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                    answers.append(response.status)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                answers.append(exc)

        client = threading.Thread(target=orchestrate)
        client.start()
        in_flight = AgentRun.objects.filter(agent=agent, node_id=node_id, status=RunStatus.RUNNING)
        run_id = wait_for(
            lambda: in_flight.values_list("pk", flat=True).first(),
            timeout=20,
            what="the sync run to start",
        )
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
        client.join(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    finished = AgentRun.objects.get(pk=run_id)
    assert finished.status == RunStatus.SUCCESS  # finished within the grace, not handed over
    assert finished.node_id == node_id
    # The answer may be cut off when the server exits right after the run; if it came, 200.
    assert answers and (answers[0] == 200 or not isinstance(answers[0], int)), answers
    assert_left_cleanly(node_id, announced)


def test_bootstrap_in_the_embedded_mode_says_so_and_is_idempotent(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    env.update(VAR_DIR=str(tmp_path), ORCHESTRATOR_NODE_ID="console")

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("migrate", "--noinput", "-v", "0").returncode == 0
    first = manage("bootstrap_orchestrator", "--demo")
    assert first.returncode == 0, first.stderr
    table = {
        line.split()[0]: line.split()[1] for line in first.stdout.splitlines() if line[:2] == "  "
    }
    assert table["database"] == table["redis"] == table["broker"] == "embedded"
    assert table["circuits"] == "embedded"
    assert "acp_" in first.stdout and "password:" in first.stdout

    second = manage("bootstrap_orchestrator", "--demo")
    assert second.returncode == 0, second.stderr
    assert "Nothing changed" in second.stdout
    assert "acp_" not in second.stdout


def test_bootstrap_exits_non_zero_when_the_database_is_unreachable(tmp_path):
    port = free_port()  # nothing listens there
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/nowhere",
        "VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "bootstrap_orchestrator", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert any(line.split()[:2] == ["database", "down"] for line in result.stdout.splitlines())
    assert "database is unreachable" in result.stderr
