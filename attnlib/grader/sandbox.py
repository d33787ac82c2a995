"""Where the submitted code runs: the sandbox levels, how each is started, and the kill afterwards.

``attnlib grade --sandbox {auto,bwrap,uid,none}``:

* ``bwrap`` — `bubblewrap <https://github.com/containers/bubblewrap>`_: a new mount, PID, network, IPC, UTS,
  cgroup and user namespace; only the interpreter, the Python environment, ``/usr``, the attnlib package and
  the job folder are visible, all read-only (the rest of the course, its solutions, the submissions and the
  report folder are not there at all); a private tmpfs is the only writable place; uid/gid 65534 with no
  capabilities, no further user namespaces, ``--die-with-parent`` and ``--new-session``. When the grading ends
  its PID namespace is gone, so nothing started inside outlives it.
* ``uid`` — where bwrap cannot run but the grader is root: the runner (which never executes submitted code)
  stays root; each worker drops to a dedicated unprivileged uid/gid of its own run, with ``setsid``,
  ``PR_SET_NO_NEW_PRIVS``, rlimits and a private 0700 directory; every process of that uid is killed after each
  exercise and at the end.
* ``none`` — neither is possible (not root, no bwrap): the code runs as the grader's own user in a separate
  process with rlimits; the report says plainly that the run was not isolated.
* ``auto`` (default) — the first of bwrap, uid, none that can run here; the report names the level used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LEVELS = ("auto", "bwrap", "uid", "none")
SANDBOX_UID = 65534  # inside bubblewrap
TMPFS_BYTES = 256 << 20


class SandboxUnavailable(Exception):
    """The requested sandbox level cannot run on this machine; the message says why."""


@dataclass
class Plan:
    """How to start the runner at one level."""

    level: str
    note: str
    bwrap: str | None = None
    uid: int | None = None
    gid: int | None = None
    pidns: set[str] = field(default_factory=set)  # bwrap: the PID namespaces started (to check for survivors)


NOTES = {
    "bwrap": (
        "sandbox: bubblewrap (read-only system, no course files but attnlib, no network, own PID namespace, uid 65534)"
    ),
    "uid": (
        "sandbox: unprivileged uid {uid} with rlimits, a private directory and a kill of its processes "
        "(bubblewrap was not available: {why})"
    ),
    "none": (
        "WARNING: this run was NOT isolated: the submission ran as the grader's own user ({why}); "
        "grades from it are feedback only"
    ),
}


def bwrap_binary() -> str | None:
    """The bwrap executable: ``$ATTNLIB_BWRAP`` if set (empty: none), else ``bwrap`` on PATH."""
    named = os.environ.get("ATTNLIB_BWRAP")
    if named is not None:
        return named if named and os.access(named, os.X_OK) else None
    return shutil.which("bwrap")


def _binds() -> list[str]:
    """Read-only binds: /usr (and the /bin, /lib... links to it), the interpreter's and environment's prefixes."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    seen: list[str] = []
    exe = os.path.realpath(sys.executable)
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(exe)):
        for q in {p, os.path.realpath(p)}:
            if q and os.path.isdir(q) and not q.startswith("/usr/") and q != "/usr" and q not in seen:
                seen.append(q)
    # attnlib itself, read-only: exercises may build on the course's library (set 14 loads real weights into
    # attnlib.MultiHeadAttention). An editable install lives outside the environment's prefix, so bind the package
    # folder at its own path; what an exercise may not use is still refused by the scan and the poisoning.
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if not any(package == s or package.startswith(s + "/") for s in seen):
        seen.append(package)
    for p in sorted(seen, key=len):
        if not any(p.startswith(s + "/") for s in seen if s != p):
            args += ["--ro-bind", p, p]
    return args


