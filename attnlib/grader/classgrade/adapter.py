"""The one seam between class grading and the per-submission grader.

:func:`grade_folder` calls :func:`attnlib.grader.engine.grade` on one submission's folder; :func:`to_record` turns
its report into a plain JSON record (what the cache, the shards, the gradebook and the class report use), and
:func:`from_record` turns a record back into a report for :mod:`attnlib.grader.report`'s per-student files. If the
engine's API moves, this is the file to re-point.
"""

from __future__ import annotations

from pathlib import Path

from .. import report as report_files
from ..engine import Options, Report, Result, grade
from ..exercises import BY_KEY, EXERCISE_SETS, exercises_of, notebook_name
from ..results import GRADED, NOT_GRADED

RECORD_VERSION = 1
FAILED_STATUSES = {"sandbox failed", "sandbox unavailable", "grader failed", "not graded", "refused"}


def grade_folder(folder: Path, *, seed: int, timeout: float, memory_gib: float, sandbox: str) -> Report:
    """Grade one submission (a folder) with the class seed; never raises on a bad submission."""
    report = grade([folder], Options(timeout=timeout, memory_gib=memory_gib, seed=seed, sandbox=sandbox))
    if report.status == "nothing to grade":  # in a class, a submission without any set scores 0 on every set
        report.status = GRADED
        report.results = [
            Result(ex, None, message=f"{notebook_name(s)} not found in the submission")
            for s in EXERCISE_SETS
            for ex in exercises_of(s)
        ]
    return report


def sandbox_problem(level: str) -> str | None:
    """Why the sandbox level asked for cannot run here (None when it can): checked once, before a class is graded."""
    from .. import sandbox

    try:
        sandbox.choose(level)
    except sandbox.SandboxUnavailable as err:
        return str(err) or f"the sandbox level {level} is not available here"
    return None


def exercise_status(result: Result) -> str:
    """ "graded", or "not graded" when the grader could not run the exercise (no points, and no zero either)."""
    return GRADED if result.graded else NOT_GRADED


def _clean(text: str, real_root: Path) -> str:
    """A text with this machine's path of the submission removed (paths are shown relative to its root)."""
    root = str(real_root)
    return text.replace(root + "/", "").replace(root, ".")


def to_record(report: Report, *, real_root: Path, extra_notes: list[str] = ()) -> dict:
    """A plain, JSON-ready record of one submission's report (paths relative to the submission's root)."""
    exercises = []
    by_set_path: dict[str, str] = {}
    for r in report.results:
        path = _clean(r.path, real_root) if r.path else None
        status = "missing" if r.path is None and "not found" in (r.message or "") else exercise_status(r)
        if path:
            by_set_path[r.exercise.set] = path
        exercises.append(
            {
                "key": r.exercise.key,
                "set": r.exercise.set,
                "entry": r.exercise.entry,
                "points": float(r.max_score),
                "score": float(r.score) if status == "graded" else None,
                "passed": int(r.passed),
                "total": int(r.total),
                "status": status,
                "message": _clean(r.message or "", real_root),
                "mistakes": [r.mistake] if r.mistake else [],
                "path": path,
            }
        )
    exercises.sort(key=lambda e: tuple(int(p) for p in e["key"].split(".")))
    return {
        "version": RECORD_VERSION,
        "status": report.status,
        "level": report.level,
        "seed": report.seed,
        "seconds": round(report.seconds, 2),
        "notes": [_clean(n, real_root) for n in [*report.notes, *extra_notes]],
        "files": dict(sorted(by_set_path.items())),
        "exercises": exercises,
    }


def failed_record(reason: str, *, seed: int, level: str = "") -> dict:
    """The record of a submission the grader could not grade at all: every exercise "not graded"."""
    return {
        "version": RECORD_VERSION,
        "status": "not graded",
        "level": level,
        "seed": seed,
        "seconds": 0.0,
        "notes": [reason],
        "files": {},
        "exercises": [
            {
                "key": ex.key,
                "set": ex.set,
                "entry": ex.entry,
                "points": float(ex.points),
                "score": None,
                "passed": 0,
                "total": 0,
                "status": "not graded",
                "message": f"not graded: {reason}",
                "mistakes": [],
                "path": None,
            }
            for s in EXERCISE_SETS
            for ex in exercises_of(s)
        ],
    }


def from_record(record: dict) -> Report:
    """A grader report rebuilt from a record, for the per-student report files."""
    results = []
    for e in record["exercises"]:
        ex = BY_KEY.get(e["key"])
        if ex is None:
            continue
        message = (
            e["message"]
            if e["status"] != "not graded" or e["message"].startswith("not graded")
            else (f"not graded: {e['message']}")
        )
        results.append(
            Result(
                ex,
                e["path"],
                score=e["score"] or 0.0,
                message=message,
                passed=e["passed"],
                total=e["total"],
                status=NOT_GRADED if e["status"] == NOT_GRADED else GRADED,
                mistake=(e.get("mistakes") or [""])[0],
            )
        )
    return Report(
        results=results,
        notes=list(record["notes"]),
        seed=record["seed"],
        seconds=record.get("seconds", 0.0),
        level=record.get("level", ""),
        status=record.get("status", "graded"),
    )


def report_texts(record: dict) -> dict[str, str]:
    """The per-student report files (results.json, junit.xml, classroom.json, summary.md) of a record."""
    return report_files.contents(from_record(record))
