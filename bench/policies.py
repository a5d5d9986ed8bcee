"""What one policy decision costs next to a bare Redis round trip.

    python -m bench.policies [--url redis://127.0.0.1:6379/0] [--reps 5] [--calls 2000]

Measures, from one client in one run, a PING, a rate-limit decision (two keys, as the
orchestrator asks: organization and principal; admitted, so the script writes; logs of
production size), a circuit
acquire and a circuit record on a closed circuit (the path every request takes). The
operations alternate call by call within each rep, so drift in the machine's load hits
them all alike; the per-rep ratios show how steady the figures are.
Prints p50 / mean / p99 with the ratio to PING and writes bench/results/policies.json.
The issue's goal: each decision at most 1.5x a bare round trip. Needs no Django settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import redis

from orchestration.policies.base import CircuitPermit, CircuitState
from orchestration.policies.redis_store import RedisPolicyStore
from orchestration.policies.settings import CircuitSettings, RateLimit

RESULTS = Path(__file__).with_name("results") / "policies.json"
GOAL_RATIO = 1.5


def operations(store: RedisPolicyStore, total_calls: int) -> dict[str, Callable[[], object]]:
    # The default limit (60 per minute) over as many (organization, principal) pairs as it
    # takes for every call to be admitted -- the writing path of the script -- with logs of
    # the size production sees (at most ~50 entries), not one log of thousands.
    limit = RateLimit(limit=60, window_s=60)
    pairs = [
        [("organization", f"rl:org-{i}:agent-bench"), ("principal", f"rl:key-{i}:agent-bench")]
        for i in range(total_calls // 50 + 1)
    ]
    turn = itertools.cycle(pairs)
    circuit = CircuitSettings(
        failure_threshold=3,
        wait_in_open_s=10,
        permitted_probes=1,
        window_size=20,
        minimum_calls=10,
        failure_rate_threshold=50,
        slow_call_s=None,
    )
    closed = CircuitPermit(True, CircuitState.CLOSED)
    return {
        "ping": store.client.ping,
        "rate_limit": lambda: store.rate_limit(keys=next(turn), limit=limit),
        "circuit_acquire": lambda: store.circuit_acquire(agent_key="agent-bench", settings=circuit),
        "circuit_record": lambda: store.circuit_record(
            agent_key="agent-bench", settings=circuit, permit=closed, success=True
        ),
    }


def timed(call: Callable[[], object], calls: int) -> list[float]:
    """Microseconds per call, each call timed on its own."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        started = clock()
        call()
        samples.append((clock() - started) / 1000)
    return samples


def interleaved(ops: dict[str, Callable[[], object]], calls: int, rep: int) -> dict:
    """One rep: the operations take turns call by call (the order rotating with the rep), so
    a change in the machine's load -- this is often a shared box -- hits them all alike."""
    clock = time.perf_counter_ns
    names = list(ops)
    shift = rep % len(names)
    order = [(name, ops[name]) for name in names[shift:] + names[:shift]]
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(calls):
        for name, call in order:
            started = clock()
            call()
            samples[name].append((clock() - started) / 1000)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(url: str, reps: int, calls: int) -> dict:
    store = RedisPolicyStore(url, key_prefix=f"acp:bench:{uuid.uuid4().hex[:8]}:")
    try:
        ops = operations(store, 200 + reps * calls)
        for call in ops.values():  # connect, load the scripts, warm the caches
            timed(call, 200)
        if not store.healthy:
            raise SystemExit(f"Redis at {url} is not reachable: {store.last_error}")
        reps_samples = [interleaved(ops, calls, rep) for rep in range(reps)]
        info = store.client.info("server")
    finally:
        keys = list(store.client.scan_iter(match=f"{store.prefix}*", count=1000))
        if keys:
            store.client.delete(*keys)
        store.close()

    samples = {name: [v for rep in reps_samples for v in rep[name]] for name in ops}
    ping_p50 = statistics.median(samples["ping"])
    ping_mean = statistics.fmean(samples["ping"])
    results = {}
    for name, values in samples.items():
        p50, mean = statistics.median(values), statistics.fmean(values)
        rep_p50 = [statistics.median(rep[name]) for rep in reps_samples]
        rep_ratio = [
            statistics.median(rep[name]) / statistics.median(rep["ping"]) for rep in reps_samples
        ]
        results[name] = {
            "p50_us": round(p50, 2),
            "mean_us": round(mean, 2),
            "p99_us": round(percentile(values, 0.99), 2),
            # Paired: each rep's p50 against the same rep's PING, then the median over reps --
            # steadier than pooling when the machine's load drifts between reps.
            "ratio_p50_vs_ping": round(statistics.median(rep_ratio), 3),
            "ratio_p50_pooled": round(p50 / ping_p50, 3),
            "ratio_mean_vs_ping": round(mean / ping_mean, 3),
            "p50_per_rep_us": [round(v, 2) for v in rep_p50],
            "ratio_p50_per_rep": [round(v, 3) for v in rep_ratio],
        }
    parts = urlsplit(url)
    return {
        "benchmark": "policy decisions vs a bare Redis round trip",
        "when": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "redis": {
            "host": parts.hostname,
            "port": parts.port,
            "db": parts.path.lstrip("/") or "0",
            "version": info.get("redis_version"),
        },
        "client": {"redis_py": redis.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "reps": reps,
        "calls_per_rep": calls,
        "goal_ratio": GOAL_RATIO,
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"{report['reps']} reps x {report['calls_per_rep']} calls, Redis "
        f"{report['redis']['version']} at {report['redis']['host']}:{report['redis']['port']}"
    )
    header = (
        f"{'operation':<16}{'p50 us':>9}{'mean us':>9}{'p99 us':>9}"
        f"{'p50/PING':>10}{'mean/PING':>11}{'per-rep p50/PING':>20}"
    )
    print(header)
    print("-" * len(header))
    for name, row in report["results"].items():
        flag = "" if name == "ping" or row["ratio_p50_vs_ping"] <= GOAL_RATIO else "  over goal"
        spread = f"{min(row['ratio_p50_per_rep']):.2f}-{max(row['ratio_p50_per_rep']):.2f}x"
        print(
            f"{name:<16}{row['p50_us']:>9.1f}{row['mean_us']:>9.1f}{row['p99_us']:>9.1f}"
            f"{row['ratio_p50_vs_ping']:>9.2f}x{row['ratio_mean_vs_ping']:>10.2f}x"
            f"{spread:>20}{flag}"
        )
    print(f"goal: each decision at most {GOAL_RATIO}x a PING")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("BENCH_REDIS_URL")
        or os.environ.get("REDIS_URL")
        or "redis://127.0.0.1:6379/0",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.url, args.reps, args.calls)
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
