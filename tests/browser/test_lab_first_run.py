"""`make lab` as a learner's first run: JupyterLab opens on lesson 1, with the course's kernel, and asks nothing.

`make lab` is started with a fresh user: empty JupyterLab settings, config, workspace and data folders, so only
what the course ships with its environment applies (jupyter/overrides.json and jupyter/jupyter_server_config.json,
copied into the venv by `make install`). Instead of a desktop browser, ``$BROWSER`` records what JupyterLab asks
the browser to open, and headless Chromium opens exactly that, with every request that would leave 127.0.0.1
blocked and reported. Then: the page shows lesson 1 in the current tab, its kernel is "Attention course
(attnlib)" and has started by itself, and after it is idle no dialog, no notification (the "Jupyter news"
question, an update check) and no other prompt is on the screen or in the notification centre.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
FIRST_LESSON = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))[0]
KERNEL_DISPLAY_NAME = "Attention course (attnlib)"
QUIET_S = 5  # JupyterLab asks its first-run questions within a second or two of loading; wait longer than that


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_lab(tmp_path, artifacts):
    """`make lab` for a first-time learner; yields the URL JupyterLab asked the browser to open."""
    opened = tmp_path / "opened.txt"
    recorder = tmp_path / "browser.sh"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> "{opened}"\n')
    recorder.chmod(0o755)
    env = {
        **os.environ,
        "VENV": sys.prefix,  # the environment running these tests is the course's .venv
        "BROWSER": f"{recorder} %s",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    port = _free_port()
    before = FIRST_LESSON.read_bytes()
    log = (artifacts / "make-lab.log").open("w")
    proc = subprocess.Popen(
        ["make", "lab", f"LAB_ARGS=--ServerApp.port={port} --ServerApp.port_retries=0"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (opened.exists() and opened.read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"make lab exited with {proc.returncode}; see {log.name}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"make lab opened no browser within 120 s; see {log.name}", pytrace=False)
            time.sleep(0.5)
        yield opened.read_text().split()[0], port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        assert FIRST_LESSON.read_bytes() == before, f"opening the lab changed {FIRST_LESSON.name}"


def test_make_lab_opens_lesson_one_with_the_course_kernel_and_no_prompts(browser, make_lab, artifacts):
    url, port = make_lab
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    blocked: list[str] = []

    def only_local(route):
        request_url = route.request.url
        if request_url.startswith(("file:", "data:", "blob:", "about:")) or urlsplit(request_url).hostname in {
            "127.0.0.1",
            "localhost",
        }:
            route.continue_()
        else:
            blocked.append(request_url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(url)  # a file:// page that forwards to the lab with its token, as a desktop browser gets
        page.wait_for_url(f"http://127.0.0.1:{port}/lab**")
        tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")
        tab.wait_for(state="visible")
        assert tab.inner_text().strip() == FIRST_LESSON.name, f"the lab opened {tab.inner_text()!r}"
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
        panel.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible")
        kernel = panel.locator(".jp-Toolbar-kernelName")
        page.wait_for_function(
            "([el, name]) => el.textContent.includes(name)", arg=[kernel.element_handle(), KERNEL_DISPLAY_NAME]
        )
        page.wait_for_function(
            """(panel) => {
                const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
                return status && status.getAttribute('data-status') === 'idle';
            }""",
            arg=panel.element_handle(),
        )
        page.wait_for_timeout(QUIET_S * 1000)
        page.screenshot(path=str(artifacts / "lab-first-run.png"))
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
        toasts = page.locator(".Toastify__toast, .jp-toast-message").all_inner_texts()
        news = page.get_by_text("Jupyter news").count()
        # The status bar's notification counter (JupyterLab keeps every notification there, shown or not).
        counter = page.locator(".jp-Notification-Status").all_inner_texts()
    finally:
        context.close()
    assert not dialogs, f"a dialog greets the learner: {dialogs}"
    assert not toasts and not news, f"a notification greets the learner: {toasts}"
    assert all(text.strip() in {"", "0"} for text in counter), f"notifications waiting: {counter}"
    assert not blocked, f"the lab reached outside 127.0.0.1: {blocked}"
