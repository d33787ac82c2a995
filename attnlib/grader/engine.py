"""The grading process: build the checks, run the submission in a sandbox, validate and score.

This process never imports or executes submitted code, and decides every verdict itself. It imports its own
modules first, reads each notebook once (:mod:`attnlib.grader.notebook`: JSON, then ASTs; the statements each
exercise needs; the static scan), computes the reference answers with attnlib (:mod:`attnlib.grader.exercises`),
and sends only the checks' inputs (``.npy`` files and JSON) into the sandbox chosen by
:mod:`attnlib.grader.sandbox`, where :mod:`attnlib.grader.worker` runs one fresh worker per exercise. It keeps
its own deadline per exercise (a runner that dies or hangs costs only the exercise it was running: a new sandbox
grades the rest), validates every output (:func:`_decode`) before :mod:`attnlib.grader.diagnose` judges it, and
treats what the worker says about itself as something that can only take points away.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import selectors
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import attnlib  # noqa: F401 - the library the references use, imported before anything is run
import attnlib.reference  # noqa: F401 - the mistakes' NumPy softmax (imported lazily by the registry)

from . import diagnose, sandbox
from .exercises import ARG_NAMES, DEFAULT_SEED, EXERCISE_SETS, Case, Exercise, exercises_of, set_of_path
from .notebook import NotebookError, definitions, forbidden_uses, needed_statements, parse_cells, read_bytes

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
    level: str = ""  # the sandbox level the submission ran at (bwrap, uid, none)
    status: str = "graded"  # "graded", "sandbox failed", "sandbox unavailable", "grader failed"
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of each notebook as read (once)
    sandbox_starts: int = 0
    survivors: int = 0

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
    sandbox: str = "auto"  # auto | bwrap | uid | none (see attnlib.grader.sandbox)


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

_CODE = ("worker.py", "invoke.py", "guard.py")  # copied into the job folder: the sandbox sees only these
MAX_LINE = 40_000_000
STARTUP_S = 120.0  # the runner must be ready (torch imported) within this
GRACE_S = 5.0  # beyond an exercise's timeout, for the runner's fork and clean-up


def _job_folder() -> Path:
    jobdir = Path(tempfile.mkdtemp(prefix="attnlib-job-"))
    os.chmod(jobdir, 0o755)  # read-only for the sandbox (bwrap binds it read-only; the uid level reads inputs as root)
    (jobdir / "inputs").mkdir()
    (jobdir / "code").mkdir()
    here = Path(__file__).resolve().parent
    for name in _CODE:
        shutil.copyfile(here / name, jobdir / "code" / name)
    return jobdir


def _run_sandbox(jobdir: Path, job: dict, opts: Options, plan: sandbox.Plan) -> tuple[dict[str, dict], str]:
    """Run the runner on ``job``; returns per-exercise {"lines": [...], "status": ...} and the runner's stderr tail.

    This process keeps its own clock: the runner must say it is ready within STARTUP_S, and each exercise must end
    within its timeout plus GRACE_S; otherwise the whole sandbox is killed, the exercise that was running is marked
    as timed out, and the caller starts a new sandbox for the rest. Nothing the runner sends is trusted beyond its
    framing: keys must be ones this job sent, lines are size-limited, and every output is validated later.
    """
    workroot, host_workroot = sandbox.prepare_workroot(plan)
    job = {**job, "level": plan.level, "uid": plan.uid, "gid": plan.gid, "workroot": workroot}
    (jobdir / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": workroot,
        "TMPDIR": workroot,
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }
    keys = [e["key"] for e in job["exercises"]]
    per: dict[str, dict] = {}
    current = None
    stderr_path = Path(tempfile.mkdtemp(prefix="attnlib-log-")) / "runner.stderr"
    try:
        with open(stderr_path, "wb") as err:
            started = sandbox.start(plan, jobdir, int(opts.memory_gib * GIB), env, err)
            sandbox.record_namespace(plan, started)
            proc = started.proc
            deadline = time.monotonic() + STARTUP_S
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            buf = b""
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if current is not None:
                            per[current]["status"] = "timeout"
                            per[current]["detail"] = f"after {opts.timeout:g} s"
                        break
                    if not sel.select(left):
                        continue
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > MAX_LINE:
                        break
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        kind = event.get("event") if isinstance(event, dict) else None
                        key = event.get("key") if isinstance(event, dict) else None
                        if kind == "ready":
                            deadline = time.monotonic() + opts.timeout + GRACE_S
                        elif kind == "start" and key in keys and key not in per and current is None:
                            current = key
                            per[key] = {"lines": [], "status": None, "detail": ""}
                            deadline = time.monotonic() + opts.timeout + GRACE_S
                        elif kind == "worker" and key == current:
                            text = event.get("line")
                            if isinstance(text, str) and len(per[key]["lines"]) < 10_000:
                                per[key]["lines"].append(text)
                        elif kind == "end" and key == current:
                            per[key]["status"] = str(event.get("status"))[:40]
                            per[key]["detail"] = str(event.get("detail", ""))[:200]
                            current = None
                            deadline = time.monotonic() + opts.timeout + GRACE_S
                        elif kind == "done":
                            deadline = min(deadline, time.monotonic() + 5)
            finally:
                sel.close()
                sandbox.stop(plan, started)
    finally:
        if host_workroot:
            shutil.rmtree(host_workroot, ignore_errors=True)
    if current is not None and per[current]["status"] is None:
        per[current]["status"] = "runner died"
    tail = stderr_path.read_bytes()[-2000:].decode("utf-8", "replace")
    shutil.rmtree(stderr_path.parent, ignore_errors=True)
    return per, tail


# ----------------------------------------------------------------------------------------------------------
# Decoding and scoring


MAX_ELEMENTS = 1_000_000
MAX_TEXT = 1000


def _decode(spec: object) -> np.ndarray:
    """One output as sent by the worker, validated: ``{"npy": base64}`` (a plain numeric array of bounded size,
    read without pickles) or ``{"json": value}`` (a bool, int, float or short string answer)."""
    if isinstance(spec, dict) and set(spec) == {"json"}:
        value = spec["json"]
        if type(value) in (bool, int, float):
            if type(value) is int and abs(value) > 2**53:
                raise ValueError("an integer answer out of range")
            return np.asarray(value)
        if type(value) is str and len(value) <= MAX_TEXT:
            return np.asarray(value)
        raise ValueError("not a number or short text")
    text = spec.get("npy") if isinstance(spec, dict) and set(spec) == {"npy"} else spec
    if not isinstance(text, str) or len(text) > MAX_ARRAY_BYTES * 4 // 3 + 8:
        raise ValueError("not an encoded array")
    raw = base64.b64decode(text, validate=True)
    if len(raw) > MAX_ARRAY_BYTES:
        raise ValueError("far too large")
    fh = io.BytesIO(raw)
    version = np.lib.format.read_magic(fh)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy version {version}")
    shape, fortran, dtype = (
        np.lib.format.read_array_header_1_0(fh) if version == (1, 0) else np.lib.format.read_array_header_2_0(fh)
    )
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None or dtype.itemsize > 16:
        raise ValueError(f"not a numeric array (dtype {dtype})")
    if len(shape) > 8 or any(type(n) is not int or n < 0 for n in shape):
        raise ValueError("a malformed shape")
    if int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        raise ValueError("far more elements than the exercise produces")
    if fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(raw):
        raise ValueError("the data does not match its header")
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    if type(arr) is not np.ndarray or arr.shape != tuple(shape) or arr.dtype != dtype:
        raise ValueError("not a plain array")
    return arr


def _forbidden(calls: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """The worker's own report of poisoned entry points it reached (it can only lose points by it)."""
    return [str(c)[:120] for c in calls if isinstance(c, str)]


