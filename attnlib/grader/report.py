"""Write a grading :class:`~attnlib.grader.engine.Report` as a terminal table, Markdown, Gradescope's
results.json, JUnit XML and GitHub Classroom's per-test JSON."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from .engine import Report


def _status(result) -> bool:
    return result.score >= result.max_score


def table(report: Report, width: int = 110) -> str:
    """A plain-text table: one row per exercise with its score and message, then the total."""
    name_w = max([len(r.name) for r in report.results] + [8])
    lines = [f"{'exercise':<{name_w}}  {'score':>11}  message", "-" * width]
    indent = " " * (name_w + 15)
    for r in report.results:
        mark = "✓" if _status(r) else "✗"
        head = f"{r.name:<{name_w}}  {r.score:>5.2f}/{r.max_score:<4g} {mark} "
        wrapped = textwrap.wrap(r.message, width=max(40, width - len(head))) or [""]
        lines.append(head + wrapped[0])
        lines.extend(indent + w for w in wrapped[1:])
    lines.append("-" * width)
    lines.append(
        f"{'total':<{name_w}}  {report.score:>5.2f}/{report.max_score:<4g}   {report.percent:.1f}%   "
        f"graded in {report.seconds:.1f} s (seed {report.seed})"
    )
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


def markdown(report: Report) -> str:
    """The table as Markdown, for a GitHub Actions job summary."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [
        f"## Autograder: {report.score:g} / {report.max_score:g} points ({report.percent:.1f}%)",
        "",
        "| exercise | score | result |",
        "|---|---:|---|",
    ]
    for r in report.results:
        rows.append(
            f"| {'✅' if _status(r) else '❌'} `{r.name}` | {r.score:g} / {r.max_score:g} | {cell(r.message)} |"
        )
    rows.append("")
    rows.append(f"Graded in {report.seconds:.1f} s with seed {report.seed}.")
    rows.extend(f"- note: {cell(n)}" for n in report.notes)
    return "\n".join(rows) + "\n"


def gradescope(report: Report) -> dict:
    """Gradescope's results.json schema."""
    return {
        "score": report.score,
        "execution_time": round(report.seconds, 2),
        "output": f"{report.score:g} / {report.max_score:g} points ({report.percent:.1f}%)"
        + "".join(f"\nnote: {n}" for n in report.notes),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": [
            {
                "name": r.name,
                "score": r.score,
                "max_score": r.max_score,
                "status": "passed" if _status(r) else "failed",
                "output": r.message,
                "visibility": "visible",
            }
            for r in report.results
        ],
    }


def classroom(report: Report) -> dict:
    """GitHub Classroom's autograding per-test JSON (``{version: 1, status, max_score, tests}``)."""
    return {
        "version": 1,
        "status": "pass" if report.results and all(_status(r) for r in report.results) else "fail",
        "max_score": report.max_score,
        "tests": [
            {
                "name": r.name,
                "status": "pass" if _status(r) else "fail",
                "score": r.score,
                "max_score": r.max_score,
                "message": r.message,
                "test_code": f"attnlib grade ({r.exercise.set})",
                "filename": r.path or "",
                "line_no": 0,
                "execution_time": "",
            }
            for r in report.results
        ],
    }


def junit(report: Report) -> str:
    """JUnit XML: one testcase per exercise, a <failure> with the message when it did not get full marks."""
    failures = sum(not _status(r) for r in report.results)
    suites = ET.Element("testsuites", name="attnlib grade", tests=str(len(report.results)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="attnlib grade",
        tests=str(len(report.results)),
        failures=str(failures),
        errors="0",
        time=f"{report.seconds:.2f}",
    )
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=r.exercise.set, name=r.name, time="0")
        ET.SubElement(case, "system-out").text = f"score {r.score:g} / {r.max_score:g}: {r.message}"
        if not _status(r):
            failure = ET.SubElement(case, "failure", message=r.message[:500], type="ScoreBelowMax")
            failure.text = f"{r.score:g} / {r.max_score:g} points\n{r.message}"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write(report: Report, *, results: Path, junit_path: Path, classroom_path: Path, summary: Path) -> list[Path]:
    """Write every report file; returns their paths."""
    written = []
    for path, text in (
        (results, json.dumps(gradescope(report), indent=2)),
        (junit_path, junit(report)),
        (classroom_path, json.dumps(classroom(report), indent=2)),
        (summary, markdown(report)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
