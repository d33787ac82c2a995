"""The grading process: build the checks, run the submission in a sandboxed child, validate and score.

This process never imports or executes submitted code. It reads notebooks as JSON and their code as ASTs
(:mod:`attnlib.grader.notebook`), computes the reference answers itself with attnlib
(:mod:`attnlib.grader.exercises`), sends only the checks' inputs to :mod:`attnlib.grader.sandbox` as ``.npy``
files and JSON, and decodes what comes back with ``np.load(..., allow_pickle=False)`` before judging it with
:mod:`attnlib.grader.diagnose`. If the child dies, the exercise it was running scores zero and a new child
grades the rest.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import diagnose
from .exercises import ARG_NAMES, DEFAULT_SEED, EXERCISE_SETS, Case, Exercise, exercises_of, set_of_path
from .notebook import NotebookError, definitions, forbidden_uses, read_cells

GIB = 1 << 30
MAX_ARRAY_BYTES = 16_000_000


@dataclass
class Result:
    """One exercise's outcome."""

    exercise: Exercise
    path: str | None
    score: float = 0.0
    message: str = ""
    passed: int = 0
    total: int = 0

    @property
    def name(self) -> str:
        return f"{self.exercise.key} {self.exercise.entry}"

    @property
    def max_score(self) -> float:
        return float(self.exercise.points)


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return round(sum(r.score for r in self.results), 2)

    @property
    def max_score(self) -> float:
        return float(sum(r.max_score for r in self.results))

    @property
    def percent(self) -> float:
        return 100.0 * self.score / self.max_score if self.max_score else 0.0


@dataclass
class Options:
    timeout: float = 20.0  # seconds per exercise (wall clock)
    memory_gib: float = 4.0  # address-space limit of the child (torch alone reserves about 1 GiB)
    fsize_bytes: int = 0  # largest file submitted code may write (0: it can write none)
    seed: int | None = None  # None: the fixed DEFAULT_SEED, so a submission always gets the same score (reported)


# ----------------------------------------------------------------------------------------------------------
# What to grade


def collect(paths: list[str | Path]) -> tuple[list[tuple[str, Path | None]], list[str]]:
    """(exercise set, notebook path or None when missing) pairs, and notes about files that were skipped."""
    found: dict[str, Path | None] = {}
    notes = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            present = {}
            for nb in sorted(p.glob("*.ipynb")):
                s = set_of_path(nb.name)
                if s:
                    present.setdefault(s, nb)
            for s in EXERCISE_SETS:
                found.setdefault(s, present.get(s))
                if found[s] is None and present.get(s):
                    found[s] = present[s]
        else:
            s = set_of_path(p.name)
            if s is None:
                notes.append(f"{p}: not one of the course's exercise notebooks (NN_name.ipynb); skipped")
            else:
                found[s] = p
    return sorted(found.items()), notes


# ----------------------------------------------------------------------------------------------------------
# Job files


class _Arrays:
    def __init__(self, folder: Path):
        self.folder = folder
        self.names: list[str] = []

    def spec(self, value):
        if isinstance(value, np.ndarray):
            name = f"{len(self.names)}.npy"
            np.save(self.folder / name, value, allow_pickle=False)
            self.names.append(name)
            return {"npy": name}
        if isinstance(value, (bool, int, float, str)) or value is None:
            return {"json": value}
        if isinstance(value, list) and all(type(v) in (bool, int, float) for v in value):
            return {"json": value}  # a Python list argument (e.g. lengths), as a docstring may allow
        raise TypeError(f"cannot send {type(value).__name__} to the sandbox")


def _case_spec(case: Case, arrays: _Arrays) -> dict:
    return {
        "args": [arrays.spec(a) for a in case.args],
        "kwargs": {k: arrays.spec(v) for k, v in case.kwargs.items()},
        "init": [arrays.spec(a) for a in case.init],
        "weights": {k: arrays.spec(v) for k, v in case.weights.items()},
        "grad_output": None if case.grad_output is None else arrays.spec(case.grad_output),
    }


# ----------------------------------------------------------------------------------------------------------
# Running the sandbox


def _limits(memory_bytes: int):
    def apply():
        for limit, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(limit, (value, value))
            except (ValueError, OSError):  # e.g. macOS cannot lower RLIMIT_AS; the timeout still applies
                pass

    return apply


