"""Inside the sandbox: the only place submitted code runs.

The grading process (:mod:`attnlib.grader.engine`) copies this file and :mod:`attnlib.grader.invoke` and
:mod:`attnlib.grader.guard` into a fresh job folder and starts it as a script, ``python -I -u worker.py JOB``,
inside the sandbox chosen by :mod:`attnlib.grader.sandbox` (bubblewrap, a dropped uid, or nothing). It imports
nothing from attnlib itself; under bubblewrap only the attnlib package (read-only, for exercises that build on
the library) is visible of the course.

This process (the *runner*) makes itself non-dumpable (so nothing it starts can open its ``/proc`` files or
attach to it), imports torch once, loads the checks' inputs (``.npy``, ``allow_pickle=False``), and then, per
exercise, forks a fresh *worker* that

1. starts its own session, points stdin/stdout/stderr at /dev/null, closes every other file descriptor but its
   result pipe, enters a private empty directory, drops to the unprivileged uid (uid level), sets
   ``PR_SET_NO_NEW_PRIVS`` and rlimits (file size, processes, CPU time, open files);
2. *poisons* the exercise's forbidden entry points (torch's softmax / attention functions, the matching
   ``torch.ops.aten`` operators, other libraries' versions, attnlib) with functions that raise, before any
   submitted statement runs, and again after the definitions have loaded (for modules they imported);
3. executes the statements the exercise needs, statement by statement, and calls the learner's code on every
   check, writing one JSON line per check to the pipe: outputs as base64 ``.npy`` bytes (or a JSON scalar for
   value answers).

When a worker is done (or its time is up) the runner kills it and every process it left behind, then forks the
next one. The runner decides nothing: what it relays is validated and judged by the grading process, which also
keeps its own deadline per exercise and restarts the sandbox if the runner is killed or stopped.
"""

from __future__ import annotations

import base64
import ctypes
import io
import json
import linecache
import os
import resource
import selectors
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # invoke.py and guard.py, copied beside this file

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

from guard import FAMILIES, LIBRARIES, family_of  # noqa: E402


class ForbiddenCall(Exception):
    """Raised by a poisoned entry point."""


HITS: list[str] = []


class _Poison:
    """Stands in for a forbidden entry point: calling it (or an overload, ``torch.ops.aten.softmax.int``) raises."""

    __slots__ = ("label",)
    __attnlib_poison__ = True

    def __init__(self, label: str):
        self.label = label

    def __call__(self, *args, **kwargs):
        HITS.append(self.label)
        raise ForbiddenCall(f"{self.label} may not be used in this exercise")

    def __getattr__(self, name: str):
        return self


def find_targets(families: set[str], done: set[int], torch_too: bool = True) -> list[tuple[object, str, str]]:
    """(owner, attribute, label) of every forbidden entry point of the families among the imported library
    modules not in ``done`` (their ids are added), and of ``torch.Tensor`` and ``torch.ops``."""
    patterns = [FAMILIES[f] for f in families if f in FAMILIES]
    out: list[tuple[object, str, str]] = []

    def hit(name: str) -> bool:
        return any(p.search(name) for p in patterns)

    for modname, module in list(sys.modules.items()):
        if module is None or id(module) in done:
            continue
        top = modname.split(".")[0]
        if top == "attnlib":
            if "attnlib" in families:
                done.add(id(module))
                out += [
                    (module, name, f"{modname}.{name}")
                    for name, value in list(vars(module).items())
                    if callable(value) and not name.startswith("__")
                ]
            continue
        if top not in LIBRARIES or not patterns:
            continue
        done.add(id(module))
        out += [
            (module, name, f"{modname}.{name}")
            for name, value in list(vars(module).items())
            if hit(name) and callable(value) and not isinstance(value, _Poison)
        ]
    if torch_too and patterns and "torch" in sys.modules:
        import torch

        for owner, label in ((torch.Tensor, "torch.Tensor"), (torch.nn.Module, "torch.nn.Module")):
            # inherited names too: Tensor.softmax comes from the C base class, which cannot be changed itself
            out += [(owner, name, f"{label}.{name}") for name in dir(owner) if hit(name)]
        try:
            ops = torch._C._dispatch_get_all_op_names()
        except Exception:  # noqa: BLE001 - an older torch: the module attributes above still apply
            ops = []
        for op in ops:
            ns, _, rest = op.partition("::")
            base = rest.split(".")[0]
            if ns in ("aten", "quantized") and hit(base):
                out.append((getattr(torch.ops, ns), base, f"torch.ops.{ns}.{base}"))
    return out


def apply_poison(targets: list[tuple[object, str, str]]) -> int:
    count = 0
    for owner, name, label in targets:
        try:
            if not isinstance(vars(owner).get(name), _Poison):
                setattr(owner, name, _Poison(label))
                count += 1
        except Exception:  # noqa: BLE001 - an attribute that cannot be set: the static scan still applies
            pass
    return count


