"""Read a submitted notebook as data, keep only its definitions, and look for forbidden calls, without running it.

* :func:`read_cells` parses the ``.ipynb`` file with :mod:`json` (a broken file is an error message, not a
  crash) and returns the code cells' sources.
* :func:`definitions` keeps each cell's top-level imports, ``def``, ``class`` and assignments, as separate
  statements (a cell with a syntax error is skipped and reported). Demo code, prints and self-check calls are
  dropped: grading calls the learner's functions itself.
* :func:`forbidden_uses` walks the AST of one exercise's function or class (and the notebook functions it calls)
  and names every use of a forbidden library call (``F.softmax``, ``x.softmax(...)``, anything from attnlib),
  resolving import aliases.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

MAX_BYTES = 20_000_000
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
_TRICKS = {"eval", "exec", "__import__", "compile", "importlib", "globals", "__builtins__", "setattr"}


@dataclass
class Source:
    """The kept statements of a notebook: (label, code) pairs, and the problems met while extracting them."""

    statements: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tree: ast.Module = field(default_factory=lambda: ast.Module(body=[], type_ignores=[]))


class NotebookError(Exception):
    """The file is not a readable notebook; the message says why."""


def read_cells(path: str | Path) -> list[str]:
    """The code cells' sources of the notebook at ``path``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise NotebookError(f"cannot read {path}: {err.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise NotebookError(f"{path.name} is {len(raw)} bytes, larger than any exercise notebook should be")
    try:
        nb = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotebookError(
            f"{path.name} is not valid notebook JSON ({err}); restore it from git or re-save it in Jupyter"
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path.name} is JSON but not a notebook (no list of cells)")
    cells = []
    for cell in nb["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list) and all(isinstance(s, str) for s in src):
            src = "".join(src)
        if not isinstance(src, str):
            raise NotebookError(f"{path.name} has a code cell whose source is not text")
        cells.append(src)
    return cells


def _strip_magics(src: str) -> str:
    lines = []
    for line in src.splitlines():
        stripped = line.lstrip()
        lines.append("# " + line if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines)


def definitions(cells: list[str]) -> Source:
    """Keep the top-level imports, definitions and assignments of every parseable cell."""
    out = Source()
    for n, src in enumerate(cells, start=1):
        try:
            tree = ast.parse(_strip_magics(src))
        except SyntaxError as err:
            out.problems.append(f"code cell {n} has a syntax error (line {err.lineno}: {err.msg}) and was skipped")
            continue
        except (ValueError, RecursionError, MemoryError) as err:
            out.problems.append(f"code cell {n} could not be parsed ({type(err).__name__}) and was skipped")
            continue
        for node in tree.body:
            if isinstance(node, _KEEP):
                try:
                    code = ast.unparse(node)
                except (RecursionError, ValueError):
                    out.problems.append(f"code cell {n}: a statement could not be read back and was skipped")
                    continue
                out.statements.append((f"code cell {n}", code))
                out.tree.body.append(node)
    return out


def _aliases(nodes) -> dict[str, str]:
    """Local name -> dotted origin for every import among ``nodes`` (``F`` -> ``torch.nn.functional``)."""
    names = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _defined(tree: ast.Module) -> dict[str, ast.AST]:
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node  # the last definition wins, as when the cells run
    return found


# Canonical name -> how it can be spelled in source (dotted prefixes after alias resolution, or a bare attribute)
_SPELLINGS = {
    "torch.softmax": ("torch.softmax", "torch.special.softmax"),
    "torch.log_softmax": ("torch.log_softmax",),
    "torch.nn.functional.softmax": ("torch.nn.functional.softmax",),
    "torch.nn.functional.log_softmax": ("torch.nn.functional.log_softmax",),
    "torch.Tensor.softmax": (".softmax",),
    "torch.Tensor.log_softmax": (".log_softmax",),
    "torch.nn.Softmax": ("torch.nn.Softmax", "torch.nn.modules.activation.Softmax"),
    "torch.nn.functional.scaled_dot_product_attention": (".scaled_dot_product_attention",),
    "torch.nn.MultiheadAttention": (".MultiheadAttention",),
    "torch.nn.functional.multi_head_attention_forward": (".multi_head_attention_forward",),
    "attnlib": ("attnlib",),
}


def forbidden_uses(tree: ast.Module, entry: str, forbidden: tuple[str, ...]) -> list[str]:
    """Forbidden library uses inside ``entry`` and the notebook functions it reaches, e.g. ``['F.softmax']``."""
    defs = _defined(tree)
    if entry not in defs:
        return []
    aliases = _aliases(tree.body)
    spellings = [s for name in forbidden for s in _SPELLINGS.get(name, (name,))]
    seen, todo, found = set(), [entry], []
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        node = defs[name]
        local = dict(aliases)
        local.update(_aliases(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))))
        inner = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Attribute)}
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in sub.names] if isinstance(sub, ast.Import) else [sub.module or ""]
                for m in modules:
                    if any(m == s or m.startswith(s + ".") for s in spellings if not s.startswith(".")):
                        found.append(f"import {m}")
            if isinstance(sub, ast.Name) and sub.id in _TRICKS:
                found.append(f"{sub.id} (dynamic code or attribute tricks)")
            if isinstance(sub, ast.Name) and sub.id in defs and sub.id != name:
                todo.append(sub.id)
            if isinstance(sub, (ast.Attribute, ast.Name)) and id(sub) not in inner:
                text = _dotted(sub)
                if text is None:
                    if isinstance(sub, ast.Attribute) and any(s == "." + sub.attr for s in spellings):
                        found.append(f".{sub.attr}")
                    continue
                head, _, rest = text.partition(".")
                resolved = local.get(head, head) + ("." + rest if rest else "")
                for s in spellings:
                    if s.startswith("."):
                        if resolved.endswith(s) or text.endswith(s):
                            found.append(text)
                    elif resolved == s or resolved.startswith(s + "."):
                        found.append(text)
    # one report per spelling, in order
    return list(dict.fromkeys(found))
