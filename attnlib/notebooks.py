"""Execute course notebooks top to bottom in a fresh kernel, write their outputs back, and time them.

``attnlib notebooks run notebooks/*.ipynb`` is how every committed lesson and solution gets its outputs;
``attnlib notebooks time`` executes without writing and prints each notebook's wall time against the budget.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_KERNEL = "attention-course"


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
    parser.add_argument("action", choices=["run", "time"], help="run: execute and save outputs; time: only time")
    parser.add_argument("paths", nargs="*", default=None, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds a notebook may take (default: its budget in the course map)"
    )
    parser.add_argument(
        "--record", action="store_true", help="write the measured times to notebooks/timings.json (the course map's)"
    )


def main(args: argparse.Namespace) -> int:
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
