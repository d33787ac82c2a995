"""Which notebooks a submission holds, and which file of each exercise set is graded.

One rule for every caller (``attnlib grade FOLDER``, ``attnlib grade-class``, Gradescope's ``run_autograder``):

* every ``NN_*.ipynb`` under the submission's folder is a candidate, at any depth (``work/``, ``exercises/``,
  a repository's root); hidden folders (``.git``, ``.ipynb_checkpoints``), links and non-regular files are not;
* a candidate is classified by its content: an **exercise** notebook (it uses ``selfcheck`` or its title says
  "Exercises"), a **lesson** notebook (its title says "Lesson": flagged in the report, never graded) or
  **unknown** (graded when nothing better is there);
* when a set has several candidates, one is graded: a readable notebook over an unreadable one, the exact set name
  over a copy (``01_qkv_analogy_exercises.ipynb``, or the name before the rename ``01_qkv_analogy.ipynb``, over
  JupyterLab's ``01_qkv_analogy_exercises-Copy1.ipynb``), an exercise notebook
  over an unknown one, fewer unfinished exercises (``raise NotImplementedError``) over more, shallower over deeper,
  ``exercises/`` over other folders, then the path's order. The report names the file graded and those ignored;
* two folders are never merged into one submission (:func:`several_roots`).

The class's layouts (:func:`students`): a folder per student, a zip per student, a GitHub Classroom clone
(``gh classroom clone student-repos``: ``<assignment>-submissions/<assignment>-<login>/``, each a git repository)
and a Gradescope submissions export (``submission_metadata.yml`` beside ``submission_<id>/`` folders).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..exercises import EXERCISE_SETS, exact_names, set_of_path

MAX_NOTEBOOK_BYTES = 20_000_000  # as the grader's own reader (attnlib.grader.notebook.MAX_BYTES)
MAX_FILES = 20_000  # a submission folder holding more files than this is not walked further
MAX_DEPTH = 12
SKIP_DIRS = {"__pycache__", "__MACOSX", "node_modules", "site-packages"}


class SeveralRoots(ValueError):
    """Several folders (or a folder and loose files) were given as one submission."""


@dataclass
class Candidate:
    path: Path  # on this machine
    shown: str  # as the report shows it: relative to the submission's root
    set: str
    exact: bool  # the file name is the set's own name
    kind: str  # "exercise", "lesson", "unknown" or "unreadable"
    unfinished: int  # `raise NotImplementedError` statements left in its code cells
    depth: int
    sha256: str = ""

    def rank(self) -> tuple:
        top = self.shown.split("/", 1)[0] if "/" in self.shown else ""
        return (
            self.kind == "unreadable",
            not self.exact,
            self.kind != "exercise",
            self.unfinished,
            self.depth,
            top != "exercises",
            self.shown,
        )


@dataclass
class Selection:
    """What :func:`select` found: the file graded for each set (``chosen``), and notes for the report."""

    chosen: dict[str, Candidate] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lessons: list[str] = field(default_factory=list)  # lesson notebooks found (flagged, not graded)
    ignored: dict[str, list[str]] = field(default_factory=dict)  # set -> the other files of that set

    def digests(self) -> dict[str, tuple[str, str]]:
        """set -> (path shown, sha256 of the file): what a cache key needs."""
        return {s: (c.shown, c.sha256) for s, c in sorted(self.chosen.items())}


def _read(path: Path) -> bytes | None:
    """The file's bytes, or None when it is a link, not a regular file, or too large (never follows a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_NOTEBOOK_BYTES:
            return None
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_NOTEBOOK_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_EXERCISE_TITLE = re.compile(r"^\s*#\s*Exercises?\b", re.I)
_LESSON_TITLE = re.compile(r"^\s*#\s*Lesson\b", re.I)


