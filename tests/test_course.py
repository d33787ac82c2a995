"""The course map (attnlib/course.py) agrees with the notebooks, the exercise sets, the README and the measured
run times, and every lesson has the parts the course promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from notebook_defs import code_cells, defined_names

from attnlib import course
from attnlib.grader.exercises import exercises_of

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
    # the first cell is the Colab/Binder setup cell (attnlib notebooks setup-cell); the lesson opens after it
    first = next("".join(c["source"]) for c in _cells(lesson.path) if c["cell_type"] == "markdown")
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
    assert lesson.exercise is not None, f"{lesson.path} has no exercise set on the course map"
    assert (ROOT / lesson.exercise).exists(), f"{lesson.path}'s exercise set {lesson.exercise} does not exist"


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


# ----------------------------------------------------------------------------------- exercise pointers
# New lessons without an exercise set yet: they leave the pointer cell out until the set exists (CONTRACT.md).
POINTED = course.LESSONS  # every lesson has a set and ends with its pointer


def _pointer_problems(lesson: course.Lesson, cells: list[dict]) -> list[str]:
    """What is wrong with a lesson's exercise pointer: a missing or misnumbered last cell, a set or an
    exercise the registry does not have."""
    problems = []
    last = cells[-1] if cells else {"cell_type": None, "source": ""}
    call = f"attnlib.course.exercise_pointer({lesson.number})"
    if last["cell_type"] != "code" or "".join(last["source"]).strip() != call:
        problems.append(f"{lesson.path} does not end with the code cell {call!r}")
    try:
        text = course.exercise_pointer_markdown(lesson.number)
    except ValueError as err:
        return [*problems, str(err)]
    for ex in exercises_of(course.exercise_set_of(lesson)):
        if f"| {ex.key} | `{ex.entry}`" not in text:
            problems.append(f"{lesson.path}'s pointer does not list exercise {ex.key} ({ex.entry})")
    outputs = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in last.get("outputs", []))
    if outputs.strip() != text.strip():
        problems.append(f"{lesson.path}'s committed pointer output is stale: run `attnlib notebooks run` on it")
    return problems


@pytest.mark.parametrize("lesson", POINTED, ids=[Path(x.path).stem for x in POINTED])
def test_lesson_ends_with_a_pointer_to_exercises_that_exist(lesson):
    problems = _pointer_problems(lesson, _cells(lesson.path))
    assert not problems, "\n".join(problems)


def test_pointer_check_fails_on_a_missing_cell_and_a_missing_set(monkeypatch):
    lesson = course.lesson_number(1)
    cells = _cells(lesson.path)
    assert not _pointer_problems(lesson, cells)
    assert any("does not end with" in p for p in _pointer_problems(lesson, cells[:-1]))
    ghost = course.Lesson(99, "notebooks/99_ghost.ipynb", "Ghost", 4, "nothing", "exercises/99_ghost.ipynb")
    monkeypatch.setattr(course, "LESSONS", [*course.LESSONS, ghost])
    with pytest.raises(ValueError, match="99_ghost.*no exercises in the grader registry"):
        course.exercise_pointer_markdown(99)
    assert any("99_ghost" in p for p in _pointer_problems(ghost, cells))


def test_no_lesson_and_exercise_notebook_share_a_file_name():
    """JupyterLab's tab shows only the file name: lesson NN_slug.ipynb and its set NN_slug_exercises.ipynb, open
    side by side, must be told apart (issue 19)."""
    lessons = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    exercises = {p.name for p in (ROOT / "exercises").glob("*.ipynb")}
    solutions = {p.name for p in (ROOT / "solutions").glob("*.ipynb")}
    assert exercises and exercises == solutions
    assert not lessons & exercises, sorted(lessons & exercises)
    for lesson in course.LESSONS:
        if lesson.exercise is not None:
            assert lesson.exercise == f"exercises/{Path(lesson.path).stem}_exercises.ipynb", lesson
            assert course.exercise_set_of(lesson) == Path(lesson.path).stem


def test_exercise_pointer_shows_every_field_of_each_exercise():
    text = course.exercise_pointer(1).data
    assert "exercises/01_qkv_analogy_exercises.ipynb" in text
    for ex in exercises_of("01_qkv_analogy"):
        assert f"| {ex.key} | `{ex.entry}`: {ex.title} | {ex.points} | {ex.difficulty} | {ex.minutes} |" in text
    with pytest.raises(ValueError, match="not a lesson"):
        course.exercise_pointer(98)


# ---------------------------------------------------------------------------------- the order of ideas
def _order_problems(lessons, defined) -> list[str]:
    """Every ``uses`` name is taught by an earlier lesson, every ``teaches`` name is defined (def/class) in the
    lesson's own cells (``defined(lesson)`` gives those names), and no name is taught by two lessons."""
    problems, taught_by = [], {}
    for lesson in sorted(lessons, key=lambda x: x.number):
        for name in lesson.uses:
            if name not in taught_by:
                later = [x.number for x in lessons if name in x.teaches]
                where = f"lesson {later[0]} teaches it later" if later else "no lesson teaches it"
                problems.append(f"lesson {lesson.number} uses {name!r} but {where}")
        missing = sorted(set(lesson.teaches) - defined(lesson))
        if missing:
            problems.append(f"lesson {lesson.number} claims to teach {missing} but its cells do not define them")
        for name in lesson.teaches:
            if name in taught_by:
                problems.append(f"{name!r} is taught by lesson {taught_by[name]} and again by lesson {lesson.number}")
            taught_by.setdefault(name, lesson.number)
    return problems


