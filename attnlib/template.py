"""``attnlib classroom template OUT``: write the repository an instructor hands students in GitHub Classroom.

It holds what a student works with and what grades them on every push: the lessons (``notebooks/``), the exercise
sets to fill in (``exercises/``), the library with its grader (``attnlib/``), the set-up files (``Makefile``,
requirements, constraints, ``environment.yml``, ``pyproject.toml``, ``jupyter/``), the README and
``docs/grading.md``, and one workflow, ``.github/workflows/autograde.yml``, which installs the slim grading
environment and runs ``attnlib grade exercises``. It leaves out the answers (``solutions/``), the course's own
tests (``tests/``) and its CI workflow (``ci.yml``, which would run the whole test suite on every student push),
and Gradescope's files.

Push the folder to a new repository, mark it as a template, and choose it as the assignment's starter code.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "README.md",
    "Makefile",
    "pyproject.toml",
    "requirements.txt",
    "constraints.txt",
    "requirements-grade.txt",
    "constraints-grade.txt",
    "environment.yml",
    ".gitignore",
    "docs/grading.md",
    ".github/workflows/autograde.yml",
)
FOLDERS = ("notebooks", "exercises", "attnlib", "jupyter")
NEVER = ("solutions", "tests", ".github/workflows/ci.yml", "gradescope")
_SKIP = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.egg-info")


def write_template(out: str | Path, root: Path = ROOT) -> list[Path]:
    """Write the student template into ``out`` (which must not exist or be empty); return the files written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    missing = [name for name in (*FILES, *FOLDERS) if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"the course at {root} lacks {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, out / name)
    for name in FOLDERS:
        shutil.copytree(root / name, out / name, ignore=_SKIP)
    leaked = [name for name in NEVER if (out / name).exists()]
    if leaked:  # cannot happen with the lists above; a guard against a future edit of them
        raise RuntimeError(f"the template must not hold {leaked}")
    return sorted(p for p in out.rglob("*") if p.is_file())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["template"], help="template: write the students' starter repository")
    parser.add_argument("out", help="folder to write (must not exist, or be empty)")


def main(args: argparse.Namespace) -> int:
    try:
        written = write_template(args.out)
    except (FileExistsError, FileNotFoundError) as error:
        print(f"attnlib classroom template: {error}")
        return 1
    print(f"wrote {len(written)} files to {args.out}/: lessons, exercises, attnlib and the autograde workflow")
    print("no solutions/, tests/ or ci.yml. Next: push it to a new GitHub repository, mark it as a template,")
    print("and choose it as the assignment's starter code in GitHub Classroom (docs/grading.md).")
    return 0
