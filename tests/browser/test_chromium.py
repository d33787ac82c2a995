"""The browser the other tests drive is there and starts: with ATTNLIB_REQUIRE_BROWSER=1 its absence fails here
(the other browser tests then error in setup), without it everything skips with the reason."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_chromium_is_there_and_starts(browser_problem, request):
    assert browser_problem is None, f"ATTNLIB_REQUIRE_BROWSER=1 but {browser_problem}"
    browser = request.getfixturevalue("browser")
    page = browser.new_page()
    try:
        page.set_content("<p id='x'>attention</p>")
        assert page.inner_text("#x") == "attention"
        print(f"\nbrowser: {browser.browser_type.name} {browser.version}")
    finally:
        page.close()
