"""Rewrite docs/RELIABILITY.md's "## Faults" and "## Abuse and bad input" sections.

    python -m tests.faults.report [--doc docs/RELIABILITY.md] [--artifacts artifacts/faults]

One row per scenario (F1..F7, S1..S6) from the JSON files tests/faults/figures.py wrote:
its result, its figures, and the scale, date and command of the run that measured it.
A scenario without a file is listed as not run. The rest of the document is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from tests.faults.figures import FULL_ARTIFACTS, ROOT

DOC = ROOT / "docs" / "RELIABILITY.md"

FAULTS = {
    "F1": "Worker kills under load",
    "F2": "Redis outage",
    "F3": "PostgreSQL restart",
    "F4": "Node death",
    "F5": "Graceful shutdown",
    "F6": "Poison run",
    "F7": "Idempotency race",
}
ABUSE = {
    "S1": "Schemathesis",
    "S2": "Tenant isolation matrix",
    "S3": "Credentials",
    "S4": "Resource limits",
    "S5": "Deploy checks, CSRF, security headers",
    "S6": "Property-based tests",
}
SECTIONS = {"Faults": FAULTS, "Abuse and bad input": ABUSE}


def load(artifacts: Path) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in sorted(artifacts.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("id"):
            found[str(document["id"])] = document
    return found


def _value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def figures_text(figures: dict) -> str:
    return "; ".join(f"{name}: {_value(value)}" for name, value in figures.items())


def section_body(catalogue: dict[str, str], results: dict[str, dict]) -> str:
    lines = [
        "| Scenario | Result | Figures | Scale | Date (UTC) |",
        "|---|---|---|---|---|",
    ]
    commands: list[str] = []
    for scenario_id, default_title in catalogue.items():
        result = results.get(scenario_id)
        if result is None:
            lines.append(f"| {scenario_id} {default_title} | not run | | | |")
            continue
        title = result.get("title") or default_title
        outcome = "pass" if result.get("passed") else "**FAIL**"
        lines.append(
            "| "
            + " | ".join(
                _cell(part)
                for part in (
                    f"{scenario_id} {title}",
                    outcome,
                    figures_text(result.get("figures") or {}),
                    str(result.get("scale", "")),
                    str(result.get("date", "")).replace("T", " ").replace("+00:00", ""),
                )
            )
            + " |"
        )
        command = result.get("command")
        if command and command not in commands:
            commands.append(command)
    lines.append("")
    lines.append(
        "Written by `python -m tests.faults.report` from artifacts/faults/*.json; `make faults`"
        " measures every scenario at full scale (FAULTS_SCALE=full) and rewrites this table."
        " Rows measured at the shortened CI scale say `ci`."
    )
    lines.append("")
    if commands:
        lines.append("Measured with:")
        lines.append("")
        lines.extend(f"    {command}" for command in commands)
    else:
        lines.append("No figures yet: run `make faults`.")
    return "\n".join(lines) + "\n"


def rewrite(text: str, results: dict[str, dict]) -> str:
    for heading, catalogue in SECTIONS.items():
        body = section_body(catalogue, results)
        pattern = re.compile(rf"(^## {re.escape(heading)}[ \t]*\n)(.*?)(?=^## |\Z)", re.M | re.S)
        if pattern.search(text):
            text = pattern.sub(lambda m, body=body: m.group(1) + "\n" + body + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + f"\n\n## {heading}\n\n{body}"
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path(os.environ.get("FAULTS_ARTIFACTS", FULL_ARTIFACTS)),
    )
    args = parser.parse_args(argv)
    results = load(args.artifacts)
    args.doc.write_text(rewrite(args.doc.read_text(), results))
    known = [*FAULTS, *ABUSE]
    print(
        f"{args.doc}: {sum(1 for s in known if s in results)} of {len(known)} scenarios"
        f" with figures ({sum(1 for s in known if results.get(s, {}).get('passed'))} passed)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
