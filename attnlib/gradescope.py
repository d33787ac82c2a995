"""``attnlib gradescope --out autograder.zip``: the Gradescope autograder, built from this checkout.

The zip is what Gradescope's "programming assignment" takes. Gradescope unpacks it into ``/autograder/source``,
runs ``setup.sh`` once to build the image and ``run_autograder`` for each submission (both from ``gradescope/``
at the repository root):

* ``setup.sh`` installs the course's pinned environment (``requirements.txt`` with ``constraints.txt``, torch's
  CPU wheel, bubblewrap) into ``/autograder/source/.venv`` and attnlib from the zip;
* ``run_autograder`` gathers the uploaded ``NN_*.ipynb`` files (loose, in a folder or a repository), grades
  them with ``attnlib grade`` and leaves ``/autograder/results/results.json`` in Gradescope's schema, with a
  zero-score report of its own if the grader left none.

The course goes in without ``solutions/`` and without ``tests/`` (whose reference submissions are answers):
attnlib, the lessons, the exercise sets as learners receive them, the pins and the docs. Entries are written in
sorted order with a fixed date, so the same checkout gives the same zip.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("setup.sh", "run_autograder")
# What of the course goes into the zip (relative to the root): files, and folders taken whole.
FILES = (
    "pyproject.toml",
    "requirements.txt",
    "constraints.txt",
    "environment.yml",
    "README.md",
    "docs/grading.md",
)
FOLDERS = ("attnlib", "exercises", "notebooks")
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
NEVER = ("solutions", "tests")  # answers: never in the zip
DATE = (1980, 1, 1, 0, 0, 0)


def course_files(root: Path = ROOT) -> list[str]:
    """The course's files the zip holds (paths relative to ``root``, sorted), without the solutions."""
    found = [name for name in FILES if (root / name).is_file()]
    for folder in FOLDERS:
        for path in (root / folder).rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and not SKIP_PARTS & set(rel.parts) and path.suffix != ".pyc":
                found.append(rel.as_posix())
    leaked = [name for name in found if name.split("/", 1)[0] in NEVER]
    if leaked:
        raise RuntimeError(f"refusing to put {leaked} into the autograder")
    return sorted(found)


def _add(zf: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100755 if executable else 0o100644) << 16
    zf.writestr(info, data)


def build_zip(out: str | Path, root: str | Path = ROOT) -> list[str]:
    """Write the autograder zip to ``out``; return the names it holds (scripts first)."""
    out, root = Path(out), Path(root)
    names = [*SCRIPTS, *course_files(root)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as zf:
        for script in SCRIPTS:
            _add(zf, script, (root / "gradescope" / script).read_bytes(), executable=True)
        for name in names[len(SCRIPTS) :]:
            _add(zf, name, (root / name).read_bytes())
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="autograder.zip", help="the zip to write (default autograder.zip)")


def main(args: argparse.Namespace) -> int:
    names = build_zip(args.out)
    size = Path(args.out).stat().st_size / 1e6
    print(
        f"wrote {args.out}: {len(names)} files, {size:.1f} MB (setup.sh, run_autograder, the course without solutions)"
    )
    print("upload it as the autograder of a Gradescope programming assignment (Ubuntu 22.04 base image)")
    return 0
