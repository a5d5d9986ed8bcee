"""The Redis policy store against a real Redis, from several OS processes.

Worker processes are started with the 'spawn' method and build a RedisPolicyStore
directly (the store needs no Django). Every test uses its own key prefix, so tests never
see each other's state, and removes its keys afterwards.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from orchestration.policies import (
    CircuitState,
    LocalPolicyStore,
    PolicyStoreUnavailable,
    RedisPolicyStore,
    policy_store_from_settings,
)
from orchestration.policies.settings import CircuitSettings, RateLimit

REDIS_URL = os.environ.get("REDIS_URL", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REDIS_URL, reason="needs a real Redis (REDIS_URL)"),
]


def circuit_settings(**overrides) -> CircuitSettings:
    values = {
        "failure_threshold": 3,
        "wait_in_open_s": 10.0,
        "permitted_probes": 2,
        "window_size": 20,
        "minimum_calls": 10,
        "failure_rate_threshold": 50.0,
        "slow_call_s": None,
    }
    values.update(overrides)
    return CircuitSettings(**values)


# --- worker processes ------------------------------------------------------------------------
def _sleep_until(start_at: float) -> None:
    # Every worker is already running and connected, so waking at one wall-clock instant
    # makes them race for real.
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def _worker_main(url: str, inbox, outbox) -> None:
    """A separate OS process: run policy decisions on command and report the answers."""
    stores: dict[str, RedisPolicyStore] = {}
    while (command := inbox.get()) is not None:
        op, prefix, kwargs = command
        if prefix not in stores:
            stores[prefix] = RedisPolicyStore(url, key_prefix=prefix)
        store = stores[prefix]
        if op == "ping":
            outbox.put(store.client.ping())
        elif op == "rate":
            _sleep_until(kwargs["start_at"])
            outbox.put(
                [
                    store.rate_limit(keys=kwargs["keys"], limit=kwargs["limit"])
                    for _ in range(kwargs["n"])
                ]
            )
        elif op == "fail":
            transitions = []
            for _ in range(kwargs["n"]):
                permit = store.circuit_acquire(agent_key=kwargs["agent"], settings=kwargs["cs"])
                transitions.append(
                    store.circuit_record(
                        agent_key=kwargs["agent"],
                        settings=kwargs["cs"],
                        permit=permit,
                        success=False,
                    )
                )
            outbox.put(transitions)
        elif op == "acquire":
            _sleep_until(kwargs.get("start_at", 0.0))
            outbox.put(store.circuit_acquire(agent_key=kwargs["agent"], settings=kwargs["cs"]))
    for store in stores.values():
        store.close()


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    inbox: multiprocessing.queues.Queue
    outbox: multiprocessing.queues.Queue

    def send(self, op: str, prefix: str, **kwargs) -> None:
        self.inbox.put((op, prefix, kwargs))

    def result(self, timeout: float = 30.0):
        try:
            return self.outbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker {self.process.pid} did not answer") from None


@pytest.fixture(scope="module")
def workers() -> Iterator[list[Worker]]:
    ctx = multiprocessing.get_context("spawn")
    pool = []
    for _ in range(6):
        inbox, outbox = ctx.Queue(), ctx.Queue()
        process = ctx.Process(target=_worker_main, args=(REDIS_URL, inbox, outbox), daemon=True)
        process.start()
        pool.append(Worker(process, inbox, outbox))
    try:
        for worker in pool:
            worker.send("ping", "acp:test:warmup:")
        assert all(worker.result(timeout=60) for worker in pool)
        yield pool
    finally:
        for worker in pool:
            worker.inbox.put(None)
        for worker in pool:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()


# --- fixtures ----------------------------------------------------------------------------------
def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"acp:test:{uuid.uuid4().hex[:12]}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    _delete_prefix(client, value)
    client.close()


@pytest.fixture
def store(prefix) -> Iterator[RedisPolicyStore]:
    instance = RedisPolicyStore(REDIS_URL, key_prefix=prefix)
    yield instance
    instance.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SpareRedis:
    """A redis-server of the test's own, so stopping it disturbs nobody else."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def spare_redis() -> Iterator[SpareRedis]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not on PATH")
    server = SpareRedis()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)  # in case a test left it stopped
    server.stop()


# --- rate limit -----------------------------------------------------------------------------
def _redis_now_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1_000_000 + micros


