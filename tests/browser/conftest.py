"""A real browser for the course's browser tests: Debian's Chromium, headless, driven by Playwright.

Nothing is downloaded: Playwright drives the system's Chromium (``ATTNLIB_CHROMIUM``, default /usr/bin/chromium;
in GitHub's ubuntu image, /usr/bin/google-chrome). When the browser or the playwright package is missing the
tests skip and say why; with ``ATTNLIB_REQUIRE_BROWSER=1`` (``make test-browser``, ``.ci/run``) a missing browser
is a failure instead, so CI cannot pass without having looked.

Screenshots go to ``test-artifacts/browser/`` at the repository root (``ATTNLIB_ARTIFACTS`` overrides it).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    """The browser to drive: ``ATTNLIB_CHROMIUM`` (a path, or a command on PATH), default /usr/bin/chromium."""
    path = os.environ.get("ATTNLIB_CHROMIUM", "/usr/bin/chromium")
    return shutil.which(path) or path


def browser_required() -> bool:
    return os.environ.get("ATTNLIB_REQUIRE_BROWSER", "") not in ("", "0")


def _unavailable(reason: str):
    if browser_required():
        pytest.fail(f"ATTNLIB_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _why_no_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"the playwright package is not installed ({err}); run `make install`"
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return f"no Chromium at {path} (apt-get install chromium, or point ATTNLIB_CHROMIUM at Chrome/Chromium)"
    return None


@pytest.fixture
def browser_problem() -> str | None:
    """Why no browser can be driven here (None when one can); skips when none is there and none is required."""
    why = _why_no_browser()
    if why and not browser_required():
        pytest.skip(why)
    return why


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the test module (skips, or fails when required, if there is none)."""
    why = _why_no_browser()
    if why:
        _unavailable(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots and logs are written (kept after the run; gitignored)."""
    path = Path(os.environ.get("ATTNLIB_ARTIFACTS", ROOT / "test-artifacts" / "browser"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def artifact_name(request) -> str:
    """A file-name-safe name for the running test (parameters included)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="session")
def served_site():
    """The course site (built once per session, tests/site_build.py) served on 127.0.0.1.

    Yields (base url ending in /, the folder, build seconds).
    """
    from site_build import built_site

    out, seconds = built_site()
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", out, seconds
    finally:
        server.shutdown()
        server.server_close()
