"""The rendered course site, as a reader's browser shows it.

The site is built from the working tree into a temporary folder, served on 127.0.0.1, and every page reachable
from the home page is opened in headless Chromium. On each page: every image loaded (naturalWidth > 0), every
link inside the site answers 200 and every #anchor exists, nothing was requested from outside the site, the
math was typeset by MathJax with no raw ``$$`` or errors left, and each lesson shows at least as many figures as
its notebook has image/png outputs. A screenshot of each page is saved.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest

from attnlib import site
from attnlib.course import LESSONS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


def _png_outputs(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def _has_math(notebook: Path) -> bool:
    nb = json.loads(notebook.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return bool(re.search(r"\$[^$\n]+\$", text))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def served_site(tmp_path_factory):
    """Build the site into a temporary folder and serve it; yields (base url, folder, build seconds)."""
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    site.build_site(out)
    seconds = time.perf_counter() - start
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", out, seconds
    finally:
        server.shutdown()
        server.server_close()


# Collected in the page, after it loaded: images, links, ids, math, and what is left of raw TeX.
PAGE_FACTS = """() => {
  const markdown = [...document.querySelectorAll('.jp-RenderedMarkdown')].map(e => e.innerText).join('\\n');
  return {
    images: [...document.images].map(i => ({src: i.src.slice(0, 80), complete: i.complete, width: i.naturalWidth})),
    figures: document.querySelectorAll('.jp-OutputArea-output img').length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    math: document.querySelectorAll('.MathJax, .MathJax_Display, .MathJax_CHTML, mjx-container').length,
    mathErrors: document.querySelectorAll('.MathJax_Error, .merror, .noError').length,
    rawDisplayMath: markdown.includes('$$'),
    rawTex: (markdown.match(/\\$[^$\\n]*\\\\[a-zA-Z]+[^$\\n]*\\$/g) || []).slice(0, 3),
    nav: [...document.querySelectorAll('nav.course-nav a')].map(a => a.textContent.trim()),
  };
}"""


def test_every_page_of_the_site_renders(browser, served_site, artifacts):
    base, out, build_seconds = served_site
    origin = urlsplit(base).netloc
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    failed: list[str] = []

    def only_local(route):
        if urlsplit(route.request.url).netloc == origin or route.request.url.startswith(("data:", "about:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    # MathJax probes font loading with url(about:blank); that is no request to anywhere.
    local = ("data:", "about:blank")
    page.on("requestfailed", lambda r: failed.append(f"failed {r.url}") if not r.url.startswith(local) else None)
    page.on("pageerror", lambda e: failed.append(f"script error on {page.url}: {e}"))

    lessons = {str(Path(x.path).with_suffix(".html")): ROOT / x.path for x in LESSONS}
    exercises = {f"exercises/{p.stem}.html": p for p in (ROOT / "exercises").glob("[0-9]*.ipynb")}
    to_visit, seen, facts = [base + "index.html"], set(), {}
    start = time.perf_counter()
    while to_visit:
        url = to_visit.pop(0)
        if url in seen:
            continue
        seen.add(url)
        response = page.goto(url, wait_until="load")
        assert response is not None and response.status == 200, f"{url} answered {response and response.status}"
        path = url[len(base) :]
        source = lessons.get(path) or exercises.get(path)
        if source is not None and _has_math(source):
            page.wait_for_selector("html[data-math-typeset=done]", state="attached", timeout=60_000)
        page.wait_for_function("[...document.images].every(i => i.complete)", timeout=30_000)
        facts[path] = page.evaluate(PAGE_FACTS)
        shot = artifacts / f"site-{path.replace('/', '-').removesuffix('.html')}.png"
        page.screenshot(path=str(shot), full_page=path == "index.html")
        for link in facts[path]["links"]:
            target, _ = urldefrag(link)
            if urlsplit(target).netloc == origin and target.endswith(".html") and target not in seen:
                to_visit.append(target)
    crawl_seconds = time.perf_counter() - start
    context.close()

    problems = list(failed) + [f"requested from outside the site: {u}" for u in outside]
    # Every page the course should have was reached by following links from the home page.
    expected = {"index.html", *lessons, *exercises}
    problems += [f"{p} is not reachable from the home page" for p in sorted(expected - set(facts))]
    ids = {path: set(f["ids"]) for path, f in facts.items()}
    for path, f in facts.items():
        problems += [f"{path}: broken image {i['src']}" for i in f["images"] if not i["width"]]
        for link in f["links"]:
            target, anchor = urldefrag(link)
            if urlsplit(target).netloc != origin:
                continue  # the site links nowhere else today; the route above would catch fetches
            rel = target[len(base) :] or "index.html"
            if rel not in facts:
                if not (out / rel).is_file():
                    problems.append(f"{path}: link to missing {rel}")
            elif anchor and anchor not in ids[rel]:
                problems.append(f"{path}: link to {rel}#{anchor}, which has no such anchor")
        assert len(f["nav"]) >= 2 or path == "index.html", f"{path} has no navigation: {f['nav']}"
        source = lessons.get(path) or exercises.get(path)
        if source is not None and _has_math(source):
            if not f["math"]:
                problems.append(f"{path}: has $…$ math but nothing was typeset")
            if f["mathErrors"]:
                problems.append(f"{path}: {f['mathErrors']} math errors")
            if f["rawDisplayMath"] or f["rawTex"]:
                problems.append(f"{path}: raw TeX left in the text: {f['rawTex'] or '$$'}")
        if path in lessons:
            wanted = _png_outputs(lessons[path])
            if f["figures"] < wanted:
                problems.append(f"{path}: shows {f['figures']} figures, its notebook has {wanted} image/png outputs")
    print(
        f"\nsite: built in {build_seconds:.1f} s, {len(facts)} pages checked in {crawl_seconds:.1f} s; "
        f"{sum(len(f['images']) for f in facts.values())} images, {sum(len(f['links']) for f in facts.values())} "
        f"links, {sum(f['math'] for f in facts.values())} typeset formulas; screenshots in {artifacts}/site-*.png"
    )
    assert not problems, "the rendered site has problems:\n" + "\n".join(problems)


def test_home_page_shows_the_course_map(browser, served_site):
    base, _, _ = served_site
    page = browser.new_page()
    try:
        page.goto(base + "index.html")
        rows = page.locator("main table tbody tr")
        assert rows.count() == len(LESSONS)
        first = rows.nth(0).inner_text()
        assert LESSONS[0].title in first and LESSONS[0].level_name in first, first
        lesson_links = page.locator("main table a[href$='.html']")
        assert lesson_links.count() >= len(LESSONS), "every lesson and exercise set in the map should be linked"
        assert page.locator("a[href^='exercises/']").count() >= len(list((ROOT / "exercises").glob("[0-9]*.ipynb")))
    finally:
        page.close()
