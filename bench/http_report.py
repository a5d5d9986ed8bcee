"""B4's section of docs/PERFORMANCE.md, written from bench.http_api's report.

markdown(report) is a pure function of the report bench.http_api writes to
bench/results/http_api.json: every figure, and every parameter of the measurement it
names, is read from the report. The targets are the issue's, and verdicts() applies them.
"""

from __future__ import annotations

import re
import statistics

TARGET_P95_MS = 50.0
TARGET_RATIO = 1.5
# The endpoints the targets are about (the deep page is shown for the keyset's sake).
TARGETED = ("GET /api/runs/", "GET metrics")


def size_label(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1000}k"


def verdicts(sizes: list[dict]) -> dict:
    """Each targeted endpoint's p95 at the largest size against TARGET_P95_MS, and its ratio
    to the smallest size's against TARGET_RATIO."""
    out = {}
    smallest, largest = sizes[0], sizes[-1]
    for name in TARGETED:
        high = largest["get"][name]["p95_ms"]
        low = smallest["get"][name]["p95_ms"]
        ratio = high / low
        out[name] = {
            "p95_ms_at_largest": high,
            "p95_ms_at_smallest": low,
            "ratio": round(ratio, 3),
            "p95_met": high <= TARGET_P95_MS,
            "ratio_met": ratio <= TARGET_RATIO,
            "p95_verdict": (
                f"met ({high:.1f} ≤ {TARGET_P95_MS:.0f})"
                if high <= TARGET_P95_MS
                else f"missed by {high - TARGET_P95_MS:.1f} ms"
            ),
            "ratio_verdict": (
                f"met ({ratio:.2f} ≤ {TARGET_RATIO})"
                if ratio <= TARGET_RATIO
                else f"missed by {ratio - TARGET_RATIO:.2f}x"
            ),
        }
    return out


def _sql_head(sql: str) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= 150 else sql[:147] + "..."


def plan_summary(statements: list[dict]) -> str:
    """The indexes the statements on agent_runs read (and any sequential scan of it)."""
    indexes, seq_scan = [], False
    for query in statements:
        if "agent_runs" not in query["sql"]:
            continue
        for line in query.get("plan", []):
            match = re.search(r"Scan(?: Backward)? using (\w+) on agent_runs", line)
            if match and match.group(1) not in indexes:
                indexes.append(match.group(1))
            seq_scan |= "Seq Scan on agent_runs" in line
    if not any("agent_runs" in query["sql"] for query in statements):
        return "no SQL on agent_runs"
    summary = f"reads {', '.join(f'`{i}`' for i in indexes) or 'no index of agent_runs'}"
    return summary + ("; **a sequential scan of agent_runs**" if seq_scan else "")


