"""Hostile and broken submissions never break the grader.

Every file in tests/submissions/ redefines ``stable_softmax`` (exercise 02.1) in a copy of
solutions/03_softmax.ipynb. All of them, and a few broken notebooks, are graded by the ``attnlib grade`` command
in one run; 02.1 must score zero with the reason on the file's ``# expect:`` line, 02.2 must keep its full
marks, a complete report must be written, and no submission file may change.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from attnlib.grader import report
from attnlib.grader.engine import Options, grade_many

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = sorted((ROOT / "tests" / "submissions").glob("*.py"))
SOLUTION = ROOT / "solutions" / "03_softmax.ipynb"
OPTS = Options(seed=3, timeout=6, memory_gib=3)


def _expect(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first[len("# expect: ") :]


def _with_cell(folder: Path, source: str) -> Path:
    nb = nbformat.read(SOLUTION, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(source))
    folder.mkdir(parents=True)
    path = folder / "03_softmax.ipynb"
    nbformat.write(nb, path)
    return path


def _replaced(folder: Path, old: str, new: str) -> Path:
    text = SOLUTION.read_text()
    assert old in text
    folder.mkdir(parents=True)
    path = folder / "03_softmax.ipynb"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    report_dir = tmp / "report"
    report_dir.mkdir()
    subs = {}
    for path in SUBMISSIONS:
        source = path.read_text().replace("{REPORT_DIR}", str(report_dir))
        subs[path.stem] = [_with_cell(tmp / path.stem, source)]
    subs["syntax_error"] = [_replaced(tmp / "syntax", "temperature=1.0):\\n", "temperature=1.0)\\n")]
    subs["missing_function"] = [_replaced(tmp / "missing", "def stable_softmax(", "def my_softmax(")]
    bad_json = tmp / "bad_json"
    bad_json.mkdir()
    (bad_json / "03_softmax.ipynb").write_text('{"cells": [ {"cell_type": "code", "source": "def stable_')
    (bad_json / "04_scaled_dot_product_attention.ipynb").write_bytes(
        (ROOT / "solutions" / "04_scaled_dot_product_attention.ipynb").read_bytes()
    )
    subs["invalid_json"] = [bad_json / "03_softmax.ipynb", bad_json / "04_scaled_dot_product_attention.ipynb"]
    not_nb = tmp / "not_nb"
    not_nb.mkdir()
    (not_nb / "03_softmax.ipynb").write_text("[1, 2, 3]")
    subs["not_a_notebook"] = [not_nb / "03_softmax.ipynb"]
    files = [p for paths in subs.values() for p in paths]
    before = {p: p.read_bytes() for p in files}
    reports = grade_many(list(subs.values()), OPTS)
    by_name = dict(zip(subs, reports, strict=True))
    # the real report is written after grading, over anything a submission wrote there
    report.write(
        by_name["write_files"],
        results=report_dir / "results.json",
        junit_path=report_dir / "junit.xml",
        classroom_path=report_dir / "classroom.json",
        summary=report_dir / "summary.md",
    )
    return {"reports": by_name, "unchanged": before == {p: p.read_bytes() for p in files}, "report_dir": report_dir}


def _results(rep):
    return {r.exercise.key: r for r in rep.results}


@pytest.mark.parametrize("path", SUBMISSIONS, ids=[p.stem for p in SUBMISSIONS])
def test_hostile_submission_scores_zero_with_a_reason_and_the_rest_is_graded(graded, path):
    res = _results(graded["reports"][path.stem])
    assert res["03.1"].score == 0, res["03.1"].message
    assert _expect(path) in res["03.1"].message
    assert res["03.2"].score == res["03.2"].max_score, res["03.2"].message


def test_syntax_error_and_missing_function(graded):
    syntax = _results(graded["reports"]["syntax_error"])["03.1"]
    assert syntax.score == 0 and "not defined" in syntax.message and "syntax error" in syntax.message
    missing = _results(graded["reports"]["missing_function"])
    assert missing["03.1"].score == 0 and "`stable_softmax` is not defined" in missing["03.1"].message
    assert missing["03.2"].score == missing["03.2"].max_score


def test_invalid_notebooks_score_zero_and_other_notebooks_are_still_graded(graded):
    res = _results(graded["reports"]["invalid_json"])
    assert res["03.1"].score == res["03.2"].score == 0
    assert "not valid notebook JSON" in res["03.1"].message
    assert res["04.1"].score == res["04.1"].max_score and res["04.2"].score == res["04.2"].max_score
    odd = _results(graded["reports"]["not_a_notebook"])["03.1"]
    assert odd.score == 0 and "not a notebook" in odd.message


def test_submissions_are_never_modified(graded):
    assert graded["unchanged"]


def test_files_written_by_a_submission_do_not_replace_the_report(graded):
    results = json.loads((graded["report_dir"] / "results.json").read_text())
    assert results["score"] == 8.0  # 03.2-03.4 only: the fake {"score": 100} was not kept
    assert [t["status"] for t in results["tests"]] == ["failed", "passed", "passed", "passed"]


def test_printed_fake_scores_do_not_reach_the_report(graded):
    rep = graded["reports"]["print_fake_score"]
    text = report.table(rep) + json.dumps(report.gradescope(rep))
    assert "all checks passed" not in text and '"score": 100' not in text
