"""This process as a fleet node: registration, the heartbeat thread, Celery's signals.

A Celery worker registers when it is ready (worker_ready), consumes its own node queue
and its region's queue besides the ones it was started with (celeryd_after_setup),
heartbeats from a daemon thread of its main process, goes DRAINING as soon as a warm
shutdown begins (worker_shutting_down) and, once Celery has waited for the tasks it was
executing, shuts the node down (worker_shutdown). An API process registers when its
WSGI/ASGI application loads (api_node_start, from config/wsgi.py and config/asgi.py) or
at the latest on its first run (NodeRuntime.ensure_started, called by run_execute), and
shuts the node down on SIGTERM or at exit. All of this only when settings.NODE_AUTOREGISTER
is on (the tests turn it off for the test process).

Shutting down is one service for every path (services/lifecycle.py node_shutdown):
DRAINING, wait for the node's RUNNING runs, hand the rest over, unregister its agents,
OFFLINE.

Imported by OrchestrationConfig.ready(), so every process that loads the apps --
Celery workers included -- has the signal handlers connected.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from importlib import metadata as package_metadata

from celery import signals
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from agents.handlers import registry
from orchestration.choices import NodeStatus
from orchestration.queues import default_queue, node_queue, region_queue
from orchestration.services.config import config_current
from orchestration.services.nodes import (
    NodeNotFound,
    NodeStateConflict,
    node_drain,
    node_heartbeat,
    node_register,
    node_unregister,
)
from runs.choices import RunStatus
from runs.models import AgentRun

logger = logging.getLogger(__name__)

PACKAGE = "agent-control-plane"
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0

# The shutdown service, found by its dotted path when the node stops (as Django finds its
# backends): it hands runs over through Celery tasks, and the task module imports this one
# (run_execute starts the runtime), so this module cannot import it.
SHUTDOWN_SERVICE = "orchestration.services.lifecycle.node_shutdown"
# How long a stopping node waits for its RUNNING runs. Below the run lease (nodes.lease_s,
# 60 s by default): the node stops heartbeating when it starts shutting down, and its runs
# must not look abandoned to the reaper while it waits.
SHUTDOWN_GRACE_S = 25.0
# The SIGTERM handler waits this much longer than the grace period for the shutdown thread.
SHUTDOWN_JOIN_MARGIN_S = 10.0


def node_version() -> str:
    try:
        return package_metadata.version(PACKAGE)
    except package_metadata.PackageNotFoundError:
        return settings.SPECTACULAR_SETTINGS.get("VERSION", "")


def cpu_utilization() -> float:
    """One-minute load average per CPU, clamped to 0..1 (0 where there is no loadavg)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return round(min(1.0, max(0.0, load / (os.cpu_count() or 1))), 4)


def memory_utilization() -> float:
    """Share of the machine's memory in use, from /proc/meminfo (0 where there is none)."""
    try:
        with open("/proc/meminfo") as meminfo:
            values = {}
            for line in meminfo:
                name, _, rest = line.partition(":")
                values[name] = float(rest.split()[0])
        total = values["MemTotal"]
        available = values.get("MemAvailable", values.get("MemFree", total))
    except (OSError, KeyError, ValueError, IndexError):
        return 0.0
    if total <= 0:
        return 0.0
    return round(min(1.0, max(0.0, 1.0 - available / total)), 4)


