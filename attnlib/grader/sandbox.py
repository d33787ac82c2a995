"""The grader's child process: the only place submitted code runs.

Started by :mod:`attnlib.grader.engine` as ``python -I -m attnlib.grader.sandbox JOBDIR`` with its working
directory set to a fresh temporary directory and an address-space limit (``RLIMIT_AS``). It imports torch once,
loads the checks' inputs (``.npy``, ``allow_pickle=False``) and the job description (JSON), installs the
call-recording wrappers, and then, for each exercise, forks a worker that

1. redirects stdin/stdout/stderr to /dev/null, closes every other file descriptor but its result pipe, caps
   the size of files it may write (``RLIMIT_FSIZE``) and puts itself in its own process group;
2. executes the notebook's definitions statement by statement (an exception in one is recorded, not fatal);
3. runs every check, recording forbidden library calls, and writes one JSON line per check to the pipe with
   the outputs as base64 ``.npy`` bytes;
4. reports whether torch or numpy was monkeypatched, and exits with ``os._exit``.

This process waits for each worker with a wall-clock deadline, kills its process group when the time is up,
and relays the lines to the grading process as JSON events on its original stdout. It decides nothing: the
grading process validates and scores what arrives.
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import selectors
import signal
import sys
import time

import numpy as np

MAX_RELAY_BYTES = 50_000_000


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


def _worker(exercise: dict, cases: list[dict], pipe_w: int, fsize: int) -> None:
    """Runs in the forked worker; never returns."""
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, pipe_w)
        os.closerange(pipe_w + 1, 1 << 16)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import torch

        from . import guard
        from .invoke import run_case

        torch.set_num_threads(1)
        sys.setrecursionlimit(5000)

        def send(obj):
            data = (json.dumps(obj) + "\n").encode()
            view = memoryview(data)
            while view:
                view = view[os.write(pipe_w, view) :]

        before = guard.snapshot()
        namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        problems = []
        for label, code in exercise["statements"]:
            try:
                exec(compile(code, f"<{label}>", "exec"), namespace)  # noqa: S102 - this is the sandbox
            except BaseException as err:  # noqa: BLE001 - SystemExit, KeyboardInterrupt and custom ones too
                problems.append(f"{label}: {_describe(err)}")
        target = namespace.get(exercise["entry"])
        send({"event": "loaded", "problems": problems[:5], "found": target is not None})
        if target is not None:
            for i, case in enumerate(cases):
                error, outputs = None, {}
                with guard.recording() as calls:
                    try:
                        outputs = run_case(target, exercise["kind"], exercise["returns"], case)
                    except BaseException as err:  # noqa: BLE001
                        error = _describe(err)
                    recorded = sorted(set(calls))
                send(
                    {
                        "event": "case",
                        "i": i,
                        "error": error,
                        "calls": recorded,
                        "outputs": {k: _encode(v) for k, v in outputs.items()},
                    }
                )
        patched = guard.changed(before, guard.snapshot(), set()) + guard.intact()
        send({"event": "finished", "patched": patched[:10]})
        os._exit(0)
    except BaseException:  # noqa: BLE001
        os._exit(70)


def _run_one(exercise, cases, timeout, fsize, emit):
    """Fork a worker for one exercise and relay its lines; returns (status, detail)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _worker(exercise, cases, w, fsize)
    os.close(w)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
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
        for target in (-pid, pid):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
    _, code = os.waitpid(pid, 0)
    try:
        os.kill(-pid, signal.SIGKILL)  # anything the worker left running in its group
    except OSError:
        pass
    if status is not None:
        return status, f"after {timeout:g} s" if status == "timeout" else ""
    if os.WIFSIGNALED(code):
        return "killed", f"signal {os.WTERMSIG(code)}"
    return "exited", str(os.WEXITSTATUS(code))


def main(jobdir: str) -> int:
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)

    def emit(obj):
        data = (json.dumps(obj) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view) :]

    with open(os.path.join(jobdir, "job.json"), encoding="utf-8") as fh:
        job = json.load(fh)
    arrays = {}
    for name in job["arrays"]:
        arrays[name] = np.load(os.path.join(jobdir, "inputs", name), allow_pickle=False)
    import torch  # noqa: F401 - imported once here, shared by every forked worker

    from . import guard

    guard.install()
    emit({"event": "ready"})
    for exercise in job["exercises"]:
        cases = [_case(c, arrays) for c in exercise["cases"]]
        emit({"event": "start", "key": exercise["key"]})
        status, detail = _run_one(exercise, cases, job["timeout"], job["fsize"], emit)
        emit({"event": "end", "key": exercise["key"], "status": status, "detail": detail})
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
