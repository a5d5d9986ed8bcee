"""bench.procstat: the CPU accounting behind B2's per-process figures (docs/PERFORMANCE.md).

Processes end while a benchmark runs (PostgreSQL backends of reconnecting workers, pool
processes replaced after max-tasks): their time must land in their group, not vanish.
"""

from __future__ import annotations

import os

import pytest

from bench.procstat import CPU_GROUPS, cpu_snapshot, cpu_used

SUBMITTER, MAIN, POOL, POSTGRES, REDIS = CPU_GROUPS
ME, INIT, POSTMASTER, BACKEND_A, BACKEND_B, WORKER, POOL_1, POOL_2 = (
    100,
    1,
    200,
    201,
    202,
    300,
    301,
    302,
)


def test_ended_processes_count_in_their_group_through_their_parents_reaped_time():
    before = {
        ME: (SUBMITTER, 10.0, 0.0, INIT),
        POSTMASTER: (POSTGRES, 1.0, 5.0, INIT),
        BACKEND_A: (POSTGRES, 0.5, 0.0, POSTMASTER),
        WORKER: (MAIN, 2.0, 0.0, ME),
        POOL_1: (POOL, 3.0, 0.0, WORKER),
    }
    after = {
        ME: (SUBMITTER, 10.5, 0.0, INIT),
        # Backend A ended having used 0.8 s in all: the postmaster reaped it.
        POSTMASTER: (POSTGRES, 1.1, 5.8, INIT),
        BACKEND_B: (POSTGRES, 0.3, 0.0, POSTMASTER),  # started in between
        # Pool process 1 ended having used 3.4 s in all: the worker's main process reaped it.
        WORKER: (MAIN, 2.5, 3.4, ME),
        POOL_2: (POOL, 0.2, 0.0, WORKER),
    }

    used = cpu_used(before, after)

    # postmaster 0.1 + backend A's last 0.3 + backend B's 0.3
    assert used[POSTGRES] == pytest.approx(0.7)
    # pool process 1's last 0.4 + pool process 2's 0.2
    assert used[POOL] == pytest.approx(0.6)
    assert used[MAIN] == pytest.approx(0.5)
    assert used[SUBMITTER] == pytest.approx(0.5)
    assert used[REDIS] == 0.0


def test_a_pid_reused_by_another_group_is_a_new_process():
    before = {ME: (SUBMITTER, 1.0, 0.0, INIT), 400: (REDIS, 7.0, 0.0, INIT)}
    # The Redis process ended (nobody in the snapshots reaped it) and its pid went to a
    # pool process: that one's whole time is new, and Redis's 7 s are not taken from it.
    after = {
        ME: (SUBMITTER, 1.0, 0.0, INIT),
        WORKER: (MAIN, 0.0, 0.0, ME),
        400: (POOL, 0.25, 0.0, WORKER),
    }

    used = cpu_used(before, after)

    assert used[POOL] == pytest.approx(0.25)
    assert used[REDIS] == 0.0


def test_a_snapshot_of_this_machine_finds_this_process_and_the_database():
    snapshot = cpu_snapshot(worker_pgid=-1)

    group, cpu, _reaped, ppid = snapshot[os.getpid()]
    assert group == SUBMITTER
    assert cpu > 0
    assert ppid == os.getppid()
    # The test suite runs against a real PostgreSQL on this machine.
    assert any(entry[0] == POSTGRES for entry in snapshot.values())
