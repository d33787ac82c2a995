"""``attnlib classroom template OUT``: the students' starter repository holds the lessons, the exercises, the library
and the autograde workflow, and no answers, tests or full CI; its workflow grades a solved copy to full marks."""

from __future__ import annotations

import base64
import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnlib.template import write_template

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("template") / "starter"
    done = subprocess.run(
        [sys.executable, "-m", "attnlib", "classroom", "template", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_template_holds_what_students_need_and_no_answers(template):
    for name in ("notebooks", "exercises", "attnlib/grader", "Makefile", "requirements-grade.txt", "README.md"):
        assert (template / name).exists(), f"the template lacks {name}"
    assert sorted(p.name for p in (template / ".github" / "workflows").iterdir()) == ["autograde.yml"]
    for name in ("solutions", "tests", "gradescope"):
        assert not (template / name).exists(), f"the template must not hold {name}/"
    lessons = sorted(p.name for p in (template / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert lessons == sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    # No answer anywhere: the solution markers appear in no notebook the template holds.
    for path in template.rglob("*.ipynb"):
        assert "### BEGIN SOLUTION" not in path.read_text(), f"{path.relative_to(template)} holds an answer"


def test_the_template_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "x").write_text("mine")
    with pytest.raises(FileExistsError):
        write_template(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "attnlib", "classroom", "template", str(tmp_path)], cwd=ROOT, capture_output=True
    )
    assert done.returncode == 1 and (tmp_path / "x").read_text() == "mine"


@pytest.mark.slow
def test_the_templates_workflow_grades_a_solved_copy_to_full_marks(template, tmp_path):
    repo = tmp_path / "student"
    shutil.copytree(template, repo)
    compared = filecmp.dircmp(ROOT / "attnlib", repo / "attnlib", ignore=["__pycache__"])
    assert not (compared.left_only or compared.right_only or compared.diff_files), compared.report()
    for solution in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(solution, repo / "exercises" / solution.name)  # a student who solved every set
    (repo / ".venv-grade").symlink_to(sys.prefix)  # what `make install-grade` makes, here this environment
    job = next(iter(yaml.safe_load((repo / ".github/workflows/autograde.yml").read_text())["jobs"].values()))
    output, summary = tmp_path / "github_output", tmp_path / "summary.md"
    output.touch()
    env = {
        **os.environ,
        **{k: str(v) for k, v in job.get("env", {}).items()},
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
        # The course's attnlib, which the environment running this test has installed (editable) and the grader's
        # sandbox binds; the template's copy is the same files (checked below), which its own install would use.
        "PYTHONPATH": str(ROOT),
    }
    ran = []
    for step in job["steps"]:
        if "run" not in step:
            continue  # actions/* steps (checkout, setup-python, upload-artifact, the reporter)
        if step["run"].strip() == "make install-grade":
            assert (repo / "requirements-grade.txt").is_file()
            continue  # the environment running this test stands in for it
        done = subprocess.run(
            ["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"step {step.get('name')!r} failed:\n{done.stdout}\n{done.stderr}"
        ran.append(step.get("name"))
    assert len(ran) >= 3, ran
    graded = json.loads((repo / "grade-report" / "results.json").read_text())
    lost = [(t["name"], t["score"], t["max_score"]) for t in graded["tests"] if t["score"] != t["max_score"]]
    assert not lost, f"a solved copy lost points: {lost}"
    sets = {p.stem for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")}
    assert len(graded["tests"]) >= len(sets) and graded["score"] > 0
    result = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)["result"]
    classroom = json.loads(base64.b64decode(result))
    assert classroom["status"] == "pass" and sum(t["score"] for t in classroom["tests"]) == graded["score"]
    assert summary.read_text().strip(), "the score table was not published"