def markdown(report: dict) -> str:
    sizes = report["sizes"]
    first, last = sizes[0], sizes[-1]
    names = list(report["endpoints"][size_label(first["runs"])])
    lines = [
        "## B4 — HTTP API under a production server",
        "",
        "The API under its production server on loopback, on the same 2-core machine as "
        "PostgreSQL and Redis (and the load generator).",
        "",
        "```sh",
        report["command"],
        "```",
        "",
        f"Server, one per table size: `{report['server']['command']}` with "
        + ", ".join(f"`{k}={v}`" for k, v in report["server"]["env"].items())
        + ", `SECRET_KEY` and `PROMETHEUS_MULTIPROC_DIR` set; database connections: "
        + report["server"]["database_connections"]
        + ". Access log off; "
        f"{report['server']['log_error_lines']} error lines in the servers' logs.",
        "",
        f"Data: runs arriving at a constant {report['rate_per_day']:,} a day going back in "
        "time, so a bigger table is a longer history (10k runs: a day; 1M: 100 days) and the "
        "metrics endpoint's 1 h and 24 h windows hold the same rows at every size; two "
        "organizations share the table, interleaved in time: "
        + ", ".join(f'"{slug}" {share:.0%}' for slug, share in report["tenants"].items())
        + ' of the runs (the endpoints are called with "bench"\'s API key unless the '
        "tenant is named); ~90% SUCCESS, ~8% FAILED, ~2% CANCELLED over the reference "
        "agents' intents, 3 metric rows per run. Each size is its own database (a clone of "
        "one migrated, seeded database), loaded from `generate_series` in one statement per "
        f"batch of {report['load_batch']:,} runs, with the "
        f"{sizes[0]['load']['indexes_rebuilt']} secondary indexes dropped and rebuilt "
        "afterwards from their own definitions, then `VACUUM ANALYZE`.",
        "",
        "### Bulk load",
        "",
        "| runs | insert s | index build s | total s (with VACUUM ANALYZE) | agent_runs MB "
        "| agent_run_metrics MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in sizes:
        load = entry["load"]
        lines.append(
            f"| {load['runs_in_table']:,} | {load['insert_s']} | {load['index_build_s']} | "
            f"{load['total_s']} | {load['agent_runs_bytes'] / 2**20:.0f} | "
            f"{load['agent_run_metrics_bytes'] / 2**20:.0f} |"
        )
    lines += [
        "",
        f"### Read endpoints: {report['rounds']} alternating rounds over the sizes, "
        f"{report['per_round']} sequential requests per endpoint per round (one keep-alive "
        f"connection, one request in flight, the endpoints interleaved) after "
        f"{report['warmup']} warm-up",
        "",
        "| endpoint | runs | p50 ms | p95 ms | p99 ms | p95 of the rounds: median (min-max) "
        "| SQL statements | SQL execution ms | in-process p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name in names:
        for entry in sizes:
            pooled = entry["get"][name]
            rounds = entry["round_p95_ms"][name]
            statements = entry["statements"][name]
            sql_ms = sum(q.get("execution_ms") or 0 for q in statements)
            lines.append(
                f"| {name} | {entry['runs']:,} | {pooled['p50_ms']} | {pooled['p95_ms']} | "
                f"{pooled['p99_ms']} | {statistics.median(rounds):.1f} ({min(rounds):.1f}-"
                f"{max(rounds):.1f}) | {len(statements)} | {sql_ms:.2f} | "
                f"{entry['in_process'][name]['p50_ms']} |"
            )
    lines += [
        "",
        "SQL execution ms: the sum of EXPLAIN ANALYZE's execution times of the statements "
        "of one request. In-process: the same request through Django's test client in one "
        "process with a persistent connection, no server "
        f"({report['in_process_requests']} requests). The list's rows are built directly "
        "(`RunListSerializer.to_representation`, equal to DRF's output by test): one 50-run "
        f"page costs {last['serialization']['direct_ms']} ms that way against "
        f"{last['serialization']['drf_generic_ms']} ms through DRF's field-by-field path "
        "(median of 20, in-process). For scale: opening a new PostgreSQL connection "
        f"costs {report['postgres_connect']['p50_ms']} ms p50, "
        f"{report['postgres_connect']['p95_ms']} ms p95 here.",
    ]
    lines += [
        "",
        f"### Targets: p95 at most {TARGET_P95_MS:.0f} ms at {size_label(last['runs'])} runs and "
        f"at most {TARGET_RATIO}x the {size_label(first['runs'])} figure",
        "",
        f"| endpoint | p95 at {size_label(last['runs'])} | p95 at {size_label(first['runs'])} | "
        f"{size_label(last['runs'])} / {size_label(first['runs'])} | p95 target | ratio target |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name in TARGETED:
        verdict = report["targets"][name]
        lines.append(
            f"| {name} | {verdict['p95_ms_at_largest']} | {verdict['p95_ms_at_smallest']} | "
            f"{verdict['ratio']:.2f}x | {verdict['p95_verdict']} | {verdict['ratio_verdict']} |"
        )
    lines += ["", f"What bounds these requests at {last['runs']:,} runs:", ""]
    for name in names:
        sql_ms = sum(q.get("execution_ms") or 0 for q in last["statements"][name])
        server_p50 = last["get"][name]["p50_ms"]
        if not last["statements"][name]:
            lines.append(
                f"- {name}: {server_p50} ms p50 through the server, "
                f"{last['in_process'][name]['p50_ms']} ms in-process: the server's own share "
                "of every request (uvicorn, the ASGI handler and its thread, the middleware)."
            )
            continue
        lines.append(
            f"- {name}: SQL {sql_ms:.2f} ms ({sql_ms / server_p50:.0%} of the p50 of "
            f"{server_p50} ms), in-process {last['in_process'][name]['p50_ms']} ms; "
            f"{plan_summary(last['statements'][name])}."
        )
    lines += [
        "",
        "The rest of a request is the same at every size: Django and DRF (the in-process "
        "column), the server's own work (uvicorn, a thread per request, getting a database "
        f"connection: {report['server']['database_connections']}) and the noise of a machine "
        "shared with PostgreSQL and the other processes. No statement counts the table; the "
        "list is one range of an index in the "
        "cursor pagination's order (`run_org_created_id_idx`: organization, created_at "
        "DESC, id DESC; for the 99% tenant the planner may equally walk `run_created_idx`, "
        "since nearly every row is that tenant's); the metrics read the 1 h and 24 h windows "
        "through indexes (an index-only count for the 24 h figure), so their cost follows "
        "the runs in those windows, not the table's size.",
        "",
    ]
    for name in names:
        if not any("agent_runs" in query["sql"] for query in last["statements"][name]):
            continue
        lines += [f"{name} at {last['runs']:,} runs, EXPLAIN (ANALYZE, BUFFERS):", "", "```"]
        for query in last["statements"][name]:
            if "agent_runs" not in query["sql"]:
                continue
            lines.append(_sql_head(query["sql"]))
            for plan_line in query.get("plan", []):
                if not plan_line.strip().startswith(("Planning:", "Output")):
                    lines.append("    " + plan_line)
        lines += ["```", ""]
    post = report["post"]
    lines += [
        f"### POST /api/orchestrate (sync, ContentAgent `summarize`) at {post['runs']:,} runs",
        "",
        "Keep-alive connections from an asyncio HTTP/1.1 client in the benchmark's process, "
        f"each load bounded at its request count or {post['max_seconds']} s, after "
        f"{post['warmup']} warm-up requests; every answer checked for HTTP 200 and "
        '`"success": true`. One connection: the latency of a request alone; more: the '
        "throughput of the 2 server processes, with queueing in the latency.",
        "",
        "| connections | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | failures | "
        "generator CPU µs/request | generator CPU, share of one core |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for load in post["loads"]:
        lines.append(
            f"| {load['concurrency']} | {load['requests']} | {load['req_per_s']} | "
            f"{load['latency']['p50_ms']} | {load['latency']['p95_ms']} | "
            f"{load['latency']['p99_ms']} | {load['latency']['max_ms']} | "
            f"{load['failures'] or 'none'} | {load['generator_cpu_us_per_request']} | "
            f"{load['generator_cpu_share_of_one_core']} |"
        )
    lines += [
        "",
        "The generator shares the 2 cores with the server, PostgreSQL and Redis; its own CPU "
        "is measured (last two columns), so what it takes from the server is known rather "
        "than assumed.",
        "",
    ]
    return "\n".join(lines)
