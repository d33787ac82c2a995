"""Write a grading :class:`~attnlib.grader.engine.Report` as a terminal table, Markdown, Gradescope's
results.json, JUnit XML and GitHub Classroom's per-test JSON."""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import shutil
import stat
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

Report = Any  # attnlib.grader.results.Report; not imported, so a broken engine still leaves a report behind

MAX_TEXT = 2000  # characters of one message in a report
# C0/C1 controls (but tab and newline), DEL, bidi embeddings/overrides/isolates and marks, zero-width and
# line/paragraph separators, BOM, and lone surrogates: never rendered from a submission.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


def clean(text: object, limit: int = MAX_TEXT) -> str:
    """Text from a submission made safe to put anywhere: control, bidi and invisible characters replaced by
    U+FFFD, capped at ``limit`` characters. Each format escapes it further for itself (XML, Markdown/HTML)."""
    text = _UNSAFE.sub("\ufffd", str(text).replace("\r\n", "\n").replace("\r", "\n"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md(text: object) -> str:
    """For a Markdown table cell or list item rendered by GitHub: HTML-escaped (no tags, no entities), and every
    character Markdown gives a meaning (links, images, emphasis, code, tables, headings) backslash-escaped."""
    text = html.escape(clean(text), quote=True).replace("\n", " ")
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~>])", r"\\\1", text)


def _status(result) -> bool:
    return result.score >= result.max_score


def _graded(result) -> bool:
    return getattr(result, "status", "graded") == "graded"


def table(report: Report, width: int = 110) -> str:
    """A plain-text table: one row per exercise with its score and message, then the total."""
    name_w = max([len(r.name) for r in report.results] + [8])
    lines = [f"{'exercise':<{name_w}}  {'score':>11}  message", "-" * width]
    indent = " " * (name_w + 15)
    for r in report.results:
        mark = "✓" if _status(r) else "✗" if _graded(r) else "!"
        score = f"{r.score:>5.2f}" if _graded(r) else "  n/a"
        head = f"{r.name:<{name_w}}  {score}/{r.max_score:<4g} {mark} "
        wrapped = textwrap.wrap(clean(r.message), width=max(40, width - len(head))) or [""]
        lines.append(head + wrapped[0])
        lines.extend(indent + w for w in wrapped[1:])
    lines.append("-" * width)
    lines.append(
        f"{'total':<{name_w}}  {report.score:>5.2f}/{report.max_score:<4g}   {report.percent:.1f}%   "
        f"graded in {report.seconds:.1f} s (seed {report.seed})"
    )
    lines.extend(f"note: {clean(n)}" for n in report.notes)
    return "\n".join(lines)


def markdown(report: Report) -> str:
    """The table as Markdown, for a GitHub Actions job summary (every submitted text escaped)."""
    not_graded = [r for r in report.results if not _graded(r)]
    head = f"## Autograder: {report.score:g} / {report.max_score:g} points ({report.percent:.1f}%)"
    if not_graded:
        head = f"## Autograder: ERROR, {len(not_graded)} exercise(s) NOT GRADED (partial total {report.score:g})"
    rows = [head, "", "| exercise | score | result |", "|---|---:|---|"]
    for r in report.results:
        mark = ("✅" if _status(r) else "❌") if _graded(r) else "⚠️"
        score = f"{r.score:g} / {r.max_score:g}" if _graded(r) else f"not graded / {r.max_score:g}"
        rows.append(f"| {mark} `{r.name}` | {score} | {_md(r.message)} |")
    rows.append("")
    rows.append(f"Graded in {report.seconds:.1f} s with seed {report.seed}.")
    rows.extend(f"- note: {_md(n)}" for n in report.notes)
    return "\n".join(rows) + "\n"


def gradescope(report: Report) -> dict:
    """Gradescope's results.json schema."""
    not_graded = [r for r in report.results if not _graded(r)]
    head = f"{report.score:g} / {report.max_score:g} points ({report.percent:.1f}%)"
    if not_graded:
        head = (
            f"GRADER ERROR: {len(not_graded)} exercise(s) could not be graded, so this is not a grade: "
            "the course staff will regrade this submission"
        )
    return {
        **({} if not_graded else {"score": report.score}),  # no total that could be taken for a grade
        "execution_time": round(report.seconds, 2),
        "output": head + "".join(f"\nnote: {clean(n)}" for n in report.notes),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "extra_data": {
            "sandbox": getattr(report, "level", ""),
            "status": getattr(report, "status", "graded"),
            "seed": report.seed,
            "not_graded": [r.name for r in not_graded],
            "mistakes": {r.name: r.mistake_id for r in report.results if getattr(r, "mistake_id", "")},
        },
        "tests": [
            {
                "name": r.name,
                **({"score": r.score} if _graded(r) else {}),  # not graded: no score at all, an error
                "max_score": r.max_score,
                "status": "passed" if _status(r) else "failed",
                "output": clean(r.message) if _graded(r) else f"GRADER ERROR (not a score): {clean(r.message)}",
                "visibility": "visible",
            }
            for r in report.results
        ],
    }


