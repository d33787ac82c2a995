"""The grading process: read the submission, build the checks, run it in a sandbox, score what comes back.

``grade(paths, Options) -> Report`` grades one submission (notebooks, or folders of ``NN_*.ipynb``);
:func:`grade_many` grades several with one sandbox run. This process never imports or executes submitted code,
and decides every verdict itself:

1. :mod:`attnlib.grader.notebook` reads each notebook once (JSON, then ASTs; the statements each exercise needs;
   the bounded static scan);
2. the exercises (:mod:`attnlib.grader.exercises`) give the checks' inputs and references, computed here;
3. :mod:`attnlib.grader.supervise` sends only the inputs (:mod:`attnlib.grader.wire`) into the sandbox level
   chosen by :mod:`attnlib.grader.sandbox`, where :mod:`attnlib.grader.inside` runs one fresh worker per
   exercise, and keeps its own clock (a runner that fails to start is tried again; one that dies or hangs costs
   only the exercise it was running);
4. :mod:`attnlib.grader.scoring` validates and judges every output (the same path as the self-check).

An exercise the grader could not run (the sandbox failed to start, the time budget ran out) is reported with
``status="not graded"`` and the reason: never as a verdict of 0 points.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import attnlib  # noqa: F401 - the library the references use, imported before anything is run
import attnlib.reference  # noqa: F401 - the mistakes' NumPy softmax (imported lazily by the registry)

from . import sandbox, scoring, supervise, wire
from .classgrade import discover
from .exercises import DEFAULT_SEED, Case, Exercise, exercises_of, notebook_name
from .inside.policy import families_of
from .notebook import NotebookError, definitions, forbidden_uses, needed_statements, parse_cells, read_bytes
from .results import GRADED, NOT_GRADED, Options, Report, Result  # noqa: F401 - the public records, from here too

__all__ = ["Options", "Report", "Result", "collect", "grade", "grade_many"]


def collect(paths: list[str | Path]) -> tuple[list[tuple[str, Path | None]], list[str]]:
    """(exercise set, notebook path or None when missing) pairs, and notes about what was skipped or missing.

    The selection rules (exact names over copies, exercise notebooks over lessons, a search of the whole folder,
    never two folders merged: :class:`~attnlib.grader.classgrade.discover.SeveralRoots`) live in
    :func:`attnlib.grader.classgrade.discover.collect`, shared with ``attnlib grade-class`` and Gradescope. A path
    that does not exist, or a folder without any exercise notebook, is named in the notes; when no path holds one,
    the list of sets is empty (nothing to grade)."""
    notes = [f"{p}: no such file or folder" for p in paths if not Path(p).exists() and not Path(p).is_symlink()]
    present = [p for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if not present:
        return [], notes
    found, more = discover.collect(present)
    notes += more
    if not any(path is not None for _, path in found):
        notes += [f"{p}: no exercise notebook (NN_name.ipynb) in this folder" for p in present if Path(p).is_dir()]
        return [], notes
    return found, notes


def grade(paths: list[str | Path], options: Options | None = None) -> Report:
    """Grade one submission: the notebooks at ``paths`` (files, or folders holding NN_*.ipynb).

    Returns a :class:`Report` (per exercise: ``status``, ``score``, ``max_score``, ``message``, ``mistake`` and
    ``mistake_id``; the report's ``seed``, sandbox ``level`` and ``status``). Never raises on a bad submission;
    raises :class:`attnlib.grader.sandbox.SandboxUnavailable` when the requested level cannot run here."""
    return grade_many([paths], options)[0]


@dataclass
class Checks:
    """One exercise's checks for one seed, computed in this process: the inputs, the references, and the inputs
    as they go into the sandbox (``specs`` naming ``.npy`` files whose bytes are in ``blobs``)."""

    exercise: Exercise
    cases_fn: object
    expect_fn: object
    cases: list[Case]
    expected: list[dict] | None = None
    specs: list[dict] | None = None
    blobs: dict[str, bytes] | None = None

    def complete(self) -> Checks:
        """Computes the references and the wire form the first time a job needs them."""
        if self.specs is None:
            arrays = wire.Arrays(prefix=f"{self.exercise.key}-")
            specs = [wire.case_spec(c, arrays) for c in self.cases]
            self.expected = [self.exercise.expect(c) for c in self.cases]
            self.blobs, self.specs = arrays.blobs, specs  # complete only once all of it is computed
        return self


# (seed -> exercise key -> Checks), for the last few seeds: a process that grades many submissions (a pool worker
# of `attnlib grade-class`) computes each exercise's inputs and references once. An entry is used only for the
# same seed and the very same exercise object and functions, so a changed seed or a reloaded check recomputes.
_MEMO: OrderedDict[int, dict[str, Checks]] = OrderedDict()
MEMO_SEEDS = 2


def checks_for(ex: Exercise, seed: int) -> Checks:
    """The memoized checks of ``ex`` for ``seed`` (inputs only; :meth:`Checks.complete` adds the rest)."""
    seed = int(seed)
    table = _MEMO.get(seed)
    if table is None:
        table = _MEMO[seed] = {}
        while len(_MEMO) > MEMO_SEEDS:
            _MEMO.popitem(last=False)
    _MEMO.move_to_end(seed)
    got = table.get(ex.key)
    if got is None or got.exercise is not ex or got.cases_fn is not ex.cases or got.expect_fn is not ex.expect:
        got = table[ex.key] = Checks(ex, ex.cases, ex.expect, ex.cases(ex.rng(seed)))
    return got


def _not_graded(result: Result, why: str) -> None:
    result.status, result.score, result.passed, result.message = NOT_GRADED, 0.0, 0, f"not graded: {why}"


def grade_many(
    submissions: list[list[str | Path]], options: Options | None = None, plan: sandbox.Level | None = None
) -> list[Report]:
    """Grade several submissions (each a list of paths) with one sandbox run; one report each, same seed.

    ``plan`` (a level from :func:`attnlib.grader.sandbox.choose`) lets a caller check afterwards that nothing of
    the sandbox survived (``plan.survivors()``)."""
    opts = options or Options()
    start = time.perf_counter()
    budget_end = time.monotonic() + opts.budget_s
    level = plan or sandbox.choose(opts.sandbox)
    seed = opts.seed if opts.seed is not None else DEFAULT_SEED
    reports = [Report(seed=seed, level=level.name) for _ in submissions]
    found = []
    for paths, report in zip(submissions, reports, strict=True):
        sets, report.notes = collect(paths)
        report.notes.insert(0, level.note)
        if not sets:
            report.status = "nothing to grade"
        found.append(sets)
    jobdir, early = None, None
    try:
        if any(path is not None for sets in found for _, path in sets):
            # The runner starts now and imports torch while this process reads the notebooks and computes the
            # checks; it reads nothing of the job before job.json is complete (supervise.start).
            jobdir = supervise.job_folder(set())
            early = supervise.start(jobdir, opts.memory_gib, level)
        return _grade(submissions, reports, found, opts, level, seed, budget_end, start, jobdir, early)
    finally:
        if early is not None and not early.started.proc.stdout.closed:
            early.discard()  # not given a job (nothing to run, or this process failed)
        if jobdir is not None:
            shutil.rmtree(jobdir, ignore_errors=True)


def _grade(submissions, reports, found, opts, level, seed, budget_end, start, jobdir, early) -> list[Report]:
    checks: dict[str, Checks] = {}  # exercise key -> its checks for this seed
    rows = []  # (job key, result, problems)
    jobs = []
    for n, (sets, report) in enumerate(zip(found, reports, strict=True)):
        for set_name, path in sets:
            exercises = exercises_of(set_name)
            if path is None:
                for ex in exercises:
                    report.results.append(
                        Result(ex, None, message=f"{notebook_name(set_name)} not found in the submission")
                    )
                continue
            try:
                raw = read_bytes(path)  # read once: everything below works on this copy
                report.digests[str(path)] = hashlib.sha256(raw).hexdigest()
                source = definitions(parse_cells(raw, Path(path).name))
            except NotebookError as err:
                for ex in exercises:
                    report.results.append(Result(ex, str(path), message=str(err)))
                continue
            report.notes.extend(f"{path}: {p}" for p in source.problems)
            for ex in exercises:
                if ex.key not in checks:
                    checks[ex.key] = checks_for(ex, seed)
                result = Result(ex, str(path), total=len(checks[ex.key].cases))
                report.results.append(result)
                if time.monotonic() > budget_end:
                    _not_graded(result, f"the grading's time budget ({opts.budget_s:g} s) ran out first")
                    continue
                static = forbidden_uses(source.tree, ex.entry, ex.forbidden)
                if static:
                    result.message = scoring.shortcut_message(static, "found in your code")
                    continue
                key = f"{n}/{ex.key}"
                rows.append((key, result, source.problems))
                jobs.append((key, ex, needed_statements(source, ex.entry)))
    runs: dict[str, dict] = {}
    why_not = ""
    starts = 0
    if jobs:
        names: dict[str, bytes] = {}  # the job's input files: the .npy bytes of its exercises' checks
        job_exercises = []
        for key, ex, statements in jobs:
            specs = checks[ex.key].complete().specs
            names.update(checks[ex.key].blobs)
            job_exercises.append(
                {
                    "key": key,
                    "entry": ex.entry,
                    "kind": ex.kind,
                    "returns": list(ex.returns),
                    "families": sorted(families_of(ex.forbidden)),
                    "memory_bytes": ex.memory_limit_bytes,
                    "provides": [supervise.infrastructure_folder(p) for p in ex.provides],
                    "statements": statements,
                    "cases": specs,
                }
            )
        wire.write_inputs(jobdir / "inputs", names)
        supervise.add_infrastructure(jobdir, {p for _, ex, _ in jobs for p in ex.provides})
        pending, failed_starts = list(job_exercises), 0
        while pending and time.monotonic() < budget_end and failed_starts < opts.start_attempts:
            starts += 1
            job = {"timeout": opts.timeout, "fsize": opts.fsize_bytes, "arrays": sorted(names), "exercises": pending}
            runner, early = early, None  # the runner started early takes the first try; a retry starts a new one
            got, ready, tail = supervise.run(jobdir, job, opts.timeout, opts.memory_gib, level, budget_end, runner)
            runs.update(got)
            if not ready and not got:  # the runner did not even start: try again, then give up
                failed_starts += 1
                why_not = f"the sandbox ({level.name}) failed to start {failed_starts} time(s)" + (
                    f": {tail.strip()[-300:]}" if tail.strip() else " (no error message)"
                )
                continue
            pending = [e for e in pending if e["key"] not in runs]
        if pending and not why_not:
            why_not = f"the grading's time budget ({opts.budget_s:g} s) ran out first"
    if early is not None:
        early.discard()  # not given a job (everything was refused, missing or out of time)
    for key, result, problems in rows:
        ex = result.exercise
        run = runs.get(key)
        if run is None:
            _not_graded(result, why_not or "the sandbox did not run it")
            continue
        cases, expected = checks[ex.key].cases, checks[ex.key].expected
        verdict = scoring.score_run(ex, cases, expected, run, problems)
        result.passed = 0 if verdict.zero else verdict.passed
        result.score = round(result.max_score * result.passed / len(cases), 2) if cases else 0.0
        result.message = verdict.message
        result.mistake, result.mistake_id = verdict.mistake, scoring.mistake_id(ex, verdict.mistake)
    left = level.survivors()
    if left:
        level.kill_survivors()
    seconds = time.perf_counter() - start
    for report in reports:
        report.sandbox_starts = starts
        report.survivors = len(left)
        if report.not_graded:
            report.status = NOT_GRADED
            report.notes.append(f"{len(report.not_graded)} exercise(s) not graded: {why_not}")
        if left:
            report.notes.append(f"{len(left)} sandbox processes were still running after grading and were killed")
        report.results.sort(key=lambda r: tuple(int(p) for p in r.exercise.key.split(".")))
        report.seconds = seconds
    return reports
