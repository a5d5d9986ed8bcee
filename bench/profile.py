"""Profile: where a sync run's time goes, before the hot path was tuned and now.

    python -m bench.profile [--runs 2000] [--before-rev fbf8179]

B1's run (orchestrate(), sync, the no-op handler recording 3 metrics and 1 tool execution)
under pyinstrument, a sampling profiler (wall-clock, a sample every 100 µs), with the SQL
statements and Redis commands of one run counted. Profiled twice in the same run, each in
a process of its own (bench/profile_target.py): on this checkout, and on the revision
``--before-rev`` -- the hot path as it was when B1 was first measured, extracted from git
under var/bench-before/<rev> with a database of its own (<BENCH_DATABASE_URL>_before).
On this checkout an async run is profiled too, its submission and its execution by a
worker's task, each half on its own (what bounds B2 and B3).

Writes bench/results/profile.json and bench/results/profile.md (the Profile section).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.hotpath import DEFAULT_DB

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results")
TARGET = Path(__file__).with_name("profile_target.py")
# B1's first measurement: every run statement written by the ORM, one per kind of write.
BEFORE_REV = "fbf8179"


def _tree(rev: str) -> Path:
    """The project's files at ``rev``, extracted once under var/bench-before/<rev>."""
    tree = ROOT / "var" / "bench-before" / rev
    if not (tree / "manage.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", rev], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _profile(tree: Path, db: str, redis_url: str, runs: int, async_runs: int = 0) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                sys.executable,
                str(TARGET),
                "--tree",
                str(tree),
                "--db",
                db,
                "--redis",
                redis_url,
                "--runs",
                str(runs),
                "--async-runs",
                str(async_runs),
                "--out",
                out.name,
            ],
            cwd=tree,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            check=True,
        )
        return json.loads(Path(out.name).read_text())


def _markdown(now: dict, before: dict, before_rev: str, command: str) -> str:
    def table(rows: list[dict]) -> list[str]:
        out = ["| function | µs per run | share of the run |", "| --- | ---: | ---: |"]
        out += [f"| `{r['function']}` | {r['us_per_run']:.0f} | {r['share']:.0%} |" for r in rows]
        return out

    def section(title: str, data: dict) -> list[str]:
        return [
            f"### {title}",
            "",
            f"{data['runs']} sync runs profiled ({data['when']}, {data['samples']} samples): "
            f"{data['wall_us_per_run_profiled']:.0f} µs per run under the profiler, "
            f"{data['cpu_us_per_run_profiled']:.0f} µs of CPU by the process (all its threads). "
            f"{len(data['statements'])} SQL statements and {len(data['redis_commands'])} Redis "
            "commands per run:",
            "",
            *[f"1. `{s}`" for s in data["statements"]],
            "",
            "Redis: " + ", ".join(f"`{c}`" for c in data["redis_commands"]) + ".",
            "",
            "Top costs of our own code (time in the function and what it calls):",
            "",
            *table(data["project_inclusive"]),
            "",
            "Top costs of any code (time in the function itself, the waits for PostgreSQL and "
            "Redis included):",
            "",
            *table(data["own_time"]),
            "",
        ]

    wrappers = ("(orchestrate)", "(scoped)", "(run_execute)", "(_run_execute_claimed)")
    remaining = [r for r in now["project_inclusive"] if not r["function"].endswith(wrappers)]
    lines = [
        "## Profile — where a run's time goes, before and now",
        "",
        f"Command: `{command}`. B1's run (`orchestrate()`, sync, the no-op handler recording 3 "
        "metrics and 1 tool execution) under pyinstrument, a sampling profiler (wall-clock "
        "time, a sample every 100 µs), with the SQL statements and Redis commands of one run "
        "counted. Profiled twice in the same run, each in a process of its own: on the current "
        f"code, and on revision `{before_rev}`, the hot path as it was when B1 was first "
        "measured (every write of a run through the ORM, one statement per kind).",
        "",
        f"Before → now: {len(before['statements'])} → {len(now['statements'])} SQL statements "
        f"per run, {len(before['redis_commands'])} → {len(now['redis_commands'])} Redis "
        f"commands, {before['wall_us_per_run_profiled']:.0f} → "
        f"{now['wall_us_per_run_profiled']:.0f} µs per run under the profiler "
        f"({before['cpu_us_per_run_profiled']:.0f} → {now['cpu_us_per_run_profiled']:.0f} µs "
        "of CPU). The profiler slows both alike; B1 has the figures without it.",
        "",
        "What changed: the insert and the finish are written as SQL directly (with the fields' "
        "own conversions) and prepared on the server, so PostgreSQL plans them once per "
        "connection (`DATABASE_PREPARE_THRESHOLD`); the finish, the metric rows, steps, tool "
        "executions and the run's terminal event are one statement (data-modifying CTEs "
        "selecting from the fenced `UPDATE`); a sync run's row is inserted already claimed "
        "(no claim `UPDATE`) and committed on its own (no `BEGIN`/`COMMIT`); intent resolution "
        "keeps the definitions the process read while their version in Redis stands, read "
        "in the rate-limit decision's round trip (no query, no round trip of its own); the "
        "rate-limit script reads the circuit's state, so a sync run's circuit permit costs "
        "no round trip of its own; the event's `PUBLISH` and "
        "the completion signal are sent by a thread of the process after the commit (an "
        "async run's by the worker's own thread, its signal carrying the ended row, so a "
        "waiter does not read it).",
        "",
    ]
    if remaining:
        lines += [
            "Largest remaining costs of our own code: "
            + "; ".join(f"`{r['function']}` {r['share']:.0%}" for r in remaining[:5])
            + ". What bounds the rest: the two blocking statements (their execution and "
            "commit in PostgreSQL, waited for here), the Redis round trips, the hand-over to "
            "the handler thread, and Django's model and psycopg's adaptation work per "
            "statement.",
            "",
        ]
    lines += section(f"Before: revision `{before_rev}`", before)
    lines += section("Now", now)
    if "async" in now:
        lines += _async_sections(now["async"])
    lines += ["Raw figures: `bench/results/profile.json`.", ""]
    return "\n".join(lines)


