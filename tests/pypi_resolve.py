"""Resolve the course's requirements as a learner's pip would, against PyPI alone, for another platform.

``resolve(args, platform, python)`` runs ``pip install --dry-run --ignore-installed --report`` with no pip
configuration at all (``PIP_CONFIG_FILE=/dev/null``, and no ``PIP_*`` variables: this machine's find-links,
extra indexes and global constraint file are exactly what a learner does not have), ``--only-binary=:all:`` and
the target's ``--platform`` tags and ``--python-version``. pip fetches only metadata: the PEP 658 files an index
advertises, else (``fast-deps``) the few kilobytes of a wheel's central directory through HTTP range requests.

pip evaluates environment markers (``sys_platform == "linux"``, torch's ``platform_system == "Linux"`` on its CUDA
libraries and triton) for the machine it runs on, whatever ``--platform`` says. So pip runs here through this
module's ``__main__``, which first gives pip's marker evaluation the target's environment, then calls pip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

INDEX = "https://pypi.org/simple/"

# name -> (the --platform tags pip may pick wheels for, the marker environment of that platform)
_LINUX_GLIBC = range(17, 36)  # manylinux2014 (glibc 2.17) up to Ubuntu 22.04's glibc 2.35
PLATFORMS: dict[str, tuple[list[str], dict[str, str]]] = {
    f"linux-{arch}": (
        [f"manylinux2014_{arch}", *(f"manylinux_2_{g}_{arch}" for g in _LINUX_GLIBC)],
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": arch, "os_name": "posix"},
    )
    for arch in ("x86_64", "aarch64")
}
# torch 2.13's macOS wheels are tagged macosx_14_0_arm64; pip accepts every older macOS tag from this one.
PLATFORMS["macos-arm64"] = (
    ["macosx_14_0_arm64"],
    {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"},
)
PYTHONS = ("3.11", "3.12", "3.13")


def pip_env() -> dict[str, str]:
    """This process's environment without any pip setting: no config files, find-links, indexes or constraints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def command(args: list[str], platform: str, python: str, report: Path) -> list[str]:
    tags, _ = PLATFORMS[platform]
    return [
        sys.executable,
        __file__,
        platform,
        python,
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        "--index-url",
        INDEX,
        "--use-feature=fast-deps",
        "--only-binary=:all:",
        *(f"--platform={tag}" for tag in tags),
        f"--python-version={python}",
        "--target",
        str(report.with_suffix(".target")),  # pip asks for one with --platform; a dry run writes nothing there
        *args,
    ]


def resolve(args: list[str], platform: str, python: str, workdir: Path, cwd: Path) -> tuple[int, str, dict]:
    """Resolve ``args`` (``-r requirements.txt -c constraints.txt``) for ``platform`` and ``python``.

    Returns (pip's exit status, its output, {normalised name: version} of everything it would install); a
    yanked release (pip takes one that is pinned exactly, with only a warning) is named ``"<version> (yanked)"``."""
    report = workdir / f"{platform}-{python}.json"
    proc = subprocess.run(
        command(args, platform, python, report), cwd=cwd, env=pip_env(), capture_output=True, text=True
    )
    installed = {}
    if proc.returncode == 0 and report.exists():
        for item in json.loads(report.read_text())["install"]:
            meta = item["metadata"]
            yanked = " (yanked)" if item.get("is_yanked") else ""
            installed[meta["name"].lower().replace("_", "-")] = meta["version"] + yanked
    return proc.returncode, proc.stdout + proc.stderr, installed


def _marker_environment(platform: str, python: str) -> dict[str, str]:
    _, markers = PLATFORMS[platform]
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "implementation_version": f"{python}.0",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "platform_release": "",
        "platform_version": "",
        **markers,
    }


def _main(argv: list[str]) -> int:
    platform, python, *pip_args = argv
    target = _marker_environment(platform, python)
    from pip._internal.cli.main import main as pip_main
    from pip._vendor.packaging import markers

    markers.default_environment = lambda: dict(target)
    return pip_main(pip_args)


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
