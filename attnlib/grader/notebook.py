"""Read a submitted notebook as data, keep only its definitions, and look for forbidden calls, without running it.

* :func:`read_cells` parses the ``.ipynb`` file with :mod:`json` (a broken file is an error message, not a
  crash) and returns the code cells' sources.
* :func:`definitions` keeps each cell's top-level imports, ``def``, ``class`` and assignments, as separate
  statements (a cell with a syntax error is skipped and reported). Demo code, prints and self-check calls are
  dropped: grading calls the learner's functions itself.
* :func:`forbidden_uses` walks the AST of one exercise's function or class (and the notebook functions it calls)
  and names every use of a forbidden library call (``F.softmax``, ``x.softmax(...)``, anything from attnlib),
  resolving import aliases. What is forbidden is declared once, in :mod:`attnlib.grader.inside.policy`.

Every step is linear in the size of the notebook (a notebook of 20,000 definitions or 30,000 ``getattr`` calls is
read in seconds), and a notebook beyond :data:`MAX_NODES` syntax nodes is "too complex to grade".
"""

from __future__ import annotations

import ast
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .inside.policy import (
    ATTNLIB,
    ESCAPES,
    LIBRARIES,
    OTHER_LIBRARIES,
    SCRATCH_FAMILIES,
    SYS_TRICKS,
    TRICK_CHAINS,
    TRICK_MODULES,
    TRICK_NAMES,
    families_of,
    name_hit,
)

MAX_BYTES = 20_000_000
MAX_NODES = 2_000_000  # syntax nodes of a notebook's kept statements: far beyond any exercise notebook
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


@dataclass
class Source:
    """The kept statements of a notebook: (label, code) pairs, and the problems met while extracting them."""

    statements: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tree: ast.Module = field(default_factory=lambda: ast.Module(body=[], type_ignores=[]))


class NotebookError(Exception):
    """The file is not a readable notebook; the message says why."""


