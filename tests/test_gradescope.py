"""``attnlib gradescope``'s autograder zip, run the way Gradescope runs it.

The zip is built from the working tree and unpacked into Gradescope's layout, emulated in a temporary folder
(``source/`` holds the zip, ``run_autograder`` is copied beside it, ``submission/`` holds the upload,
``results/`` receives results.json). ``run_autograder`` then grades a submission uploaded as a repository that
has one correct exercise set, one whose code crashes its worker (``os._exit``) and one that is not a notebook at
all, with the rest missing; a second run has no working Python at all, so the grader cannot even start. Each
results.json is validated against Gradescope's fields.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
VISIBILITY = {"visible", "hidden", "after_due_date", "after_published"}
TOP_LEVEL = {
    "score",
    "execution_time",
    "output",
    "output_format",
    "test_output_format",
    "test_name_format",
    "visibility",
    "stdout_visibility",
    "extra_data",
    "tests",
    "leaderboard",
}
TEST_FIELDS = {"name", "score", "max_score", "status", "output", "visibility", "number", "tags", "extra_data"}


def gradescope_problems(results: dict) -> list[str]:
    """What in ``results`` Gradescope's results.json format does not allow (empty when it is valid)."""
    problems = [f"unknown top-level field {k!r}" for k in results if k not in TOP_LEVEL]
    number = (int, float)
    # An exercise the grader could not run carries no score, only an error (Gradescope then sums the scores
    # of the tests that have one); the total is left out too, so that nothing reads as a grade.
    not_graded = [t for t in results.get("tests") or [] if isinstance(t, dict) and "score" not in t]
    if not_graded:
        if "score" in results or not str(results.get("output", "")).startswith("GRADER ERROR"):
            problems.append("tests without a score, but no GRADER ERROR without a total")
    elif not isinstance(results.get("score"), number) or isinstance(results.get("score"), bool):
        problems.append(f"score is {results.get('score')!r}, not a number")
    if not isinstance(results.get("execution_time"), number) or results["execution_time"] < 0:
        problems.append(f"execution_time is {results.get('execution_time')!r}")
    if not isinstance(results.get("output"), str):
        problems.append("output is not a string")
    for key in ("visibility", "stdout_visibility"):
        if key in results and results[key] not in VISIBILITY:
            problems.append(f"{key} is {results[key]!r}")
    tests = results.get("tests")
    if not isinstance(tests, list):
        return [*problems, "tests is not a list"]
    for i, test in enumerate(tests):
        where = f"tests[{i}] ({test.get('name')!r})"
        problems += [f"{where}: unknown field {k!r}" for k in test if k not in TEST_FIELDS]
        if not isinstance(test.get("name"), str) or not test["name"]:
            problems.append(f"{where}: no name")
        if "score" not in test and str(test.get("output", "")).startswith("GRADER ERROR (not a score)"):
            pass  # not graded: an error, not a score
        elif not isinstance(test.get("score"), number) or not isinstance(test.get("max_score"), number):
            problems.append(f"{where}: score/max_score are not numbers")
        elif not 0 <= test["score"] <= test["max_score"]:
            problems.append(f"{where}: score {test['score']} outside 0..{test['max_score']}")
        if test.get("status") not in {"passed", "failed"}:
            problems.append(f"{where}: status {test.get('status')!r}")
        elif "score" in test and (test["status"] == "passed") != (test.get("score") == test.get("max_score")):
            problems.append(f"{where}: status {test['status']} with {test.get('score')}/{test.get('max_score')}")
        if not isinstance(test.get("output"), str) or not test["output"].strip():
            problems.append(f"{where}: no output saying why")
        if test.get("visibility") not in VISIBILITY:
            problems.append(f"{where}: visibility {test.get('visibility')!r}")
    if tests and isinstance(results.get("score"), number):
        total = sum(t.get("score", 0) for t in tests)
        if abs(results["score"] - total) > 1e-9:
            problems.append(f"score {results['score']} is not the sum of the tests' scores {total}")
    return problems


