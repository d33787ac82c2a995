"""The course map (attnlib/course.py) agrees with the notebooks, the exercise sets, the README and the measured
run times, and every lesson has the parts the course promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attnlib import course

ROOT = Path(__file__).resolve().parents[1]
LESSON_IDS = [Path(lesson.path).stem for lesson in course.LESSONS]


def _cells(path: str) -> list[dict]:
    return json.loads((ROOT / path).read_text())["cells"]


def _markdown(path: str) -> str:
    return "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "markdown")


def test_every_lesson_notebook_is_on_the_map_in_order():
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    on_map = [lesson.path for lesson in course.LESSONS]
    assert on_map == on_disk, f"notebooks/ holds {on_disk} but the course map lists {on_map}"
    for lesson in course.LESSONS:
        prefix = int(Path(lesson.path).name.split("_")[0])
        assert prefix == lesson.number, (
            f"{lesson.path} is numbered {prefix} but the map calls it lesson {lesson.number}"
        )
    levels = [lesson.level for lesson in course.LESSONS]
    assert levels == sorted(levels), f"levels must not go backwards in teaching order: {levels}"


@pytest.mark.parametrize("lesson", course.LESSONS, ids=LESSON_IDS)
def test_notebook_heading_matches_the_map(lesson):
    first = "".join(_cells(lesson.path)[0]["source"])
    heading = f"# Lesson {lesson.number} — {lesson.title}"
    assert first.startswith(heading), f"{lesson.path} should open with {heading!r}, found {first.splitlines()[0]!r}"
    level = f"**Level {lesson.level} · {lesson.level_name}**"
    assert level in first, f"{lesson.path}'s first cell should state {level!r}"


@pytest.mark.parametrize("lesson", course.LESSONS, ids=LESSON_IDS)
def test_lesson_has_every_promised_part(lesson):
    text = _markdown(lesson.path)
    cells = _cells(lesson.path)
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "By the end of this lesson you can" in text, f"{lesson.path} states no learning goals"
    assert re.search(r"^##+ .*common mistakes", text, re.I | re.M), f"{lesson.path} has no 'Common mistakes' section"
    assert re.search(r"^## Summary", text, re.M), f"{lesson.path} has no summary"
    assert "$" in text, f"{lesson.path} has no LaTeX math"
    assert "import attnlib" in code or "from attnlib" in code, f"{lesson.path} does not use attnlib"
    assert "ipywidgets" in code, f"{lesson.path} has no widget explorer"
    figures = sum("image/png" in out.get("data", {}) for c in cells if c["cell_type"] == "code" for out in c["outputs"])
    assert figures >= 1, f"{lesson.path} shows no figure (no image/png output)"
    exercise = Path(lesson.exercise).name
    assert (ROOT / lesson.exercise).exists(), f"{lesson.path}'s exercise set {lesson.exercise} does not exist"
    assert f"exercises/{exercise}" in text, f"{lesson.path} does not point to its exercise set {lesson.exercise}"


@pytest.mark.parametrize("lesson", course.LESSONS, ids=LESSON_IDS)
def test_lesson_is_committed_executed_in_order(lesson):
    counts = [c.get("execution_count") for c in _cells(lesson.path) if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{lesson.path} was not executed top to bottom in a fresh kernel (execution counts {counts}); "
        "run `attnlib notebooks run` on it"
    )


def test_every_lesson_has_a_recorded_run_time_within_budget():
    timings = course.load_timings()
    assert timings["machine"], "notebooks/timings.json records no machine: run `attnlib notebooks time --record`"
    for lesson in course.LESSONS:
        seconds = timings["seconds"].get(lesson.path)
        assert seconds is not None, f"no run time recorded for {lesson.path}: run `attnlib notebooks time --record`"
        assert seconds <= lesson.budget_s, f"{lesson.path} took {seconds} s, over its {lesson.budget_s} s budget"


def test_readme_course_map_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    expected = course.readme_with_map(readme, course.course_map_markdown())
    assert readme == expected, "README.md's course map is stale: run `attnlib course readme`"


def test_readme_performance_tables_are_generated_from_the_committed_benchmarks():
    readme = (ROOT / "README.md").read_text()
    expected = course.readme_with_performance(readme, course.performance_markdown())
    assert readme == expected, "README.md's performance tables are stale: run `attnlib course readme`"
    for name in ("cpu-forward.json", "cpu-backward-8192.json"):
        assert f"docs/benchmarks/{name}" in readme, f"the README does not show docs/benchmarks/{name}"


def test_performance_markdown_needs_results(tmp_path):
    with pytest.raises(ValueError, match="no benchmark results"):
        course.performance_markdown(tmp_path)


def test_readme_block_replacement_rejects_a_readme_without_markers():
    with pytest.raises(ValueError, match="course-map"):
        course.readme_with_map("# no map here\n", "| table |")


def test_course_map_shows_measured_times_not_placeholders():
    table = course.course_map_markdown({"machine": {"cpus": 2}, "seconds": {course.LESSONS[0].path: 6.44}})
    first_row = table.splitlines()[2]
    assert "| 6 s |" in first_row, first_row
    assert "not measured" in table.splitlines()[3], "a lesson without a measurement must say so"


def test_lesson_for_names_the_bad_path():
    assert course.lesson_for("notebooks/05_masking.ipynb").number == 5
    with pytest.raises(ValueError, match="not a lesson"):
        course.lesson_for("notebooks/99_nothing.ipynb")
