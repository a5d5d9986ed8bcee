"""Private servers for the scenarios that stop or restart one, and the project's processes
on top of them.

A scenario that kills Redis or PostgreSQL must never touch the shared servers other test
sessions use, so it starts its own: a redis-server on a free port, or a PostgreSQL cluster
initialised under /tmp and run as the ``postgres`` OS user (the server refuses to run as
root). Every class here is a context manager whose exit stops what it started, so a
failing test leaves no process and no data directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, *, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _terminate(process: subprocess.Popen | None, *, grace: float = 20.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace``; a no-op once it exited."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


# --- Redis ------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test only: no persistence, stopped and started at will."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self.ping, timeout=15, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """An outage: the server goes away at once (SIGKILL), its connections with it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"no {name} under /usr/lib/postgresql/*/bin")
    return str(candidates[-1])  # the newest major version installed


def _as_postgres(*args: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return list(args)


class PrivateCluster:
    """A throw-away PostgreSQL cluster: trust authentication on 127.0.0.1 only, no fsync
    (a test cluster dies with its data), restarted with ``stop()`` / ``start()``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="acp-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres", group="postgres")
        self.root.chmod(0o700)
        subprocess.run(
            _as_postgres(
                _pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), *args),
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> PrivateCluster:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        self._ctl("-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client and shuts down cleanly: a restart as an
        operator does it. Idempotent."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return self._ctl("status", check=False).returncode == 0

    def createdb(self, name: str) -> str:
        subprocess.run(
            [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self.url(name)

    def close(self) -> None:
        if self.data.exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# --- the project's processes ---------------------------------------------------------------


def project_env(**overrides: str) -> dict[str, str]:
    """The environment of an API or worker process: this one's, plus ``overrides``.

    Logs are JSON lines, as in production: the console format renders every traceback
    richly, which costs more than half a second per error logged during an outage.
    """
    env = {**os.environ, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", **overrides}
    env.setdefault("CELERY_TASK_ALWAYS_EAGER", "false")
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """``python manage.py <args>`` in a child process; fails with its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


class _Process:
    """A child process in a session of its own, its output (stdout and stderr) appended to
    ``log``, or dropped when there is none."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path | str | None) -> None:
        self.args = args
        self.env = env
        self.log = Path(log) if log else None
        self.process: subprocess.Popen | None = None

    def _spawn(self) -> None:
        if self.log is None:
            self.process = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            return
        with self.log.open("ab") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        _terminate(self.process)

    def output(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def __exit__(self, *exc) -> None:
        self.stop()


class ApiServer(_Process):
    """``uvicorn config.asgi:application`` on a free port of 127.0.0.1: the one launcher
    of the API server the tests use (tests.faults.harness.ApiServer gives it the test
    database's environment). ``args``: more uvicorn options."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path | str | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *args,
            ],
            env,
            log,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    url = base_url

    def client(self, raw_key: str, **kwargs) -> httpx.Client:
        """An HTTP client of the server, authenticated with the API key ``raw_key``."""
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {raw_key}"},
            timeout=kwargs.pop("timeout", 30.0),
            **kwargs,
        )

    def _live(self) -> bool:
        if not self.alive():
            raise AssertionError(f"the API server exited:\n{self.output()[-4000:]}")
        try:
            # An http:// URL built from our own port, never a file: one.
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as r:  # noqa: S310
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def start(self, timeout: float = 60) -> ApiServer:
        self._spawn()
        try:
            wait_until(self._live, timeout=timeout, what="the API server", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> ApiServer:
        return self.start()


class CeleryWorker(_Process):
    """A Celery worker on the broker named by the environment, answering pings by name."""

    def __init__(
        self, env: dict[str, str], log: Path, name: str, queues: str = "default", concurrency=2
    ) -> None:
        self.name = name
        self.broker_url = env["CELERY_BROKER_URL"]
        super().__init__(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queues,
                "-n",
                f"{name}@%h",
                "-c",
                str(concurrency),
                "-P",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            {**env, "ORCHESTRATOR_NODE_ID": name},
            log,
        )

    def _answers(self, control: Celery) -> bool:
        if not self.alive():
            raise AssertionError(f"worker {self.name} exited:\n{self.output()[-4000:]}")
        # A broadcast ping: one addressed to the worker's name goes unanswered now and
        # then on the Redis transport.
        me = f"{self.name}@{socket.gethostname()}"
        replies = control.control.ping(timeout=1.0)
        return any(me in reply for reply in replies)

    def start(self, timeout: float = 60) -> CeleryWorker:
        self._spawn()
        # A bare app on the worker's broker. Its broker_url would give way to
        # CELERY_BROKER_URL in this process's environment (the shared broker); the
        # read and write URLs do not.
        control = Celery(set_as_current=False)
        control.conf.broker_read_url = control.conf.broker_write_url = self.broker_url
        try:
            wait_until(lambda: self._answers(control), timeout=timeout, what=f"worker {self.name}")
        finally:
            control.close()
        return self

    def __enter__(self) -> CeleryWorker:
        return self.start()


class CeleryBeat(_Process):
    """Celery beat: the fleet's housekeeping (node sweep, reaper) every 5 s, as deployed."""

    def __init__(self, env: dict[str, str], log: Path, schedule: Path) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "-s",
                str(schedule),
                "-l",
                "WARNING",
            ],
            env,
            log,
        )

    def start(self) -> CeleryBeat:
        self._spawn()
        return self

    def __enter__(self) -> CeleryBeat:
        return self.start()


