"""Writes what a RunContext buffered: metrics, tool executions and steps, in batches.

Two ways, the same rows:
- recording_flush(): one INSERT per kind, through the ORM (any database);
- record_ctes(): the same INSERTs as data-modifying CTE clauses that select from the run's
  finishing UPDATE (``u``), so that on PostgreSQL the outcome, the records and the run's
  terminal event are one statement, one round trip, written only if the fenced UPDATE
  matched (runs.services.run_finish, orchestration.bus.run_terminal_write).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from agents.ids import uuid7
from agents.models import Tool
from runs.context import RunContext
from runs.models import AgentRun, AgentRunMetric, RunStep, ToolExecution

# (organization id, tool slug) pairs known to exist in this process, so the one-statement
# finish can join tools by slug without a lookup first. A tool deleted meanwhile is caught
# (fewer rows written than sent) and the missing rows are written the slow way.
_known_tools: set[tuple[str, str]] = set()
_known_tools_lock = threading.Lock()


@dataclass
class RunRecords:
    """What a run's attempts recorded, plus the standard metric rows, waiting to be written."""

    contexts: list[RunContext] = field(default_factory=list)
    extra_metrics: list[tuple[str, float, dict]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.contexts or self.extra_metrics)


def tools_for_slugs(*, organization_id, slugs: set[str]) -> dict[str, Tool]:
    """The organization's tools by slug; unknown slugs are created on first use.

    Creating them (rather than failing the run) keeps a handler's record honest: every
    call it made lands in tool_executions and an admin can describe the tool later.
    """
    found = {
        t.slug: t for t in Tool.objects.filter(organization_id=organization_id, slug__in=slugs)
    }
    with _known_tools_lock:
        _known_tools.update((str(organization_id), slug) for slug in found)
    missing = slugs - set(found)
    if missing:
        Tool.objects.bulk_create(
            [
                Tool(
                    organization_id=organization_id, slug=slug, name=slug.replace("-", " ").title()
                )
                for slug in sorted(missing)
            ],
            ignore_conflicts=True,  # another run may create the same tool concurrently
        )
        created = {
            t.slug: t
            for t in Tool.objects.filter(organization_id=organization_id, slug__in=missing)
        }
        found.update(created)
        with _known_tools_lock:
            _known_tools.update((str(organization_id), slug) for slug in created)
    return found


def _iso(value):
    return value.isoformat() if value is not None else None


def _tool_calls(contexts: list[RunContext]) -> dict:
    calls = {}
    for ctx in contexts:  # later attempts overwrite earlier ones with the same call id
        for call in ctx.tool_calls.values():
            calls[(slugify(call.slug) or "tool", call.call_id)] = call
    return calls


def _dumps(rows: list[dict]) -> str:
    return json.dumps(rows, separators=(",", ":"), default=str)


@dataclass
class RecordCtes:
    """CTE clauses (each ``name AS (INSERT ... SELECT ... FROM u ...)``) and their params."""

    clauses: list[str] = field(default_factory=list)
    params: list = field(default_factory=list)
    tool_calls: dict = field(default_factory=dict)  # what the tool clause must write
    tool_clause: str | None = None  # its name, to count the rows it wrote


def record_ctes(*, run: AgentRun, records: RunRecords, now) -> RecordCtes:
    """The records as CTE clauses selecting from ``u`` (the finishing UPDATE's RETURNING id,
    organization_id): one INSERT per kind, rows passed as one JSON document per kind."""
    out = RecordCtes()
    metrics = [
        {"id": str(uuid7()), "name": m.name, "value": m.value, "metadata": m.metadata}
        for ctx in records.contexts
        for m in ctx.metrics
    ]
    metrics += [
        {"id": str(uuid7()), "name": n, "value": v, "metadata": md}
        for n, v, md in records.extra_metrics
    ]
    if metrics:
        out.clauses.append(
            "rm AS (INSERT INTO agent_run_metrics"
            " (id, created_at, updated_at, run_id, name, value, metadata)"
            " SELECT x.id, %s, %s, u.id, x.name, x.value, coalesce(x.metadata, '{}')"
            " FROM u, jsonb_to_recordset(%s::jsonb)"
            " AS x(id uuid, name text, value float8, metadata jsonb))"
        )
        out.params += [now, now, _dumps(metrics)]

    steps, offset = [], 0
    for ctx in records.contexts:
        for s in ctx.steps:
            steps.append(
                {
                    "id": str(uuid7()),
                    "name": s.name[:200],
                    "position": offset + s.position,
                    "status": s.status,
                    "payload": s.payload,
                    "result": s.result,
                    "error": s.error,
                    "started_at": _iso(s.started_at),
                    "completed_at": _iso(s.completed_at),
                    "duration_ms": s.duration_ms,
                }
            )
        offset += len(ctx.steps)
    if steps:
        # A None payload / result is stored as SQL NULL, as the ORM stores it.
        out.clauses.append(
            "rs AS (INSERT INTO run_steps (id, created_at, updated_at, run_id, name, status,"
            " position, payload, result, error, started_at, completed_at, duration_ms)"
            " SELECT x.id, %s, %s, u.id, x.name, x.status, x.position,"
            " nullif(r.value -> 'payload', 'null'), nullif(r.value -> 'result', 'null'),"
            " x.error, x.started_at, x.completed_at, x.duration_ms"
            " FROM u, jsonb_array_elements(%s::jsonb) AS r,"
            " jsonb_to_record(r.value) AS x(id uuid, name text, status text, position int,"
            " error text, started_at timestamptz, completed_at timestamptz, duration_ms int))"
        )
        out.params += [now, now, _dumps(steps)]

    calls = _tool_calls(records.contexts)
    if calls:
        organization_id = str(run.organization_id)
        with _known_tools_lock:
            unknown = {slug for slug, _ in calls if (organization_id, slug) not in _known_tools}
        if unknown:
            tools_for_slugs(organization_id=run.organization_id, slugs=unknown)
        rows = [
            {
                "id": str(uuid7()),
                "slug": slug,
                "call_id": call_id,
                "status": call.status,
                "input": call.input,
                "output": call.output,
                "error": call.error,
                "metadata": call.metadata,
                "started_at": _iso(call.started_at),
                "completed_at": _iso(call.completed_at),
                "duration_ms": call.duration_ms,
            }
            for (slug, call_id), call in calls.items()
        ]
        out.clauses.append(
            "rt AS (INSERT INTO tool_executions (id, created_at, updated_at, tool_id, run_id,"
            " call_id, status, input, output, error, metadata, started_at, completed_at,"
            " duration_ms)"
            " SELECT x.id, %s, %s, t.id, u.id, x.call_id, x.status,"
            " nullif(r.value -> 'input', 'null'), nullif(r.value -> 'output', 'null'), x.error,"
            " coalesce(r.value -> 'metadata', '{}'),"
            " x.started_at, x.completed_at, x.duration_ms"
            " FROM u, jsonb_array_elements(%s::jsonb) AS r,"
            " jsonb_to_record(r.value) AS x(id uuid, slug text, call_id text, status text,"
            " error text, started_at timestamptz, completed_at timestamptz, duration_ms int),"
            " tools AS t WHERE t.organization_id = u.organization_id AND t.slug = x.slug"
            " ON CONFLICT (run_id, tool_id, call_id) DO UPDATE SET status = EXCLUDED.status,"
            " input = EXCLUDED.input, output = EXCLUDED.output, error = EXCLUDED.error,"
            " metadata = EXCLUDED.metadata, started_at = EXCLUDED.started_at,"
            " completed_at = EXCLUDED.completed_at, duration_ms = EXCLUDED.duration_ms,"
            " updated_at = EXCLUDED.updated_at RETURNING 1)"
        )
        out.params += [now, now, _dumps(rows)]
        out.tool_calls = calls
        out.tool_clause = "rt"
    return out