def _defined_in_notebook(lesson) -> set[str]:
    return defined_names(lesson.path)


def test_lessons_teach_what_they_define_and_use_only_what_came_before():
    problems = _order_problems(course.LESSONS, _defined_in_notebook)
    assert not problems, "\n".join(problems)


def test_the_foundation_lessons_declare_what_they_teach():
    for number in (1, 2, 3, 4, 5):
        assert course.lesson_number(number).teaches, f"lesson {number} declares no `teaches` names"


def test_order_check_fails_on_each_mistake():
    def lesson(number, teaches=(), uses=()):
        return course.Lesson(number, f"notebooks/{number:02d}_x.ipynb", "x", 1, "x", None, teaches=teaches, uses=uses)

    def defined(x):
        return set(x.teaches)

    good = [lesson(1, teaches=("f",)), lesson(2, teaches=("g",), uses=("f",))]
    assert _order_problems(good, defined) == []
    early = [lesson(1, teaches=("f",), uses=("g",)), lesson(2, teaches=("g",))]
    assert _order_problems(early, defined) == ["lesson 1 uses 'g' but lesson 2 teaches it later"]
    twice = [lesson(1, teaches=("f",)), lesson(2, teaches=("f",))]
    assert _order_problems(twice, defined) == ["'f' is taught by lesson 1 and again by lesson 2"]
    assert "do not define" in _order_problems(good, lambda x: set())[0]


def test_lesson_for_names_the_bad_path():
    assert course.lesson_for("notebooks/05_masking.ipynb").number == 5
    with pytest.raises(ValueError, match="not a lesson"):
        course.lesson_for("notebooks/99_nothing.ipynb")


# ---------------------------------------------------------------------------------- one demonstration, one lesson
def _demonstration_problems(demonstrations, lessons, code_of) -> list[str]:
    """Each demonstration's pattern matches code in its own lesson and in no other (``code_of(lesson)`` gives a
    lesson's code cells)."""
    problems = []
    for demo in demonstrations:
        pattern = re.compile(demo.pattern)
        found = [x.number for x in lessons if any(pattern.search(cell) for cell in code_of(x))]
        if demo.lesson not in found:
            problems.append(f"{demo.name!r} belongs to lesson {demo.lesson}, whose code does not produce it")
        for number in found:
            if number != demo.lesson:
                problems.append(
                    f"{demo.name!r} is shown by lesson {demo.lesson} and again by lesson {number}: refer back instead"
                )
    return problems


def test_each_demonstration_is_produced_by_one_lesson_only():
    assert {demo.lesson for demo in course.DEMONSTRATIONS} <= {lesson.number for lesson in course.LESSONS}
    problems = _demonstration_problems(course.DEMONSTRATIONS, course.LESSONS, lambda x: code_cells(x.path))
    assert not problems, "\n".join(problems)


def test_demonstration_check_fails_on_a_repeat_and_on_a_missing_one():
    def lesson(number):
        return course.Lesson(number, f"notebooks/{number:02d}_x.ipynb", "x", 1, "x", None)

    lessons = [lesson(1), lesson(2)]
    demo = course.Demonstration("softmax over the queries", 1, r"softmax\([^()]*dim=0\)")
    code = {1: ["w = torch.softmax(s, dim=0)"], 2: ["w = torch.softmax(s, dim=-1)"]}
    assert _demonstration_problems([demo], lessons, lambda x: code[x.number]) == []
    code[2].append("wrong = torch.softmax(scores, dim=0)  # shown again")
    assert _demonstration_problems([demo], lessons, lambda x: code[x.number]) == [
        "'softmax over the queries' is shown by lesson 1 and again by lesson 2: refer back instead"
    ]
    code[1] = []
    assert "whose code does not produce it" in _demonstration_problems([demo], lessons, lambda x: code[x.number])[0]


def test_the_repeats_removed_by_issue_24_would_be_caught():
    # lesson 4 used to repeat lesson 2's saturation table and lesson 3's softmax over dim=0
    saturation, wrong_axis = (d for d in course.DEMONSTRATIONS if d.lesson in (2, 3) and "d_model" not in d.name)
    old_lesson_4 = [
        "for d_k in (4, 64, 1024):\n    qd = torch.randn(16, d_k)\n    s = qd @ kd.T\n    w.amax(-1).mean()",
        "w_bad = torch.softmax(scores_q, dim=0)  # the mistake",
    ]
    assert re.search(saturation.pattern, old_lesson_4[0])
    assert re.search(wrong_axis.pattern, old_lesson_4[1])