def poison(families: set[str], done: set[int]) -> int:
    """Replace every forbidden entry point reachable from the imported library modules; returns how many."""
    if not families:
        return 0
    return apply_poison(find_targets(families, done))


# The runner finds the targets once for every family (before forking), so that each worker only applies them.
PRECOMPUTED: dict[str, list[tuple[object, str, str]]] = {}
SCANNED: set[int] = set()


def precompute() -> None:
    for fam in (*FAMILIES, "attnlib"):
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


def _describe(err: BaseException) -> str:
    try:
        text = str(err)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        text = "<unprintable>"
    name = type(err).__name__ if isinstance(type(err).__name__, str) else "Exception"
    return f"{name}: {text}"[:400]


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
        import guard
        import torch
        from invoke import run_case, value_output

        torch.set_num_threads(1)
        sys.setrecursionlimit(5000)
        dumps, write = json.dumps, os.write

        def send(obj):
            data = (dumps(obj) + "\n").encode()
            view = memoryview(data)
            while view:
                view = view[write(pipe_w, view) :]

        families = {f for f in (family_of(c) for c in exercise.get("forbidden", [])) if f}
        done = set(SCANNED)
        if families:
            apply_poison([t for f in sorted(families) for t in PRECOMPUTED.get(f) or find_targets({f}, set())])
        before = guard.snapshot()
        namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        problems = []
        for n, (label, code) in enumerate(exercise["statements"]):
            # Each statement's source goes into linecache under its own name, as IPython does for a cell:
            # inspect.getsource needs it, and @triton.jit refuses a function without source (exercise 13.3).
            filename = f"<{label}, statement {n + 1}>"
            linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
            try:
                exec(compile(code, filename, "exec"), namespace)  # noqa: S102 - this is the sandbox
            except BaseException as err:  # noqa: BLE001 - SystemExit, KeyboardInterrupt and custom ones too
                problems.append(f"{label}: {_describe(err)}")
        if families:
            apply_poison(find_targets(families, done, torch_too=False))  # what the definitions imported
        target = namespace.get(exercise["entry"])
        send({"event": "loaded", "problems": problems[:5], "found": target is not None})
        budget = exercise.get("memory_limit_bytes")
        if target is not None and isinstance(budget, int) and budget > 0:
            # the exercise forbids a large allocation (the full score matrix): cap the address space at what the
            # worker holds now plus the budget, soft and hard, so the submission cannot raise it again
            with open("/proc/self/statm") as statm:
                held = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            _limit(resource.RLIMIT_AS, held + budget)
        if target is not None:
            modules = len(sys.modules)
            for i, case in enumerate(cases):
                error, outputs = None, {}
                hits = len(HITS)
                try:
                    if exercise["kind"] == "value":
                        outputs = {"out": value_output(target)}
                    else:
                        outputs = run_case(target, exercise["kind"], exercise["returns"], case)
                except BaseException as err:  # noqa: BLE001
                    error = _describe(err)
                if len(sys.modules) != modules and families:
                    apply_poison(find_targets(families, done, torch_too=False))
                    modules = len(sys.modules)
                encoded = {}
                for k, v in outputs.items():
                    encoded[k] = {"json": v} if isinstance(v, (bool, int, float, str)) else {"npy": _encode(v)}
                send({"event": "case", "i": i, "error": error, "calls": sorted(set(HITS[hits:])), "outputs": encoded})
                if exercise["kind"] == "value":
                    break
        patched = guard.changed(before, guard.snapshot(), set())
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

    with open(os.path.join(jobdir, "job.json"), encoding="utf-8") as fh:
        job = json.load(fh)
    arrays = {name: np.load(os.path.join(jobdir, "inputs", name), allow_pickle=False) for name in job["arrays"]}
    # Everything a worker needs is imported now: after dropping to the sandbox uid it may not read the
    # interpreter's files any more (the uid level), and nothing is imported from a place it could have changed.
    # Triton kernels (exercise 13.3) run in Triton's interpreter: there is no GPU in the sandbox, and @triton.jit
    # reads this when it decorates a function, Triton's own tl.zeros and tl.sum included (at `import triton`).
    os.environ["TRITON_INTERPRET"] = "1"
    import math  # noqa: F401
    import traceback  # noqa: F401

    import guard
    import invoke  # noqa: F401
    import torch  # noqa: F401 - imported once here, shared by every forked worker
    import torch.nn.functional  # noqa: F401

    for name in COMMON_MODULES:
        try:
            __import__(name)
        except ImportError:
            pass

    guard.snapshot()
    _prctl(0, 0)  # loads libc for ctypes now
    precompute()

    workroot = job["workroot"]
    emit({"event": "ready", "level": job["level"], "uid": os.getuid()})
    for n, exercise in enumerate(job["exercises"]):
        cases = [_case(c, arrays) for c in exercise["cases"]]
        emit({"event": "start", "key": exercise["key"]})
        home = os.path.join(workroot, f"w{n}")
        status, detail = _run_one(job, exercise, cases, home, emit)
        emit({"event": "end", "key": exercise["key"], "status": status, "detail": detail})
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
