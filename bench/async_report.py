"""B2 and B3's section of docs/PERFORMANCE.md, written from bench.async_runs' report.

markdown(report) is a pure function of the report bench.async_runs writes to
bench/results/async_runs.json: the tables, the targets and what bounds each variant,
with every figure read from the report.
"""

# ruff: noqa: RUF001  (the report's multiplication signs and dashes are meant)
from __future__ import annotations

from bench.procstat import CPU_GROUPS


def _b2_bounds(report: dict) -> list[str]:
    """B2's explanation: which half bounds each variant, and why 3.5x the defaults moves with
    the machine's connection cost."""
    b2r = report["b2"]
    ours, reuse, default = (b2r[n] for n in ("ours", "raw_reuse", "raw_default"))
    lines = [
        "The submissions/s column is the one submitting process alone (it sends one run after "
        'the other, timed until the last is sent); "the worker alone" is the same worker, '
        "measured right after: as many runs submitted while it consumes nothing, then timed "
        "from the moment it consumes again until it completed them all. A variant completes "
        "runs at most as fast as the slower of the two, and less when both share the "
        "machine's two cores with PostgreSQL and Redis.",
        "",
        "What bounds ours: every submission of ours writes the run before it is queued "
        "(resolution from the process's definitions, a rate-limit decision in Redis "
        "pipelined with the GET of the definitions' version, the PENDING INSERT and the "
        "routing read of the nodes with their runs in flight -- one statement, or the read "
        "first and the INSERT naming the node when the runs go to its queue --, committed "
        "to disk, then the message's LPUSH: `orchestration.sending`) where plain Celery's "
        "is the LPUSH alone, so the one "
        f"submitting process sends {ours['submit_per_s']['median']:,.0f} submissions/s "
        f"against {reuse['submit_per_s']['median']:,.0f}. And every execution of ours claims "
        "the run and reads it in one statement, runs the handler under its circuit on a "
        "handler thread (so the run's deadline holds) and writes the outcome, its records "
        "(3 metrics of the handler's, its standard metrics, 1 tool execution) and its event in "
        "one statement committed to disk, then sends the completion signal, where the "
        "baseline stores one result row.",
    ]
    if "drain" in ours and "drain" in reuse:
        lines += [
            "",
            f"The worker alone completed {ours['drain']['runs_per_s']['median']:,.0f} of our "
            f"runs per second against {reuse['drain']['runs_per_s']['median']:,.0f} of the "
            "baseline's no-op tasks, keeping the cores "
            f"{_drain_busy(ours, report['cpus']):.0%} and "
            f"{_drain_busy(reuse, report['cpus']):.0%} busy: each pool process "
            "runs one task at a time and waits on its statements and round trips, and between "
            "two tasks on the worker's main process, which receives the pool process's result "
            "and fetches and hands over the next message. CPU per run meanwhile (µs; main "
            "process / pool processes / PostgreSQL / Redis): ours "
            + _drain_cpu(ours)
            + ", the baseline "
            + _drain_cpu(reuse)
            + ". Our pool processes and PostgreSQL do what the run needs beyond a result row: "
            f"the claim (an UPDATE of a row with {_run_indexes(ours)} indexes, returning the "
            "run, its agent and organization) and the finish (the UPDATE, 7 metric rows, the "
            "tool execution, the event, their foreign-key checks, the commit to disk).",
        ]
    lines += _floor_lines(b2r)
    connect = report.get("b2_connect_ms")
    if connect:
        lines += [
            "",
            f"Celery's defaults reconnect to PostgreSQL around every task; a connection costs "
            f"{connect:.1f} ms p50 here (measured in this run), so the defaults ran at "
            f"{default['runs_per_s']['median'] / reuse['runs_per_s']['median']:.2f}× the "
            "baseline with connection reuse. The issue's figures (~120 tasks/s with defaults, "
            "~425 with reuse, a new connection costing ~7 ms) put that ratio at ~0.28, where "
            "3.5× the defaults is about 1× the reuse baseline; here 3.5× the defaults is "
            f"{3.5 * default['runs_per_s']['median'] / reuse['runs_per_s']['median']:.2f}× "
            "the reuse baseline.",
        ]
    lines += [
        "",
        "Where each half's time goes, function by function, is in the Profile section (an "
        "async run's submission and its execution). The submitting process, the worker's "
        "processes, PostgreSQL and Redis share the machine's two cores; what each run costs "
        "all of them together, measured here (µs of CPU per run, median over the "
        "repetitions, from /proc while each variant ran):",
    ]
    return lines


