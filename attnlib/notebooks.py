"""Execute course notebooks top to bottom in a fresh kernel, write their outputs back, and time them; give every
notebook its setup cell.

``attnlib notebooks run notebooks/*.ipynb`` is how every committed lesson and solution gets its outputs;
``attnlib notebooks time`` executes without writing and prints each notebook's wall time against the budget;
``attnlib notebooks setup-cell`` inserts (or refreshes) the first cell of every lesson, solution and exercise
notebook, the one that installs the course where it is missing (Colab, a bare Jupyter), and ``attnlib notebooks
check-setup-cell`` fails when a notebook lacks it or holds an old one.
"""

from __future__ import annotations

import argparse
import os
import time
import tomllib
from pathlib import Path

DEFAULT_KERNEL = "attention-course"
ROOT = Path(__file__).resolve().parents[1]
SETUP_TAG = "course-setup"
SETUP_FOLDERS = ("notebooks", "solutions", "exercises")


def repository_url(root: Path = ROOT) -> str:
    """The course's repository, declared once: ``[project.urls] Repository`` in pyproject.toml."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    try:
        url = config["project"]["urls"]["Repository"]
    except KeyError:
        raise ValueError("pyproject.toml declares no [project.urls] Repository") from None
    if not url.startswith("https://github.com/") or url.count("/") != 4:
        raise ValueError(f"[project.urls] Repository must be https://github.com/OWNER/NAME, not {url!r}")
    return url.rstrip("/")


def setup_cell_source(url: str) -> str:
    """The setup cell: where attnlib is missing, pip installs the course (with its lessons' extras) from ``url``.

    pip keeps a torch that is already installed (Colab's, with its CUDA build) since attnlib asks only for a
    minimum version. ``ATTNLIB_INSTALL_URL`` overrides the source (the tests install from a local git clone)."""
    return (
        "# Colab, Binder or a Jupyter without the course: install attnlib from the course's repository, keeping the\n"
        "# torch already installed. Where the course is set up (make lab), this cell does nothing.\n"
        "import importlib.util\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if importlib.util.find_spec("attnlib") is None:\n'
        f'    source = os.environ.get("ATTNLIB_INSTALL_URL", "git+{url}")\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"attnlib[lessons] @ {source}"], check=True)'
    )


def _is_setup_cell(cell) -> bool:
    return SETUP_TAG in cell.get("metadata", {}).get("tags", [])


def with_setup_cell(nb, source: str) -> bool:
    """Make ``nb``'s first cell the setup cell with ``source`` (inserted, or an old one replaced and moved first).

    Returns whether ``nb`` changed; a second call with the same source changes nothing."""
    import nbformat

    found = [cell for cell in nb.cells if _is_setup_cell(cell)]
    if len(found) == 1 and nb.cells[0] is found[0] and found[0].source == source and not found[0].get("outputs"):
        return False
    keep = found[0] if found else None
    nb.cells = [cell for cell in nb.cells if not _is_setup_cell(cell)]
    if keep is None:
        keep = nbformat.v4.new_code_cell(source, id="course-setup", metadata={"tags": [SETUP_TAG]})
    keep.source = source
    keep.outputs = []
    keep.execution_count = None
    nb.cells.insert(0, keep)
    return True


def setup_cell_problem(nb, source: str) -> str | None:
    """Why ``nb`` does not start with the setup cell ``source``, or None when it does."""
    if not nb.cells or not _is_setup_cell(nb.cells[0]):
        return f"does not start with the setup cell (a code cell tagged {SETUP_TAG!r})"
    if nb.cells[0].source != source:
        return "starts with an old setup cell"
    if sum(_is_setup_cell(cell) for cell in nb.cells) > 1:
        return "holds more than one setup cell"
    return None


def setup_cell_paths(root: Path = ROOT) -> list[Path]:
    """Every lesson, solution and exercise notebook of the course."""
    return [path for folder in SETUP_FOLDERS for path in sorted((root / folder).glob("[0-9][0-9]_*.ipynb"))]


def setup_cell_main(paths: list[Path], check: bool) -> int:
    import nbformat

    source = setup_cell_source(repository_url())
    bad = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if check:
            problem = setup_cell_problem(nb, source)
            if problem:
                bad += 1
                print(f"{path}: {problem} (run: attnlib notebooks setup-cell)")
        elif with_setup_cell(nb, source):
            nbformat.write(nb, path)
            print(f"wrote     {path}")
        else:
            print(f"unchanged {path}")
    if check and not bad:
        print(f"{len(paths)} notebooks start with the setup cell")
    return 1 if bad else 0


def execute(path: str | Path, *, write: bool = True, timeout: int = 300) -> float:
    """Run ``path`` in a fresh kernel (the notebook's own kernelspec, else ``attention-course``); return seconds.

    Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails (cells tagged ``raises-exception`` may
    fail on purpose). With ``write=True`` the executed notebook replaces the file.
    """
    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name", DEFAULT_KERNEL)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        resources={"metadata": {"path": str(path.parent.resolve())}},
        record_timing=False,
    )
    start = time.perf_counter()
    try:
        client.execute()
    except NoSuchKernel:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources=client.resources, record_timing=False
        )
        start = time.perf_counter()
        client.execute()
    seconds = time.perf_counter() - start
    if write:
        nb.metadata["kernelspec"] = {
            "name": DEFAULT_KERNEL,
            "display_name": "Attention course (attnlib)",
            "language": "python",
        }
        nbformat.write(nb, path)
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["run", "time", "setup-cell", "check-setup-cell"],
        help="run: execute and save outputs; time: only time; setup-cell: insert or refresh the setup cell; "
        "check-setup-cell: fail if a notebook lacks it",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        default=None,
        help="notebooks (default: notebooks/*.ipynb; for the setup cell, every lesson, solution and exercise notebook)",
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds a notebook may take (default: its budget in the course map)"
    )
    parser.add_argument(
        "--record", action="store_true", help="write the measured times to notebooks/timings.json (the course map's)"
    )


def main(args: argparse.Namespace) -> int:
    if args.action in ("setup-cell", "check-setup-cell"):
        paths = [Path(p) for p in args.paths] if args.paths else setup_cell_paths()
        return setup_cell_main(paths, check=args.action == "check-setup-cell")
    paths = [Path(p) for p in args.paths] if args.paths else sorted(Path("notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks found")
        return 1
    from .course import ROOT, lesson_for, record_timings

    over = 0
    measured: dict[str, float] = {}
    print(f"{'notebook':<52} {'seconds':>8} {'budget':>7}")
    for path in paths:
        seconds = execute(path, write=args.action == "run")
        budget = args.budget
        if budget is None:
            try:
                budget = lesson_for(path).budget_s
            except ValueError:  # not a lesson (a solution notebook, say)
                budget = 15.0
        flag = "" if seconds <= budget else "  OVER BUDGET"
        over += bool(flag)
        print(f"{str(path):<52} {seconds:8.1f} {budget:7.0f}{flag}", flush=True)
        resolved = path.resolve()
        if resolved.is_relative_to(ROOT / "notebooks"):
            measured[resolved.relative_to(ROOT).as_posix()] = seconds
    if args.record and measured:
        record_timings(measured)
        print(f"recorded {len(measured)} run times in notebooks/timings.json")
    return 1 if over else 0