# Where a profiled thread blocks, by the function it blocks in (own time).
_WAITS = (
    ("psycopg/connection.py", "PostgreSQL (its statements executed and committed)"),
    ("(socket.recv_into)", "Redis and the broker (their replies)"),
    ("(lock.acquire)", "the handler thread"),
)


def _waits(part: dict) -> str:
    """The blocked time of a profiled half, from its own-time table."""
    found = []
    for marker, what in _WAITS:
        us = sum(r["us_per_run"] for r in part["own_time"] if marker in r["function"])
        if us:
            found.append(f"{what} {us:.0f} µs ({us / part['wall_us_per_run_profiled']:.0%})")
    return ("Waiting for " + "; for ".join(found) + ".") if found else ""


def _async_sections(data: dict) -> list[str]:
    def table(rows: list[dict]) -> list[str]:
        out = ["| function | µs per run | share |", "| --- | ---: | ---: |"]
        out += [f"| `{r['function']}` | {r['us_per_run']:.0f} | {r['share']:.0%} |" for r in rows]
        return out

    lines = [
        "### Now: an async run (what bounds B2 and B3)",
        "",
        f"{data['runs']} async runs, each half profiled on its own in this process (the "
        "broker's hand-over between them, Celery's own work in a worker and the waiter are "
        "not in these figures; B3's segments have them).",
        "",
    ]
    for key, title in (
        ("submission", "The submission: `orchestrate(mode=async)`, the run accepted and sent"),
        ("execution", "The execution: the worker's task `execute_run(run_id)`"),
    ):
        part = data[key]
        lines += [
            f"**{title}**: {part['wall_us_per_run_profiled']:.0f} µs per run under the "
            f"profiler, {part['cpu_us_per_run_profiled']:.0f} µs of CPU by the process (all "
            f"its threads). {_waits(part)}",
            "",
            *table(part["project_inclusive"][:10]),
            "",
            "Any code, own time:",
            "",
            *table(part["own_time"][:10]),
            "",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--before-rev", default=BEFORE_REV)
    args = parser.parse_args(argv)
    command = "python -m bench.profile " + " ".join(argv if argv is not None else sys.argv[1:])
    before = _profile(_tree(args.before_rev), args.db + "_before", args.redis, args.runs)
    now = _profile(ROOT, args.db, args.redis, args.runs, async_runs=args.runs)
    report = {
        "benchmark": "Profile",
        "command": command.strip(),
        "before_rev": args.before_rev,
        "before": before,
        "now": now,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "profile.md").write_text(_markdown(now, before, args.before_rev, report["command"]))
    print(json.dumps({k: report[k] for k in ("command", "before_rev")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
