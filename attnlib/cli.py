"""The ``attnlib`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and ``main(args) -> int``;
modules are imported only when their command runs, so ``attnlib info`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

# name -> (module, help)
COMMANDS = {
    "info": ("attnlib.cli", "print versions and the devices attnlib can use"),
    "notebooks": ("attnlib.notebooks", "execute notebooks in a fresh kernel (run: save outputs; time: only time)"),
    "bench": ("attnlib.bench", "time and memory of attention implementations (NumPy, math, chunked, SDPA)"),
    "grade": ("attnlib.grader.cli", "grade exercise notebooks in a sandbox (default exercises/); writes reports"),
    "grade-class": (
        "attnlib.grader.classgrade.run",
        "grade a class (one folder/zip/repo per student): gradebook, class report",
    ),
    "course": ("attnlib.course", "the course map (map: print it; readme: rewrite it in README.md)"),
    "site": ("attnlib.site", "build the course's web site with Sphinx (course map, lessons, exercise sets, search)"),
    "gradescope": ("attnlib.gradescope", "build Gradescope's autograder zip (setup.sh, run_autograder, the course)"),
    "exercises": ("attnlib.grader.build", "build exercises/ from solutions/ (build: write; check: fail if stale)"),
    "classroom": ("attnlib.template", "GitHub Classroom (template OUT: write the students' starter repository)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``attnlib info`` takes no arguments."""


def main(args: argparse.Namespace) -> int:
    """``attnlib info``: versions and devices."""
    import numpy
    import torch

    from . import __version__
    from .device import available_devices, get_device

    print(f"attnlib {__version__}")
    print(f"python  {platform.python_version()} ({sys.executable})")
    print(f"torch   {torch.__version__}  threads={torch.get_num_threads()}")
    print(f"numpy   {numpy.__version__}")
    print(f"devices {', '.join(available_devices())}  (selected: {get_device()})")
    return 0


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlib", description="The attention course's library and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if argv[:1] == [name]:  # import only the module of the command being run
            importlib.import_module(module).add_arguments(cmd)
    return parser


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).main(args)


def entry_point() -> None:
    raise SystemExit(run())


if __name__ == "__main__":
    entry_point()
