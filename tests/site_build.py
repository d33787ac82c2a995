"""The course site, built once per test session (by whichever test asks first) and shared.

``tests/test_site_builder.py`` reads its files; ``tests/browser/test_site.py`` serves it to Chromium. Building
takes several seconds, so it happens once; the folder is removed when the session ends.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import time
from pathlib import Path

from attnlib import site


@functools.lru_cache(maxsize=1)
def built_site() -> tuple[Path, float]:
    """(folder, seconds the build took) of the site built from the working tree."""
    tmp = Path(tempfile.mkdtemp(prefix="attnlib-test-site-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    start = time.perf_counter()
    site.build_site(tmp / "site")
    return tmp / "site", time.perf_counter() - start