def read_bytes(path: str | Path) -> bytes:
    """The notebook file's bytes, read once (size-limited; a link or other non-regular file is refused)."""
    path = Path(path)
    try:
        st = path.lstat()
    except OSError as err:
        raise NotebookError(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotebookError(f"{path.name} is not a regular file (a link or a device?); submit the notebook itself")
    if st.st_size > MAX_BYTES:
        raise NotebookError(f"{path.name} is {st.st_size} bytes, larger than any exercise notebook should be")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise NotebookError(f"cannot read {path}: {err.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise NotebookError(f"{path.name} is larger than any exercise notebook should be")
    return raw


def read_cells(path: str | Path) -> list[str]:
    """The code cells' sources of the notebook at ``path``."""
    return parse_cells(read_bytes(path), Path(path).name)


def parse_cells(raw: bytes, name: str) -> list[str]:
    """The code cells' sources of a notebook given as bytes (``name`` is for messages)."""
    try:
        nb = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise NotebookError(
            f"{name} is not valid notebook JSON ({str(err)[:200]}); restore it from git or re-save it in Jupyter"
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{name} is JSON but not a notebook (no list of cells)")
    cells = []
    for cell in nb["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list) and all(isinstance(s, str) for s in src):
            src = "".join(src)
        if not isinstance(src, str):
            raise NotebookError(f"{name} has a code cell whose source is not text")
        cells.append(src)
    return cells


def _strip_magics(src: str) -> str:
    """The cell as IPython would run it: cell magics, line magics and ``!cmd`` at the start of a logical line
    become ``get_ipython()`` calls (dropped later with the rest of the top-level expressions), exactly as
    IPython's own input transformer decides; a continuation line such as ``!= -1`` inside brackets, or
    ``x = 5 % 3``, is left alone."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # IPython is part of the grading environment; without it, cells are parsed as they are
        return src
    try:
        return TransformerManager().transform_cell(src)
    except Exception:  # noqa: BLE001 - a cell IPython cannot transform is parsed as it is (and may not parse)
        return src


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
                out.statements.append((f"code cell {n}, line {node.lineno}", code))
                out.tree.body.append(node)
    return out


def _bound(node: ast.AST) -> set[str]:
    """Top-level names a kept statement binds."""
    if isinstance(node, ast.Import):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    if isinstance(node, ast.ImportFrom):
        return {a.asname or a.name for a in node.names}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _mutated(node: ast.AST) -> set[str]:
    """Names whose object a top-level statement changes (``CONFIG["x"] = 1``, ``torch.softmax = f``)."""
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    out = set()
    for t in targets:
        if isinstance(t, (ast.Attribute, ast.Subscript)):
            base = t
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name):
                out.add(base.id)
    return out


def _used(node: ast.AST) -> set[str]:
    """Global names a top-level statement may read (a function's own parameters and locals left out)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        local = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}
        declared = {g for n in ast.walk(node) if isinstance(n, (ast.Global, ast.Nonlocal)) for g in n.names}
        outer = set()
        for d in [*getattr(node, "decorator_list", []), *node.args.defaults, *node.args.kw_defaults]:
            if d is not None:
                outer |= {n.id for n in ast.walk(d) if isinstance(n, ast.Name)}
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        return outer | (names - (local - declared)) | declared
    if isinstance(node, ast.ClassDef):
        out = set()
        for part in [*node.bases, *node.keywords, *node.decorator_list]:
            out |= {n.id for n in ast.walk(part) if isinstance(n, ast.Name)}
        for stmt in node.body:
            out |= _used(stmt)
        return out
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _closure(body: list[ast.stmt], entry: str) -> list[int]:
    """Indices of the top-level statements ``entry`` needs: those binding (or changing) a name it uses, recursively.

    A worklist over an index of name -> statements: each statement and each name is visited once."""
    binders: dict[str, list[int]] = {}
    for i, node in enumerate(body):
        for name in _bound(node) | _mutated(node):
            binders.setdefault(name, []).append(i)
    chosen: set[int] = set()
    seen_names: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen_names:
            continue
        seen_names.add(name)
        for i in binders.get(name, ()):
            if i not in chosen:
                chosen.add(i)
                todo.extend(_used(body[i]) - seen_names)
    return sorted(chosen)


def needed_statements(source: Source, entry: str) -> list[tuple[str, str]]:
    """The (label, code) statements one exercise runs: only what its entry point needs, in notebook order."""
    return [source.statements[i] for i in _closure(source.tree.body, entry)]


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


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` (also through ``getattr(a, "b")`` with a constant name) as ["a", "b", "c"]; None otherwise."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            parts.append(node.args[1].value)
            node = node.args[0]
        else:
            break
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return list(reversed(parts))
    return None


def forbidden_uses(tree: ast.Module, entry: str, forbidden: tuple[str, ...]) -> list[str]:
    """Forbidden uses in every statement ``entry`` needs (its function or class, the notebook functions, imports
    and assignments it reaches), e.g. ``['F.softmax', 'getattr with a computed name']``.

    Flags, for the exercise's forbidden families: attribute chains and imported names that resolve to a softmax,
    attention or attnlib entry point (``x.softmax``, ``torch._softmax``, ``scipy.special.softmax``,
    ``getattr(torch, "softmax")``, a string ``"softmax"``), and other libraries' modules; for every exercise:
    what would hide a call from this scan (``eval``, ``__import__``, ``importlib``, ``getattr`` with a computed
    name, ``sys.modules``, ``torch.ops``, private ``torch._*``, dunder attributes, assigning to a library's
    attributes).
    """
    body = tree.body
    if not any(entry in _bound(n) for n in body):  # not defined: the run says so
        return []
    nodes = [body[i] for i in _closure(body, entry)]
    fams = families_of(forbidden)
    scratch = bool(fams & SCRATCH_FAMILIES)
    if sum(1 for node in nodes for _ in ast.walk(node)) > MAX_NODES:
        return ["a notebook too complex to grade (far more code than any exercise needs)"]
    aliases = _aliases(nodes)
    for node in nodes:
        aliases.update(_aliases(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))))
    found: list[str] = []

    def module_hit(module: str) -> str | None:
        top = module.split(".")[0]
        if top in TRICK_MODULES:
            return f"import {module} (dynamic code or attribute tricks)"
        if ATTNLIB in fams and top == ATTNLIB:
            return f"import {module}"
        if scratch and top in OTHER_LIBRARIES:
            return f"import {module} (another library's implementation)"
        parts = module.split(".")
        if any(p.startswith("_") for p in parts[1:]) and top in LIBRARIES:
            return f"import {module} (a library's private internals)"
        if any(module == c or module.startswith(c + ".") for c in TRICK_CHAINS):
            return f"import {module}"
        if name_hit(parts[-1], fams):
            return f"import {module}"
        return None

    def resolved_hit(text: str, resolved: list[str]) -> str | None:
        top = resolved[0]
        dotted = ".".join(resolved)
        if top == "sys" and len(resolved) > 1 and resolved[1] in SYS_TRICKS:
            return f"{text} (the interpreter's module table or frames)"
        if top in TRICK_MODULES:
            return f"{text} (dynamic code or attribute tricks)"
        if any(dotted == c or dotted.startswith(c + ".") for c in TRICK_CHAINS):
            return f"{text} (operators reached by name)"
        if top in LIBRARIES and any(p.startswith("_") and not p.startswith("__") for p in resolved[1:]):
            return f"{text} (a library's private internals)"
        if ATTNLIB in fams and top == ATTNLIB:
            return text
        if scratch and top in OTHER_LIBRARIES:
            return f"{text} (another library's implementation)"
        return None

    for stmt in nodes:
        inner = {id(n.value) for n in ast.walk(stmt) if isinstance(n, ast.Attribute)}
        inner |= {id(n.args[0]) for n in ast.walk(stmt) if _is_const_getattr(n)}
        called = {id(n.func) for n in ast.walk(stmt) if isinstance(n, ast.Call)}
        for sub in ast.walk(stmt):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                if isinstance(sub, ast.Import):
                    modules = [a.name for a in sub.names]
                else:
                    base = sub.module or ""
                    modules = [base] if module_hit(base) else [f"{base}.{a.name}" for a in sub.names]
                for m in modules:
                    hit = module_hit(m)
                    if hit:
                        found.append(hit)
            elif isinstance(sub, ast.Name):
                if sub.id in TRICK_NAMES:
                    found.append(f"{sub.id} (dynamic code or attribute tricks)")
                elif sub.id == "getattr" and id(sub) not in called:
                    found.append("getattr with a computed name (dynamic attribute access)")
                if id(sub) not in inner and sub.id in aliases:
                    resolved = aliases[sub.id].split(".")
                    hit = resolved_hit(sub.id, resolved)
                    if hit:
                        found.append(hit)
                    elif name_hit(resolved[-1], fams) and resolved[0] != "__main__":
                        found.append(sub.id)
            elif isinstance(sub, ast.Attribute):
                if sub.attr in ESCAPES:
                    found.append(f".{sub.attr} (dynamic code or attribute tricks)")
                if name_hit(sub.attr, fams):
                    chain = _chain(sub)
                    found.append(".".join(chain) if chain else f".{sub.attr}")
            elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "getattr":
                if not _is_const_getattr(sub):
                    found.append("getattr with a computed name (dynamic attribute access)")
                elif sub.args[1].value in ESCAPES or sub.args[1].value.startswith("_"):
                    found.append(f'getattr(..., "{sub.args[1].value}") (dynamic code or attribute tricks)')
                elif name_hit(sub.args[1].value, fams):
                    found.append(f'getattr(..., "{sub.args[1].value}")')
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                if sub.value.isidentifier() and name_hit(sub.value, fams):
                    found.append(f'the name "{sub.value}" as a string')
            if isinstance(sub, (ast.Attribute, ast.Call)) and id(sub) not in inner:
                chain = _chain(sub)
                if chain and chain[0] in aliases:
                    resolved = aliases[chain[0]].split(".") + chain[1:]
                    hit = resolved_hit(".".join(chain), resolved)
                    if hit:
                        found.append(hit)
            if isinstance(sub, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                targets = sub.targets if isinstance(sub, (ast.Assign, ast.Delete)) else [sub.target]
                for t in targets:
                    if isinstance(t, ast.Attribute):
                        chain = _chain(t)
                        if chain and chain[0] in aliases and aliases[chain[0]].split(".")[0] in LIBRARIES:
                            found.append(f"assigns {'.'.join(chain)} (monkeypatching a library)")
    return list(dict.fromkeys(found))


def _is_const_getattr(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) in (2, 3)
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )
