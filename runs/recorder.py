"""Writes what a RunContext buffered: metrics, tool executions and steps, in batches."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from agents.models import Tool
from runs.context import RunContext
from runs.models import AgentRun, AgentRunMetric, RunStep, ToolExecution


def tools_for_slugs(*, organization_id, slugs: set[str]) -> dict[str, Tool]:
    """The organization's tools by slug; unknown slugs are created on first use.

    Creating them (rather than failing the run) keeps a handler's record honest: every
    call it made lands in tool_executions and an admin can describe the tool later.
    """
    found = {
        t.slug: t for t in Tool.objects.filter(organization_id=organization_id, slug__in=slugs)
    }
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
        found.update(
            {
                t.slug: t
                for t in Tool.objects.filter(organization_id=organization_id, slug__in=missing)
            }
        )
    return found


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

    calls = {}
    for ctx in contexts:  # later attempts overwrite earlier ones with the same call id
        for call in ctx.tool_calls.values():
            calls[(slugify(call.slug) or "tool", call.call_id)] = call
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
