"""CPU time per group of processes, from /proc: what a benchmark's run cost every process
that served it (bench.async_runs, B2).

A group is the submitting process (this one), a Celery worker's main process and its pool
processes, PostgreSQL's processes and Redis's. cpu_snapshot() reads each process's own CPU
time and the time of the children it reaped; cpu_used() turns two snapshots into each
group's CPU time in between, ended processes included.
"""

from __future__ import annotations

import os

CPU_GROUPS = (
    "submitting process",
    "worker: main process",
    "worker: pool processes",
    "PostgreSQL",
    "Redis",
)


def cpu_snapshot(worker_pgid: int) -> dict[int, tuple[str, float, float, int]]:
    """Per process of the benchmark, read from /proc: (its group, the CPU time -- user +
    system -- it used so far, the CPU time of the ended children it reaped so far, its
    parent's pid). The
    groups: this process, the worker's main process (it consumes the broker and hands each
    message to a pool process) and its pool processes (they run the tasks), PostgreSQL's
    and Redis's processes (everything on the machine that serves a run)."""
    tick = os.sysconf("SC_CLK_TCK")
    snapshot = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                comm_end = (stat := f.read()).rindex(")")
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1 : comm_end], stat[comm_end + 2 :].split()
        if int(pid) == os.getpid():
            group = CPU_GROUPS[0]
        elif int(pid) == worker_pgid:
            group = CPU_GROUPS[1]
        elif int(fields[2]) == worker_pgid:
            group = CPU_GROUPS[2]
        elif comm.startswith("postgres"):
            group = CPU_GROUPS[3]
        elif comm.startswith("redis-server"):
            group = CPU_GROUPS[4]
        else:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        reaped = (int(fields[13]) + int(fields[14])) / tick
        snapshot[int(pid)] = (group, used, reaped, int(fields[1]))
    return snapshot


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    """CPU time each group used between two snapshots (seconds).

    A process that ended in between -- a PostgreSQL backend whose pool process reconnected
    (CELERY_DB_REUSE_MAX, and Celery's defaults around every task) -- is no longer in
    /proc; its whole life's time went to its parent's reaped-children time. So: what live
    processes used since the first snapshot (all of it for one started in between), plus
    what the groups' parents reaped in between (the PostgreSQL server's parent process for
    its backends, the worker's main process for its pool processes), minus what the ended
    processes had used before the first snapshot."""
    used = dict.fromkeys(CPU_GROUPS, 0.0)
    for pid, (group, cpu, reaped, ppid) in after.items():
        was = before.get(pid)
        known = was is not None and was[0] == group
        used[group] += cpu - (was[1] if known else 0.0)
        children = CPU_GROUPS[2] if group == CPU_GROUPS[1] else group
        parent = after.get(ppid)
        if group in (CPU_GROUPS[1], CPU_GROUPS[3]) and (parent is None or parent[0] != group):
            used[children] += reaped - (was[2] if known else 0.0)
    for pid, (group, cpu, _reaped, _ppid) in before.items():
        if pid not in after:
            used[group] -= cpu
    return used
