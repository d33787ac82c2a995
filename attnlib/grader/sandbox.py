"""Where the submitted code runs: the sandbox levels, how each is started, and the kill afterwards.

``attnlib grade --sandbox {auto,bwrap,uid,none}``:

* ``bwrap`` — `bubblewrap <https://github.com/containers/bubblewrap>`_: a new mount, PID, network, IPC, UTS,
  cgroup and user namespace; only ``/usr``, the interpreter and the Python environment (with any installed copy
  of attnlib hidden) and the job folder are visible, all read-only (the course, attnlib and its grader, the
  solutions, the submissions and the report folder are not there at all); a private tmpfs is the only writable
  place, emptied between exercises; uid/gid 65534 with no capabilities, no further user namespaces,
  ``--die-with-parent`` and ``--new-session``. When the grading ends its PID namespace is gone, so nothing
  started inside outlives it.
* ``uid`` — where bwrap cannot run but the grader is root: the runner (which never executes submitted code)
  stays root; each worker drops to a dedicated unprivileged uid/gid of its own run, with ``setsid``,
  ``PR_SET_NO_NEW_PRIVS``, rlimits and a private 0700 directory; every process of that uid is killed after each
  exercise and at the end. The workers can still read every world-readable file (the course and its
  grader, solutions/, other students' notebooks) and reach the network: **unfit for grading a class**, and the
  report says so.
* ``none`` — neither is possible (not root, no bwrap): the code runs as the grader's own user in a separate
  process with rlimits; the report says plainly that the run was not isolated.
* ``auto`` (default) — the first of bwrap, uid, none that can run here; the report names the level used.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LEVELS = ("auto", "bwrap", "uid", "none")
SANDBOX_UID = 65534  # inside bubblewrap
TMPFS_BYTES = 256 << 20


class SandboxUnavailable(Exception):
    """The requested sandbox level cannot run on this machine; the message says why."""


NOTES = {
    "bwrap": (
        "sandbox: bubblewrap (read-only system, no course or grader files, no network, own PID namespace, uid 65534)"
    ),
    "uid": (
        "sandbox: unprivileged uid {uid} with rlimits, a private directory and a kill of its processes "
        "(bubblewrap was not available: {why}); UNFIT FOR GRADING A CLASS: the submission could read every "
        "world-readable file (the course, solutions, other students' work) and reach the network"
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


def python_folders() -> list[str]:
    """Every folder of the interpreter and the environment (real paths): what a worker must be able to read."""
    out = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)):
        for q in (p, os.path.realpath(p)):
            if q and q not in out:
                out.append(q)
    return out


def _prefixes() -> list[str]:
    """The interpreter's and the environment's folders outside /usr (bound read-only at their own paths)."""
    seen: list[str] = []
    exe = os.path.realpath(sys.executable)
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(exe)):
        for q in {p, os.path.realpath(p)}:
            if q and os.path.isdir(q) and not q.startswith("/usr/") and q != "/usr" and q not in seen:
                seen.append(q)
    return [p for p in sorted(seen, key=len) if not any(p.startswith(s + "/") for s in seen if s != p)]


def _hidden_packages(bound: list[str]) -> list[str]:
    """Installed copies of attnlib inside the bound folders (a non-editable install in site-packages): hidden
    under an empty read-only folder, so that the grader's registry, references and keys are not in the sandbox."""
    import importlib.util

    found = []
    spec = importlib.util.find_spec("attnlib")
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        real = os.path.realpath(folder)
        if any(real == b or real.startswith(b.rstrip("/") + "/") for b in bound):
            found.append(real)
    for b in bound:  # any other copy in a site-packages folder
        for site in glob.glob(os.path.join(b, "lib", "python*", "site-packages", "attnlib")):
            if os.path.realpath(site) not in found:
                found.append(os.path.realpath(site))
    return sorted(found)