def test_four_processes_admit_exactly_the_limit(workers, prefix, store):
    # GCRA admits a burst of exactly `limit`, then one per interval (window / limit). With
    # an interval of 36 s, the 1,000 racing requests get the burst and nothing more unless
    # the race itself lasts 36 s (measured on the Redis clock the script uses).
    limit = RateLimit(limit=100, window_s=3600)
    interval_us = limit.interval_us
    started_us = _redis_now_us(store.client)
    start_at = time.time() + 0.5
    for i, worker in enumerate(workers[:4]):
        keys = [("organization", "rl:org-1:agent-1"), ("principal", f"rl:user-{i}:agent-1")]
        worker.send("rate", prefix, keys=keys, limit=limit, n=250, start_at=start_at)
    decisions = [d for worker in workers[:4] for d in worker.result()]
    ended_us = _redis_now_us(store.client)

    assert len(decisions) == 1000
    admitted = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    # The race is far shorter than one interval, so GCRA's bound is the burst itself.
    assert ended_us - started_us < interval_us
    assert len(admitted) == 100
    # The organization's TAT moved exactly one interval per admission, from the instant of
    # the first one.
    tat = int(store.client.get(f"{prefix}tat:rl:org-1:agent-1"))
    assert started_us <= tat - len(admitted) * interval_us <= ended_us
    assert {d.scope for d in refused} == {"organization"}
    assert all(0 < d.retry_after_s <= 3600 for d in refused)
    # Every refusal is counted, but only one of them may publish an event per 10 s.
    assert store.rate_rejections(agent_key="agent-1") == {"organization": len(refused)}
    assert sum(d.sample_event for d in refused) == 1


def test_rate_limit_retry_after_is_exact(store):
    limit = RateLimit(limit=3, window_s=2)  # a burst of 3, then one per 2/3 s
    keys = [("organization", "rl:org-1:agent-1"), ("principal", "rl:key-1:agent-1")]
    first_at = time.time()
    assert all(store.rate_limit(keys=keys, limit=limit).allowed for _ in range(3))
    time.sleep(0.3)

    asked_at = time.time()
    refused = store.rate_limit(keys=keys, limit=limit)

    assert not refused.allowed
    # The burst's first request has been paid back one interval after it was admitted.
    assert refused.retry_after_s == pytest.approx(first_at + 2 / 3 - asked_at, abs=0.05)
    time.sleep(refused.retry_after_s + 0.02)
    assert store.rate_limit(keys=keys, limit=limit).allowed
    again = store.rate_limit(keys=keys, limit=limit)
    assert not again.allowed
    assert again.retry_after_s == pytest.approx(2 / 3 - 0.02, abs=0.05)


def test_the_longest_wait_among_full_keys_is_the_answer(store):
    limit = RateLimit(limit=1, window_s=10)
    store.rate_limit(keys=[("principal", "rl:key-1:agent-1")], limit=limit)
    time.sleep(0.2)
    store.rate_limit(keys=[("organization", "rl:org-1:agent-1")], limit=limit)

    refused = store.rate_limit(
        keys=[("principal", "rl:key-1:agent-1"), ("organization", "rl:org-1:agent-1")],
        limit=limit,
    )

    assert (refused.allowed, refused.scope) == (False, "organization")
    assert refused.retry_after_s == pytest.approx(10, abs=0.1)


def test_a_refusal_moves_no_key_and_idle_keys_expire(store):
    limit = RateLimit(limit=2, window_s=1)  # interval 0.5 s, burst 1 s
    org, caller = ("organization", "rl:org-1:agent-1"), ("principal", "rl:key-1:agent-1")
    assert store.rate_limit(keys=[org], limit=limit).allowed
    assert store.rate_limit(keys=[org], limit=limit).allowed
    tat_key = f"{store.prefix}tat:{org[1]}"
    tat = int(store.client.get(tat_key))

    def expires_at_us() -> int:
        expires_in_ms = store.client.pttl(tat_key)
        return _redis_now_us(store.client) + expires_in_ms * 1000

    # A key outlives its TAT (forgetting it early would admit too much) and goes away by
    # itself once idle: between one and two bursts after it.
    assert tat + 1_000_000 - 2_000 <= expires_at_us() <= tat + 2_000_000 + 50_000

    # The organization refuses: the caller's fresh key must not have been charged either.
    refused = store.rate_limit(keys=[caller, org], limit=limit)
    assert (refused.allowed, refused.scope) == (False, "organization")
    assert int(store.client.get(tat_key)) == tat
    assert store.rate_limit(keys=[caller], limit=limit).remaining == 1
    assert expires_at_us() >= tat + 1_000_000 - 2_000


