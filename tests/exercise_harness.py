"""Grading in-process, through the grader's own comparison code, for the exercise-set tests.

``load(folder, set_name, replace=(old, new))`` runs a notebook's kept definitions (what the sandbox would run,
:func:`attnlib.grader.notebook.definitions`) in a fresh namespace, optionally after a textual substitution in its
code cells (a broken copy). :func:`grade` then scores one exercise with :func:`attnlib.grader.selfcheck.run_checks`,
the same cases, references, mistakes and :mod:`attnlib.grader.diagnose` judgement the engine uses, without a
sandbox, so that hundreds of seeds take seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import nbformat

from attnlib.grader import selfcheck
from attnlib.grader.common import NO_FULL_MATRIX_MARK
from attnlib.grader.exercises import DEFAULT_SEED, Exercise, notebook_name
from attnlib.grader.notebook import definitions

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
EXERCISES_DIR = ROOT / "exercises"


@functools.cache
def _cells(path: Path) -> tuple[str, ...]:
    nb = nbformat.read(path, as_version=4)
    return tuple(c.source for c in nb.cells if c.cell_type == "code")


def load(folder: Path, set_name: str, replace: tuple[str, str] | None = None, entry: str | None = None) -> dict:
    """The namespace of the notebook's definitions; ``replace`` = (old, new) is applied once, in the cell that
    defines ``entry`` when given (a "find the bug" copy of a function may repeat the same line)."""
    cells = list(_cells(folder / notebook_name(set_name)))
    if replace is not None:
        old, new = replace
        hits = [
            i
            for i, c in enumerate(cells)
            if old in c and (entry is None or f"def {entry}(" in c or f"class {entry}(" in c)
        ]
        assert len(hits) == 1 and cells[hits[0]].count(old) == 1, f"{old!r} must occur once in {set_name}"
        cells[hits[0]] = cells[hits[0]].replace(old, new)
    namespace: dict = {"__name__": "__main__"}
    for label, code in definitions(cells).statements:
        try:
            exec(compile(code, f"<{set_name} {label}>", "exec"), namespace)  # noqa: S102 - the course's notebooks
        except Exception:  # as in the sandbox: a failing statement (an untouched demo) does not stop the rest
            if folder == SOLUTIONS and replace is None:
                raise
    return namespace


def grade(ex: Exercise, target, seed: int = DEFAULT_SEED, *, record: bool = False, memory_check: bool = True):
    """(points lost, messages of the failed checks) for ``target`` on exercise ``ex`` at ``seed``.

    ``memory_check=False`` leaves out the message of an exercise's memory check (the long sequence whose full
    score matrix does not fit): its mistakes are not catalogued, to keep grading cheap; the smaller checks name
    them."""
    passed, total, failures, used = selfcheck.run_checks(ex, target, seed, record=record)
    if used:  # the grader gives zero, whatever the checks say
        return float(ex.points), [f"calls {', '.join(used)}: this exercise asks you to write it yourself"]
    return ex.points * (1 - passed / total), [
        m for name, m in failures if memory_check or not name.endswith(NO_FULL_MATRIX_MARK)
    ]


def lost_points(ex: Exercise, target, seed: int) -> float:
    """The points ``target`` loses at ``seed``: the grader's comparison (:func:`attnlib.grader.diagnose.judge`
    with the case's tolerance), without computing the hints, so that a sweep over many seeds stays fast. The
    memory check (a long sequence, the same on every seed but for its random values) is left out: it is graded,
    with the worker's memory budget, by tests/test_exercise_constraints.py."""
    from attnlib.grader import diagnose
    from attnlib.grader.invoke import run_case

    cases = [c for c in ex.cases(ex.rng(seed)) if not c.name.endswith(NO_FULL_MATRIX_MARK)]
    passed = 0
    for case in cases:
        try:
            outputs = run_case(target, ex.kind, list(ex.returns), selfcheck._as_dict(case))
        except Exception:  # noqa: BLE001 - a broken implementation may raise: that check fails
            continue
        ok, _ = diagnose.judge(
            case.args,
            ex.arg_names,
            outputs,
            ex.expect(case),
            (),
            distribution=ex.distribution,
            magnitude=case.magnitude,
        )
        passed += ok
    return ex.points * (1 - passed / len(cases))