def classify(raw: bytes | None) -> tuple[str, int]:
    """(kind, unfinished) of a notebook's bytes: "exercise", "lesson", "unknown" or "unreadable"."""
    if raw is None:
        return "unreadable", 0
    try:
        nb = json.loads(raw.decode("utf-8"))
        cells = nb["cells"] if isinstance(nb, dict) else None
        if not isinstance(cells, list):
            return "unreadable", 0
    except (UnicodeDecodeError, ValueError, KeyError, RecursionError):
        return "unreadable", 0

    def text(cell) -> str:
        src = cell.get("source", "") if isinstance(cell, dict) else ""
        return "".join(s for s in src if isinstance(s, str)) if isinstance(src, list) else str(src)

    code = "\n".join(text(c) for c in cells if isinstance(c, dict) and c.get("cell_type") == "code")
    markdown = [text(c) for c in cells if isinstance(c, dict) and c.get("cell_type") == "markdown"]
    title = next((m for m in markdown if m.strip()), "")
    unfinished = code.count("raise NotImplementedError")
    if "selfcheck" in code or _EXERCISE_TITLE.match(title):
        return "exercise", unfinished
    if _LESSON_TITLE.match(title):
        return "lesson", unfinished
    return "unknown", unfinished


def _candidate(path: Path, shown: str, depth: int) -> Candidate | None:
    set_name = set_of_path(path.name)
    if set_name is None:
        return None
    raw = _read(path)
    kind, unfinished = classify(raw)
    return Candidate(
        path=path,
        shown=shown,
        set=set_name,
        exact=path.name in exact_names(set_name),
        kind=kind,
        unfinished=unfinished,
        depth=depth,
        sha256=hashlib.sha256(raw).hexdigest() if raw is not None else "",
    )


def _walk(root: Path) -> tuple[list[tuple[Path, str, int]], list[str]]:
    """(path, shown, depth) of every .ipynb under ``root`` (not following links), and notes on what was skipped."""
    found, notes, seen = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel = here.relative_to(root)
        depth = len(rel.parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS and depth < MAX_DEPTH)
        for name in sorted(filenames):
            seen += 1
            if seen > MAX_FILES:
                notes.append(f"more than {MAX_FILES} files in the submission: the rest were not searched")
                return found, notes
            if not name.endswith(".ipynb") or name.startswith("."):
                continue
            path = here / name
            shown = (rel / name).as_posix()
            if path.is_symlink() or not path.is_file():
                if set_of_path(name):
                    notes.append(f"{shown} is a link or not a regular file: not read")
                continue
            found.append((path, shown, depth))
    return found, notes


def _choose(candidates: list[Candidate], sel: Selection) -> None:
    by_set: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.kind == "lesson":
            sel.lessons.append(c.shown)
            sel.notes.append(
                f"{c.shown} is lesson {int(c.set[:2])}'s notebook, not its exercise set: flagged, not graded"
            )
            continue
        by_set.setdefault(c.set, []).append(c)
    for set_name, group in sorted(by_set.items()):
        group.sort(key=Candidate.rank)
        best, rest = group[0], group[1:]
        sel.chosen[set_name] = best
        if rest:
            sel.ignored[set_name] = [c.shown for c in rest]
            why = []
            if best.exact and any(not c.exact for c in rest):
                why.append("the exact name wins over copies")
            if any(c.kind == "unreadable" for c in rest):
                why.append("unreadable files lose")
            if any(c.exact == best.exact and c.unfinished > best.unfinished for c in rest):
                why.append("fewer unfinished exercises win")
            reason = f" ({'; '.join(why)})" if why else ""
            sel.notes.append(
                f"{set_name} is present {len(group)} times: graded {best.shown}; ignored "
                f"{', '.join(c.shown for c in rest)}{reason}"
            )


def select(root: str | Path) -> Selection:
    """The notebook graded for each exercise set found under the folder ``root`` (see the module's rules)."""
    root = Path(root)
    sel = Selection()
    found, sel.notes = _walk(root)
    candidates = [c for p, shown, depth in found if (c := _candidate(p, shown, depth)) is not None]
    _choose(candidates, sel)
    if sel.chosen:
        sel.notes.append("graded: " + ", ".join(c.shown for _, c in sorted(sel.chosen.items())))
    return sel


def several_roots(paths: list[str | Path]) -> str | None:
    """Why ``paths`` cannot be one submission (several folders, or a folder and loose files), or None."""
    folders = [str(p) for p in paths if Path(p).is_dir()]
    files = [str(p) for p in paths if not Path(p).is_dir()]
    if len(folders) > 1:
        return (
            f"{len(folders)} folders were given ({', '.join(folders[:4])}): one `attnlib grade` grades one "
            "submission, and two students are never merged into one score; grade each folder on its own, or a "
            "whole class with `attnlib grade-class ROOT`"
        )
    if folders and files:
        return (
            f"a folder ({folders[0]}) and loose files ({', '.join(files[:3])}) were given: grade the folder, or "
            "the files, not both as one submission"
        )
    return None


def collect(paths: list[str | Path]) -> tuple[list[tuple[str, Path | None]], list[str]]:
    """(exercise set, notebook path or None when missing) pairs and notes, for the grader (one submission).

    A folder: every set, found anywhere below it by :func:`select`'s rules (None where missing). Loose files: the
    sets they are, one file per set by the same rules. Raises :class:`SeveralRoots` for several folders.
    """
    problem = several_roots(paths)
    if problem:
        raise SeveralRoots(problem)
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    if folders:
        sel = select(folders[0])
        found = {s: (sel.chosen[s].path if s in sel.chosen else None) for s in EXERCISE_SETS}
        return sorted(found.items()), sel.notes
    notes, candidates = [], []
    for raw in paths:
        p = Path(raw)
        c = _candidate(p, str(p), 0)
        if c is None:
            notes.append(f"{p}: not one of the course's exercise notebooks (NN_name.ipynb); skipped")
        else:
            candidates.append(c)
    sel = Selection()
    _choose(candidates, sel)
    return sorted((s, c.path) for s, c in sel.chosen.items()), [*notes, *sel.notes]


# ----------------------------------------------------------------------------------------------------------
# The class's layouts


@dataclass
class Student:
    """One submission of a class: its id (unique in the class), where it is, and who submitted it."""

    id: str
    source: str  # the folder or zip it came from, relative to the class root
    layout: str  # "folder", "zip", "classroom" or "gradescope"
    path: Path  # the folder or zip on this machine
    people: list[dict[str, str]] = field(default_factory=list)  # Gradescope's submitters (name, sid, email)


MAX_ZIP_MEMBER = MAX_NOTEBOOK_BYTES
MAX_ZIP_TOTAL = 400_000_000
MAX_ZIP_MEMBERS = 5_000


def extract_notebooks(archive: Path, dest: Path) -> list[str]:
    """Extract the ``.ipynb`` files of a zip into ``dest`` (nothing else); returns notes on what was skipped.

    Safe for hostile archives: names are sanitised (no absolute paths, no ``..``), links and special files are
    skipped, each file and the total are size-limited while reading (a zip bomb stops at the limit).
    """
    notes = []
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        return [f"{archive.name} is not a readable zip ({err})"]
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            notes.append(f"{archive.name} holds {len(infos)} entries: only the first {MAX_ZIP_MEMBERS} were read")
        for info in infos[:MAX_ZIP_MEMBERS]:
            name = info.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if info.is_dir() or not parts or not parts[-1].endswith(".ipynb"):
                continue
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)  # 0 when the archiver recorded only permissions
            if ".." in parts or any(p.startswith(".") for p in parts[:-1]) or (kind and kind != stat.S_IFREG):
                notes.append(f"{archive.name}: {name[:200]!r} skipped (a link, a hidden folder or a path outside)")
                continue
            target = dest.joinpath(*parts)
            if os.path.lexists(target):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            size = 0
            with zf.open(info) as src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    total += len(chunk)
                    if size > MAX_ZIP_MEMBER or total > MAX_ZIP_TOTAL:
                        break
                    out.write(chunk)
            if size > MAX_ZIP_MEMBER or total > MAX_ZIP_TOTAL:
                target.unlink()
                notes.append(f"{archive.name}: {name[:200]!r} is too large: skipped")
                if total > MAX_ZIP_TOTAL:
                    break
    return notes