def _cpu_total(variant: dict) -> float:
    cpu = variant.get("cpu_us_per_run", {})
    return sum(value["median"] for value in cpu.values())


def _floor_lines(b2r: dict) -> list[str]:
    """What the floor variant says: whether recording every run (committed before it is
    sent, ended by an UPDATE) keeps a design from the target by itself, and what ours
    spends beyond that least, process by process."""
    floor = b2r.get("floor")
    if not floor:
        return []
    ours, reuse = b2r["ours"], b2r["raw_reuse"]
    rate = {
        n: v["runs_per_s"]["median"]
        for n, v in (("ours", ours), ("reuse", reuse), ("floor", floor))
    }
    reach = rate["floor"] / rate["reuse"]
    text = (
        "The floor is the least a design that keeps a record of every run does on the same "
        "Celery: the submitting process commits the run's PENDING row (an INSERT of a row "
        "shaped as B1's pgbench record: a primary key and one partial index) before it sends "
        "the task, and the task ends the row with one UPDATE by primary key and stores no "
        "result; no rate limit, no claim, no metrics, tool execution or event, none of our "
        f"code. It completed {rate['floor']:,.0f} runs/s, {reach:.2f}× the baseline with "
        "connection reuse, so recording every run that way is, by itself, "
        f"{'no obstacle to' if reach >= 1.05 else 'enough to miss'} the 1.05× target on "
        f"this machine. Ours ran at {rate['ours'] / rate['floor']:.2f}× the floor."
    )
    if reach >= 1.05:
        text += (
            " (The baseline's no-op tasks cost more than the floor's because Celery stores "
            "each one's result row through django-celery-results in its pool processes.)"
        )
    lines = ["", text]
    if all("cpu_us_per_run" in v for v in (floor, ours)):
        extra = {
            group: ours["cpu_us_per_run"][group]["median"]
            - floor["cpu_us_per_run"][group]["median"]
            for group in CPU_GROUPS
        }
        lines += [
            "",
            f"CPU per run, every process: the floor {_cpu_total(floor):,.0f} µs, ours "
            f"{_cpu_total(ours):,.0f} µs (the table below). What ours spent beyond the floor, "
            "per run: "
            + ", ".join(f"{group} {value:+,.0f} µs" for group, value in extra.items())
            + ". That is the price of what a run of ours is beyond a row: in the submitting "
            "process the resolution, the rate-limit decision and the run's fingerprint; in "
            "the pool processes the claim that reads the run with its agent and config, the "
            "handler under its circuit and deadline on a handler thread, the records, the "
            "event and the completion signal; in PostgreSQL the run row's secondary indexes "
            f"({_run_indexes(ours)}, written at the INSERT, the claim and the finish), the "
            "metric, tool-execution and event rows with their foreign-key checks. The "
            "Profile section has the same, function by function.",
        ]
    return lines


def _run_indexes(variant: dict) -> str:
    writes = variant.get("agent_runs_writes")
    return f"{writes['indexes']['median']:.0f}" if writes else "its"


def _drain_busy(variant: dict, cores: int) -> float:
    """The share of the machine's cores the worker kept busy while it drained a full queue."""
    cpu = variant["drain"]["cpu_us_per_run"]
    total = sum(cpu[g]["median"] for g in CPU_GROUPS[1:])
    return variant["drain"]["runs_per_s"]["median"] * total / 1e6 / cores