def test_the_validator_rejects_what_gradescope_rejects():
    good = {"score": 1, "execution_time": 0.5, "output": "", "visibility": "visible", "tests": []}
    assert gradescope_problems(good) == []
    test = {"name": "x", "score": 1, "max_score": 1, "status": "passed", "output": "ok", "visibility": "visible"}
    assert gradescope_problems({**good, "tests": [test]}) == []
    assert gradescope_problems({**good, "score": "1"})
    assert gradescope_problems({**good, "visibility": "public"})
    assert gradescope_problems({**good, "tests": [{**test, "status": "ok"}]})
    assert gradescope_problems({**good, "tests": [{**test, "score": 2}]})
    assert gradescope_problems({**good, "score": 3, "tests": [test]})
    assert gradescope_problems({**good, "tests": [{**test, "output": ""}]})


def test_a_not_graded_exercise_is_an_error_in_results_json_not_zero_points():
    from attnlib.grader import report
    from attnlib.grader.exercises import exercises_of
    from attnlib.grader.results import Report, Result

    first, second = exercises_of("03_softmax")[:2]
    rep = Report(
        results=[
            Result(first, "x.ipynb", score=4.0, message="all 8 checks passed", passed=8, total=8),
            Result(second, "x.ipynb", status="not graded", message="not graded: the sandbox failed to start"),
        ],
        status="not graded",
    )
    results = report.gradescope(rep)
    assert gradescope_problems(results) == []
    assert "score" not in results and results["output"].startswith("GRADER ERROR")
    assert "score" in results["tests"][0] and "score" not in results["tests"][1]
    assert results["tests"][1]["output"].startswith("GRADER ERROR (not a score)")
    assert results["extra_data"]["not_graded"] == [f"{second.key} {second.entry}"]