def test_a_key_is_re_armed_only_when_its_tat_enters_the_next_span(store):
    """Expiry is set once per span of one burst (here 1 s), not on every write."""
    limit = RateLimit(limit=2, window_s=1)  # interval 0.5 s
    keys = [("organization", "rl:org-1:agent-1")]
    tat_key = f"{store.prefix}tat:{keys[0][1]}"

    def expiry_ms(at: float) -> int:
        assert store.rate_limit(keys=keys, limit=limit, now=at).allowed
        return store.client.pttl(tat_key)

    # Explicit script times: TAT 1000.5 lies in span [1000, 1001), so the key expires at
    # the end of the next span, 1002 -- 2 s after the request.
    assert 1_900 < expiry_ms(1000.0) <= 2_000
    # TAT 1001.0 entered span [1001, 1002): re-armed to 1003.
    assert 2_900 < expiry_ms(1000.0) <= 3_000
    # TAT 1001.5 stays in that span: the expiry is kept (a re-arm would answer 2.4 s).
    assert 2_800 < expiry_ms(1000.6) <= 3_000
    assert int(store.client.get(tat_key)) == 1_001_500_000


# --- circuit breaker -------------------------------------------------------------------------
def test_a_circuit_opened_in_one_process_rejects_in_another_and_probes_are_bounded(workers, store):
    cs = circuit_settings(wait_in_open_s=1.0, permitted_probes=2)
    prefix = store.prefix
    process_a, process_b = workers[0], workers[1]

    process_a.send("fail", prefix, agent="agent-1", cs=cs, n=3)
    assert process_a.result() == [None, None, CircuitState.OPEN]
    process_b.send("acquire", prefix, agent="agent-1", cs=cs)
    rejected = process_b.result()
    assert (rejected.allowed, rejected.state) == (False, CircuitState.OPEN)
    assert 0 < rejected.retry_after_s <= 1.0

    snapshot = store.circuit_snapshot(agent_key="agent-1")
    start_at = max(snapshot.next_probe_at, time.time()) + 0.3
    for worker in workers:
        worker.send("acquire", prefix, agent="agent-1", cs=cs, start_at=start_at)
    permits = [worker.result() for worker in workers]

    probes = [p for p in permits if p.allowed]
    assert len(probes) == cs.permitted_probes
    assert all(p.probe and p.state == CircuitState.HALF_OPEN for p in probes)
    assert [p.transition for p in permits if p.transition] == [CircuitState.HALF_OPEN]
    assert store.circuit_snapshot(agent_key="agent-1").probes_in_flight == 2

    assert (
        store.circuit_record(agent_key="agent-1", settings=cs, permit=probes[0], success=True)
        == CircuitState.CLOSED
    )
    # The other probe's reservation went with the transition: its outcome changes nothing.
    assert (
        store.circuit_record(agent_key="agent-1", settings=cs, permit=probes[1], success=False)
        is None
    )
    assert store.circuit_snapshot(agent_key="agent-1").state == CircuitState.CLOSED


def test_circuit_open_retry_after_and_times_come_from_redis(store):
    cs = circuit_settings(wait_in_open_s=2.0)
    for _ in range(3):
        permit = store.circuit_acquire(agent_key="agent-1", settings=cs)
        opened_near = time.time()
        store.circuit_record(agent_key="agent-1", settings=cs, permit=permit, success=False)
    time.sleep(0.3)

    asked_at = time.time()
    rejected = store.circuit_acquire(agent_key="agent-1", settings=cs)
    snapshot = store.circuit_snapshot(agent_key="agent-1")

    assert (rejected.allowed, rejected.state) == (False, CircuitState.OPEN)
    assert rejected.retry_after_s == pytest.approx(opened_near + 2 - asked_at, abs=0.05)
    assert snapshot.opened_at == pytest.approx(opened_near, abs=0.05)  # epoch seconds
    assert snapshot.next_probe_at == pytest.approx(snapshot.opened_at + 2, abs=1e-6)
    time.sleep(rejected.retry_after_s + 0.02)
    probe = store.circuit_acquire(agent_key="agent-1", settings=cs)
    assert (probe.allowed, probe.probe, probe.transition) == (True, True, CircuitState.HALF_OPEN)