def record_tools_repair(*, run: AgentRun, records: RunRecords) -> None:
    """A tool vanished between the cache and the finish: recreate it and write its calls."""
    with _known_tools_lock:
        _known_tools.difference_update(
            (str(run.organization_id), slug) for slug, _ in _tool_calls(records.contexts)
        )
    _flush_tool_calls(run=run, calls=_tool_calls(records.contexts))


def recording_flush(
    *,
    run: AgentRun,
    contexts: list[RunContext],
    extra_metrics: list[tuple[str, float, dict]] = (),
) -> None:
    """Persist what the attempts' contexts buffered: one INSERT per kind for the whole run.

    Tool executions are upserted by (run, tool, call id), so a call retried under the
    same id in a later attempt ends as one row with the last attempt's outcome.
    """
    metrics = [
        AgentRunMetric(run=run, name=m.name, value=m.value, metadata=m.metadata)
        for ctx in contexts
        for m in ctx.metrics
    ]
    metrics += [AgentRunMetric(run=run, name=n, value=v, metadata=md) for n, v, md in extra_metrics]
    if metrics:
        AgentRunMetric.objects.bulk_create(metrics)

    steps, offset = [], 0
    for ctx in contexts:
        for s in ctx.steps:
            steps.append(
                RunStep(
                    run=run,
                    name=s.name[:200],
                    position=offset + s.position,
                    status=s.status,
                    payload=s.payload,
                    result=s.result,
                    error=s.error,
                    started_at=s.started_at,
                    completed_at=s.completed_at,
                    duration_ms=s.duration_ms,
                )
            )
        offset += len(ctx.steps)
    if steps:
        RunStep.objects.bulk_create(steps)

    _flush_tool_calls(run=run, calls=_tool_calls(contexts))


def _flush_tool_calls(*, run: AgentRun, calls: dict) -> None:
    if not calls:
        return
    tools = tools_for_slugs(organization_id=run.organization_id, slugs={slug for slug, _ in calls})
    ToolExecution.objects.bulk_create(
        [
            ToolExecution(
                run=run,
                tool=tools[slug],
                call_id=call_id,
                status=call.status,
                input=call.input,
                output=call.output,
                error=call.error,
                metadata=call.metadata,
                started_at=call.started_at,
                completed_at=call.completed_at,
                duration_ms=call.duration_ms,
            )
            for (slug, call_id), call in calls.items()
        ],
        update_conflicts=True,
        unique_fields=["run", "tool", "call_id"],
        update_fields=[
            "status",
            "input",
            "output",
            "error",
            "metadata",
            "started_at",
            "completed_at",
            "duration_ms",
            "updated_at",
        ],
    )


def tool_execution_upsert(*, run: AgentRun, slug: str, call_id: str, fields: dict) -> ToolExecution:
    """One reported tool call (remote agents): insert, or update the row with the same call id."""
    tool = tools_for_slugs(organization_id=run.organization_id, slugs={slug})[slug]
    try:
        with transaction.atomic():
            execution, _ = ToolExecution.objects.update_or_create(
                run=run, tool=tool, call_id=call_id, defaults=fields
            )
    except IntegrityError:
        # A concurrent report of the same call id won the insert; update it instead.
        execution = ToolExecution.objects.get(run=run, tool=tool, call_id=call_id)
        for name, value in fields.items():
            setattr(execution, name, value)
        execution.save()
    return execution
