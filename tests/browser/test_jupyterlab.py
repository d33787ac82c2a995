"""The live notebooks in a real JupyterLab, used the way a learner uses them.

JupyterLab is started from the course environment on 127.0.0.1 over a temporary copy of notebooks/ and
exercises/ (the committed notebooks are never touched), and headless Chromium:

1. opens a lesson that has an ipywidgets explorer, checks its kernel is "Attention course (attnlib)", clicks
   Run → Run All Cells, waits for the kernel, finds the explorer's slider, moves it with the arrow keys, and
   checks that the slider's readout and the figure it drives both changed (screenshots before and after);
2. opens an exercise notebook as a learner receives it, runs its cells one by one with Shift+Enter and checks the
   self-check's "not implemented yet" feedback appears; then types a wrong answer and a right one into the
   exercise cell and checks the feedback turns into a failure report and then into "all checks passed".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from attnlib.course import LESSONS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
KERNEL_NAME, KERNEL_DISPLAY_NAME = "attention-course", "Attention course (attnlib)"
# A lesson with a widget that runs quickly; its explorer redraws a figure from a slider.
# ATTNLIB_BROWSER_LESSONS=all drives every lesson's explorer instead (a longer run).
LESSON = "notebooks/03_softmax.ipynb"
MOVES = 15  # arrow-key presses on the slider
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
EXERCISE = "exercises/01_qkv_analogy_exercises.ipynb"
EXERCISE_ENTRY = "hard_lookup"
WRONG_ANSWER = '''def hard_lookup(query, keys, values):
    """A plausible mistake: the best key picked by the smallest score instead of the largest."""
    return values[(query @ keys.T).argmin(dim=-1)]
'''
RIGHT_ANSWER = '''def hard_lookup(query, keys, values):
    """Each query's value of its best-matching key."""
    return values[(query @ keys.T).argmax(dim=-1)]
