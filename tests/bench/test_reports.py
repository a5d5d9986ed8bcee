"""docs/PERFORMANCE.md is written from the benchmarks' saved figures and nothing else.

Each benchmark writes bench/results/<name>.json (its figures) and <name>.md (its section,
rendered from those figures); bench.report assembles the document. Rendered again here
from the committed JSON, every section must be its committed .md byte for byte, and the
document must hold every section and the targets table as rendered: a section edited by
hand, a report that reads the machine it runs on instead of the figures, or figures and
text committed from different runs fail here. No benchmark runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import async_report, hotpath, http_report, policies, profile, report

RESULTS = report.RESULTS

SECTIONS = {
    "hotpath": hotpath._markdown,
    "async_runs": async_report.markdown,
    "http_api": http_report.markdown,
    "policies": lambda r: policies.render_markdown(r, r["command"]),
    "profile": lambda r: profile._markdown(r["now"], r["before"], r["before_rev"], r["command"]),
}


def _figures(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", SECTIONS)
def test_each_section_is_rendered_from_its_saved_figures(name):
    rendered = SECTIONS[name](_figures(name))

    assert rendered == (RESULTS / f"{name}.md").read_text()


def test_the_document_holds_the_targets_table_and_every_section_as_rendered():
    document = Path(report.OUTPUT).read_text()

    assert report.targets(RESULTS) in document
    for name in SECTIONS:
        assert (RESULTS / f"{name}.md").read_text().strip() in document
    # Nothing is left "not measured": every section has its figures.
    assert "Not measured yet" not in document


def test_the_targets_table_names_a_missed_target_as_missed(tmp_path):
    # The verdicts come from the figures: the same figures with B4's 1M p95 above 50 ms
    # turn that row to missed.
    for name in SECTIONS:
        (tmp_path / f"{name}.json").write_text((RESULTS / f"{name}.json").read_text())
    http = _figures("http_api")
    slow = json.loads(json.dumps(http))
    slow["sizes"][-1]["get"]["GET /api/runs/"]["p95_ms"] = 80.0
    slow["targets"] = http_report.verdicts(slow["sizes"])
    (tmp_path / "http_api.json").write_text(json.dumps(slow))

    rows = {
        line
        for line in report.targets(tmp_path).splitlines()
        if line.startswith("| B4 | GET /api/runs/ p95 ≤ 50 ms")
    }

    assert rows == {"| B4 | GET /api/runs/ p95 ≤ 50 ms at 1M runs | 80.0 ms | **missed** |"}
    assert http_report.verdicts(slow["sizes"])["GET /api/runs/"]["p95_met"] is False