# What a private database starts with, written by the project's own services in a
# ``manage.py shell`` of that database (the test process's ORM talks to another one).
_SEED = """
import json, os
from agents.services import agent_create, api_key_create, organization_create
from orchestration.services.config import config_update

spec = json.loads(os.environ["FAULTS_SEED"])
organization = organization_create(slug=spec["organization"], name=spec["organization"])
for agent in spec["agents"]:
    agent_create(organization=organization, status="ACTIVE", **agent)
if spec.get("config"):
    config_update(document=spec["config"], partial=True, actor="faults")
print(json.dumps({"key": api_key_create(organization=organization, name="faults").raw_key}))
"""


def database_seed(env: dict[str, str], spec: dict) -> dict:
    """Migrate the database ``env`` names and create ``spec``'s organization, agents
    (``{"name", "handler", "intents", "config"}``) and live configuration; returns
    ``{"key": <raw API key>}``."""
    manage("migrate", "--noinput", "-v", "0", env=env)
    done = manage("shell", "-c", _SEED, env={**env, "FAULTS_SEED": json.dumps(spec)})
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- load -------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One request of a load client: what came back, and in which phases it was in flight."""

    client: str
    phases: frozenset[str]
    status: int | None  # None: no HTTP answer at all (connection refused, reset, timeout)
    code: str | None = None  # error.code of a failure envelope
    retry_after: str | None = None
    json: bool = False
    envelope: bool = False  # a success with a runId, or a failure with error.code/message
    run_id: str | None = None
    failure: str | None = None  # the transport error, when status is None
    submission: bool = False  # a POST /api/orchestrate (its 2xx accepts a run)
    seconds: float = 0.0  # from sending the request to its answer

    @property
    def label(self) -> str:
        if self.status is None:
            return "no answer"
        return f"{self.status} {self.code}" if self.code else str(self.status)


def _answer(client: str, phases: frozenset[str], response: httpx.Response) -> Answer:
    answer = Answer(client, phases, response.status_code)
    answer.submission = (
        response.request.method == "POST" and response.request.url.path == "/api/orchestrate"
    )
    answer.retry_after = response.headers.get("Retry-After")
    try:
        body = response.json()
    except ValueError:
        return answer
    answer.json = isinstance(body, dict)
    if not answer.json:
        return answer
    error = body.get("error")
    if isinstance(error, dict):
        answer.code = error.get("code")
        answer.envelope = (
            body.get("success") is False
            and isinstance(answer.code, str)
            and isinstance(error.get("message"), str)
        )
    answer.run_id = body.get("runId") or body.get("id")
    if response.is_success:
        # A submission's answer names its run; a read answers the object or the page.
        answer.envelope = bool(answer.run_id) or not answer.submission
    return answer


class Load:
    """Client threads that send requests back to back until stopped.

    ``clients`` maps a name to ``request(http, i) -> httpx.Response`` (``http`` is that
    thread's httpx.Client, ``i`` its request number). The test moves ``phase`` along
    (e.g. before -> outage -> after); each answer records every phase its request spanned.
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        clients: dict,
        timeout: float = 30.0,
        on_answer: Callable[[Answer], None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.key = key
        self.clients = clients
        self.timeout = timeout
        self.on_answer = on_answer
        self.answers: list[Answer] = []
        self._history: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def phase(self) -> str:
        return self._history[-1]

    @phase.setter
    def phase(self, value: str) -> None:
        with self._lock:
            self._history.append(value)

    def _spanned(self, first: int) -> frozenset[str]:
        with self._lock:
            return frozenset(self._history[first:])

    def _run(self, name: str, request) -> None:
        with httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=self.timeout,
        ) as http:
            i = 0
            while not self._stop.is_set():
                first = len(self._history) - 1
                sent = time.monotonic()
                try:
                    response = request(http, i)
                except httpx.HTTPError as exc:
                    answer = Answer(name, self._spanned(first), None, failure=repr(exc))
                else:
                    answer = _answer(name, self._spanned(first), response)
                answer.seconds = time.monotonic() - sent
                with self._lock:
                    self.answers.append(answer)
                if self.on_answer is not None:
                    self.on_answer(answer)
                i += 1

    def start(self, phase: str) -> Load:
        self.phase = phase
        for name, request in self.clients.items():
            thread = threading.Thread(target=self._run, args=(name, request), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 10)

    def accepted_run_ids(self) -> set[str]:
        """Runs the API accepted: the runId of every 200/202 answer to a submission."""
        return {
            a.run_id for a in self.answers if a.submission and a.status in (200, 202) and a.run_id
        }

    def by_outcome(self, answers: list[Answer] | None = None) -> dict[str, int]:
        counts = Counter(a.label for a in (self.answers if answers is None else answers))
        return dict(sorted(counts.items()))

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
