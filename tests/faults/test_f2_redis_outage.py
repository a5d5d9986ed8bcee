"""F2 Redis outage during load, under each POLICY_FAIL_MODE.

A private redis-server (servers.PrivateRedis; the shared one is never touched) is the
deployment's cache, policy store and Celery broker. The API under uvicorn, a Celery worker
and beat use it, with the test database. Clients submit async and sync runs and read runs
back; mid-load the server is killed (its queues die with it: no persistence) and started
again on the same port.

The contract (README, POLICY_FAIL_MODE; API.md): with ``open`` every request is admitted
during the outage: async runs are accepted (202) although the broker is gone, because the
committed PENDING row is the acceptance and the reaper re-enqueues runs nobody picked up;
sync runs execute (200). With ``closed`` submissions are refused with 429 RATE_LIMITED and
Retry-After (a sync run admitted just before may end 502 CIRCUIT_OPEN, also with
Retry-After). No other 5xx, no unanswered request, every accepted run in the database and
terminal once Redis is back, and the shared rate limits work again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter

import httpx
import pytest
import redis

from runs.choices import TERMINAL_RUN_STATES, RunStatus
from runs.models import AgentRun
from tests.faults.figures import record
from tests.faults.harness import fleet_configure, statuses
from tests.faults.scale import pick
from tests.faults.servers import (
    ApiServer,
    CeleryBeat,
    CeleryWorker,
    Load,
    PrivateRedis,
    project_env,
    wait_until,
)
from tests.orchestration.workers import TEST_HANDLER_MODULES
from tests.orchestration.workers import test_database_url as worker_database_url

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BEFORE_S = pick(ci=2.0, full=5.0)
OUTAGE_S = pick(ci=5.0, full=10.0)
AFTER_S = pick(ci=2.0, full=5.0)
# Once Redis answers again, a policy store that saw it down keeps answering its fail mode
# for up to unavailable_backoff_s (0.5 s) before it asks again (redis_store.py).
RECOVERY_S = 1.0
ASYNC_CLIENTS = pick(ci=2, full=4)
# The agent whose shared rate limit must work again once Redis is back.
LIMIT = 3
# Queued messages die with the server; the reaper (beat, every 5 s) re-enqueues their
# PENDING runs after pending_timeout_s.
FLEET = {"pending_timeout_s": 6, "max_attempts": 6}
# What each fail mode may answer to a submission that overlapped the outage, besides 2xx.
OUTAGE_REFUSALS = {
    "open": set(),
    "closed": {(429, "RATE_LIMITED"), (502, "CIRCUIT_OPEN")},
}


# Both fail modes are one scenario: each run of a mode adds its figures to the record.
_MODES: dict[str, tuple[dict, bool]] = {}


@contextlib.contextmanager
def f2_scenario(mode: str):
    figures: dict = {}
    passed = False
    try:
        yield figures
        passed = True
    except BaseException as exc:
        figures.setdefault("failure", f"{type(exc).__name__}: {str(exc)[:300]}")
        raise
    finally:
        _MODES[mode] = (figures, passed)
        record(
            "F2",
            "Redis outage",
            {f"POLICY_FAIL_MODE={m}": f for m, (f, _) in sorted(_MODES.items(), reverse=True)},
            passed=all(ok for _, ok in _MODES.values()),
        )


@pytest.fixture
def private_redis():
    with PrivateRedis() as server:
        yield server


def in_contract(answer, mode: str) -> bool:
    if answer.status in (200, 202) and answer.envelope:
        return True
    if not answer.phases & {"outage", "recovering"} or not answer.submission:
        return False
    return (
        (answer.status, answer.code) in OUTAGE_REFUSALS[mode]
        and answer.envelope
        and answer.retry_after is not None
    )


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_f2_redis_outage_answers_per_fail_mode_and_loses_no_run(
    mode, tenant_a, make_agent, private_redis, tmp_path
):
    fleet = fleet_configure(**FLEET)
    make_agent("Loader", "test-sleep", intents=["load"])
    make_agent(
        "Limited",
        "test-sleep",
        intents=["limited"],
        config={"rate_limit": {"limit": LIMIT, "window_s": 600}},
    )
    env = project_env(
        DATABASE_URL=worker_database_url(),
        REDIS_URL=private_redis.url,
        CELERY_BROKER_URL=private_redis.url,
        POLICY_FAIL_MODE=mode,
        AGENT_HANDLER_MODULES=TEST_HANDLER_MODULES,
        NODE_AUTOREGISTER="true",
        RUN_LEASE_SECONDS=str(int(fleet["lease_s"])),
    )

    def submit(run_mode: str):
        def request(http, i):
            return http.post(
                "/api/orchestrate",
                json={"intent": "load", "payload": {"sleep_ms": 10}, "mode": run_mode},
            )

        return request

    recent: list[str] = []

    def remember(answer):
        if answer.submission and answer.run_id and answer.status in (200, 202):
            recent.append(answer.run_id)

    def read(http, i):
        return http.get(f"/api/runs/{recent[-1]}/" if recent else "/api/runs/")

    clients = {f"async-{n}": submit("async") for n in range(ASYNC_CLIENTS)}
    clients["sync"] = submit("sync")
    clients["reader"] = read

    api = ApiServer(env, tmp_path / "api.log")
    worker = CeleryWorker(env, tmp_path / "worker.log", f"f2-{uuid.uuid4().hex[:6]}")
    beat = CeleryBeat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    load = Load("", tenant_a.raw_key, {})  # replaced once the servers are up
    limited: list = []
    with f2_scenario(mode) as figures:
        try:
            api.start()
            worker.start()
            beat.start()
            load = Load(api.base_url, tenant_a.raw_key, clients, on_answer=remember)
            load.start("before")
            time.sleep(BEFORE_S)
            load.phase = "outage"
            private_redis.stop()
            time.sleep(OUTAGE_S)
            private_redis.start()
            load.phase = "recovering"
            time.sleep(RECOVERY_S)
            load.phase = "after"
            time.sleep(AFTER_S)
            load.stop()

            # Policies resume: the shared limit admits exactly LIMIT, then refuses.
            with httpx.Client(
                base_url=api.base_url,
                headers={"Authorization": f"Bearer {tenant_a.raw_key}"},
                timeout=30,
            ) as http:
                for _ in range(LIMIT + 2):
                    response = http.post(
                        "/api/orchestrate", json={"intent": "limited", "mode": "async"}
                    )
                    limited.append(response)
            policy_keys = len(redis.Redis(port=private_redis.port).keys("acp:pol:*"))

            accepted = load.accepted_run_ids() | {
                r.json()["runId"] for r in limited if r.status_code == 202
            }
            runs = AgentRun.objects.filter(pk__in=accepted)
            budget = fleet["pending_timeout_s"] * fleet["max_attempts"] + 60
            # On time out the figures and assertions below say which runs did not end.
            with contextlib.suppress(AssertionError):
                # Every run, also one whose request was answered otherwise after its row
                # was written.
                wait_until(
                    lambda: not AgentRun.objects.exclude(status__in=TERMINAL_RUN_STATES).exists(),
                    timeout=budget,
                    what="every run to end",
                    interval=0.5,
                )
            processes_alive = api.alive() and worker.alive()
        finally:
            load.stop()
            beat.stop()
            worker.stop()
            api.stop()

        answers = load.answers
        outside = [a for a in answers if not in_contract(a, mode)]
        during = [a for a in answers if a.submission and a.phases == frozenset({"outage"})]
        limited_outcomes = [
            (r.status_code, (r.json().get("error") or {}).get("code")) for r in limited
        ]
        figures.update(
            {
                "Redis down (s)": OUTAGE_S,
                "clients": len(clients),
                "requests": len(answers),
                "requests by outcome": load.by_outcome(),
                "submissions by outcome, sent and answered during the outage": load.by_outcome(
                    during
                ),
                "requests without an answer": sum(a.status is None for a in answers),
                "answers outside the contract": len(outside),
                "5xx outside the contract": sum(
                    a.status is not None and a.status >= 500 for a in outside
                ),
                "accepted runs": len(accepted),
                "accepted runs in the database": runs.count(),
                "run status after recovery": statuses(runs),
                # POLICY_FAIL_MODE=closed: a run that met the outage in the worker fails
                # CIRCUIT_OPEN without calling its handler (the README's contract).
                "failed runs by error code": dict(
                    Counter(
                        runs.filter(status=RunStatus.FAILED).values_list("error_code", flat=True)
                    )
                ),
                "non-terminal runs after recovery": runs.exclude(
                    status__in=TERMINAL_RUN_STATES
                ).count(),
                f"rate limit {LIMIT} after recovery, {LIMIT + 2} submissions": [
                    f"{status} {code}" if code else str(status) for status, code in limited_outcomes
                ],
                "runs in the database (any answer)": AgentRun.objects.count(),
                "non-terminal runs in the database (any answer)": AgentRun.objects.exclude(
                    status__in=TERMINAL_RUN_STATES
                ).count(),
                "policy keys in Redis after recovery": policy_keys,
            }
        )

        assert not [a for a in answers if a.status is None], "requests left unanswered"
        assert not outside, load.by_outcome(outside)
        # The fail mode decided what the outage did to submissions made in its midst.
        assert during, "no submission fell wholly inside the outage"
        if mode == "open":
            assert all(a.status in (200, 202) for a in during), load.by_outcome(during)
        else:
            assert all(a.status == 429 and a.code == "RATE_LIMITED" for a in during), (
                load.by_outcome(during)
            )
        assert any(a.status in (200, 202) for a in answers if a.phases == frozenset({"after"}))
        assert processes_alive
        assert figures["accepted runs in the database"] == len(accepted) > 0
        non_terminal = figures["non-terminal runs after recovery"]
        assert non_terminal == 0, figures["run status after recovery"]
        assert figures["non-terminal runs in the database (any answer)"] == 0
        assert limited_outcomes == [(202, None)] * LIMIT + [(429, "RATE_LIMITED")] * 2
        assert all("Retry-After" in r.headers for r in limited[LIMIT:])
        assert policy_keys > 0
