"""GitHub Classroom's workflow (.github/workflows/autograde.yml), run here the way Actions runs it.

The test reads the workflow, finds the grading reporter's step and, for each runner it names, the step whose
output the reporter is given (``<RUNNER>_RESULTS: ${{ steps.<runner>.outputs.result }}``). It runs the job's
``run:`` steps up to that one with bash, in a copy of the course whose exercises/ holds one finished set, with
``GITHUB_OUTPUT`` pointing at a file, then decodes that output exactly as the reporter does (base64, then JSON)
and checks it is what the reporter reads and that its points agree with the grader's own report.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "autograde.yml"
REPORTER = "classroom-resources/autograding-grading-reporter@"
EXPRESSION = re.compile(r"^\$\{\{\s*steps\.([A-Za-z0-9_-]+)\.outputs\.result\s*\}\}$")


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def the_job() -> dict:
    jobs = workflow()["jobs"]
    assert len(jobs) == 1, f"expected one job in {WORKFLOW.name}, found {list(jobs)}"
    return next(iter(jobs.values()))


def reporter_inputs(job: dict) -> dict[str, str]:
    """runner name -> id of the step whose ``result`` output the reporter decodes for it."""
    step = next((s for s in job["steps"] if str(s.get("uses", "")).startswith(REPORTER)), None)
    assert step is not None, f"{WORKFLOW.name} does not use {REPORTER}"
    wired = {}
    for runner in step["with"]["runners"].split(","):
        runner = runner.strip()
        value = step.get("env", {}).get(f"{runner.upper()}_RESULTS", "")
        match = EXPRESSION.match(str(value).strip())
        assert match, f"the reporter reads {runner.upper()}_RESULTS, which the workflow sets to {value!r}"
        wired[runner] = match[1]
    return wired


def test_the_workflow_is_one_classroom_accepts():
    flow, job = workflow(), the_job()
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert {"push", "repository_dispatch"} <= set(triggers)
    assert job.get("name") == "Autograding Tests", "the reporter updates the check run named 'Autograding Tests'"
    assert flow["permissions"].get("checks") == "write"
    assert "github-classroom[bot]" in job.get("if", "")
    assert reporter_inputs(job) == {"attnlib": "attnlib"}


def _decode_like_the_reporter(encoded: str) -> dict:
    """The reporter: ``JSON.parse(Buffer.from(process.env[RUNNER_RESULTS], "base64").toString("utf-8"))``."""
    return json.loads(base64.b64decode(encoded, validate=True).decode("utf-8"))


def reporter_problems(results: dict) -> list[str]:
    """What the grading reporter could not read in ``results`` (empty when it reads it all)."""
    problems = []
    if results.get("version") != 1:
        problems.append(f"version is {results.get('version')!r}")
    if results.get("status") not in {"pass", "fail", "error"}:
        problems.append(f"status is {results.get('status')!r}")
    if not isinstance(results.get("max_score"), int | float) or results["max_score"] <= 0:
        problems.append(f"max_score is {results.get('max_score')!r}: Classroom would record no points")
    tests = results.get("tests")
    if not isinstance(tests, list) or not tests:
        return [*problems, "no tests"]
    for test in tests:
        name = test.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"a test has no name: {test}")
        if test.get("status") not in {"pass", "fail", "error"}:
            problems.append(f"{name}: status {test.get('status')!r}")
        if not isinstance(test.get("score"), int | float):
            problems.append(f"{name}: score {test.get('score')!r}")
        if test.get("status") != "pass" and not str(test.get("message", "")).strip():
            problems.append(f"{name}: fails with no message")
        if not isinstance(test.get("line_no", 0), int):
            problems.append(f"{name}: line_no {test.get('line_no')!r}")
    if all(t.get("status") == "pass" for t in tests) != (results.get("status") == "pass"):
        problems.append(f"status {results.get('status')!r} disagrees with the tests'")
    total = sum(t.get("score", 0) for t in tests if isinstance(t.get("score"), int | float))
    if isinstance(results.get("max_score"), int | float) and not 0 <= total <= results["max_score"]:
        problems.append(f"points {total} outside 0..{results['max_score']}")
    return problems


def test_the_reporter_check_fails_on_what_the_reporter_cannot_use():
    good = {
        "version": 1,
        "status": "fail",
        "max_score": 2,
        "tests": [{"name": "a", "status": "fail", "score": 0, "message": "m"}],
    }
    assert reporter_problems(good) == []
    assert reporter_problems({**good, "max_score": 0})
    assert reporter_problems({**good, "status": "pass"})
    assert reporter_problems({**good, "tests": [{"name": "a", "status": "failed", "score": 0, "message": "m"}]})
    assert reporter_problems({**good, "tests": [{"name": "a", "status": "fail", "score": 0, "message": ""}]})
    with pytest.raises(ValueError):
        _decode_like_the_reporter("not base64!")


def test_what_the_workflow_hands_the_reporter_decodes_to_the_grade(tmp_path):
    job = the_job()
    ((runner, step_id),) = reporter_inputs(job).items()
    steps = job["steps"]
    last = next(i for i, s in enumerate(steps) if s.get("id") == step_id)
    # The checked-out repository: a learner's exercises/ with one set finished, and the course environment.
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "exercises", repo / "exercises")
    shutil.copy(ROOT / "solutions" / "03_softmax_exercises.ipynb", repo / "exercises" / "03_softmax_exercises.ipynb")
    for venv in (".venv", ".venv-grade"):  # what `make install(-grade)` made: the environment running this test
        (repo / venv).symlink_to(sys.prefix)
    output = tmp_path / "github_output"
    output.touch()
    env = {
        **os.environ,
        **{k: str(v) for k, v in job.get("env", {}).items()},
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
        "PYTHONPATH": str(ROOT),  # this checkout's attnlib, as `make install` would give the workflow
    }
    ran = []
    for step in steps[: last + 1]:
        if "run" not in step or step["run"].strip() in {"make install", "make install-grade"}:
            continue  # actions/* steps, and the install this environment already is
        done = subprocess.run(
            ["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"step {step.get('name')!r} failed:\n{done.stdout}\n{done.stderr}"
        ran.append(step.get("name"))
    assert len(ran) >= 2, f"expected the grading step and the step that exposes its result; ran {ran}"

    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    assert "result" in outputs, f"step {step_id!r} set no result output: {output.read_text()!r}"
    results = _decode_like_the_reporter(outputs["result"])
    assert reporter_problems(results) == [], results

    graded = json.loads((repo / "grade-report" / "results.json").read_text())  # the grader's own report
    assert sum(t["score"] for t in results["tests"]) == graded["score"] > 0
    assert results["max_score"] == sum(t["max_score"] for t in graded["tests"])
    assert [t["name"] for t in results["tests"]] == [t["name"] for t in graded["tests"]]
    assert results["status"] == "fail"  # only one set of seven is finished