def _run_sandbox(jobdir: Path, job: dict, opts: Options) -> tuple[dict[str, dict], str]:
    """Run the child on ``job``; returns per-exercise {"lines": [...], "status": ...} and the child's stderr tail."""
    workdir = Path(tempfile.mkdtemp(prefix="attnlib-sandbox-"))
    (jobdir / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }
    stderr_path = jobdir / "sandbox.stderr"
    per: dict[str, dict] = {}
    current = None
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "attnlib.grader.sandbox", str(jobdir)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            preexec_fn=_limits(int(opts.memory_gib * GIB)),
            start_new_session=True,
        )
        deadline = time.monotonic() + 90 + (opts.timeout + 2) * len(job["exercises"])
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        try:
            while time.monotonic() < deadline:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    kind = event.get("event") if isinstance(event, dict) else None
                    if kind == "start":
                        current = str(event.get("key"))
                        per[current] = {"lines": [], "status": None, "detail": ""}
                    elif kind == "worker" and event.get("key") in per:
                        per[event["key"]]["lines"].append(str(event.get("line", "")))
                    elif kind == "end" and event.get("key") in per:
                        per[event["key"]]["status"] = str(event.get("status"))
                        per[event["key"]]["detail"] = str(event.get("detail", ""))
                        current = None
        finally:
            sel.close()
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            proc.wait()
            proc.stdout.close()
            shutil.rmtree(workdir, ignore_errors=True)
    if current is not None and per[current]["status"] is None:
        per[current]["status"] = "runner died"
    tail = stderr_path.read_bytes()[-2000:].decode("utf-8", "replace")
    return per, tail


# ----------------------------------------------------------------------------------------------------------
# Decoding and scoring


def _decode(text: object) -> np.ndarray:
    if not isinstance(text, str) or len(text) > MAX_ARRAY_BYTES * 4 // 3 + 8:
        raise ValueError("not an encoded array")
    raw = base64.b64decode(text, validate=True)
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    if type(arr) is not np.ndarray or arr.dtype.kind not in "biuf":
        raise ValueError("not a numeric array")
    return arr


