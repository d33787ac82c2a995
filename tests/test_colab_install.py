"""Every lesson, solution and exercise notebook starts with the setup cell, which installs the course where it is
missing (Colab, a bare Jupyter) from the repository named once in pyproject.toml, keeping the torch already there.

The last test is the real thing: a fresh virtual environment with torch and a kernel but no attnlib (what Colab
gives), where lesson 1's setup cell installs the course from a local git clone and the lesson runs to the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

from attnlib import notebooks
from attnlib.grader.build import build_notebook

ROOT = Path(__file__).resolve().parents[1]
URL = notebooks.repository_url()
SOURCE = notebooks.setup_cell_source(URL)


def _nb(*sources: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A lesson"), *(nbformat.v4.new_code_cell(s) for s in sources)]
    return nb


def test_the_repository_is_named_once_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert URL == config["project"]["urls"]["Repository"].rstrip("/")
    assert f'"git+{URL}"' in SOURCE and "attnlib[lessons]" in SOURCE
    # The library asks for a minimum torch only: pip keeps the torch a notebook service already has.
    torch = [d for d in config["project"]["dependencies"] if d.startswith("torch")]
    assert torch and ">=" in torch[0] and "==" not in torch[0], torch


@pytest.mark.parametrize("bad", ["https://gitlab.com/a/b", "https://github.com/a", "https://github.com/a/b/c"])
def test_a_repository_setting_that_is_not_a_github_repository_is_refused(tmp_path, bad):
    (tmp_path / "pyproject.toml").write_text(f'[project.urls]\nRepository = "{bad}"\n')
    with pytest.raises(ValueError, match="Repository"):
        notebooks.repository_url(tmp_path)


def test_the_setup_cell_is_short_valid_python_that_does_nothing_where_attnlib_is_installed():
    assert len(SOURCE.splitlines()) <= 10
    compile(SOURCE, "setup cell", "exec")
    calls = []
    real_run = subprocess.run
    try:
        subprocess.run = lambda *a, **k: calls.append(a)
        exec(SOURCE, {})
    finally:
        subprocess.run = real_run
    assert calls == [], "attnlib is importable here, so the cell must not install anything"


def test_inserting_is_idempotent_and_refreshes_an_old_cell():
    nb = _nb("x = 1")
    assert notebooks.setup_cell_problem(nb, SOURCE)
    assert notebooks.with_setup_cell(nb, SOURCE) is True
    assert nb.cells[0].source == SOURCE and nb.cells[1].cell_type == "markdown"
    assert notebooks.setup_cell_problem(nb, SOURCE) is None
    once = nbformat.writes(nb)
    assert notebooks.with_setup_cell(nb, SOURCE) is False
    assert nbformat.writes(nb) == once
    # An old cell (another URL), moved away from the top, is replaced in place of being duplicated.
    old = notebooks.setup_cell_source("https://github.com/someone/old")
    nb2 = _nb("x = 1")
    notebooks.with_setup_cell(nb2, old)
    nb2.cells.insert(0, nb2.cells.pop(2))
    assert notebooks.setup_cell_problem(nb2, SOURCE)
    assert notebooks.with_setup_cell(nb2, SOURCE) is True
    assert [c.source for c in nb2.cells if "course-setup" in c.metadata.get("tags", [])] == [SOURCE]
    assert nb2.cells[0].source == SOURCE and len(nb2.cells) == 3


def test_the_cli_writes_then_checks_temp_copies(tmp_path):
    for folder in notebooks.SETUP_FOLDERS:
        (tmp_path / folder).mkdir()
        nbformat.write(_nb("x = 1"), tmp_path / folder / "01_a.ipynb")
    paths = [str(p) for p in sorted(tmp_path.glob("*/01_a.ipynb"))]
    cli = [sys.executable, "-m", "attnlib", "notebooks"]
    check = subprocess.run([*cli, "check-setup-cell", *paths], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 1 and "does not start with the setup cell" in check.stdout
    assert subprocess.run([*cli, "setup-cell", *paths], cwd=ROOT, capture_output=True).returncode == 0
    check = subprocess.run([*cli, "check-setup-cell", *paths], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_the_exercise_build_keeps_the_setup_cell_unchanged():
    sol = nbformat.read(ROOT / "solutions" / "03_softmax_exercises.ipynb", as_version=4)
    notebooks.with_setup_cell(sol, SOURCE)
    exercise = build_notebook(sol)
    made, authored = exercise.cells[0], sol.cells[0]  # the solution is committed executed; the exercise is not
    assert (made.cell_type, made.source, made.metadata, made.get("id")) == (
        authored.cell_type,
        authored.source,
        authored.metadata,
        authored.get("id"),
    )
    assert notebooks.setup_cell_problem(exercise, SOURCE) is None


@pytest.mark.parametrize("path", notebooks.setup_cell_paths(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_notebook_starts_with_the_setup_cell(path):
    problem = notebooks.setup_cell_problem(nbformat.read(path, as_version=4), SOURCE)
    assert problem is None, f"{path.relative_to(ROOT)} {problem}; run: attnlib notebooks setup-cell"


def _pinned_pip() -> str:
    return next(
        line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("pip==")
    )


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_fresh_environment_without_attnlib_installs_the_course_from_git_and_runs_lesson_1(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # The course as a git repository (this checkout's committed state), reached by a file:// URL.
    repo = tmp_path / "repo"
    _run(["git", "clone", "--quiet", f"file://{ROOT}", str(repo)])  # pip cannot fetch from a shallow clone
    # What Colab gives: a Python with torch and a Jupyter kernel, and no attnlib.
    venv = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    torch_pin = f"torch=={__import__('torch').__version__.split('+')[0]}"
    # A recent pip, as Colab has (pip 23.2 refuses a git+file:// requirement), torch and a kernel.
    _run([python, "-m", "pip", "install", "-q", f"pip=={_pinned_pip()}"])
    _run([python, "-m", "pip", "install", "-q", torch_pin, "ipykernel"])
    torch_files = _run([python, "-c", "import torch; print(torch.__file__)"]).stdout.strip()
    before = os.stat(torch_files).st_mtime_ns
    assert subprocess.run([python, "-c", "import attnlib"], capture_output=True).returncode != 0

    kernels = tmp_path / "jupyter" / "kernels" / "fresh"
    kernels.mkdir(parents=True)
    spec = {"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps({**spec, "display_name": "fresh"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("ATTNLIB_INSTALL_URL", f"git+file://{repo}")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")

    lesson = nbformat.read(ROOT / "notebooks" / "01_qkv_analogy.ipynb", as_version=4)
    notebooks.with_setup_cell(lesson, SOURCE)
    work = tmp_path / "lesson"
    work.mkdir()
    client = NotebookClient(lesson, timeout=900, kernel_name="fresh", resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError naming the cell that failed

    shown = _run([python, "-m", "pip", "show", "attnlib"]).stdout
    assert "Version:" in shown
    assert os.stat(torch_files).st_mtime_ns == before, "the setup cell reinstalled torch"