def test_failure_rate_over_the_window_opens_the_circuit(store):
    cs = circuit_settings(failure_threshold=100, window_size=4, minimum_calls=4)
    outcomes = [True, False, True, False]  # 50 % once four calls are in
    transitions = []
    for success in outcomes:
        permit = store.circuit_acquire(agent_key="agent-1", settings=cs)
        transitions.append(
            store.circuit_record(agent_key="agent-1", settings=cs, permit=permit, success=success)
        )
    assert transitions == [None, None, None, CircuitState.OPEN]


def test_a_probe_that_never_reports_frees_its_slot_after_the_ttl(store):
    cs = circuit_settings(wait_in_open_s=0.2, permitted_probes=1)
    for _ in range(3):
        permit = store.circuit_acquire(agent_key="agent-1", settings=cs)
        store.circuit_record(agent_key="agent-1", settings=cs, permit=permit, success=False)
    time.sleep(0.25)

    lost = store.circuit_acquire(agent_key="agent-1", settings=cs, probe_ttl_s=0.4)
    assert lost.allowed and lost.probe
    assert not store.circuit_acquire(agent_key="agent-1", settings=cs).allowed
    time.sleep(0.45)
    assert store.circuit_snapshot(agent_key="agent-1").probes_in_flight == 0
    retry = store.circuit_acquire(agent_key="agent-1", settings=cs)
    assert retry.allowed and retry.probe

    # The lost probe reports at last: its reservation is gone, so it decides nothing.
    assert store.circuit_record(agent_key="agent-1", settings=cs, permit=lost, success=True) is None
    assert store.circuit_snapshot(agent_key="agent-1").state == CircuitState.HALF_OPEN
    assert (
        store.circuit_record(agent_key="agent-1", settings=cs, permit=retry, success=True)
        == CircuitState.CLOSED
    )


def test_forcing_overrides_until_released(store):
    cs = circuit_settings()
    store.circuit_force(agent_key="agent-1", state=CircuitState.OPEN)
    refused = store.circuit_acquire(agent_key="agent-1", settings=cs)
    assert (refused.allowed, refused.state) == (False, CircuitState.FORCED_OPEN)

    store.circuit_force(agent_key="agent-1", state=CircuitState.CLOSED)
    for _ in range(5):
        permit = store.circuit_acquire(agent_key="agent-1", settings=cs)
        assert (permit.allowed, permit.state) == (True, CircuitState.FORCED_CLOSED)
        store.circuit_record(agent_key="agent-1", settings=cs, permit=permit, success=False)
    assert store.circuit_snapshot(agent_key="agent-1").state == CircuitState.FORCED_CLOSED

    store.circuit_force(agent_key="agent-1", state=None)
    snapshot = store.circuit_snapshot(agent_key="agent-1")
    assert (snapshot.state, snapshot.consecutive_failures) == (CircuitState.CLOSED, 0)