class NodeRuntime:
    """Registration and heartbeats of this process, at most one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._registration: dict | None = None
        # Set in a Celery worker: its main process owns the node, pool processes never
        # register on their own (they would each become a node under the same id).
        self.managed_by_worker = False
        self.node_id: str | None = None
        self.shutdown_grace_s = SHUTDOWN_GRACE_S
        self._drain_thread: threading.Thread | None = None
        self._previous_sigterm = None
        # Runs this process is executing itself (sync runs in an API process). Its
        # heartbeat extends their leases and no others: a run whose execution died with
        # its request (the database went away before the outcome was written) must not
        # be kept alive for ever; once its lease runs out the reaper takes it back.
        self._executing: set[str] = set()
        self._executing_lock = threading.Lock()

    @contextlib.contextmanager
    def executing(self, run_id) -> Iterator[None]:
        """Mark a run as executed by this process for as long as the block runs."""
        key = str(run_id)
        with self._executing_lock:
            self._executing.add(key)
        try:
            yield
        finally:
            with self._executing_lock:
                self._executing.discard(key)

    def executing_runs(self) -> set[str]:
        with self._executing_lock:
            return set(self._executing)

    @property
    def started(self) -> bool:
        return self._thread is not None and self._pid == os.getpid() and self._thread.is_alive()

    def start(
        self,
        *,
        node_id: str,
        region: str,
        capacity: int,
        endpoint: str,
        metadata: dict,
        register_now: bool = True,
    ) -> None:
        """Register, then heartbeat every heartbeat_interval_s from a daemon thread.

        register_now=False leaves the registration to the thread too, so it never joins
        a transaction the caller may have open (an API request executing a run).
        """
        with self._lock:
            if self.started:
                return
            self.node_id = node_id
            self._registration = {
                "node_id": node_id,
                "region": region,
                "endpoint": endpoint,
                "capacity": capacity,
                "metadata": metadata,
            }
            if register_now:
                self._register()
            self._stop = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run,
                kwargs={"register_first": not register_now},
                name=f"node-heartbeat-{node_id}",
                daemon=True,
            )
            self._thread.start()
        logger.info("node %s registered (capacity %s)", node_id, capacity)

    def ensure_started(self) -> None:
        """For API processes that execute runs: register and heartbeat, once per process."""
        if not settings.NODE_AUTOREGISTER or self.managed_by_worker or self.started:
            return
        try:
            self.start(
                node_id=settings.ORCHESTRATOR_NODE_ID,
                region=settings.ORCHESTRATOR_REGION,
                capacity=settings.HANDLER_THREADS,
                endpoint=settings.PUBLIC_BASE_URL,
                # An API process runs sync work only: it consumes no queue.
                metadata={"kind": "api", "pid": os.getpid(), "queues": []},
                register_now=False,
            )
        except Exception:
            # Being a node is bookkeeping: the run itself must still execute. The next
            # run tries again.
            logger.exception("node %s could not register", settings.ORCHESTRATOR_NODE_ID)
            return
        atexit.register(self.stop)

    def stop(self, *, unregister: bool = True) -> None:
        """Stop heartbeating and, on a graceful exit, shut the node down (ends OFFLINE)."""
        with self._lock:
            thread, self._thread = self._thread, None
            owned = thread is not None and self._pid == os.getpid()
            if not owned:
                return
            self._stop.set()
            thread.join(timeout=5)
            drain, self._drain_thread = self._drain_thread, None
            if drain is not None:
                drain.join(timeout=5)
            if unregister and self.node_id:
                try:
                    import_string(SHUTDOWN_SERVICE)(
                        node_id=self.node_id, grace_s=self.shutdown_grace_s
                    )
                except NodeNotFound:
                    pass
                except Exception:
                    logger.exception("node %s could not shut down", self.node_id)
                    self._unregister_only()
                finally:
                    connection.close()

    def _unregister_only(self) -> None:
        """At least OFFLINE when the full shutdown failed: the reaper re-queues its runs."""
        try:
            node_unregister(node_id=self.node_id, reason="graceful shutdown")
        except NodeNotFound:
            pass
        except Exception:
            logger.exception("node %s could not unregister", self.node_id)

    def drain_soon(self) -> None:
        """DRAINING now, from a thread: called from a signal handler, which must not query."""
        if not self.started or self._drain_thread is not None:
            return
        self._drain_thread = threading.Thread(
            target=self._drain, name=f"node-drain-{self.node_id}", daemon=True
        )
        self._drain_thread.start()

    def _drain(self) -> None:
        try:
            node_drain(node_id=self.node_id)
        except (NodeNotFound, NodeStateConflict):
            pass  # gone, or already past draining: the shutdown deals with it
        except Exception:
            logger.exception("node %s could not drain", self.node_id)
        finally:
            connection.close()

    def install_sigterm_handler(self) -> bool:
        """Shut the node down on SIGTERM before the server's own handler runs.

        Only from the main thread (Python's rule for signal handlers): gunicorn and uvicorn
        load the application there, and so does `runserver --noreload`; runserver's
        autoreloader loads it in another thread, where Ctrl-C (then atexit) does the same.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN or previous == self._on_sigterm:
            return False
        self._previous_sigterm = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def _on_sigterm(self, signum, frame) -> None:
        # A handler runs in the main thread between two bytecodes, perhaps in the middle of
        # a query on that thread's connection: the shutdown runs in a thread of its own,
        # while request threads go on finishing their runs. The server's handler runs once
        # the node is OFFLINE, so the process never exits half-way through the shutdown.
        stopping = threading.Thread(target=self.stop, name="node-shutdown")
        stopping.start()
        stopping.join(timeout=self.shutdown_grace_s + SHUTDOWN_JOIN_MARGIN_S)
        previous = self._previous_sigterm
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL (or a handler installed outside Python): exit as the default would
            raise SystemExit(128 + signum)

    def _register(self) -> None:
        node_register(
            **self._registration,
            capabilities=registry.keys(),
            version=node_version(),
        )

    def beat(self) -> None:
        """One heartbeat: count this node's RUNNING runs, read the load, send it."""
        node_id = self.node_id
        # run_active_node_idx.
        active = AgentRun.objects.filter(node_id=node_id, status=RunStatus.RUNNING).count()
        held = worker_held_runs() if self.managed_by_worker else self.executing_runs()
        try:
            result = node_heartbeat(
                node_id=node_id,
                active_runs=active,
                cpu_utilization=cpu_utilization(),
                memory_utilization=memory_utilization(),
                # A worker extends the leases of the runs its pool is executing, an API
                # process those it executes itself; no others.
                held_runs=held,
            )
        except NodeNotFound:
            result = None
        if result is None or (not result.live and result.status == NodeStatus.FAILED):
            # Deleted by an operator, or failed over while it was in fact alive (a long
            # pause): its runs were moved, so it rejoins as a fresh node.
            logger.warning("node %s is %s: registering again", node_id, result and result.status)
            self._register()

    def _interval(self) -> float:
        try:
            return float(config_current()["nodes"]["heartbeat_interval_s"])
        except Exception:
            return DEFAULT_HEARTBEAT_INTERVAL_S

    def _run(self, *, register_first: bool = False) -> None:
        try:
            if register_first:
                try:
                    self._register()
                except Exception:
                    # The first beat finds the node missing and registers it then.
                    logger.exception("node %s could not register", self.node_id)
            interval = self._interval()
            while True:
                # A connection per beat (every few seconds) costs little, and a thread
                # that holds none while it waits cannot leak one into forked processes.
                connection.close()
                if self._stop.wait(interval):
                    break
                try:
                    close_old_connections()
                    self.beat()
                    interval = self._interval()
                except Exception:
                    logger.exception("heartbeat of node %s failed", self.node_id)
        finally:
            connection.close()


runtime = NodeRuntime()


EXECUTE_RUN_TASK = "orchestration.execute_run"


def worker_held_runs() -> set[str] | None:
    """The runs this Celery worker's pool is executing now (None: unknown, so all).

    Celery's main process tracks the requests its pool processes have accepted and not yet
    finished (celery.worker.state.active_requests). A pool process that dies mid-run drops
    its request from that set, and a worker restarted under the same node id starts with an
    empty one: neither keeps a lease alive for a run nobody executes.
    """
    from celery.worker import state

    for _ in range(3):
        try:
            requests = list(state.active_requests)
        except RuntimeError:  # the set changed size while it was copied: read it again
            continue
        return {
            str(request.args[0])
            for request in requests
            if request.task_name == EXECUTE_RUN_TASK and request.args
        }
    return None


# --- Celery worker signals ---------------------------------------------------------------


def _worker_queues() -> list[str]:
    return [
        node_queue(settings.ORCHESTRATOR_NODE_ID),
        region_queue(settings.ORCHESTRATOR_REGION),
    ]


@signals.celeryd_after_setup.connect
def worker_queues_add(sender, instance, **kwargs) -> None:
    """Consume this node's own queue and its region's, besides those given with -Q."""
    # Pool processes are forked after this: they inherit the flag and never register.
    runtime.managed_by_worker = True
    for queue in _worker_queues():
        instance.app.amqp.queues.select_add(queue)


@signals.worker_process_init.connect
def worker_process_marked(**kwargs) -> None:
    runtime.managed_by_worker = True


@signals.worker_ready.connect
def worker_node_register(sender, **kwargs) -> None:
    if not settings.NODE_AUTOREGISTER:
        return
    runtime.managed_by_worker = True
    consumer = sender
    controller = getattr(consumer, "controller", None)
    concurrency = getattr(controller, "concurrency", None) or getattr(
        getattr(consumer, "pool", None), "num_processes", None
    )
    queues = sorted(q.name for q in consumer.app.amqp.queues.consume_from.values())
    runtime.start(
        node_id=settings.ORCHESTRATOR_NODE_ID,
        region=settings.ORCHESTRATOR_REGION,
        capacity=int(concurrency or 1),
        endpoint=f"celery://{consumer.hostname}",
        metadata={
            "kind": "celery-worker",
            "hostname": consumer.hostname,
            "pid": os.getpid(),
            "queues": queues or [*_worker_queues(), default_queue()],
        },
    )
    # Registered from the main process: release its connection, so pool processes the
    # worker forks later (replacing a dead one) do not inherit an open socket.
    connection.close()


@signals.worker_shutting_down.connect
def worker_node_drain(sender, **kwargs) -> None:
    """A warm shutdown began (SIGTERM): routing stops sending this node work at once."""
    runtime.drain_soon()


@signals.worker_shutdown.connect
def worker_node_unregister(sender, **kwargs) -> None:
    # Celery's warm shutdown has waited for the tasks being executed: the shutdown service
    # finds little to wait for, hands over what is left and ends OFFLINE.
    runtime.stop(unregister=True)


# --- API processes ---------------------------------------------------------------------


def api_node_start() -> None:
    """config/wsgi.py and config/asgi.py: this process serves the API, so it is a node.

    Registered (and heartbeating) from the start rather than on its first run, so the
    node bootstrap_orchestrator registered under the same ORCHESTRATOR_NODE_ID stays live,
    and shut down on SIGTERM (or at exit) through the same service as a worker.
    """
    if not settings.NODE_AUTOREGISTER:
        return
    runtime.install_sigterm_handler()
    runtime.ensure_started()