@pytest.fixture(scope="module")
def autograder_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zip") / "autograder.zip"
    done = subprocess.run(
        [sys.executable, "-m", "attnlib", "gradescope", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_the_zip_has_the_scripts_the_pins_and_the_course_without_solutions(autograder_zip):
    with zipfile.ZipFile(autograder_zip) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        names = set(infos)
        for script in ("setup.sh", "run_autograder"):
            assert script in names, f"{script} must be at the top of the zip"
            assert (infos[script].external_attr >> 16) & stat.S_IXUSR, f"{script} is not executable"
        for pins in ("requirements-grade.txt", "constraints-grade.txt", "requirements.txt", "pyproject.toml"):
            assert zf.read(pins) == (ROOT / pins).read_bytes(), f"{pins} differs from the course's"
        assert "attnlib/grader/cli.py" in names and "attnlib/cli.py" in names
        handouts = sorted(p.name for p in (ROOT / "exercises").glob("[0-9]*.ipynb"))
        assert sorted(n.removeprefix("exercises/") for n in names if n.startswith("exercises/")) == handouts
        assert not [n for n in names if n.split("/")[0] in {"solutions", "tests"}]
        answers = {p.read_bytes() for p in (ROOT / "solutions").glob("*.ipynb")}
        assert not [n for n in names if zf.read(n) in answers], "a solution notebook is in the zip"
        setup = zf.read("setup.sh").decode()
    assert re.search(r"pip install -r requirements-grade\.txt -c constraints-grade\.txt", setup)
    assert "python3.11" in setup and "download.pytorch.org/whl/cpu" in setup
    with zipfile.ZipFile(autograder_zip) as zf:
        zf.extract("setup.sh", autograder_zip.parent)
    assert subprocess.run(["bash", "-n", str(autograder_zip.parent / "setup.sh")]).returncode == 0


def _gradescope_layout(zip_path: Path, root: Path) -> Path:
    """Unpack the zip as Gradescope does: into root/source, run_autograder copied to root; returns root."""
    source = root / "source"
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            zf.extract(info, source)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(source / info.filename, mode)
    shutil.copy2(source / "run_autograder", root / "run_autograder")
    (root / "submission").mkdir()
    (root / "results").mkdir()
    return root


def _run(root: Path, python: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "ATTNLIB_PYTHON": python}
    env.pop("PYTHONPATH", None)  # run_autograder points Python at the unpacked course itself
    done = subprocess.run(
        [str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    results = json.loads((root / "results" / "results.json").read_text())
    return done, results


def _defined(notebook: Path) -> set[str]:
    nb = nbformat.read(notebook, as_version=4)
    return {m for c in nb.cells if c.cell_type == "code" for m in re.findall(r"^(?:def|class) (\w+)", c.source, re.M)}


def test_run_autograder_grades_a_submission_and_reports_in_gradescopes_schema(autograder_zip, tmp_path):
    root = _gradescope_layout(autograder_zip, tmp_path / "autograder")
    upload = root / "submission" / "my-fork" / "exercises"  # uploaded from GitHub: the repository's layout
    upload.mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "03_softmax_exercises.ipynb", upload)  # a correct set
    crashing = nbformat.read(ROOT / "exercises" / "01_qkv_analogy_exercises.ipynb", as_version=4)
    cell = next(c for c in crashing.cells if c.cell_type == "code" and "def hard_lookup" in c.source)
    cell.source = "import os\n\n\ndef hard_lookup(query, keys, values):\n    os._exit(3)\n"
    nbformat.write(crashing, upload / "01_qkv_analogy.ipynb")  # the name before the rename
    (root / "submission" / "04_scaled_dot_product_attention.ipynb").write_text("{ this is not a notebook")

    done, results = _run(root, sys.executable)
    assert done.returncode == 0, done.stdout + done.stderr
    assert gradescope_problems(results) == [], results
    tests = {t["name"]: t for t in results["tests"]}

    correct = [
        t
        for name, t in tests.items()
        if any(re.search(rf"\b{f}\b", name) for f in _defined(upload / "03_softmax_exercises.ipynb"))
    ]
    assert correct and all(t["status"] == "passed" and t["score"] == t["max_score"] > 0 for t in correct), correct
    crashed = [t for name, t in tests.items() if re.search(r"\bhard_lookup\b", name)]
    assert len(crashed) == 1 and crashed[0]["score"] == 0 and crashed[0]["status"] == "failed"
    assert "not found" not in crashed[0]["output"], crashed[0]
    broken = [t for t in tests.values() if "04_scaled_dot_product_attention" in t["output"]]
    assert broken and all(t["score"] == 0 and "notebook" in t["output"] for t in broken)
    missing = [t for t in tests.values() if "not found" in t["output"]]
    assert missing and all(t["score"] == 0 for t in missing)
    assert results["score"] == sum(t["score"] for t in correct) > 0
    assert len({t["name"] for t in results["tests"]}) == len(results["tests"]), "test names must be unique"
    # Nothing of the grading is left in the upload, and the solutions were never needed.
    assert not (root / "source" / "solutions").exists()
    assert sorted(p.name for p in (root / "submission").rglob("*") if p.is_file()) == [
        "01_qkv_analogy.ipynb",
        "03_softmax_exercises.ipynb",
        "04_scaled_dot_product_attention.ipynb",
    ]


def test_run_autograder_reports_even_when_the_grader_cannot_run(autograder_zip, tmp_path):
    root = _gradescope_layout(autograder_zip, tmp_path / "autograder")
    shutil.copy(ROOT / "exercises" / "01_qkv_analogy_exercises.ipynb", root / "submission")
    (root / "results" / "results.json").write_text('{"score": 100}')  # stale: must not survive
    done, results = _run(root, shutil.which("false") or "/bin/false")
    assert done.returncode == 0, done.stdout + done.stderr
    assert gradescope_problems(results) == [], results
    # never a score: the student sees an error the course staff must look at, not 0 points
    assert (
        "score" not in results
        and results["output"].startswith("GRADER ERROR")
        and "could not grade" in results["output"]
    )