def bwrap_argv(bwrap: str, jobdir: str, info_fd: int | None = None) -> list[str]:
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        # The private tmpfs first: binds made after it stay visible, so a course (and its .venv) that lives under
        # /tmp, as a CI clone may, is still there; mounted after them, the tmpfs would hide it.
        "--size",
        str(TMPFS_BYTES),
        "--tmpfs",
        "/tmp",
        *_binds(),
        "--ro-bind",
        jobdir,
        "/job",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--chdir",
        "/tmp",
    ]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    return argv


_CHECKED: dict[str, tuple[bool, str]] = {}


def bwrap_works(bwrap: str | None) -> tuple[bool, str]:
    """Whether bubblewrap can start a sandbox here (cached); the reason when it cannot."""
    if not bwrap:
        return False, "bwrap is not installed"
    if bwrap in _CHECKED:
        return _CHECKED[bwrap]
    with tempfile.TemporaryDirectory(prefix="attnlib-bwrap-check-") as d:
        try:
            proc = subprocess.run(
                [*bwrap_argv(bwrap, d), sys.executable, "-I", "-c", "pass"],
                capture_output=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
            ok = proc.returncode == 0
            why = "" if ok else proc.stderr.decode("utf-8", "replace").strip()[-300:] or f"exit {proc.returncode}"
        except (OSError, subprocess.TimeoutExpired) as err:
            ok, why = False, str(err)
    _CHECKED[bwrap] = (ok, why)
    return ok, why


def _free_uid() -> int:
    import pwd

    for _ in range(100):
        uid = 1_900_000_000 + secrets.randbelow(100_000_000)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise SandboxUnavailable("no free uid found")


def choose(requested: str = "auto") -> Plan:
    """The plan for ``requested``; raises :class:`SandboxUnavailable` when an explicit level cannot run."""
    if requested not in LEVELS:
        raise SandboxUnavailable(f"unknown sandbox level {requested!r}; choose one of {', '.join(LEVELS)}")
    linux = sys.platform.startswith("linux")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if requested in ("auto", "bwrap"):
        binary = bwrap_binary()
        ok, why = bwrap_works(binary) if linux else (False, f"bubblewrap needs Linux (this is {sys.platform})")
        if ok:
            return Plan("bwrap", NOTES["bwrap"], bwrap=binary)
        if requested == "bwrap":
            raise SandboxUnavailable(f"--sandbox bwrap: {why}")
    else:
        why = "not requested"
    if requested in ("auto", "uid"):
        if root and linux:
            uid = int(os.environ.get("ATTNLIB_SANDBOX_UID") or _free_uid())
            return Plan("uid", NOTES["uid"].format(uid=uid, why=why), uid=uid, gid=uid)
        reason = "the grader is not root" if linux else f"the uid level needs Linux (this is {sys.platform})"
        if requested == "uid":
            raise SandboxUnavailable(f"--sandbox uid: {reason}")
        why = f"{why}; {reason}"
    return Plan("none", NOTES["none"].format(why=why if requested == "auto" else "--sandbox none"))


# ----------------------------------------------------------------------------------------------------------
# Starting and stopping the runner


@dataclass
class Started:
    proc: subprocess.Popen
    info_r: int | None = None


def prepare_workroot(plan: Plan) -> tuple[str, str | None]:
    """Where the workers' private directories go (inside bwrap: its own tmpfs), and the host folder to remove."""
    if plan.level == "bwrap":
        return "/tmp", None
    root = tempfile.mkdtemp(prefix="attnlib-work-")
    os.chmod(root, 0o711 if plan.level == "uid" else 0o700)
    return root, root


def start(plan: Plan, jobdir: Path, memory_bytes: int, env: dict[str, str], stderr) -> Started:
    """Start the runner (worker.py copied into ``jobdir/code``) at the plan's level."""
    import resource

    def limits():
        for limit, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(limit, (value, value))
            except (ValueError, OSError):  # e.g. macOS cannot lower RLIMIT_AS; the timeout still applies
                pass

    info_r = info_w = None
    if plan.level == "bwrap":
        info_r, info_w = os.pipe()
        argv = [*bwrap_argv(plan.bwrap, str(jobdir), info_w), sys.executable, "-I", "-u", "/job/code/worker.py", "/job"]
    else:
        argv = [sys.executable, "-I", "-u", str(jobdir / "code" / "worker.py"), str(jobdir)]
    proc = subprocess.Popen(
        argv,
        cwd=str(jobdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        preexec_fn=limits,
        start_new_session=True,
        pass_fds=(info_w,) if info_w is not None else (),
    )
    if info_w is not None:
        os.close(info_w)
    return Started(proc, info_r)


def record_namespace(plan: Plan, started: Started) -> None:
    """bwrap: remember the PID namespace of the sandbox (from ``--info-fd``) to look for survivors later."""
    if started.info_r is None:
        return
    import json
    import select

    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and b"}" not in data:
        ready, _, _ = select.select([started.info_r], [], [], 0.2)
        if ready:
            chunk = os.read(started.info_r, 4096)
            if not chunk:
                break
            data += chunk
    os.close(started.info_r)
    started.info_r = None
    try:
        child = int(json.loads(data.decode())["child-pid"])
        plan.pidns.add(os.readlink(f"/proc/{child}/ns/pid"))
    except (ValueError, KeyError, OSError, TypeError):
        pass


def _processes_of(plan: Plan) -> list[int]:
    """Host pids of processes that belong to this plan's sandboxes (bwrap: its PID namespaces; uid: its uid)."""
    if not os.path.isdir("/proc"):
        return []
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if plan.level == "bwrap":
                if os.readlink(f"/proc/{entry}/ns/pid") in plan.pidns:
                    found.append(int(entry))
            elif plan.level == "uid":
                with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as fh:
                    for line in fh:
                        if line.startswith("Uid:"):
                            if plan.uid in [int(x) for x in line.split()[1:]]:
                                found.append(int(entry))
                            break
        except OSError:
            pass
    return found


def stop(plan: Plan, started: Started) -> None:
    """Kill the runner, its session, and (bwrap, uid) every process of the sandbox; reap the runner."""
    proc = started.proc
    for target in (-proc.pid, proc.pid):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.005)
    if started.info_r is not None:
        os.close(started.info_r)
        started.info_r = None
    kill_survivors(plan)
    if plan.level == "uid":
        remove_files_of(plan.uid)
    if proc.stdout:
        proc.stdout.close()


WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")


def remove_files_of(uid: int | None, folders: tuple[str, ...] = WORLD_WRITABLE) -> int:
    """uid level: delete what the sandbox uid created in the world-writable folders (it cannot write data into
    files, RLIMIT_FSIZE being 0, but it can create empty ones and links). The uid is this run's own, so
    everything it owns is the submission's. Returns how many entries were removed."""
    if uid is None:
        return 0
    removed = 0
    for top in folders:
        if not os.path.isdir(top):
            continue
        # the uid can only have created entries in folders it may write to: world-writable ones or its own
        for folder, dirs, files in os.walk(top, onerror=lambda err: None):
            keep = []
            for name in files + dirs:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if st.st_uid == uid:
                    try:
                        if stat.S_ISDIR(st.st_mode):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            os.unlink(path)
                        removed += 1
                    except OSError:
                        pass
                elif name in dirs and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
                    keep.append(name)
            dirs[:] = keep
    return removed


def kill_survivors(plan: Plan, rounds: int = 100) -> int:
    """Kill whatever of the plan's sandboxes is still running; returns how many processes were found."""
    total = 0
    for _ in range(rounds):
        left = survivors(plan)  # zombies are already dead: their parent (or the kernel) reaps them
        if not left:
            break
        total += len(left)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    return total


def survivors(plan: Plan) -> list[int]:
    """Processes of the plan's sandboxes that are still alive (tests assert there are none)."""
    alive = []
    for pid in _processes_of(plan):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                if fh.read().rsplit(")", 1)[-1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive
