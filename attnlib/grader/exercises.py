"""The exercise registry: one module of checks per exercise set, discovered from ``attnlib/grader/sets/``.

Lesson NN's exercise set is ``exercises/NN_<slug>.ipynb`` (generated from ``solutions/NN_<slug>.ipynb``) and its
checks live in ``attnlib/grader/sets/NN_<slug>.py``, which defines ``SET = "NN_<slug>"``, ``TITLE`` and
``EXERCISES``, a list of :class:`Exercise` declared with keyword fields. This module imports every such file
(with importlib, in file-name order) and offers the views the grader uses: ``EXERCISE_SETS`` (set -> title),
``EXERCISES`` (all, in key order), ``BY_KEY``, ``BY_ENTRY``, ``ARG_NAMES``, :func:`exercises_of` and
:func:`set_of_path`. What an exercise's checks are, and what its fields mean: :mod:`attnlib.grader.common`.

Nothing here runs submitted code: the grader sends the checks' inputs to a child process and compares what
comes back.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from .common import (  # noqa: F401 - re-exported: the engine and the tests import them from here
    ATTNLIB,
    DEFAULT_SEED,
    MHA,
    SDPA,
    SOFTMAX,
    Case,
    Exercise,
)
from .diagnose import Mistake  # noqa: F401

SETS_DIR = Path(__file__).with_name("sets")
_MODULE = re.compile(r"^(\d\d)_[a-z0-9_]+$")


def _load_sets():
    sets: dict[str, str] = {}
    exercises: list[Exercise] = []
    for path in sorted(SETS_DIR.glob("[0-9][0-9]_*.py")):
        if not _MODULE.match(path.stem):
            continue
        module = importlib.import_module(f"{__package__}.sets.{path.stem}")
        if module.SET != path.stem:
            raise RuntimeError(f"{path}: SET = {module.SET!r} must equal the file name {path.stem!r}")
        sets[module.SET] = module.TITLE
        for ex in module.EXERCISES:
            if ex.set != module.SET or not ex.key.startswith(path.stem[:2] + "."):
                raise RuntimeError(f"{path}: exercise {ex.key} ({ex.entry}) does not belong to set {module.SET}")
            exercises.append(ex)
    keys = [ex.key for ex in exercises]
    entries = [ex.entry for ex in exercises]
    for what, names in (("key", keys), ("entry", entries)):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RuntimeError(f"exercise {what}s must be unique across the sets: {dup}")
    exercises.sort(key=lambda ex: tuple(int(p) for p in ex.key.split(".")))
    return sets, tuple(exercises)


EXERCISE_SETS, EXERCISES = _load_sets()
BY_KEY = {ex.key: ex for ex in EXERCISES}
BY_ENTRY = {ex.entry: ex for ex in EXERCISES}
# The arguments' names, for messages ("your code modified its input q in place")
ARG_NAMES = {ex.entry: ex.arg_names for ex in EXERCISES}


def exercises_of(set_name: str) -> list[Exercise]:
    return [ex for ex in EXERCISES if ex.set == set_name]


def set_of_path(name: str) -> str | None:
    """The exercise set a notebook's file name belongs to: ``03_softmax.ipynb`` -> ``03_softmax``.

    A file whose name starts with a set's number but has another slug (``03_my_copy.ipynb``) belongs to that
    set when exactly one set has that number."""
    stem = name[: -len(".ipynb")] if name.endswith(".ipynb") else name
    if stem in EXERCISE_SETS:
        return stem
    prefix = stem[:3]
    matches = [s for s in EXERCISE_SETS if s.startswith(prefix)] if len(prefix) == 3 and prefix[:2].isdigit() else []
    return matches[0] if len(matches) == 1 else None