'''

# User settings of the lab under test: no news or update checks (they would reach for the network), every cell
# attached to the page (so cells far down are there to find), and no autosave onto the copied notebooks.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false", '
    '"checkForUpdates": false}',
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": '{"autosave": false}',
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts):
    """A JupyterLab server over a copy of the course; yields (base url, token, folder it serves)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        pytest.fail(f"the {KERNEL_NAME!r} kernel is not registered; run `make install`", pytrace=False)
    home = tmp_path_factory.mktemp("lab")
    served = home / "course"
    for folder in ("notebooks", "exercises"):
        shutil.copytree(ROOT / folder, served / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = home / "settings"
    for name, text in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(text)
    port, token = _free_port(), uuid.uuid4().hex
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
    )
    jupyter = Path(sys.executable).parent / "jupyter"
    command = [
        str(jupyter),
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={served}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.getuid() == 0:
        command.append("--allow-root")
    log = (artifacts / "jupyterlab-server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}; see {log.name}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 90 s; see {log.name}", pytrace=False)
            time.sleep(0.5)
        yield base, token, served
    finally:
        server.send_signal(signal.SIGINT)  # jupyter asks to confirm a first ^C; a second one stops it at once
        time.sleep(0.5)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def page(browser, lab, artifacts, artifact_name, request):
    """A fresh browser page; the lab's console errors go to test-artifacts/browser/<test>-console.log."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    name = artifact_name
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            page.screenshot(path=str(artifacts / f"{name}-failed.png"))
        (artifacts / f"{name}-console.log").write_text("\n".join(messages) + "\n")
        context.close()
        shut_down_kernels(lab)


def shut_down_kernels(lab) -> None:
    """Stop every kernel the test started (as closing the notebook and its kernel would), to free memory."""
    base, token, _ = lab
    headers = {"Authorization": f"token {token}"}
    request = urllib.request.Request(f"{base}/api/kernels", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        kernels = json.load(response)
    for kernel in kernels:
        stop = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", headers=headers, method="DELETE")
        urllib.request.urlopen(stop, timeout=30).close()


def open_notebook(page, lab, path: str):
    """Open ``path`` in JupyterLab and wait until its kernel is up; returns the notebook panel's locator."""
    base, token, _ = lab
    # A workspace of its own, so tabs left open by an earlier test are not restored (with their kernels).
    page.goto(f"{base}/lab/workspaces/{uuid.uuid4().hex[:12]}/tree/{path}?token={token}")
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
    panel.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=120_000)
    kernel_name = panel.locator(".jp-Toolbar-kernelName")
    kernel_name.wait_for(state="visible")
    page.wait_for_function(
        "([el, name]) => el.textContent.includes(name)", arg=[kernel_name.element_handle(), KERNEL_DISPLAY_NAME]
    )
    wait_idle(page, panel)
    return panel


def wait_idle(page, panel, timeout: float = 120_000):
    """Wait until no cell of ``panel`` is queued or running and the kernel reports idle."""
    page.wait_for_function(
        """(nb) => {
            const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
            const status = nb.closest('.jp-NotebookPanel').querySelector('.jp-Notebook-ExecutionIndicator');
            const idle = !status || status.getAttribute('data-status') === 'idle';
            return idle && !prompts.some(p => p.includes('*'));
        }""",
        arg=panel.locator(".jp-Notebook").element_handle(),
        timeout=timeout,
    )


def wait_settled(page, panel, widget, quiet_s: float = 2.0, timeout_s: float = 60.0) -> int:
    """Wait until the kernel is idle and the widget's figure has not changed for ``quiet_s``; count the redraws.

    Each slider step asks the kernel for a new figure and they arrive one after another, so the first change is
    not the last: waiting for quiet makes the "after" picture the one for the slider's final value.
    """
    figure = widget.locator(".jp-OutputArea-output img").first
    seen, last, quiet_since = set(), None, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        wait_idle(page, panel)
        src = figure.get_attribute("src") if figure.count() else None
        if src != last:
            seen.add(src)
            last, quiet_since = src, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return len(seen)
        page.wait_for_timeout(250)
    raise AssertionError(f"the widget's figure was still changing after {timeout_s:.0f} s")


def run_menu(page, item: str):
    """Click the Run menu, then ``item`` in it."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _lessons_to_drive() -> list[str]:
    """The lesson by default; ``ATTNLIB_BROWSER_LESSONS=all`` (or a comma-separated list) drives more of them."""
    wanted = os.environ.get("ATTNLIB_BROWSER_LESSONS", "").strip()
    if not wanted:
        return [LESSON]
    if wanted == "all":
        return [x.path for x in LESSONS if WIDGET_VIEW in (ROOT / x.path).read_text()]
    return [w.strip() for w in wanted.split(",") if w.strip()]


@pytest.mark.parametrize("lesson", _lessons_to_drive())
def test_lesson_widget_redraws_when_its_slider_moves(page, lab, artifacts, lesson):
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    name = Path(lesson).stem
    start = time.perf_counter()
    panel = open_notebook(page, lab, lesson)
    loaded = time.perf_counter() - start
    run_menu(page, "Run All Cells")
    # Running takes a few seconds; wait for the explorer first so the wait below is not racing the queue.
    widget = panel.locator(".jp-OutputArea-output .widget-vbox").first
    widget.wait_for(state="visible", timeout=120_000)
    wait_idle(page, panel)
    ran = time.perf_counter() - start - loaded
    errors = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, f"{lesson} raised in JupyterLab: {errors.first.inner_text()[:2000]}"

    widget.scroll_into_view_if_needed()
    slider = widget.locator(".widget-slider").first
    handle = slider.locator(".noUi-handle").first
    readout = slider.locator(".widget-readout").first
    label = slider.locator(".widget-label").first.inner_text()
    figure = widget.locator(".jp-OutputArea-output img").first
    figure.wait_for(state="visible")
    before = {"readout": readout.inner_text(), "figure": figure.get_attribute("src")}
    widget.screenshot(path=str(artifacts / f"lab-{name}-widget-before.png"))

    # Each arrow key moves the slider one step and asks the kernel for a new figure. A slider saved at its
    # maximum cannot go right, so it goes left instead.
    for key in ("ArrowRight", "ArrowLeft"):
        handle.focus()
        for _ in range(MOVES):
            handle.press(key)
        page.wait_for_timeout(300)
        if readout.inner_text() != before["readout"]:
            break
    try:  # the first new figure; the assertions below say what is wrong if none comes
        page.wait_for_function(
            "([img, src]) => img.isConnected ? img.getAttribute('src') !== src : true",
            arg=[figure.element_handle(), before["figure"]],
            timeout=30_000,
        )
    except PlaywrightTimeoutError:
        pass
    redraws = wait_settled(page, panel, widget)
    figure = widget.locator(".jp-OutputArea-output img").first
    after = {"readout": readout.inner_text(), "figure": figure.get_attribute("src")}
    widget.screenshot(path=str(artifacts / f"lab-{name}-widget-after.png"))
    page.screenshot(path=str(artifacts / f"lab-{name}.png"))

    print(
        f"\nlab: opened {lesson} in {loaded:.1f} s, Run All Cells took {ran:.1f} s; slider {label!r} "
        f"{before['readout']} -> {after['readout']} ({redraws} figure(s) seen while it settled); "
        f"figure changed: {before['figure'] != after['figure']}; screenshots in {artifacts}/lab-{name}*.png"
    )
    problems = []
    if after["readout"] == before["readout"]:
        problems.append(f"the slider did not move (readout stayed {after['readout']})")
    if after["figure"] == before["figure"]:
        problems.append("the figure the slider drives was not redrawn")
    assert not problems, f"{lesson}: " + "; ".join(problems)


def test_exercise_self_check_gives_feedback(page, lab, artifacts):
    start = time.perf_counter()
    panel = open_notebook(page, lab, EXERCISE)
    cells = panel.locator(".jp-Notebook .jp-Cell")
    sources = [c.locator(".jp-InputArea").inner_text() for c in cells.all()]
    check_at = next(i for i, s in enumerate(sources) if f"selfcheck.check_{EXERCISE_ENTRY}(" in s)
    answer_at = next(i for i, s in enumerate(sources) if f"def {EXERCISE_ENTRY}(" in s)
    feedback = cells.nth(check_at).locator(".jp-OutputArea-output")

    # As handed out: run from the top with Shift+Enter up to and including the self-check cell.
    cells.nth(0).locator(".jp-InputArea").click()
    page.keyboard.press("Escape")  # command mode: Shift+Enter runs the cell and moves to the next
    for _ in range(check_at + 1):
        # One at a time, as a learner does: after an error the kernel drops requests already queued behind it.
        page.keyboard.press("Shift+Enter")
        wait_idle(page, panel)
    feedback.first.wait_for(state="visible")
    unfinished = feedback.inner_text()
    cells.nth(check_at).screenshot(path=str(artifacts / "lab-exercise-unfinished.png"))

    def answer_and_check(code: str) -> str:
        editor = cells.nth(answer_at).locator(".cm-content")
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(code)
        page.keyboard.press("Shift+Enter")
        wait_idle(page, panel)
        old = feedback.inner_text()
        cells.nth(check_at).locator(".jp-InputArea").click()
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(
            "([area, old]) => area.innerText.trim() !== '' && area.innerText !== old",
            arg=[cells.nth(check_at).locator(".jp-OutputArea").element_handle(), old],
        )
        wait_idle(page, panel)
        return feedback.inner_text()

    wrong = answer_and_check(WRONG_ANSWER)
    cells.nth(check_at).screenshot(path=str(artifacts / "lab-exercise-wrong.png"))
    right = answer_and_check(RIGHT_ANSWER)
    cells.nth(check_at).screenshot(path=str(artifacts / "lab-exercise-right.png"))
    page.screenshot(path=str(artifacts / "lab-exercise.png"))
    print(
        f"\nlab: {EXERCISE} self-check in {time.perf_counter() - start:.1f} s:\n  as handed out: {unfinished!r}\n"
        f"  wrong answer:  {wrong.splitlines()[0]!r}\n  right answer:  {right!r}\n"
        f"  screenshots in {artifacts}/lab-exercise-*.png"
    )
    assert f"{EXERCISE_ENTRY} is not implemented yet" in unfinished, unfinished
    assert f"❌ {EXERCISE_ENTRY}:" in wrong and "checks passed" in wrong, wrong
    assert f"✅ {EXERCISE_ENTRY}: all" in right, right