def test_an_admission_reads_the_circuit_as_circuit_acquire_would(store):
    """rate_limit(circuit_key=) answers the circuit in the same round trip when it admits
    without a probe (CLOSED, FORCED_CLOSED); in any other state it answers None, and the
    caller's circuit_acquire() decides (a probe reservation is never taken by a peek)."""
    cs = circuit_settings(wait_in_open_s=0.2, permitted_probes=1)
    limit = RateLimit(limit=100, window_s=60)
    keys = [("organization", "rl:org-1:agent-1"), ("principal", "rl:key-1:agent-1")]

    def admit():
        decision = store.rate_limit(keys=keys, limit=limit, circuit_key="agent-1")
        assert decision.allowed
        return decision

    first = admit()  # no circuit state yet: CLOSED
    assert first.circuit is not None and first.circuit.state == CircuitState.CLOSED
    assert first.circuit == store.circuit_acquire(agent_key="agent-1", settings=cs)
    assert first.remaining == 99 and admit().remaining == 98  # the allowance as without it

    for _ in range(3):
        permit = store.circuit_acquire(agent_key="agent-1", settings=cs)
        store.circuit_record(agent_key="agent-1", settings=cs, permit=permit, success=False)
    assert admit().circuit is None  # OPEN: the caller asks, and is refused
    assert not store.circuit_acquire(agent_key="agent-1", settings=cs).allowed
    time.sleep(0.25)
    assert admit().circuit is None  # OPEN past its wait: the acquire moves it, not the peek
    probe = store.circuit_acquire(agent_key="agent-1", settings=cs)
    assert (probe.probe, probe.transition) == (True, CircuitState.HALF_OPEN)
    assert admit().circuit is None  # HALF_OPEN
    assert store.circuit_snapshot(agent_key="agent-1").probes_in_flight == 1

    store.circuit_force(agent_key="agent-1", state=CircuitState.CLOSED)
    assert admit().circuit.state == CircuitState.FORCED_CLOSED
    store.circuit_force(agent_key="agent-1", state=CircuitState.OPEN)
    assert admit().circuit is None

    # The limit is the same with or without the circuit's key, on the server's clock: a
    # burst of 2, then a refusal whose wait is one interval (30 s) after the first admission.
    tight = RateLimit(limit=2, window_s=60)
    key_2 = [("principal", "rl:key-2:agent-1")]
    assert store.rate_limit(keys=key_2, limit=tight).allowed
    with_circuit = {"circuit_key": "agent-1", "circuit": circuit_settings()}
    second = store.rate_limit(keys=key_2, limit=tight, **with_circuit)
    assert (second.allowed, second.remaining) == (True, 0)
    refused = store.rate_limit(keys=key_2, limit=tight, **with_circuit)
    assert (refused.allowed, refused.scope, refused.circuit) == (False, "principal", None)
    assert refused.retry_after_s == pytest.approx(30, abs=0.5)


def test_a_success_admitted_in_the_steady_state_is_not_sent_and_changes_nothing(store):
    """CLOSED with a full window of successes: a success there changes nothing, so a permit
    read in that state (steady) records it without a round trip; the same success sent
    anyway would leave the same state. Failures are always recorded."""
    cs = circuit_settings(window_size=4, minimum_calls=4, failure_threshold=2)
    limit = RateLimit(limit=1000, window_s=60)
    keys = [("principal", "rl:key-1:agent-1")]

    def admit():
        return store.rate_limit(keys=keys, limit=limit, circuit_key="agent-1", circuit=cs).circuit

    def record(permit, success):
        return store.circuit_record(
            agent_key="agent-1", settings=cs, permit=permit, success=success
        )

    for _ in range(3):  # filling the window: not steady yet
        permit = admit()
        assert (permit.state, permit.steady) == (CircuitState.CLOSED, False)
        record(permit, True)
    record(admit(), True)
    steady = admit()
    assert steady.steady
    before = store.circuit_snapshot(agent_key="agent-1")
    sent = []
    run = store._run
    store._run = lambda script, command: sent.append(command) or run(script, command)
    try:
        assert record(steady, True) is None
    finally:
        store._run = run
    assert sent == []  # not sent
    assert record(admit(), True) is None  # and sent anyway, the same nothing
    assert store.circuit_snapshot(agent_key="agent-1") == before
    assert (before.window_calls, before.window_failures) == (4, 0)

    # A failure breaks the steady state; the next admission is not steady.
    first_failure = admit()
    assert first_failure.steady
    assert record(first_failure, False) is None
    assert store.circuit_snapshot(agent_key="agent-1").consecutive_failures == 1
    assert not admit().steady
    assert record(admit(), False) == CircuitState.OPEN


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_circuit_acquire_answers_steady_in_the_same_state(store, backend):
    """circuit_acquire (an async run's first attempt, every retry) tells the steady state as
    the rate-limit script does: its success is not sent; a failure is, and ends it."""
    cs = circuit_settings(window_size=3, minimum_calls=3, failure_threshold=2)
    subject = store if backend == "redis" else LocalPolicyStore()

    def acquire():
        return subject.circuit_acquire(agent_key="agent-1", settings=cs)

    def record(permit, success):
        return subject.circuit_record(
            agent_key="agent-1", settings=cs, permit=permit, success=success
        )

    for _ in range(3):
        permit = acquire()
        assert not permit.steady
        record(permit, True)
    steady, other = acquire(), acquire()
    assert steady.steady and other.steady
    # Another call fails after both were admitted; the steady success, ordered at its
    # admission, does not reset the count of failures in a row ...
    assert record(other, False) is None
    assert record(steady, True) is None
    snapshot = subject.circuit_snapshot(agent_key="agent-1")
    assert (snapshot.consecutive_failures, snapshot.window_calls, snapshot.window_failures) == (
        1,
        3,
        1,
    )
    # ... and no admission is steady while the window holds that failure.
    assert not acquire().steady
    # With the failure rate not counted, nothing is steady (every success is recorded).
    no_rate = circuit_settings(window_size=3, minimum_calls=3, failure_rate_threshold=0)
    assert not subject.circuit_acquire(agent_key="agent-2", settings=no_rate).steady


