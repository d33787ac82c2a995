"""Supervision of the sandbox: the job folder, starting the runner, its clock, and what came back per exercise.

The job folder holds only what the sandbox may see: the files of :mod:`attnlib.grader.inside`, the checks'
inputs (``inputs/*.npy`` and ``job.json``) and, for the exercises that declare it (``Exercise.provides``), the
parts of the course's library handed to the learner as infrastructure (:data:`INFRASTRUCTURE`), which hold no
answers of any exercise that may use them. This process keeps its own clock: the runner must be ready within
:data:`STARTUP_S`, and each exercise must end within its timeout plus :data:`GRACE_S`; otherwise the whole sandbox
is killed, the exercise that was running is marked as timed out, and the caller starts a new sandbox for the rest.
Nothing the runner sends is trusted beyond its framing: keys must be ones this job sent and lines are
size-limited; every output is validated later (:mod:`attnlib.grader.wire`).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import sandbox
from .inside import FILES
from .inside import HERE as INSIDE

GIB = 1 << 30
MAX_LINE = 40_000_000
STARTUP_S = 120.0  # the runner must be ready (torch imported) within this
GRACE_S = 5.0  # beyond an exercise's timeout, for the runner's fork and clean-up
LIBRARY = Path(__file__).resolve().parents[1]  # the attnlib package

# name -> (files of attnlib copied, the package's __init__): what an exercise may be handed as infrastructure.
INFRASTRUCTURE = {
    "attnlib.MultiHeadAttention": (
        ("_checks.py", "functional.py", "masks.py", "modules.py"),
        '"""The part of attnlib that set 14 hands the learner: the multi-head module of set 08."""\n\n'
        "from .modules import MultiHeadAttention  # noqa: F401\n",
    ),
}


def hidden_folders() -> list[str]:
    """The folders a worker may not read at the uid and none levels: the attnlib package (the grader's registry,
    references and keys) and the course checkout around it (solutions/, tests/), unless that is an environment's
    site-packages."""
    package = str(LIBRARY)
    course = str(LIBRARY.parent)
    python = sandbox.python_folders()
    inside_python = any(course == p or course.startswith(p.rstrip("/") + "/") for p in python)
    return [package] if inside_python else [package, course]


def infrastructure_folder(name: str) -> str:
    return name.replace(".", "-")


def job_folder(provides: set[str]) -> Path:
    """A fresh job folder with the sandbox's code, an empty folder (bwrap hides installed copies of attnlib under
    it) and the infrastructure the job's exercises are handed."""
    jobdir = Path(tempfile.mkdtemp(prefix="attnlib-job-"))
    os.chmod(jobdir, 0o755)  # read-only for the sandbox (bwrap binds it read-only; the uid level reads as root)
    for sub in ("inputs", "code", "empty", "lib"):
        (jobdir / sub).mkdir()
    for name in FILES:
        shutil.copyfile(Path(INSIDE) / name, jobdir / "code" / name)
    add_infrastructure(jobdir, provides)
    return jobdir


def add_infrastructure(jobdir: Path, provides: set[str]) -> None:
    """Copy the parts of the course's library that the job's exercises are handed (``lib/``); make everything in
    the job folder readable, nothing writable, by the sandbox."""
    for name in sorted(provides):
        files, init = INFRASTRUCTURE[name]
        package = jobdir / "lib" / infrastructure_folder(name) / name.split(".")[0]
        if package.exists():
            continue
        package.mkdir(parents=True)
        for f in files:
            shutil.copyfile(LIBRARY / f, package / f)
        (package / "__init__.py").write_text(init, encoding="utf-8")
    readable(jobdir)


def readable(jobdir: Path) -> None:
    for folder, dirs, files in os.walk(jobdir):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)