def _gradescope_metadata(text: str) -> dict[str, list[dict[str, str]]]:
    """Gradescope's ``submission_metadata.yml``: submission folder -> its submitters' name, sid and email.

    Read with a small line parser (the file is the export's own YAML: ``submission_<id>:`` at the margin, then
    ``:submitters:`` entries with ``:name:``, ``:sid:``, ``:email:``), so no YAML library is needed.
    """
    out: dict[str, list[dict[str, str]]] = {}
    current, person, in_submitters = None, None, False
    for line in text.splitlines():
        top = re.match(r"^([^\s:#][^:]*):\s*$", line)
        if top:
            current, person, in_submitters = top.group(1).strip().strip("'\""), None, False
            out[current] = []
            continue
        if current is None:
            continue
        m = re.match(r"^(\s*)(- )?:?([a-z_]+):\s*(.*)$", line)
        if not m:
            continue
        indent, dash, key, value = m.groups()
        if key == "submitters":
            in_submitters = True
            continue
        if not in_submitters:
            continue
        if dash is None and len(indent) <= 2 and key not in ("name", "sid", "email"):
            in_submitters = False
            continue
        if dash is not None:
            person = {}
            out[current].append(person)
        if person is not None and key in ("name", "sid", "email"):
            person[key] = value.strip().strip("'\"")
    return out


def _unique(ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for i in ids:
        n = seen.get(i, 0)
        seen[i] = n + 1
        result.append(i if n == 0 else f"{i}~{n + 1}")
    return result


def students(root: str | Path) -> tuple[list[Student], str, list[str]]:
    """The submissions of a class folder, sorted by id; the layout found; notes (what was skipped and why)."""
    root = Path(root)
    notes: list[str] = []
    children = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.name not in SKIP_DIRS)
    meta = root / "submission_metadata.yml"
    if meta.is_file():
        people = _gradescope_metadata((_read(meta) or b"").decode("utf-8", "replace"))
        found = []
        for child in children:
            if child.is_dir() and not child.is_symlink() and child.name.startswith("submission_"):
                who = people.get(child.name, [])
                ident = next((p.get(key) for key in ("email", "sid", "name") for p in who if p.get(key)), child.name)
                found.append(Student(ident, child.name, "gradescope", child, who))
        for s, ident in zip(found, _unique([s.id for s in found]), strict=True):
            s.id = ident
        return sorted(found, key=lambda s: s.id), "gradescope", notes
    dirs = [c for c in children if c.is_dir() and not c.is_symlink()]
    is_classroom = root.name.endswith("-submissions") or (dirs and all((d / ".git").exists() for d in dirs))
    if is_classroom and dirs:
        prefix = os.path.commonprefix([d.name for d in dirs]) if len(dirs) > 1 else ""
        slug = root.name[: -len("-submissions")] + "-" if root.name.endswith("-submissions") else ""
        cut = slug if slug and all(d.name.startswith(slug) for d in dirs) else prefix[: prefix.rfind("-") + 1]
        found = [Student(d.name[len(cut) :] or d.name, d.name, "classroom", d) for d in dirs]
        return sorted(found, key=lambda s: s.id), "classroom", notes
    found = []
    for child in children:
        if child.is_symlink():
            notes.append(f"{child.name} is a link: skipped")
        elif child.is_dir():
            found.append(Student(child.name, child.name, "folder", child))
        elif child.suffix == ".zip" and child.is_file():
            found.append(Student(child.stem, child.name, "zip", child))
        elif child.suffix == ".ipynb":
            notes.append(
                f"{child.name} lies directly in the class folder, which holds one folder or zip per student: "
                "skipped (grade one student's folder with `attnlib grade FOLDER`)"
            )
    ids = _unique([s.id for s in found])
    for s, ident in zip(found, ids, strict=True):
        s.id = ident
    layout = "zip" if found and all(s.layout == "zip" for s in found) else "folder"
    return sorted(found, key=lambda s: s.id), layout, notes