def test_a_steady_answer_is_reused_for_its_span_and_forgotten_on_a_change(prefix, store):
    """POLICY_CIRCUIT_STEADY_REUSE_MS: a process that found the circuit steady does not ask
    again for that long; another process's change is seen after it at most, and this
    process's own failure or force is seen at once."""
    cs = circuit_settings(window_size=3, minimum_calls=3, failure_threshold=2)
    reusing = RedisPolicyStore(REDIS_URL, key_prefix=prefix, steady_reuse_s=0.5)
    asked = []
    real_call = reusing._call

    def counting_call(script, keys, args):
        asked.append(script)
        return real_call(script, keys, args)

    reusing._call = counting_call

    def acquire(subject=reusing, agent="agent-1"):
        return subject.circuit_acquire(agent_key=agent, settings=cs)

    try:
        for _ in range(3):  # not steady yet: every acquire asks, nothing is kept
            permit = acquire()
            assert not permit.steady
            reusing.circuit_record(agent_key="agent-1", settings=cs, permit=permit, success=True)
        asked.clear()
        assert acquire().steady and acquire().steady and acquire().steady
        assert len(asked) == 1  # the first found it steady, the next two reused the answer

        # Another process forces the circuit OPEN: this one admits until its span ends.
        store.circuit_force(agent_key="agent-1", state=CircuitState.OPEN)
        assert acquire().allowed
        time.sleep(0.55)
        refused = acquire()
        assert (refused.allowed, refused.state) == (False, "FORCED_OPEN")
        store.circuit_force(agent_key="agent-1", state=None)

        # This process's own failure is seen at once: the next acquire asks Redis.
        for _ in range(3):
            reusing.circuit_record(agent_key="agent-1", settings=cs, permit=acquire(), success=True)
        steady = acquire()
        assert steady.steady
        asked.clear()
        reusing.circuit_record(agent_key="agent-1", settings=cs, permit=steady, success=False)
        assert not acquire().steady
        assert asked.count(reusing._acquire) == 1

        # So is its own force; and a fake clock (tests) always asks.
        for _ in range(3):
            reusing.circuit_record(
                agent_key="agent-2", settings=cs, permit=acquire(agent="agent-2"), success=True
            )
        assert acquire(agent="agent-2").steady
        reusing.circuit_force(agent_key="agent-2", state=CircuitState.OPEN)
        assert not acquire(agent="agent-2").allowed
        reusing.circuit_force(agent_key="agent-2", state=None)
        asked.clear()
        reusing.circuit_acquire(agent_key="agent-1", settings=cs, now=time.time())
        assert asked == [reusing._acquire]
    finally:
        reusing.close()


def test_the_definitions_version_never_comes_back_after_redis_lost_it(store):
    """Processes keep rows under the version they read; a Redis restarted without its data
    must not hand that version out again (it would pass stale rows for fresh ones)."""
    key = f"{store.prefix}defs"
    first = store.definitions_version()
    assert first > 10**15  # started from the server's clock, in µs
    assert store.definitions_version() == first
    store.definitions_bump()
    assert store.definitions_version() == first + 1
    store.client.delete(key)  # the restart: reading starts it again, later
    restarted = store.definitions_version()
    assert restarted > first + 1
    store.client.delete(key)  # and a change first: the bump starts it again, later
    store.definitions_bump()
    assert store.definitions_version() > restarted