def _shortcut_message(uses: list[str], how: str) -> str:
    return (
        f"uses {', '.join(uses[:3])} ({how}): this exercise asks you to write it yourself, so a library "
        "implementation, or code that hides which functions it calls, scores zero here"
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
    got = loaded.get("problems")
    problems = [*problems, *(str(p)[:300] for p in (got if isinstance(got, list) else []))][:3]
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
    calls = {
        c
        for e in [*results.values(), finished or {}]
        for c in (e.get("calls") if isinstance(e.get("calls"), list) else [])
        if isinstance(c, str)
    }
    calls |= {
        "a forbidden library function"
        for e in results.values()
        if isinstance(e.get("error"), str) and e["error"].startswith("ForbiddenCall")
    }
    bad = _forbidden(sorted(calls), ex.forbidden)
    if bad:
        return 0, "ZERO:" + _shortcut_message(bad, "called while grading")
    if finished and isinstance(finished.get("patched"), list) and finished["patched"]:
        names = ", ".join(str(p)[:80] for p in finished["patched"][:3])
        return (
            0,
            f"ZERO:the submission replaced library attributes ({names}): monkeypatching torch or numpy is not allowed",
        )

    passed, messages = 0, []
    for i, case in enumerate(cases):
        e = results.get(0 if ex.kind == "value" else i)  # a value answer is sent once and judged on every check
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
        except (ValueError, TypeError, binascii.Error, OSError, EOFError, AttributeError) as err:
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


def grade_many(
    submissions: list[list[str | Path]], options: Options | None = None, plan: sandbox.Plan | None = None
) -> list[Report]:
    """Grade several submissions (each a list of paths) with one sandbox run; one report each, same seed.

    Raises :class:`attnlib.grader.sandbox.SandboxUnavailable` when the requested sandbox level cannot run here
    (nothing is executed then). ``plan`` (from :func:`attnlib.grader.sandbox.choose`) lets a caller check
    afterwards that nothing of the sandbox survived (:func:`attnlib.grader.sandbox.survivors`).
    """
    opts = options or Options()
    start = time.perf_counter()
    plan = plan or sandbox.choose(opts.sandbox)
    seed = opts.seed if opts.seed is not None else DEFAULT_SEED
    reports = [Report(seed=seed, level=plan.level) for _ in submissions]
    checks: dict[str, tuple[list[Case], list[dict], list[dict]]] = {}  # exercise key -> (cases, expected, specs)
    jobdir = _job_folder()
    try:
        arrays = _Arrays(jobdir / "inputs")
        plan_rows = []  # (job key, result, static, problems)
        job_exercises = []
        for n, (paths, report) in enumerate(zip(submissions, reports, strict=True)):
            sets, report.notes = collect(paths)
            report.notes.insert(0, plan.note)
            for set_name, path in sets:
                exercises = exercises_of(set_name)
                if path is None:
                    for ex in exercises:
                        report.results.append(Result(ex, None, message=f"{set_name}.ipynb not found in the submission"))
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
                        cases = ex.cases(ex.rng(seed))
                        specs = [_case_spec(c, arrays) for c in cases]
                        checks[ex.key] = (cases, [ex.expect(c) for c in cases], specs)
                    cases, _, specs = checks[ex.key]
                    result = Result(ex, str(path), total=len(cases))
                    report.results.append(result)
                    static = forbidden_uses(source.tree, ex.entry, ex.forbidden)
                    key = f"{n}/{ex.key}"
                    plan_rows.append((key, result, static, source.problems))
                    if not static:
                        job_exercises.append(
                            {
                                "key": key,
                                "entry": ex.entry,
                                "kind": ex.kind,
                                "returns": list(ex.returns),
                                "forbidden": list(ex.forbidden),
                                "memory_limit_bytes": ex.memory_limit_bytes,
                                "statements": needed_statements(source, ex.entry),
                                "cases": specs,
                            }
                        )
        runs: dict[str, dict] = {}
        pending = list(job_exercises)
        tail = ""
        starts = 0
        while pending and starts < len(job_exercises) + 2:
            starts += 1
            job = {"timeout": opts.timeout, "fsize": opts.fsize_bytes, "arrays": arrays.names, "exercises": pending}
            got, tail = _run_sandbox(jobdir, job, opts, plan)
            runs.update(got)
            if not got:  # the runner did not even start: report it on every remaining exercise
                break
            pending = [e for e in pending if e["key"] not in runs]
        failed_start = bool(pending)
        for key, result, static, problems in plan_rows:
            cases, expected, _ = checks[result.exercise.key]
            run = runs.get(key)
            if run is None and not static:
                result.message = "the sandbox failed to start, so this exercise was not run" + (
                    f": {tail.strip()[-300:]}" if tail.strip() else ""
                )
                continue
            passed, message = _score_exercise(result.exercise, cases, expected, run, static, problems)
            if message.startswith("ZERO:"):
                result.passed, result.score, result.message = 0, 0.0, message[5:]
            else:
                result.passed = passed
                result.score = round(result.max_score * passed / len(cases), 2)
                result.message = message
        left = sandbox.survivors(plan)
        if left:
            sandbox.kill_survivors(plan)
        for report in reports:
            report.sandbox_starts = starts
            report.survivors = len(left)
            if failed_start:
                report.status = "sandbox failed"
                report.notes.append(f"the sandbox ({plan.level}) failed to start: {tail.strip()[-300:]}")
            if left:
                report.notes.append(f"{len(left)} sandbox processes were still running after grading and were killed")
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)
    seconds = time.perf_counter() - start
    for report in reports:
        report.results.sort(key=lambda r: r.exercise.key)
        report.seconds = seconds
    return reports