def _binds(empty: str) -> list[str]:
    """Read-only binds: /usr (and the /bin, /lib... links to it), the interpreter's and environment's prefixes,
    with attnlib hidden: nothing of the course is bound (exercises that need part of it get it in the job)."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    bound = _prefixes()
    for p in bound:
        args += ["--ro-bind", p, p]
    for p in _hidden_packages(["/usr", *bound]):
        args += ["--ro-bind", empty, p]
    return args


def bwrap_argv(bwrap: str, jobdir: str, info_fd: int | None = None) -> list[str]:
    """The bubblewrap command line of a sandbox over ``jobdir`` (which must hold an empty folder ``empty``)."""
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
        # The private tmpfs first: binds made after it stay visible, so a Python environment that lives under
        # /tmp, as a CI clone's may, is still there; mounted after them, the tmpfs would hide it.
        "--size",
        str(TMPFS_BYTES),
        "--tmpfs",
        "/tmp",
        *_binds(os.path.join(jobdir, "empty")),
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
        os.mkdir(os.path.join(d, "empty"))
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


@dataclass
class Started:
    proc: subprocess.Popen
    info_r: int | None = None


class Level:
    """One sandbox level. The same small interface at every level:

    * ``name``, ``note`` (the report's first note), ``uid`` (the workers' uid, or None);
    * :meth:`workroot` — where the workers' private folders go, and the host folder to remove afterwards;
    * :meth:`start` — the runner (``worker.py`` of the job folder) started inside the sandbox;
    * :meth:`stop` — the runner, its session and every process of the sandbox killed, the runner reaped;
    * :meth:`survivors` / :meth:`kill_survivors` — processes of this level's sandboxes still alive.
    """

    name = ""
    uid: int | None = None
    gid: int | None = None

    def __init__(self, note: str):
        self.note = note

    @property
    def level(self) -> str:  # the name, as the reports and the job call it
        return self.name

    def workroot(self) -> tuple[str, str | None]:
        root = tempfile.mkdtemp(prefix="attnlib-work-")
        os.chmod(root, 0o700)
        return root, root

    def _argv(self, jobdir: Path) -> tuple[list[str], int | None, int | None]:
        return [sys.executable, "-I", "-u", str(jobdir / "code" / "worker.py"), str(jobdir)], None, None

    def start(self, jobdir: Path, memory_bytes: int, env: dict[str, str], stderr) -> Started:
        import resource

        def limits():
            for limit, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CORE, 0)):
                try:
                    resource.setrlimit(limit, (value, value))
                except (ValueError, OSError):  # e.g. macOS cannot lower RLIMIT_AS; the timeout still applies
                    pass

        argv, info_r, info_w = self._argv(jobdir)
        try:
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
        finally:
            if info_w is not None:
                os.close(info_w)
        started = Started(proc, info_r)
        self._started(started)
        return started

    def _started(self, started: Started) -> None:
        pass

    def processes(self) -> list[int]:
        """Host pids of the processes of this level's sandboxes (none known at the ``none`` level)."""
        return []

    def stop(self, started: Started) -> None:
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
        self.kill_survivors()
        if proc.stdout:
            proc.stdout.close()

    def survivors(self) -> list[int]:
        """Processes of this level's sandboxes that are still alive (tests assert there are none)."""
        alive = []
        for pid in self.processes():
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                    if fh.read().rsplit(")", 1)[-1].split()[0] != "Z":
                        alive.append(pid)
            except OSError:
                pass
        return alive

    def kill_survivors(self, rounds: int = 100) -> int:
        """Kill whatever of this level's sandboxes is still running; returns how many processes were found."""
        total = 0
        for _ in range(rounds):
            left = self.survivors()  # zombies are already dead: their parent (or the kernel) reaps them
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


class Bwrap(Level):
    name = "bwrap"

    def __init__(self, binary: str):
        super().__init__(NOTES["bwrap"])
        self.binary = binary
        self.pidns: set[str] = set()  # the PID namespaces started (to look for survivors)

    def workroot(self) -> tuple[str, str | None]:
        return "/tmp", None  # the sandbox's own tmpfs

    def _argv(self, jobdir: Path) -> tuple[list[str], int | None, int | None]:
        info_r, info_w = os.pipe()
        argv = [
            *bwrap_argv(self.binary, str(jobdir), info_w),
            sys.executable,
            "-I",
            "-u",
            "/job/code/worker.py",
            "/job",
        ]
        return argv, info_r, info_w

    def _started(self, started: Started) -> None:
        """Remember the PID namespace of the sandbox (from ``--info-fd``) to look for survivors later."""
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
            self.pidns.add(os.readlink(f"/proc/{child}/ns/pid"))
        except (ValueError, KeyError, OSError, TypeError):
            pass

    def processes(self) -> list[int]:
        return _pids(lambda pid: os.readlink(f"/proc/{pid}/ns/pid") in self.pidns)


class Uid(Level):
    name = "uid"

    def __init__(self, uid: int, why: str):
        super().__init__(NOTES["uid"].format(uid=uid, why=why))
        self.uid = self.gid = uid

    def workroot(self) -> tuple[str, str | None]:
        root = tempfile.mkdtemp(prefix="attnlib-work-")
        os.chmod(root, 0o711)
        return root, root

    def processes(self) -> list[int]:
        def mine(pid: str) -> bool:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        return self.uid in [int(x) for x in line.split()[1:]]
            return False

        return _pids(mine)

    def stop(self, started: Started) -> None:
        super().stop(started)
        remove_files_of(self.uid)


class Unisolated(Level):
    name = "none"


def _pids(belongs) -> list[int]:
    if not os.path.isdir("/proc"):
        return []
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if belongs(entry):
                found.append(int(entry))
        except OSError:
            pass
    return found


def choose(requested: str = "auto") -> Level:
    """The level for ``requested``; raises :class:`SandboxUnavailable` when an explicit level cannot run."""
    if requested not in LEVELS:
        raise SandboxUnavailable(f"unknown sandbox level {requested!r}; choose one of {', '.join(LEVELS)}")
    linux = sys.platform.startswith("linux")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if requested in ("auto", "bwrap"):
        binary = bwrap_binary()
        ok, why = bwrap_works(binary) if linux else (False, f"bubblewrap needs Linux (this is {sys.platform})")
        if ok:
            return Bwrap(binary)
        if requested == "bwrap":
            raise SandboxUnavailable(f"--sandbox bwrap: {why}")
    else:
        why = "not requested"
    if requested in ("auto", "uid"):
        if root and linux:
            return Uid(int(os.environ.get("ATTNLIB_SANDBOX_UID") or _free_uid()), why)
        reason = "the grader is not root" if linux else f"the uid level needs Linux (this is {sys.platform})"
        if requested == "uid":
            raise SandboxUnavailable(f"--sandbox uid: {reason}")
        why = f"{why}; {reason}"
    return Unisolated(NOTES["none"].format(why=why if requested == "auto" else "--sandbox none"))


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
