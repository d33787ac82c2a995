"""The runner and its workers: the only place submitted code runs.

The grading process (:mod:`attnlib.grader.engine`) copies the files of this folder (and nothing else of the
course) into a fresh job folder and starts this one as a script, ``python -I -u worker.py JOB``, inside the
sandbox level chosen by :mod:`attnlib.grader.sandbox`. It imports nothing from attnlib (see the package's
docstring); the job folder holds the checks' inputs (``.npy``, JSON) and, for an exercise that is handed part of
the course's library as infrastructure, that part (``lib/``), put on ``sys.path`` for that exercise only.

This process (the *runner*) makes itself non-dumpable, imports torch once, loads the inputs
(``allow_pickle=False``) and then, per exercise, forks a fresh *worker* that

1. starts its own session, points stdin/stdout/stderr at /dev/null, closes every other file descriptor but its
   result pipe, enters a fresh private directory under a random name, drops to the unprivileged uid (uid level),
   sets ``PR_SET_NO_NEW_PRIVS`` and rlimits (file size, CPU time, open files, processes; the exercise's memory
   budget as its address space on top of what the runner already holds);
2. sets the exercise's traps (:mod:`traps`: dispatcher kernels and poisoned names for its forbidden families,
   an audit hook) before any submitted statement runs, and poisons again after loading what it imported;
3. executes the statements the exercise needs and calls the learner's code on every check, writing one JSON line
   per check to the pipe: outputs as base64 ``.npy`` bytes.

When a worker is done (or its time is up) the runner kills it and every process it left behind, and empties the
writable places (its tmpfs and /dev/shm under bubblewrap, the private work folder elsewhere), so that the next
exercise starts from a fresh state whatever the last one did to the space or the inodes there. The runner
decides nothing: what it relays is validated and judged by the grading process, which keeps its own deadline.
"""

from __future__ import annotations

import base64
import ctypes
import io
import json
import linecache
import os
import resource
import secrets
import selectors
import shutil
import signal
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # traps.py, policy.py, invoke.py beside this file

import numpy as np  # noqa: E402

MAX_RELAY_BYTES = 50_000_000
# Imported by the runner so that a learner's `import` of them works at the uid level even where the sandbox uid
# cannot read the interpreter's files (a Python installed under /root, say).
COMMON_MODULES = (
    "cmath",
    "collections",
    "copy",
    "dataclasses",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "itertools",
    "numbers",
    "random",
    "statistics",
    "string",
    "typing",
    "warnings",
    "numpy.linalg",
    "torch.nn.init",
)
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38

import traps  # noqa: E402
from traps import HITS, apply_poison, find_targets  # noqa: E402

# The runner finds the poison targets once per family (before forking), so that each worker only applies them.
PRECOMPUTED: dict[str, list[tuple[object, str, str]]] = {}
BASELINE: dict[str, int] | None = None  # the runner's snapshot of torch's and numpy's attributes
SCANNED: set[int] = set()
MEMORY_BUDGET = "MemoryBudget"  # the prefix of an error that is the exercise's memory budget running out


def precompute() -> None:
    from policy import FAMILIES

    for fam in FAMILIES:
        done: set[int] = set()
        PRECOMPUTED[fam] = find_targets({fam}, done)
        SCANNED.update(done)


def _encode(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _value(spec, arrays):
    if isinstance(spec, dict) and "npy" in spec:
        return arrays[spec["npy"]]
    if isinstance(spec, dict) and "json" in spec:
        return spec["json"]
    raise ValueError(f"bad value spec {spec!r}")


def _case(raw, arrays):
    return {
        "args": [_value(a, arrays) for a in raw["args"]],
        "kwargs": {k: _value(v, arrays) for k, v in raw.get("kwargs", {}).items()},
        "init": [_value(a, arrays) for a in raw.get("init", [])],
        "weights": {k: _value(v, arrays) for k, v in raw.get("weights", {}).items()},
        "grad_output": None if raw.get("grad_output") is None else _value(raw["grad_output"], arrays),
    }


def _describe(err: BaseException, budget: int | None = None, where: bool = True) -> str:
    try:
        text = str(err)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        text = "<unprintable>"
    name = type(err).__name__ if isinstance(type(err).__name__, str) else "Exception"
    if budget and (isinstance(err, MemoryError) or "can't allocate memory" in text or "not enough memory" in text):
        name = f"{MEMORY_BUDGET} {budget}: {name}"
    line = ""
    tb = err.__traceback__
    while where and tb is not None:  # the last line of the submission's own code that the error went through
        name_of = tb.tb_frame.f_code.co_filename
        if name_of.startswith(traps.SUBMISSION_PREFIX):  # "<code cell N, line L>": the statement starts at line L
            cell, _, first = name_of.strip("<>").rpartition(", line ")
            line = f" (at {cell}, line {int(first) + tb.tb_lineno - 1})" if first.isdigit() else ""
        tb = tb.tb_next
    return f"{name}: {text}"[:400] + line


def send_raw(fd: int, obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the other layers still apply
        pass


def _limit(which: int, value: int) -> None:
    try:
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass


def _address_space() -> int:
    """Bytes of address space this process holds now (VmSize), 0 when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _drop_privileges(job: dict, home: str) -> None:
    """Worker side of the uid level: a private 0700 directory owned by the sandbox uid, then setgid/setuid."""
    uid, gid = job.get("uid"), job.get("gid")
    if job["level"] == "uid":
        os.chown(home, uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
            os._exit(71)
        try:
            os.setuid(0)  # must fail now
            os._exit(72)
        except PermissionError:
            pass


def _worker(job: dict, exercise: dict, cases: list[dict], pipe_w: int, home: str) -> None:
    """Runs in the forked worker; never returns."""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, pipe_w)
        os.closerange(pipe_w + 1, 1 << 16)
        os.mkdir(home, 0o700)
        _drop_privileges(job, home)
        os.chdir(home)
        os.environ["HOME"] = os.environ["TMPDIR"] = home
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _limit(resource.RLIMIT_FSIZE, int(job["fsize"]))
        _limit(resource.RLIMIT_CORE, 0)
        _limit(resource.RLIMIT_NOFILE, 256)
        _limit(resource.RLIMIT_CPU, int(job["timeout"]) + 2)
        if job["level"] == "uid":
            _limit(resource.RLIMIT_NPROC, 64)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import torch
        from invoke import run_case

        torch.set_num_threads(1)
        sys.setrecursionlimit(5000)
        dumps, write = json.dumps, os.write

        def send(obj):
            data = (dumps(obj) + "\n").encode()
            view = memoryview(data)
            while view:
                view = view[write(pipe_w, view) :]

        families = set(exercise.get("families", []))
        done = set(SCANNED)
        if families:
            apply_poison([t for f in sorted(families) for t in PRECOMPUTED.get(f) or find_targets({f}, set())])
            traps.trap_operators(families)
        for folder in exercise.get("provides", []):  # part of the course handed to this exercise as infrastructure
            sys.path.insert(0, os.path.join(job["jobdir"], "lib", folder))
        traps.install_audit_hook(families, job.get("hidden", ()), (*job.get("allowed", ()), home))
        for folder in exercise.get("provides", []):
            traps.allow_import(folder.split("-")[0])
        # Without traps nothing has changed torch's or numpy's attributes since the runner's snapshot (taken just
        # before forking): use it; with traps, the snapshot must include the stand-ins just set.
        before = traps.snapshot() if families or BASELINE is None else BASELINE
        namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        problems = []
        traps.arm()
        for label, code in exercise["statements"]:
            # Each statement's source goes into linecache under its own name, as IPython does for a cell:
            # inspect.getsource needs it, and @triton.jit refuses a function without source (exercise 13.3).
            filename = f"<{label}>"
            linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
            try:
                exec(compile(code, filename, "exec"), namespace)  # noqa: S102 - this is the sandbox
            except BaseException as err:  # noqa: BLE001 - SystemExit, KeyboardInterrupt and custom ones too
                problems.append(f"{label}: {_describe(err, where=False)}")
        if families:
            apply_poison(find_targets(families, done, torch_too=False))  # what the definitions imported
        target = namespace.get(exercise["entry"])
        send({"event": "loaded", "problems": problems[:5], "found": target is not None})
        budget = exercise.get("memory_bytes")
        if target is not None and isinstance(budget, int) and budget > 0:
            # the exercise forbids a large allocation (the full score matrix): once its definitions are loaded, cap
            # the address space at what the worker holds now plus the budget, soft and hard, so the submission
            # cannot raise it again
            _limit(resource.RLIMIT_AS, _address_space() + budget)
        if target is not None:
            modules = len(sys.modules)
            for i, case in enumerate(cases):
                error, outputs = None, {}
                hits = len(HITS)
                try:
                    outputs = run_case(target, exercise["kind"], exercise["returns"], case)
                except BaseException as err:  # noqa: BLE001
                    error = _describe(err, budget)
                if len(sys.modules) != modules and families:
                    apply_poison(find_targets(families, done, torch_too=False))
                    modules = len(sys.modules)
                encoded = {}
                try:
                    for k, v in outputs.items():
                        encoded[k] = {"npy": _encode(v)}
                except BaseException as err:  # noqa: BLE001 - e.g. the memory budget while encoding
                    encoded, error = {}, _describe(err, budget)
                send({"event": "case", "i": i, "error": error, "calls": sorted(set(HITS[hits:])), "outputs": encoded})
        patched = traps.changed(before, traps.snapshot(), set())
        send({"event": "finished", "patched": patched[:10], "calls": sorted(set(HITS))[:10]})
        os._exit(0)
    except BaseException as err:  # noqa: BLE001
        try:
            import traceback

            send_raw(pipe_w, {"event": "worker-error", "error": _describe(err), "tb": traceback.format_exc()[-1500:]})
        except BaseException:  # noqa: BLE001
            pass
        os._exit(70)


def _others(level: str, uid: int | None) -> list[int]:
    """Processes this runner must kill after a worker: all but itself and pid 1 (bwrap), or all of the uid."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (1, me):
            continue
        if level == "bwrap":
            found.append(int(entry))
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if uid in [int(x) for x in line.split()[1:]]:
                            found.append(int(entry))
                        break
        except OSError:
            pass
    return found


def clean_up(level: str, uid: int | None, pgid: int) -> int:
    """Kill the worker's session and everything it left behind; returns how many processes were killed."""
    killed = 0
    for target in (-pgid, pgid):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    if level not in ("bwrap", "uid") or not os.path.isdir("/proc"):
        return killed
    for _ in range(200):  # a fork loop may add processes while we kill: repeat until none is left
        if level == "bwrap":
            try:
                os.kill(-1, signal.SIGKILL)  # every process of this PID namespace but pid 1 and this one
            except OSError:
                pass
        left = _others(level, uid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        killed += len(left)
        _reap()
        if not left:
            break
        time.sleep(0.01)
    return killed


def wipe(folder: str) -> None:
    """Remove everything inside ``folder`` (not the folder): links are removed, never followed; folders a worker
    made unreadable are opened up first (the runner owns them, or is root)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        path = entry.path
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(path, stat.S_IRWXU)
                wipe(path)
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_one(job, exercise, cases, home, emit):
    """Fork a worker for one exercise and relay its lines; returns (status, detail)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _worker(job, exercise, cases, w, home)
    os.close(w)
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
    timeout = float(job["timeout"])
    deadline = time.monotonic() + timeout
    buf, total, status = b"", 0, None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        if not sel.select(left):
            continue
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_RELAY_BYTES:
            status = "too much output"
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            emit({"event": "worker", "key": exercise["key"], "line": line.decode("utf-8", "replace")})
    sel.close()
    os.close(r)
    if status is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _, code = os.waitpid(pid, 0)
    clean_up(job["level"], job.get("uid"), pid)
    if status is not None:
        return status, f"after {timeout:g} s" if status == "timeout" else ""
    if os.WIFSIGNALED(code):
        return "killed", f"signal {os.WTERMSIG(code)}"
    return "exited", str(os.WEXITSTATUS(code))


JOB_WAIT_S = 3600.0  # the grading process writes job.json once it has read the submission (bounded by --budget)


def _wait_for_job(jobdir: str) -> dict | None:
    """The job, once the grading process has put ``job.json`` in place (it renames a complete file there)."""
    path = os.path.join(jobdir, "job.json")
    end = time.monotonic() + JOB_WAIT_S
    while not os.path.exists(path):
        if time.monotonic() > end:
            return None
        time.sleep(0.005)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def main(jobdir: str) -> int:
    _prctl(PR_SET_DUMPABLE, 0)
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    dumps, write = json.dumps, os.write

    def emit(obj):
        data = (dumps(obj) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[write(out_fd, view) :]

    # Everything a worker needs is imported first, while the grading process is still reading the notebooks and
    # computing the checks: after dropping to the sandbox uid a worker may not read the interpreter's files any
    # more (the uid level), and nothing is imported from a place it could have changed.
    # Triton kernels (exercise 13.3) run in Triton's interpreter: there is no GPU in the sandbox, and @triton.jit
    # reads this when it decorates a function, Triton's own tl.zeros and tl.sum included (at `import triton`).
    os.environ["TRITON_INTERPRET"] = "1"
    import math  # noqa: F401
    import traceback  # noqa: F401

    import invoke  # noqa: F401
    import torch  # noqa: F401 - imported once here, shared by every forked worker
    import torch.nn.functional  # noqa: F401

    for name in COMMON_MODULES:
        try:
            __import__(name)
        except ImportError:
            pass

    traps.snapshot()
    _prctl(0, 0)  # loads libc for ctypes now
    precompute()

    job = _wait_for_job(jobdir)
    if job is None:
        return 3
    job["jobdir"] = jobdir
    arrays = {name: np.load(os.path.join(jobdir, "inputs", name), allow_pickle=False) for name in job["arrays"]}

    global BASELINE
    BASELINE = traps.snapshot()
    workroot = job["workroot"]
    scratch = [workroot, "/dev/shm"] if job["level"] == "bwrap" else [workroot]  # noqa: S108 - the sandbox's own
    emit({"event": "ready", "level": job["level"], "uid": os.getuid()})
    for exercise in job["exercises"]:
        cases = [_case(c, arrays) for c in exercise["cases"]]
        emit({"event": "start", "key": exercise["key"]})
        home = os.path.join(workroot, "w" + secrets.token_hex(8))  # a name the last worker could not guess
        status, detail = _run_one(job, exercise, cases, home, emit)
        for folder in scratch:  # every process of the last worker is dead: nothing can race this
            wipe(folder)
        emit({"event": "end", "key": exercise["key"], "status": status, "detail": detail})
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