def classroom(report: Report) -> dict:
    """GitHub Classroom's autograding per-test JSON (``{version: 1, status, max_score, tests}``)."""
    return {
        "version": 1,
        "status": "error"
        if any(not _graded(r) for r in report.results)
        else "pass"
        if report.results and all(_status(r) for r in report.results)
        else "fail",
        "max_score": report.max_score,
        "tests": [
            {
                "name": r.name,
                "status": ("pass" if _status(r) else "fail") if _graded(r) else "error",
                "score": r.score,
                "max_score": r.max_score,
                "message": clean(r.message),
                "test_code": f"attnlib grade ({r.exercise.set})",
                "filename": clean(r.path or "", 500),
                "line_no": 0,
                "execution_time": "",
            }
            for r in report.results
        ],
    }


def junit(report: Report) -> str:
    """JUnit XML: one testcase per exercise, a <failure> with the message when it did not get full marks."""
    errors = sum(not _graded(r) for r in report.results)
    failures = sum(not _status(r) and _graded(r) for r in report.results)
    suites = ET.Element(
        "testsuites", name="attnlib grade", tests=str(len(report.results)), failures=str(failures), errors=str(errors)
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="attnlib grade",
        tests=str(len(report.results)),
        failures=str(failures),
        errors=str(errors),
        time=f"{report.seconds:.2f}",
    )
    for r in report.results:
        message = clean(r.message)  # ElementTree escapes markup; XML 1.0 cannot hold control characters at all
        case = ET.SubElement(suite, "testcase", classname=r.exercise.set, name=r.name, time="0")
        ET.SubElement(case, "system-out").text = f"score {r.score:g} / {r.max_score:g}: {message}"
        if not _graded(r):
            ET.SubElement(case, "error", message=message[:500], type="NotGraded").text = message
        elif not _status(r):
            failure = ET.SubElement(case, "failure", message=message[:500], type="ScoreBelowMax")
            failure.text = f"{r.score:g} / {r.max_score:g} points\n{message}"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


class ReportWriteError(Exception):
    """A report file could not be written safely (the message says why)."""


def _write_new(folder: Path, name: str, data: bytes) -> Path:
    """Create ``folder/name`` exclusively (never following a link), write, fsync; returns its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    path = folder / name
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _check_written(path: Path, expected: bytes) -> None:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise ReportWriteError(f"{path} is not a plain file with one link after writing it")
    with open(path, "rb") as fh:
        if fh.read() != expected:
            raise ReportWriteError(f"{path} changed while it was written")


def write_file(path: Path, text: str) -> Path:
    """Write one file atomically: a new temp file beside it (O_EXCL, O_NOFOLLOW), then a rename over ``path``.

    The rename replaces the directory entry itself, so a symlink or hard link planted at ``path`` beforehand is
    replaced, never followed or written through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    tmp = _write_new(path.parent, f".{path.name}.{secrets.token_hex(8)}.tmp", data)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
    _check_written(path, data)
    return path


def write_folder(folder: Path, files: dict[str, str]) -> list[Path]:
    """Write ``files`` into a freshly created folder and put it in place of ``folder`` in one rename.

    Whatever was at ``folder`` before (an earlier report, files or links a submission planted) is moved aside and
    deleted, so the folder holds exactly these files.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = folder.parent / f".{folder.name}.{secrets.token_hex(8)}.new"
    os.mkdir(fresh, 0o755)
    for name, text in files.items():
        _write_new(fresh, name, text.encode("utf-8"))
    old = None
    if os.path.lexists(folder):
        old = folder.parent / f".{folder.name}.{secrets.token_hex(8)}.old"
        os.rename(folder, old)
    os.rename(fresh, folder)
    if old is not None:
        if os.path.islink(old) or not os.path.isdir(old):
            os.unlink(old)
        else:
            shutil.rmtree(old, ignore_errors=True)
    written = []
    for name, text in files.items():
        _check_written(folder / name, text.encode("utf-8"))
        written.append(folder / name)
    return written


def contents(report: Report) -> dict[str, str]:
    """The four report files' texts, by their default names."""
    return {
        "results.json": json.dumps(gradescope(report), indent=2),
        "junit.xml": junit(report),
        "classroom.json": json.dumps(classroom(report), indent=2),
        "summary.md": markdown(report),
    }


def write(
    report: Report,
    *,
    results: Path,
    junit_path: Path,
    classroom_path: Path,
    summary: Path,
    out: Path | None = None,
) -> list[Path]:
    """Write every report file atomically; returns their paths.

    With ``out``, the files that belong in it are written into a fresh folder that replaces ``out`` as a whole;
    files given elsewhere (``--results /autograder/results/results.json``) are each replaced atomically.
    """
    texts = contents(report)
    targets = {
        "results.json": Path(results),
        "junit.xml": Path(junit_path),
        "classroom.json": Path(classroom_path),
        "summary.md": Path(summary),
    }
    inside = {}
    if out is not None:
        out = Path(out)
        inside = {n: texts[n] for n, p in targets.items() if p.parent == out and p.name == n}
    written = write_folder(out, inside) if inside else []
    for name, path in targets.items():
        if name not in inside:
            written.append(write_file(path, texts[name]))
    order = {p: i for i, p in enumerate(targets.values())}
    return sorted(written, key=lambda p: order.get(p, 99))
