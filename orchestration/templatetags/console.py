"""Template tags of the operators' console: the dashboard, its SVG charts, and a date
hierarchy for changelists too big for Django's.

The charts are drawn here, on the server, as inline SVG: no chart library, nothing
fetched from elsewhere, and the page is complete before any script runs.
"""

from __future__ import annotations

import calendar
import datetime

from django import template
from django.db.models import Max, Min
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst

from orchestration import console

register = template.Library()

# The chart's drawing area, in SVG user units (it scales to the page width).
WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, BOTTOM = 40, 40, 10, 22
SUCCEEDED, FAILED, OTHER, RATE = "#16a34a", "#dc2626", "#9ca3af", "#1d4ed8"


@register.inclusion_tag("admin/console/dashboard.html", takes_context=True)
def console_dashboard(context) -> dict:
    request = context["request"]
    return {
        **console.dashboard_context(request),
        "request": request,
        "data_url": reverse("admin:orchestration_console_data"),
    }


def _nice_ceiling(value: int) -> int:
    """1, 2, 5, 10, 20, 50, ...: an axis maximum a person reads at a glance."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if value <= step * factor:
                return step * factor
        step *= 10


def _clock(moment: datetime.datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


@register.filter
def runs_chart(series: console.Series, label: str = "") -> SafeString:
    """Stacked bars (succeeded, failed, other) per bucket and the success rate as a line."""
    buckets = series.buckets
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _nice_ceiling(max((b.total for b in buckets), default=0) or 1)
    slot = plot_w / len(buckets)
    bar = max(1.0, slot * 0.8)

    def y(count: float) -> float:
        return TOP + plot_h - plot_h * count / top

    shapes: list[SafeString] = []
    # The success rate, drawn as one line per stretch of buckets that have decided runs
    # (an empty bucket has no rate: the line breaks rather than inventing one).
    stretches: list[list[tuple[float, float]]] = [[]]
    for i, bucket in enumerate(buckets):
        x = LEFT + i * slot + (slot - bar) / 2
        base = float(bucket.total)
        stack = []
        for count, color in (
            (bucket.other, OTHER),
            (bucket.failed, FAILED),
            (bucket.succeeded, SUCCEEDED),
        ):
            if count:
                stack.append(
                    format_html(
                        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>',
                        f"{x:.1f}",
                        f"{y(base):.1f}",
                        f"{bar:.1f}",
                        f"{plot_h * count / top:.1f}",
                        color,
                    )
                )
                base -= count
        rate = bucket.success_rate
        rate_text = "-" if rate is None else f"{rate:.0%}"
        tip = (
            f"{_clock(bucket.start)}: {bucket.total} runs ({bucket.per_minute:.1f}/min),"
            f" {bucket.succeeded} succeeded, {bucket.failed} failed, success {rate_text}"
        )
        shapes.append(
            format_html(
                '<g class="bucket"><title>{}</title>'
                '<rect x="{}" y="{}" width="{}" height="{}" fill="transparent"/>{}</g>',
                tip,
                f"{LEFT + i * slot:.1f}",
                TOP,
                f"{slot:.1f}",
                plot_h,
                mark_safe("".join(stack)),  # noqa: S308 -- built with format_html above
            )
        )
        if rate is None:
            stretches.append([])
        else:
            stretches[-1].append((x + bar / 2, TOP + plot_h * (1 - rate)))

    axes = format_html(
        '<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#d1d5db"/>'
        '<text x="{tl}" y="{t}" class="axis" text-anchor="end">{top}</text>'
        '<text x="{tl}" y="{b}" class="axis" text-anchor="end">0</text>'
        '<text x="{tr}" y="{t}" class="axis rate">100%</text>'
        '<text x="{tr}" y="{b}" class="axis rate">0%</text>'
        '<text x="{l}" y="{xl}" class="axis">{start}</text>'
        '<text x="{r}" y="{xl}" class="axis" text-anchor="end">now</text>',
        l=LEFT,
        r=WIDTH - RIGHT,
        b=TOP + plot_h,
        t=TOP + 8,
        tl=LEFT - 4,
        tr=WIDTH - RIGHT + 4,
        xl=HEIGHT - 6,
        top=top,
        start=_clock(buckets[0].start),
    )
    lines = []
    for points in stretches:
        if len(points) > 1:
            lines.append(
                format_html(
                    '<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>',
                    " ".join(f"{px:.1f},{py:.1f}" for px, py in points),
                    RATE,
                )
            )
        elif points:
            ((px, py),) = points
            lines.append(
                format_html(
                    '<circle cx="{}" cy="{}" r="2" fill="{}"/>', f"{px:.1f}", f"{py:.1f}", RATE
                )
            )
    line = mark_safe("".join(lines))  # noqa: S308 -- every line built with format_html
    return format_html(
        '<svg class="console-chart" viewBox="0 0 {} {}" role="img" aria-label="{}"'
        ' preserveAspectRatio="none">{}{}{}</svg>',
        WIDTH,
        HEIGHT,
        label or "runs per bucket and success rate",
        axes,
        mark_safe("".join(shapes)),  # noqa: S308 -- every shape built with format_html
        line,
    )


@register.filter
def per_minute(value: float) -> str:
    """0.02, 0.5, 12.3: enough digits to tell a trickle from nothing."""
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


@register.filter
def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


@register.filter
def age(seconds: float | None) -> str:
    """12 s, 3 min, 2.5 h."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@register.filter
def milliseconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


@register.filter
def load(node: dict) -> str:
    return f"{node['activeRuns']}/{node['capacity']}"


@register.simple_tag
def status_dot(status: str, fresh: bool = True) -> SafeString:
    css = status.lower() if fresh or status != "ACTIVE" else "stale"
    label = status if fresh or status != "ACTIVE" else "ACTIVE (stale)"
    return format_html('<span class="console-badge console-{}">{}</span>', css, label)


# --- a date hierarchy for big changelists ------------------------------------------------


@register.inclusion_tag("admin/date_hierarchy.html")
def bounded_date_hierarchy(cl) -> dict:
    """Django's date hierarchy without its SELECT DISTINCT over the whole list.

    Django lists the years, months or days that have rows with a DISTINCT over every
    row of the list, a full scan of a run-sized table. Here the choices are every
    period between the list's first and last row (MIN and MAX: two probes of the
    column's index); a period in between may be empty.
    """
    field_name = cl.date_hierarchy
    if not field_name:
        return {"show": False}
    year_field, month_field, day_field = (f"{field_name}__{p}" for p in ("year", "month", "day"))
    try:
        year = int(cl.params[year_field]) if cl.params.get(year_field) else None
        month = int(cl.params[month_field]) if cl.params.get(month_field) else None
        day = int(cl.params[day_field]) if cl.params.get(day_field) else None
    except ValueError:
        return {"show": False}

    def link(filters: dict) -> str:
        return cl.get_query_string(filters, [f"{field_name}__"])

    if year and month and day:
        date = datetime.date(year, month, day)
        return {
            "show": True,
            "back": {
                "link": link({year_field: year, month_field: month}),
                "title": capfirst(formats.date_format(date, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(date, "MONTH_DAY_FORMAT"))}],
        }
    bounds = cl.queryset.aggregate(first=Min(field_name), last=Max(field_name))
    if bounds["first"] is None:
        back = {"link": link({}), "title": "All dates"} if year else None
        return {"show": True, "back": back, "choices": []}
    first, last = (timezone.localtime(bounds[k]) for k in ("first", "last"))
    if not year and first.year == last.year:
        year = first.year
        if first.month == last.month:
            month = first.month
    if year and month:
        start = first.day if (first.year, first.month) == (year, month) else 1
        end = (
            last.day
            if (last.year, last.month) == (year, month)
            else calendar.monthrange(year, month)[1]
        )
        days = [datetime.date(year, month, d) for d in range(start, end + 1)]
        return {
            "show": True,
            "back": {"link": link({year_field: year}), "title": str(year)},
            "choices": [
                {
                    "link": link({year_field: year, month_field: month, day_field: d.day}),
                    "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                }
                for d in days
            ],
        }
    if year:
        start = first.month if first.year == year else 1
        end = last.month if last.year == year else 12
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {
                    "link": link({year_field: year, month_field: m}),
                    "title": capfirst(
                        formats.date_format(datetime.date(year, m, 1), "YEAR_MONTH_FORMAT")
                    ),
                }
                for m in range(start, end + 1)
            ],
        }
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({year_field: str(y)}), "title": str(y)}
            for y in range(first.year, last.year + 1)
        ],
    }


@register.simple_tag
def failure_rows(failures) -> SafeString:
    """The latest failures, each linked to its run's page."""
    return format_html_join(
        "",
        '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td>'
        '<td><code>{}</code></td><td class="console-message">{}</td></tr>',
        (
            (
                reverse("admin:runs_agentrun_change", args=[run.pk]),
                timezone.localtime(run.created_at).strftime("%H:%M:%S"),
                run.agent.name,
                run.organization.slug,
                run.intent,
                run.error_code or "-",
                run.error_message[:160],
            )
            for run in failures
        ),
    )