# --- Redis unavailable -------------------------------------------------------------------------
def test_redis_stopped_gives_the_fail_mode_answer_and_work_resumes(spare_redis, caplog):
    caplog.set_level(logging.WARNING, logger="orchestration.policies.redis_store")
    cs = circuit_settings()
    limit = RateLimit(limit=5, window_s=60)
    keys = [("organization", "rl:org-1:agent-1")]
    fail_open = RedisPolicyStore(spare_redis.url, fail_mode="open")
    fail_closed = RedisPolicyStore(spare_redis.url, fail_mode="closed")
    for store in (fail_open, fail_closed):
        assert store.rate_limit(keys=keys, limit=limit).allowed
        assert store.circuit_acquire(agent_key="agent-1", settings=cs).state == CircuitState.CLOSED

    spare_redis.stop()
    started = time.monotonic()
    for _ in range(10):
        admitted = fail_open.rate_limit(keys=keys, limit=limit)
        assert (admitted.allowed, admitted.remaining) == (True, limit.limit)
        permit = fail_open.circuit_acquire(agent_key="agent-1", settings=cs)
        assert (permit.allowed, permit.state) == (True, CircuitState.UNKNOWN)
        assert (
            fail_open.circuit_record(agent_key="agent-1", settings=cs, permit=permit, success=False)
            is None
        )

        refused = fail_closed.rate_limit(keys=keys, limit=limit)
        assert (refused.allowed, refused.scope, refused.retry_after_s) == (
            False,
            "unavailable",
            1.0,
        )
        permit = fail_closed.circuit_acquire(agent_key="agent-1", settings=cs)
        assert (permit.allowed, permit.state, permit.retry_after_s) == (
            False,
            CircuitState.UNAVAILABLE,
            1.0,
        )
        assert fail_closed.circuit_snapshot(agent_key="agent-1").state == CircuitState.UNKNOWN
    assert time.monotonic() - started < 2.0
    for store in (fail_open, fail_closed):
        assert not store.healthy
        assert "Connection" in store.last_error
        with pytest.raises(PolicyStoreUnavailable):
            store.circuit_force(agent_key="agent-1", state=CircuitState.OPEN)
    # One warning per store for the whole outage, not one per decision.
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 2

    spare_redis.start()  # same port, empty script cache
    deadline = time.monotonic() + 5
    while not fail_closed.rate_limit(keys=keys, limit=limit).allowed:
        assert time.monotonic() < deadline, "the store did not reconnect"
        time.sleep(0.1)
    assert fail_closed.healthy
    assert fail_closed.client.script_exists(fail_closed._rate.sha) == [True]
    for store in (fail_open, fail_closed):
        deadline = time.monotonic() + 5
        while store.rate_limit(keys=keys, limit=limit).remaining == limit.limit:
            assert time.monotonic() < deadline, "the store did not reconnect"
            time.sleep(0.1)
        agent = f"agent-{store.fail_mode}"  # both stores share the server and the prefix
        transitions = []
        for _ in range(3):
            permit = store.circuit_acquire(agent_key=agent, settings=cs)
            transitions.append(
                store.circuit_record(agent_key=agent, settings=cs, permit=permit, success=False)
            )
        assert transitions[-1] == CircuitState.OPEN
        assert store.healthy
        store.close()


def test_a_hung_redis_costs_a_socket_timeout_not_a_request(spare_redis):
    store = RedisPolicyStore(spare_redis.url, fail_mode="open")
    keys = [("organization", "rl:org-1:agent-1")]
    limit = RateLimit(limit=5, window_s=60)
    assert store.rate_limit(keys=keys, limit=limit).remaining == 4

    os.kill(spare_redis.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        decision = store.rate_limit(keys=keys, limit=limit)
        assert time.monotonic() - started < 1.0
        assert (decision.allowed, store.healthy) == (True, False)
        assert "Timeout" in store.last_error
    finally:
        os.kill(spare_redis.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 5
    # A fail-open answer leaves the whole limit; an answer from Redis has used some of it.
    while store.rate_limit(keys=keys, limit=limit).remaining == limit.limit:
        assert time.monotonic() < deadline, "the store did not recover"
        time.sleep(0.1)
    assert store.healthy
    store.close()


# --- selection ----------------------------------------------------------------------------------
def test_settings_choose_the_store(settings):
    settings.REDIS_URL = REDIS_URL
    settings.POLICY_FAIL_MODE = "closed"
    settings.POLICY_CIRCUIT_STEADY_REUSE_MS = 250
    chosen = policy_store_from_settings()
    assert (type(chosen), chosen.fail_mode, chosen.shared) == (RedisPolicyStore, "closed", True)
    assert chosen.steady_reuse_s == 0.25
    chosen.close()

    settings.POLICY_REDIS_URL = ""  # policies stay process-local although Redis is configured
    assert isinstance(policy_store_from_settings(), LocalPolicyStore)

    del settings.POLICY_REDIS_URL
    settings.REDIS_URL = None
    assert isinstance(policy_store_from_settings(), LocalPolicyStore)
