"""No lesson and no exercise notebook shows the answer of a question whose answer is one fixed number (issue 22:
1.4's answer sat in a closing cell of its own notebook, 2.4's and 14.2's were printed by lessons).

Every spelling of the key a notebook could print (the full value, 4 and 5 significant digits, with thousands
separators) is searched for in the lessons' sources and outputs and in the generated exercise notebook (the
learner's copy; the solution notebook is the instructor's). Keys that are too common a number to search for (a
choice 1-4, or two significant digits such as 1.5, which a lesson prints for other reasons) are left out; the
test says which it searched. Each search is shown to find a planted answer.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from attnlib.grader.exercises import EXERCISES, notebook_name

ROOT = Path(__file__).resolve().parents[1]
CONSTANT = [ex for ex in EXERCISES if ex.style == "question" and not ex.arg_names]


def key_of(ex) -> float:
    return float(ex.expect(ex.cases(ex.rng(7))[0])["out"])


def distinctive(key: float) -> bool:
    """A number worth searching for: at least 10, or with three or more significant digits."""
    return abs(key) >= 10 or len(f"{abs(key):.10g}".replace(".", "").strip("0")) >= 3


def spellings(key: float) -> set[str]:
    out = {repr(key), f"{key:.4g}", f"{key:.5g}", f"{key:g}"}
    if key == int(key):
        out |= {str(int(key)), f"{int(key):,}", f"{int(key):_}"}
    return {s for s in out if len(s.replace(".", "").replace(",", "")) >= 2}


def texts(path: Path, skip: str | None = None):
    """(cell index, text) of every source and output of a notebook; ``skip``: the cell that defines that entry."""
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if skip and re.search(rf"^def {skip}\(", cell.source, re.M):
            continue
        yield i, cell.source
        for out in cell.get("outputs", []):
            yield (
                i,
                out.get("text", "") + "".join(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/")),
            )


def shown(key: float, paths, skip: str | None = None) -> list[str]:
    found = []
    for path in paths:
        for i, text in texts(path, skip):
            for s in spellings(key):
                if re.search(rf"(?<![\d.,_]){re.escape(s)}(?![\d])", text):
                    found.append(f"{path.name} cell {i}: {s}")
    return found


LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("ex", [ex for ex in CONSTANT if distinctive(key_of(ex))], ids=lambda ex: ex.key)
def test_no_lesson_or_exercise_notebook_shows_the_answer(ex):
    paths = [*LESSONS, ROOT / "exercises" / notebook_name(ex.set)]
    assert not shown(key_of(ex), paths, skip=ex.entry), (ex.key, key_of(ex))


def test_the_searched_questions_are_the_distinctive_ones():
    searched = {ex.key for ex in CONSTANT if distinctive(key_of(ex))}
    assert {"03.4", "14.2"} <= searched, searched
    assert not distinctive(1.5) and not distinctive(2.0) and distinctive(6.9296875) and distinctive(1774464.0)


def test_a_planted_answer_is_found(tmp_path):
    ex = next(ex for ex in CONSTANT if ex.key == "14.2")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"The layer has {int(key_of(ex)):,} weights.")])
    path = tmp_path / "planted.ipynb"
    nbformat.write(nb, path)
    assert shown(key_of(ex), [path])