def _drain_cpu(variant: dict) -> str:
    cpu = variant["drain"]["cpu_us_per_run"]
    return " / ".join(f"{cpu[g]['median']:,.0f}" for g in CPU_GROUPS[1:])


def _cpu_table(b2r: dict, cores: int, workers: int) -> list[str]:
    names = [
        n
        for n in ("ours", "raw_reuse", "raw_default", "floor")
        if "cpu_us_per_run" in b2r.get(n, {})
    ]
    if not names:
        return ["(not measured in this run)"]
    labels = {
        "ours": "ours",
        "raw_reuse": "Celery, reuse",
        "raw_default": "Celery, defaults",
        "floor": "the floor",
    }
    lines = [
        "| CPU per run (µs) | " + " | ".join(labels[n] for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    groups = list(b2r[names[0]]["cpu_us_per_run"])
    for group in [*groups, "total"]:
        cells = []
        for n in names:
            cpu = b2r[n]["cpu_us_per_run"]
            value = (
                sum(cpu[g]["median"] for g in groups) if group == "total" else cpu[group]["median"]
            )
            cells.append(f"{value:,.0f}")
        label = f"**{group}**" if group == "total" else group
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    total = sum(b2r["ours"]["cpu_us_per_run"][g]["median"] for g in groups)
    lines += [
        "",
        f"At {total:,.0f} µs of CPU per run, {cores} cores could complete at most "
        f"{cores * 1e6 / total:,.0f} of our runs per second with every core busy.",
    ]
    rate = b2r["ours"]["runs_per_s"]["median"]
    busy = rate * total / 1e6 / cores
    if busy < 0.9:
        lines += [
            f"At the measured {rate:,.0f} runs/s that is {busy:.0%} of the cores: the rest of "
            "the bound is waiting. The one submitting process sends one run at a time ("
            f"{b2r['ours']['submit_per_s']['median']:,.0f} submissions/s at most), and each of "
            f"the worker's {workers} pool processes runs one task at a time, idle while "
            "PostgreSQL executes and commits its statements and Redis answers.",
        ]
    return lines + _writes_lines(b2r)


def _writes_lines(b2r: dict) -> list[str]:
    """What PostgreSQL writes per run, from the write-ahead log and agent_runs' counts."""
    labels = {
        "ours": "ours",
        "raw_reuse": "Celery with reuse",
        "raw_default": "Celery defaults",
        "floor": "the floor",
    }
    wal = {
        n: b2r[n]["wal_bytes_per_run"]["median"]
        for n in labels
        if "wal_bytes_per_run" in b2r.get(n, {})
    }
    writes = b2r["ours"].get("agent_runs_writes")
    if not wal or not writes:
        return []
    return [
        "",
        "What PostgreSQL writes per run, measured in the same repetitions (the write-ahead log "
        "the server wrote while each variant ran, `pg_current_wal_insert_lsn()` before and "
        "after, divided by the runs): "
        + ", ".join(f"{labels[n]} {v:,.0f} bytes" for n, v in wal.items())
        + f". `agent_runs` has {writes['indexes']['median']:.0f} indexes, and our runs "
        f"updated its rows {writes['updates_per_run']['median']:.2f} times per run, "
        f"{writes['hot_share']['median']:.0%} of those updates HOT (heap-only: no index "
        "entry written; `pg_stat_user_tables`): the claim and the finish both change indexed "
        "columns (the status, the node, the times), so each writes a new entry into every "
        "index whose predicate the new row matches. Those entries, with the metric, "
        "tool-execution and event rows, are what PostgreSQL does more of for our runs than "
        "for the baseline's one result row.",
    ]


def _node_queue_note(share: float | dict | None) -> str:
    """The measured share of our runs sent to the worker's node queue: B3's, or B2's summary
    of its repetitions (the median is given); None: figures saved before it was measured."""
    if isinstance(share, dict):
        share = share["median"]
    if share is None:
        return ""
    if share == 1:
        return "; all of our measured runs went there"
    return (
        f"; {share:.0%} of our measured runs went there, the others, the node then full,"
        " to the default queue, which it consumes too"
    )


def markdown(report: dict) -> str:
    b2r, b3r = report["b2"], report["b3"]
    ours = b2r["ours"]["runs_per_s"]["median"]
    reuse = b2r["raw_reuse"]["runs_per_s"]["median"]
    default = b2r["raw_default"]["runs_per_s"]["median"]
    lines = [
        "## B2 — async throughput: our Celery path vs Celery + django-celery-results",
        "",
        f"Command: `{report['command']}`. {report['b2_runs']:,} no-op runs per repetition, "
        f"{report['reps']} repetitions alternating, one worker with "
        f"{report['worker_processes']} prefork processes, Redis broker, timed from the first "
        "submission (from this process, one after the other) to the last completion. Our "
        "worker runs as deployed by default: a fleet node (registered, heartbeating) "
        "consuming its own node queue, to which the runs are routed"
        + _node_queue_note(b2r["ours"].get("node_queue_share"))
        + ". Each "
        "variant, and B3 below, starts from vacuumed tables (`VACUUM ANALYZE` of what the "
        "variants write, then `CHECKPOINT`), as autovacuum would leave them: the server's own "
        "autovacuum setting is in the header.",
        "",
        "| variant | runs/s median | min–max | submissions/s | the worker alone, runs/s "
        "| ours / it |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in (
        ("ours", "ours: orchestrate(async) → execute_run, run fully recorded"),
        ("raw_reuse", "Celery + django-celery-results, connection reuse"),
        ("raw_default", "Celery + django-celery-results, defaults (reconnect per task)"),
        ("floor", "the floor: Celery, each run's row committed before the send, one UPDATE"),
    ):
        row = b2r.get(name)
        if row is None:
            continue
        ratio = "—" if name == "ours" else f"{ours / row['runs_per_s']['median']:.2f}×"
        drain = row.get("drain", {}).get("runs_per_s")
        drain_cell = f"{drain['median']:.0f}" if drain else "—"
        lines.append(
            f"| {label} | {row['runs_per_s']['median']:.0f} | {row['runs_per_s']['min']:.0f}–"
            f"{row['runs_per_s']['max']:.0f} | {row['submit_per_s']['median']:.0f} | "
            f"{drain_cell} | {ratio} |"
        )
    lines += [
        "",
        f"Targets: ≥ 1.05× Celery + django-celery-results with connection reuse (measured "
        f"{ours / reuse:.2f}×: {'met' if ours / reuse >= 1.05 else 'missed'}), ≥ 3.5× it with "
        f"defaults (measured {ours / default:.2f}×: "
        f"{'met' if ours / default >= 3.5 else 'missed'}).",
        "",
        *_b2_bounds(report),
        "",
        *_cpu_table(b2r, report["cpus"], report["worker_processes"]),
        "",
        "## B3 — async latency: submission to the caller holding the terminal state",
        "",
        f"Command: `{report['command']}`. Sequential runs, alternating run by run; ours waits "
        "with `runs.services.run_wait()`, given the run `orchestrate()` returned (woken by "
        "the completion signal pushed over Redis after commit, which carries the ended row: "
        "no read). Our worker is a fleet node, as in B2"
        + _node_queue_note(b3r["ours"].get("node_queue_share"))
        + ".",
        "",
        "| variant | runs | p50 ms | p99 ms | min ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        "ours": "ours: orchestrate(async) + run_wait()",
        "raw_get_5ms": "Celery + django-celery-results, `get(interval=0.005)`",
        "raw_get_default": "Celery + django-celery-results, `get()` (polls every 0.5 s)",
        "prefect": "Prefect flow run (one task, local backend)",
    }
    for name in ("ours", "raw_get_5ms", "raw_get_default", "prefect"):
        row = b3r.get(name)
        if not row or "skipped" in row:
            continue
        label = labels[name] + (f" {row['version']}" if "version" in row else "")
        lines.append(
            f"| {label} | {row['n']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['min_ms']:.1f} | {row['max_ms']:.1f} |"
        )
    p50 = b3r["ours"]["p50_ms"]
    fast = b3r["raw_get_5ms"]["p50_ms"]
    breakdown = b3r["ours"].get("breakdown_ms")
    if breakdown:
        lines += [
            "",
            "Where our p50 goes (medians per segment, ms, from the instants the caller saw "
            "and those the run's row records; the segments' medians need not add up to the "
            "p50 exactly):",
            "",
            "| " + " | ".join(breakdown) + " |",
            "|" + " --- |" * len(breakdown),
            "| " + " | ".join(f"{v:.2f}" for v in breakdown.values()) + " |",
        ]
    lines += [
        "",
        "Ours is a chain of blocking steps on the critical path: the submission (1 EVALSHA "
        "pipelined with the GET of the definitions' version, the routing read, the INSERT "
        "naming the node, committed to disk, the LPUSH), the worker's claim "
        "(one statement "
        "returning the run, its agent and config, committed without waiting for the disk), "
        "the circuit decision (a worker process that found the circuit steady reuses that "
        "answer for POLICY_CIRCUIT_STEADY_REUSE_MS, 250 ms, before asking Redis again), "
        "the handler thread, the one-statement finish (committed to "
        "disk), its pipelined completion push + PUBLISH from the same thread, the waiter's "
        "wake-up and the run built from the row the signal carries; the baseline's is "
        "the LPUSH, the no-op, the result row and the poll that finds it. The run's "
        "statements are prepared (planned once per connection); what remains of each step "
        "is in the Profile section.",
    ]
    trips = b3r.get("round_trips_us")
    if trips:
        ping, select = trips["redis_ping_us"], trips["postgres_select_1_us"]
        lines += [
            "",
            "What one hop costs on this machine during this run (p50 of 2,000 bare round trips "
            "from the caller's process, just before the measured runs and just after): a Redis "
            f"PING {ping[0]:.0f} and {ping[1]:.0f} µs, a PostgreSQL `SELECT 1` "
            f"{select[0]:.0f} and {select[1]:.0f} µs. Our critical path waits on about eleven "
            "such hops in series (the EVALSHA, the routing read, the INSERT, the LPUSH, the "
            "worker's wake-up "
            "and its hand-over to a pool process, the claim, the finish, the completion push, "
            "the waiter's wake-up) and two commits to disk; the baseline's on about four and "
            "one commit, plus its polling: `get()` looks once at once, before the no-op can "
            "have run, and looks again only after sleeping the whole 5 ms interval, so 5 ms "
            "of its p50 is that sleep whatever a hop costs. So the ratio moves with the "
            "machine: the slower its round trips, the closer to 1× it gets.",
        ]
    lines += [
        "",
        f"Target: p50 ≤ 0.6× Celery + django-celery-results with 5 ms polling (measured "
        f"{p50 / fast:.2f}×: {'met' if p50 / fast <= 0.6 else 'missed'}).",
    ]
    prefect = b3r.get("prefect", {})
    if "skipped" in prefect:
        lines.append(f"Prefect: not measured — {prefect['skipped']}.")
    else:
        ratio = prefect["p50_ms"] / p50
        lines.append(
            f"Target: ≥ 20× faster than Prefect's flow run (measured {ratio:.0f}×: "
            f"{'met' if ratio >= 20 else 'missed'})."
        )
    lines += ["", "Raw figures: `bench/results/async_runs.json`.", ""]
    return "\n".join(lines)