@dataclass
class Runner:
    """A runner started in its sandbox, importing torch while the grading process prepares its job: it waits for
    ``job.json`` (written by :func:`run`, complete, in one rename) before it reads anything else of the job."""

    level: sandbox.Level
    started: sandbox.Started
    workroot: str
    host_workroot: str | None
    logdir: Path
    err: BinaryIO

    def stop(self) -> None:
        """Kill the sandbox and every process of it, and remove its work folder (the log stays)."""
        try:
            self.level.stop(self.started)
        finally:
            self.err.close()
            if self.host_workroot:
                shutil.rmtree(self.host_workroot, ignore_errors=True)

    def discard(self) -> None:
        """Stop a runner that was not given a job, and remove its log."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.logdir, ignore_errors=True)


def start(jobdir: Path, memory_gib: float, level: sandbox.Level) -> Runner:
    """Start the runner of ``jobdir`` in ``level``'s sandbox; it imports torch, then waits for ``job.json``."""
    (jobdir / "job.json").unlink(missing_ok=True)  # a new runner must wait for its own job, not read the last one
    workroot, host_workroot = level.workroot()
    logdir = Path(tempfile.mkdtemp(prefix="attnlib-log-"))
    err = open(logdir / "runner.stderr", "wb")  # noqa: SIM115 - closed by Runner.stop
    env = {"PATH": "/usr/bin:/bin", "HOME": workroot, "TMPDIR": workroot, "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    try:
        started = level.start(jobdir, int(memory_gib * GIB), env, err)
    except BaseException:
        err.close()
        if host_workroot:
            shutil.rmtree(host_workroot, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)
        raise
    return Runner(level, started, workroot, host_workroot, logdir, err)


def run(
    jobdir: Path,
    job: dict,
    timeout: float,
    memory_gib: float,
    level: sandbox.Level,
    deadline_s: float,
    runner: Runner | None = None,
):
    """Give ``job`` to a runner (``runner``, started earlier by :func:`start`, or a new one) and follow it; returns
    (per-exercise ``{"lines", "status", "detail"}``, started: whether the runner said it was ready, the runner's
    stderr tail). The runner is stopped before this returns."""
    runner = runner or start(jobdir, memory_gib, level)
    try:
        try:
            per, ready = _follow(runner, jobdir, job, timeout, deadline_s)
        finally:
            runner.stop()
        tail = (runner.logdir / "runner.stderr").read_bytes()[-2000:].decode("utf-8", "replace")
    finally:
        shutil.rmtree(runner.logdir, ignore_errors=True)
    return per, ready, tail


def _follow(runner: Runner, jobdir: Path, job: dict, timeout: float, deadline_s: float):
    level = runner.level
    job = {**job, "level": level.name, "uid": level.uid, "gid": level.gid, "workroot": runner.workroot}
    if level.name != "bwrap":  # under bubblewrap the course is not mounted at all
        job["hidden"], job["allowed"] = hidden_folders(), [*sandbox.python_folders(), str(jobdir), runner.workroot]
    partial = jobdir / ".job.json.partial"
    partial.write_text(json.dumps(job), encoding="utf-8")
    os.chmod(partial, 0o644)
    os.replace(partial, jobdir / "job.json")  # the runner sees the whole file or none
    keys = [e["key"] for e in job["exercises"]]
    per: dict[str, dict] = {}
    current, ready = None, False
    proc = runner.started.proc
    deadline = time.monotonic() + min(STARTUP_S, max(1.0, deadline_s - time.monotonic()))
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, done = b"", False
    try:
        while True:
            left = min(deadline, deadline_s) - time.monotonic()
            if left <= 0:
                if current is not None:
                    per[current]["status"] = "timeout"
                    per[current]["detail"] = f"after {timeout:g} s"
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
                except (ValueError, RecursionError):
                    continue
                kind = event.get("event") if isinstance(event, dict) else None
                key = event.get("key") if isinstance(event, dict) else None
                if kind == "ready":
                    ready = True
                    deadline = time.monotonic() + timeout + GRACE_S
                elif kind == "start" and key in keys and key not in per and current is None:
                    current = key
                    per[key] = {"lines": [], "status": None, "detail": ""}
                    deadline = time.monotonic() + timeout + GRACE_S
                elif kind == "worker" and key == current:
                    text = event.get("line")
                    if isinstance(text, str) and len(per[key]["lines"]) < 10_000:
                        per[key]["lines"].append(text)
                elif kind == "end" and key == current:
                    per[key]["status"] = str(event.get("status"))[:40]
                    per[key]["detail"] = str(event.get("detail", ""))[:200]
                    current = None
                    deadline = time.monotonic() + timeout + GRACE_S
                elif kind == "done" and current is None and all(k in per for k in keys):
                    done = True  # every exercise has ended: no need to wait for the runner's own exit
                elif kind == "done":
                    deadline = min(deadline, time.monotonic() + 5)
            if done:
                break
    finally:
        sel.close()
    if current is not None and per[current]["status"] is None:
        per[current]["status"] = "runner died"
    return per, ready