def _forbidden(calls: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [c for c in calls if any(c == f or c.startswith(f + ".") for f in forbidden)]


def _shortcut_message(uses: list[str], how: str) -> str:
    return (
        f"uses {', '.join(uses[:3])} ({how}): this exercise asks you to write it yourself, so calling a library "
        "implementation scores zero here"
    )


def _score_exercise(
    ex: Exercise, cases: list[Case], expected: list[dict], run: dict | None, static: list[str], problems: list[str]
) -> tuple[int, str]:
    """(checks passed, message); a message starting with 'ZERO:' forces a zero."""
    if static:
        return 0, "ZERO:" + _shortcut_message(static, "found in your code")
    if run is None:
        return 0, "ZERO:the grader could not run this exercise"
    events = []
    for line in run["lines"]:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            events.append(e)
    loaded = next((e for e in events if e.get("event") == "loaded"), None)
    if loaded is None:
        return (
            0,
            "ZERO:" + _status_message(run, ex)
            if run["status"] != "exited"
            else "ZERO:the submission ended the process while its definitions were loading "
            "(sys.exit / os._exit at the top level?)",
        )
    problems = [*problems, *(str(p)[:300] for p in loaded.get("problems", []))][:3]
    if not loaded.get("found"):
        extra = f" ({'; '.join(problems)})" if problems else ""
        return (
            0,
            f"ZERO:`{ex.entry}` is not defined in the notebook{extra}; keep the name and signature of the template",
        )
    results: dict[int, dict] = {}
    for e in events:
        if e.get("event") == "case" and isinstance(e.get("i"), int) and 0 <= e["i"] < len(cases):
            results[e["i"]] = e
    finished = next((e for e in events if e.get("event") == "finished"), None)
    calls = sorted({str(c) for e in results.values() for c in (e.get("calls") or [])})
    bad = _forbidden(calls, ex.forbidden)
    if bad:
        return 0, "ZERO:" + _shortcut_message(bad, "called while grading")
    if finished and finished.get("patched"):
        names = ", ".join(str(p) for p in finished["patched"][:3])
        return (
            0,
            f"ZERO:the submission replaced library attributes ({names}): monkeypatching torch or numpy is not allowed",
        )

    passed, messages = 0, []
    for i, case in enumerate(cases):
        e = results.get(i)
        if e is None:
            messages.append(
                (case.name, _status_message(run, ex) if run["status"] != "exited" or finished is None else "no result")
            )
            continue
        if e.get("error"):
            err = str(e["error"])[:400]
            if err.startswith("NotImplementedError"):
                messages.append((case.name, "not implemented yet (NotImplementedError)"))
            else:
                messages.append((case.name, diagnose.error_message(err, ex.raises(case))))
            continue
        try:
            outputs = {str(k): _decode(v) for k, v in (e.get("outputs") or {}).items()}
        except (ValueError, binascii.Error, OSError, EOFError) as err:
            messages.append((case.name, f"returned something that is not a plain array ({err})"))
            continue
        ok, msg = _judge(ex, case, expected[i], outputs)
        if ok:
            passed += 1
        else:
            messages.append((case.name, msg))
    if not messages:
        return passed, f"all {len(cases)} checks passed"
    first_case, first = messages[0]
    hints = list(dict.fromkeys(m for _, m in messages))
    text = f"{first} [check: {first_case}]"
    if len(hints) > 1:
        text += " | also: " + " | ".join(hints[1:3])
    return passed, text


def _judge(ex: Exercise, case: Case, expected: dict, outputs: dict) -> tuple[bool, str]:
    names = ARG_NAMES.get(ex.entry, ())
    mistakes = _LazyMistakes(ex, case)
    return diagnose.judge(
        case.args, names, outputs, expected, mistakes, distribution=ex.distribution, magnitude=case.magnitude
    )


class _LazyMistakes:
    """Computes an exercise's known-mistake outputs only if a check fails."""

    def __init__(self, ex: Exercise, case: Case):
        self.ex, self.case, self._items = ex, case, None

    def __iter__(self):
        if self._items is None:
            self._items = self.ex.mistakes(self.case)
        return iter(self._items)


def _status_message(run: dict, ex: Exercise) -> str:
    status, detail = run.get("status"), run.get("detail", "")
    if status == "timeout":
        return f"stopped: still running {detail} (an infinite loop, or far too slow?)"
    if status == "killed":
        return f"the process running it was killed ({detail}): it probably ran out of memory or crashed"
    if status == "too much output":
        return "stopped: it produced far more output than the exercise needs"
    if status == "runner died":
        return "the process running it died (did the submission kill its parent process?)"
    if status == "exited":
        return "the submission ended the process (sys.exit / os._exit?) before the checks finished"
    return f"could not be graded ({status})"


# ----------------------------------------------------------------------------------------------------------


def grade(paths: list[str | Path], options: Options | None = None) -> Report:
    """Grade the notebooks at ``paths`` (files, or folders holding NN_*.ipynb); never raises on a bad submission."""
    return grade_many([paths], options)[0]


def grade_many(submissions: list[list[str | Path]], options: Options | None = None) -> list[Report]:
    """Grade several submissions (each a list of paths) with one sandbox run; one report each, same seed."""
    opts = options or Options()
    start = time.perf_counter()
    seed = opts.seed if opts.seed is not None else DEFAULT_SEED
    reports = [Report(seed=seed) for _ in submissions]
    checks: dict[
        str, tuple[list[Case], list[dict], list[dict]]
    ] = {}  # exercise key -> (cases, expected), shared by all
    jobdir = Path(tempfile.mkdtemp(prefix="attnlib-grade-"))
    try:
        (jobdir / "inputs").mkdir()
        arrays = _Arrays(jobdir / "inputs")
        plan = []  # (job key, result, static)
        job_exercises = []
        for n, (paths, report) in enumerate(zip(submissions, reports, strict=True)):
            sets, report.notes = collect(paths)
            for set_name, path in sets:
                exercises = exercises_of(set_name)
                if path is None:
                    for ex in exercises:
                        report.results.append(Result(ex, None, message=f"{set_name}.ipynb not found in the submission"))
                    continue
                try:
                    source = definitions(read_cells(path))
                except NotebookError as err:
                    for ex in exercises:
                        report.results.append(Result(ex, str(path), message=str(err)))
                    continue
                report.notes.extend(f"{path}: {p}" for p in source.problems)
                for ex in exercises:
                    if ex.key not in checks:
                        cases = ex.cases(ex.rng(seed))
                        specs = [_case_spec(c, arrays) for c in cases]
                        checks[ex.key] = (cases, [ex.expect(c) for c in cases], specs)
                    cases, _, specs = checks[ex.key]
                    result = Result(ex, str(path), total=len(cases))
                    report.results.append(result)
                    static = forbidden_uses(source.tree, ex.entry, ex.forbidden)
                    key = f"{n}/{ex.key}"
                    plan.append((key, result, static, source.problems))
                    if not static:
                        job_exercises.append(
                            {
                                "key": key,
                                "entry": ex.entry,
                                "kind": ex.kind,
                                "returns": list(ex.returns),
                                "statements": source.statements,
                                "cases": specs,
                            }
                        )
        runs: dict[str, dict] = {}
        pending = list(job_exercises)
        tail = ""
        while pending:
            job = {"timeout": opts.timeout, "fsize": opts.fsize_bytes, "arrays": arrays.names, "exercises": pending}
            got, tail = _run_sandbox(jobdir, job, opts)
            runs.update(got)
            if not got:  # the child did not even start: report it on every remaining exercise
                break
            pending = [e for e in pending if e["key"] not in runs]
        for key, result, static, problems in plan:
            cases, expected, _ = checks[result.exercise.key]
            run = runs.get(key)
            if run is None and not static:
                result.message = "the grader's child process failed to start" + (f": {tail[-300:]}" if tail else "")
                continue
            passed, message = _score_exercise(result.exercise, cases, expected, run, static, problems)
            if message.startswith("ZERO:"):
                result.passed, result.score, result.message = 0, 0.0, message[5:]
            else:
                result.passed = passed
                result.score = round(result.max_score * passed / len(cases), 2)
                result.message = message
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)
    seconds = time.perf_counter() - start
    for report in reports:
        report.results.sort(key=lambda r: r.exercise.key)
        report.seconds = seconds
    return reports
