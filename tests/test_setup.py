"""The README's two commands: `make lab` serves the course headless on loopback; the install is idempotent."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_env() -> dict[str, str]:
    env = dict(os.environ)
    env["VENV"] = str(VENV)  # the environment running these tests is the course's .venv
    return env


@needs_make
def test_install_is_up_to_date_so_make_commands_are_quick():
    # `make -q` exits 0 only when nothing would be rebuilt: a second `make lab`/`make test` skips the install.
    result = subprocess.run(["make", "-q", "install"], cwd=ROOT, env=_make_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"make would re-install although nothing changed:\n{result.stdout}{result.stderr}"


@needs_make
def test_make_lab_serves_the_course_headless_on_loopback(tmp_path):
    port = _free_port()
    env = _make_env()
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "config")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp_path / "workspaces")
    args = f"--no-browser --ServerApp.port={port} --ServerApp.port_retries=0"
    proc = subprocess.Popen(
        ["make", "lab", f"LAB_ARGS={args}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            lines.append(line)
            found = re.search(rf"http://127\.0\.0\.1:{port}/\S*token=(\w+)", line)
            if found:
                url, token = found[0], found[1]
        log = "".join(lines)
        assert url is not None, f"make lab printed no loopback URL within 120 s:\n{log}"
        # The server answers on loopback, knows the course kernel, and serves the first lesson's folder.
        # The URL is logged just before the socket accepts: retry briefly.
        for _ in range(40):
            assert proc.poll() is None, f"the server exited:\n{log}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=30) as resp:
                    assert resp.status == 200
                break
            except urllib.error.URLError:
                time.sleep(0.25)
        else:
            raise AssertionError(f"the server at {url} never answered:\n{log}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", timeout=30) as resp:
            specs = json.load(resp)
        assert "attention-course" in specs["kernelspecs"], specs["kernelspecs"].keys()
        # jupyter/jupyter_server_config.json, installed with the environment: new notebooks get the course kernel.
        assert specs["default"] == "attention-course", f"the default kernel is {specs['default']!r}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}", timeout=30) as r:
            names = [item["name"] for item in json.load(r)["content"]]
        lessons = sorted(n for n in names if n.endswith(".ipynb"))
        assert lessons, f"the lab serves no lessons from notebooks/: {names}"
        # The printed URL opens the first lesson itself, not the Launcher.
        assert urllib.parse.urlsplit(url).path == f"/lab/tree/notebooks/{lessons[0]}", url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@needs_make
def test_make_from_another_folder_runs_in_the_course_folder(tmp_path):
    # `make -f path/to/Makefile GOAL` from elsewhere re-runs itself in the course's folder (here: a dry run).
    done = subprocess.run(
        ["make", "-n", "-f", str(ROOT / "Makefile"), "test"],
        cwd=tmp_path,
        env=_make_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"running in the course's folder {ROOT}" in done.stdout


@needs_make
def test_an_old_python_is_refused_with_the_command_to_use(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Python 3.10.12'; exit 0; fi\nexit 1\n")
    fake.chmod(0o755)
    done = subprocess.run(
        ["make", "lab", f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "needs Python 3.11 or newer" in done.stdout and "Python 3.10.12" in done.stdout, done.stdout
    assert "make lab PYTHON=python3.12" in done.stdout
    assert not (tmp_path / "venv").exists()
