"""``attnlib exercises build``: generate exercises/NN_*_exercises.ipynb from the authored solutions/ (same names).

In every code cell, each region from a ``### BEGIN SOLUTION`` line to its ``### END SOLUTION`` line is replaced
by a stub at the same indentation::

    # YOUR CODE HERE
    raise NotImplementedError("stable_log_softmax: replace this line with your code")

A "find the bug" exercise gives the learner broken code instead of a stub: in the solution, the fixed code sits
between ``### BEGIN FIX`` and ``### END FIX`` (removed from the exercise, with no stub), and each line of the
broken code is a comment ``### BUGGY: <code>`` (in the exercise it becomes ``<code>`` at the comment's
indentation)::

    ### BEGIN FIX
    return q @ k.T / math.sqrt(q.shape[-1])
    ### END FIX
    ### BUGGY: return q @ k.T / math.sqrt(q.shape[0])

Outputs and execution counts are cleared; everything else (markdown, hints, self-check cells, cell ids) is
kept. ``attnlib exercises check`` exits with 1 when a generated notebook is missing or out of date.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
BEGIN_FIX = "### BEGIN FIX"
END_FIX = "### END FIX"
BUGGY = "### BUGGY:"
_DEF = re.compile(r"^(\s*)(?:def|class)\s+(\w+)")


class MarkerError(ValueError):
    """Unbalanced or nested solution markers."""


def _owner(lines: list[str], index: int) -> str:
    """The function (and class) the line at ``index`` belongs to, e.g. ``SelfAttention.forward``."""
    names, indent = [], None
    for line in reversed(lines[:index]):
        m = _DEF.match(line)
        if m and (indent is None or len(m.group(1)) < indent):
            names.append(m.group(2))
            indent = len(m.group(1))
            if indent == 0:
                break
    return ".".join(reversed(names)) or "this exercise"


def strip_solutions(source: str) -> str:
    """``source`` with every solution region replaced by a ``NotImplementedError`` stub, every fix region
    removed and every ``### BUGGY:`` line turned into code."""
    lines = source.split("\n")
    out, start, fix = [], None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped == BEGIN_FIX:
            if start is not None or fix is not None:
                raise MarkerError(f"nested {BEGIN_FIX} at line {i + 1}")
            fix = i
        elif stripped == END_FIX:
            if fix is None:
                raise MarkerError(f"{END_FIX} without {BEGIN_FIX} at line {i + 1}")
            fix = None
        elif fix is not None:
            continue
        elif stripped.startswith(BUGGY) and start is None:
            code = stripped[len(BUGGY) :]
            out.append(indent + (code[1:] if code.startswith(" ") else code))
        elif stripped == BEGIN:
            if start is not None:
                raise MarkerError(f"nested {BEGIN} at line {i + 1}")
            start = i
            indent = line[: len(line) - len(line.lstrip())]
            owner = _owner(lines, i)
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("{owner}: replace this line with your code")')
        elif stripped == END:
            if start is None:
                raise MarkerError(f"{END} without {BEGIN} at line {i + 1}")
            start = None
        elif start is None:
            out.append(line)
    if start is not None:
        raise MarkerError(f"{BEGIN} at line {start + 1} has no {END}")
    if fix is not None:
        raise MarkerError(f"{BEGIN_FIX} at line {fix + 1} has no {END_FIX}")
    return "\n".join(out)


def build_notebook(nb):
    """The exercise version of a solution notebook (a new object; ``nb`` is not changed)."""
    out = copy.deepcopy(nb)
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source)
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    out.metadata["attnlib"] = {"generated_from": "solutions/ by `attnlib exercises build`; edit the solution instead"}
    return out


def render(solution: Path) -> str:
    """The generated exercise notebook's text for one solution notebook."""
    import nbformat

    nb = nbformat.read(solution, as_version=4)
    return nbformat.writes(build_notebook(nb)) + "\n"


def targets(solutions: Path, exercises: Path) -> list[tuple[Path, Path]]:
    return [(p, exercises / p.name) for p in sorted(solutions.glob("[0-9][0-9]_*.ipynb"))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["build", "check"], help="build: write exercises/; check: fail if out of date"
    )
    parser.add_argument("--solutions", default="solutions", help="folder of authored notebooks (default solutions/)")
    parser.add_argument("--exercises", default="exercises", help="folder to write (default exercises/)")


def main(args: argparse.Namespace) -> int:
    solutions, exercises = Path(args.solutions), Path(args.exercises)
    pairs = targets(solutions, exercises)
    if not pairs:
        print(f"no NN_*.ipynb notebooks in {solutions}/")
        return 1
    stale = 0
    for src, dst in pairs:
        text = render(src)
        current = dst.read_text(encoding="utf-8") if dst.exists() else None
        if args.action == "build":
            if current != text:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(text, encoding="utf-8")
                print(f"wrote     {dst}")
            else:
                print(f"unchanged {dst}")
        elif current != text:
            stale += 1
            print(f"out of date: {dst} (run: attnlib exercises build)")
    if args.action == "check" and not stale:
        print(f"{len(pairs)} exercise notebooks are up to date")
    return 1 if stale else 0
