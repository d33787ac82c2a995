"""Read the code a lesson defines in its own cells: the names it defines, and the definitions themselves.

Tests use it to check a lesson's ``teaches`` names (attnlib/course.py) and to re-run the functions a notebook
shows the learner (its training loops, say) on more seeds than the notebook has time for.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_cells(path: str | Path) -> list[str]:
    """The source of each code cell of a notebook, IPython magics (``%...``, ``!...``) blanked out."""
    cells = json.loads((ROOT / path).read_text())["cells"]
    sources = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        sources.append("\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines))
    return sources


def _top_level(path: str | Path) -> list[ast.stmt]:
    return [node for source in code_cells(path) for node in ast.parse(source).body]


def defined_names(path: str | Path) -> set[str]:
    """Names a notebook defines at top level with ``def`` or ``class``."""
    kinds = (ast.FunctionDef, ast.ClassDef)
    return {node.name for node in _top_level(path) if isinstance(node, kinds)}


def load_definitions(path: str | Path) -> dict:
    """Execute a notebook's imports, its ``def``/``class`` statements and its UPPER_CASE names bound to literals
    (nothing else) in a fresh namespace, in cell order, and return that namespace."""
    keep = []
    for node in _top_level(path):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            keep.append(node)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            try:  # a constant: an UPPER_CASE name bound to a literal, e.g. SEEDS = (0, 1, 2)
                ast.literal_eval(node.value)
            except ValueError:
                continue
            keep.append(node)
    namespace: dict = {"__name__": f"notebook:{Path(path).stem}"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace
