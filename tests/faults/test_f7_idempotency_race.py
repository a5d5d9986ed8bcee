"""F7 Idempotency race: 100 concurrent POSTs with one Idempotency-Key against the API
under uvicorn create exactly one run, executed once; every answer is the run's (200) or
"in progress" (409), never a second run and never a 5xx.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter

import httpx
import pytest
from django.db import connection
from django.db.models import Count, Q

from runs.models import AgentRun
from tests.faults.figures import scenario
from tests.faults.harness import ApiServer
from tests.faults.scale import pick

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROUNDS = pick(ci=1, full=5)
CONCURRENT = 100


def race(api: ApiServer, raw_key: str, key: str) -> list[tuple]:
    """CONCURRENT clients, each on its own connection, released at the same instant."""
    gate = threading.Barrier(CONCURRENT)
    answers: list[tuple] = []
    lock = threading.Lock()

    def one() -> None:
        with api.client(raw_key, timeout=60) as client:
            client.get("/healthz")  # connected before the gate opens
            gate.wait(timeout=60)
            try:
                response = client.post(
                    "/api/orchestrate",
                    json={"intent": "nap", "payload": {"sleep_ms": 300}},
                    headers={"Idempotency-Key": key},
                )
                body = response.json()
                error = body.get("error") or {}
                answer = (response.status_code, body.get("runId"), error.get("code"))
            except (httpx.HTTPError, ValueError) as exc:
                answer = (type(exc).__name__, None, None)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


class ConnectionSampler:
    """The peak number of connections to this test database while it runs (a thread)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with connection.cursor() as cursor:
                while not self._stop.wait(0.02):
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    )
                    self.peak = max(self.peak, cursor.fetchone()[0])
        finally:
            connection.close()

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_f7_concurrent_posts_with_one_idempotency_key_create_exactly_one_run(tenant_a, make_agent):
    agent = make_agent("Sleeper", "test-sleep", intents=["nap"])
    api = ApiServer(log=os.environ.get("FAULTS_API_LOG"))
    keys = [f"race-{uuid.uuid4().hex[:12]}" for _ in range(ROUNDS)]
    rounds: list[list[tuple]] = []
    with scenario("F7", "Idempotency race") as figures:
        try:
            api.start()
            with ConnectionSampler() as sampler:
                for key in keys:
                    rounds.append(race(api, tenant_a.raw_key, key))
        finally:
            api.stop()

        answers = Counter(str(status) for answers in rounds for status, _, _ in answers)
        errors = Counter(code for answers in rounds for _, _, code in answers if code)
        runs = AgentRun.objects.filter(agent=agent)
        executions = runs.annotate(
            attempts_rows=Count("metric_rows", filter=Q(metric_rows__name="attempts")),
            tools=Count("tool_executions", distinct=True),
        )
        per_key = {key: runs.filter(idempotency_key=key).count() for key in keys}
        run_ids_answered = [{run_id for _, run_id, _ in answers if run_id} for answers in rounds]
        figures.update(
            {
                "rounds (one key each)": ROUNDS,
                "concurrent POSTs per round": CONCURRENT,
                "answers": dict(sorted(answers.items())),
                "error codes": dict(sorted(errors.items())),
                "runs per key": sorted(set(per_key.values())),
                "runs created": runs.count(),
                "distinct run ids answered per key": sorted({len(s) for s in run_ids_answered}),
                "peak database connections during the race": sampler.peak,
                "runs executed more than once": executions.filter(
                    Q(attempts_rows__gt=1) | Q(tools__gt=1)
                ).count(),
            }
        )
        assert sum(answers.values()) == ROUNDS * CONCURRENT
        assert set(answers) <= {"200", "409"}, answers
        assert set(per_key.values()) == {1}
        assert runs.count() == ROUNDS
        for key, answered in zip(keys, run_ids_answered, strict=True):
            assert answered == {str(runs.get(idempotency_key=key).pk)}
        assert {(r.attempts_rows, r.tools) for r in executions} == {(1, 1)}
