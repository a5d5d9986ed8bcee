"""What the fault scenarios share: the API under uvicorn, Celery workers, a reaper loop.

Every process is real and listens on (or talks to) 127.0.0.1 only. Workers come from
tests/orchestration/workers.py; the API server is uvicorn serving config.asgi; the reaper
is the same service Celery beat runs (node_sweep + runs_reap), called from a thread of the
test process every heartbeat interval.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Sequence

from django.db import close_old_connections, connection

from orchestration.services import reaper
from orchestration.services.config import config_update
from runs.choices import ACTIVE_RUN_STATES
from runs.models import AgentRun
from tests.faults import servers
from tests.faults.servers import free_port
from tests.faults.servers import wait_until as wait_for  # noqa: F401  (the scenarios' name)
from tests.orchestration.workers import (
    TEST_HANDLER_MODULES,
    WorkerProcess,
    test_database_url,
)

# The fleet settings the scenarios run under: seconds rather than minutes, so a lost run
# comes back within a scenario. Leases stay well above the heartbeat interval.
FAST_FLEET = {
    "heartbeat_interval_s": 1,
    "unhealthy_after_intervals": 2,
    "failed_after_intervals": 4,
    "lease_s": 4,
    "pending_timeout_s": 15,
    "max_attempts": 3,
}


def fleet_configure(**nodes) -> dict:
    """Make FAST_FLEET (with overrides) the live fleet configuration; returns it."""
    document = {**FAST_FLEET, **nodes}
    config_update(document={"nodes": document}, partial=True, actor="faults")
    return document


def worker_env(queue: str, fleet: dict, **extra: str) -> dict:
    return {
        "NODE_AUTOREGISTER": "true",
        "RUN_DEFAULT_QUEUE": queue,
        # The lease a claim starts with; heartbeats extend it by the live lease_s.
        "RUN_LEASE_SECONDS": str(int(fleet["lease_s"])),
        **extra,
    }


def worker_kill(worker: WorkerProcess, sig: int = signal.SIGKILL) -> None:
    """The whole worker (main and pool processes) dies at once, as a container would."""
    os.killpg(worker.process.pid, sig)
    worker.process.wait(timeout=20)


def active_runs(queryset=None) -> int:
    queryset = AgentRun.objects.all() if queryset is None else queryset
    return queryset.filter(status__in=ACTIVE_RUN_STATES).count()


def statuses(queryset) -> dict[str, int]:
    return dict(Counter(queryset.values_list("status", flat=True)))


class ApiServer(servers.ApiServer):
    """The API under uvicorn (config.asgi) on the test database, on a free port of
    127.0.0.1, with the test handlers; ``env`` is added to this process's environment.
    Its database sessions are named ``application_name`` (acp-uvicorn-<port> by default),
    so a test can count them in pg_stat_activity. ``log``: where its output goes."""

    def __init__(
        self,
        *,
        env: dict | None = None,
        node_autoregister: bool = False,
        log=None,
        application_name: str | None = None,
        args: Sequence[str] = ("--no-access-log",),
    ) -> None:
        port = free_port()
        self.application_name = application_name or f"acp-uvicorn-{port}"
        database_url = f"{test_database_url()}?application_name={self.application_name}"
        super().__init__(
            {
                **os.environ,
                "DATABASE_URL": database_url,
                "AGENT_HANDLER_MODULES": TEST_HANDLER_MODULES,
                "NODE_AUTOREGISTER": "true" if node_autoregister else "false",
                "CELERY_TASK_ALWAYS_EAGER": "false",
                **(env or {}),
            },
            log,
            port=port,
            args=args,
        )


class ReaperLoop:
    """node_sweep + runs_reap every interval, as Celery beat schedules them."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.cycles = 0
        self.requeued_running = 0
        self.failed_running = 0
        self.requeued_pending = 0
        self.failed_pending = 0
        self.failovers = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cycle(self) -> None:
        """One pass, the same as `python manage.py reap`."""
        sweep = reaper.node_sweep()
        reaped = reaper.runs_reap()
        self.failovers += len(sweep.failovers)
        self.requeued_running += len(reaped.requeued_running) + sum(
            len(f.run_ids) for f in sweep.failovers
        )
        self.failed_running += len(reaped.failed_running) + sum(
            f.failed_runs for f in sweep.failovers
        )
        self.requeued_pending += len(reaped.requeued_pending)
        self.failed_pending += len(reaped.failed_pending)
        self.cycles += 1

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    close_old_connections()
                    self.cycle()
                except Exception as exc:  # the next cycle tries again, as beat would
                    self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def start(self) -> ReaperLoop:
        self._thread = threading.Thread(target=self._run, name="faults-reaper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
