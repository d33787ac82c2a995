"""The pins live in requirements.txt; environment.yml and constraints.txt must say the same, and the running
environment must be the pinned one."""

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


def environment_yml_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    return parse_pins(pip_sections[0], "environment.yml")


def test_requirements_are_all_exact_pins_and_torch_is_2_13():
    pins = requirements()
    assert pins["torch"] == "2.13.0", "torch must stay pinned to 2.13.0 (the local CPU wheel)"
    for name in ("numpy", "matplotlib", "ipywidgets", "jupyterlab", "nbval", "pytest", "hypothesis"):
        assert name in pins, f"{name} is not pinned in requirements.txt"


def test_environment_yml_matches_requirements():
    req, env = requirements(), environment_yml_pins()
    only_req = {k: v for k, v in req.items() if env.get(k) != v}
    only_env = {k: v for k, v in env.items() if req.get(k) != v}
    assert not only_req and not only_env, (
        f"requirements.txt and environment.yml disagree: requirements.txt has {only_req}, "
        f"environment.yml has {only_env}"
    )


def test_environment_yml_uses_python_311_and_installs_attnlib():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip, "environment.yml must install attnlib itself (-e .)"


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
