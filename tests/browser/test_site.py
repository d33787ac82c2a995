"""The course site (Sphinx + MyST-NB + sphinx-book-theme), as a reader's browser shows it.

The site is built once per session from the working tree (tests/site_build.py), served on 127.0.0.1, and every
page reachable from the home page is opened in headless Chromium, with every request that would leave the site
blocked and reported. On each page: it answers 200 with no script error; every image loaded (naturalWidth > 0);
every link inside the site answers and every #anchor exists; MathJax (the local copy) typeset the math with no
errors and no raw TeX left; each lesson shows at least as many figures as its notebook has image/png outputs
(explorers shown as the figure they saved); the sidebar lists the home page, every lesson and exercise set in
reading order; previous/next lead to the neighbouring pages; the download button offers the page's notebook.
Then the search page is asked for a word found in one lesson only, and must list that lesson (and a made-up
word, nothing).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import nbformat
import pytest

from attnlib import site

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PAGES = site.pages()
READING_ORDER = ["index.html", *(p.target for p in PAGES)]


def _png_outputs(notebook: Path) -> int:
    nb = nbformat.read(notebook, as_version=4)
    site.freeze_widgets(nb)  # each explorer is shown as the figures it saved
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _has_math(notebook: Path) -> bool:
    nb = json.loads(notebook.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return bool(re.search(r"\$[^$\n]+\$", text))


def _markdown_words(notebook: Path) -> Counter:
    nb = json.loads(notebook.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    text = re.sub(r"\$[^$]*\$|`[^`]*`|\([^)\s]*\)", " ", text)  # no math, code or link targets
    return Counter(re.findall(r"(?<![\w\\-])[a-z]{8,}(?![\w-])", text))


def search_word() -> tuple[str, str]:
    """(a word, the lesson page): a word of a lesson's prose that no other lesson or exercise set uses."""
    words = {p.target: _markdown_words(ROOT / p.source) for p in PAGES}
    for page in [p for p in PAGES if p.kind == "lesson"][::-1]:
        others = set().union(*(w for t, w in words.items() if t != page.target))
        unique = sorted((w for w in words[page.target] if w not in others), key=lambda w: (-words[page.target][w], w))
        if unique:
            return unique[0], page.target
    raise AssertionError("no lesson has a word of its own")


# Collected in the page once it has loaded and MathJax has finished.
# $$, $…\\cmd…$, or \\( / \\[ followed by a TeX command: math MathJax did not typeset.
PAGE_FACTS = """() => {
  const RAW_TEX = /\\$\\$|\\$[^$\\n]*\\\\[a-zA-Z]+[^$\\n]*\\$|\\\\[(\\[][^\\n]*\\\\[a-zA-Z]+/g;
  const article = document.querySelector('article.bd-article');
  let prose = '';
  if (article) {
    const copy = article.cloneNode(true);
    copy.querySelectorAll('div.cell, pre, code, script, .MathJax, .MathJax_Display, .MathJax_Preview')
        .forEach(e => e.remove());
    prose = copy.textContent;
  }
  const hrefs = sel => [...document.querySelectorAll(sel)].map(a => a.href);
  return {
    images: [...document.images].map(i => ({src: i.src.slice(0, 100), width: i.naturalWidth})),
    figures: document.querySelectorAll('article .cell_output img').length,
    links: hrefs('a[href]'),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    math: document.querySelectorAll('.MathJax, .MathJax_Display, .MathJax_CHTML').length,
    mathErrors: document.querySelectorAll('.MathJax_Error, .merror, .noError').length,
    rawTex: (prose.match(RAW_TEX) || []).slice(0, 3),
    sidebar: hrefs('.bd-sidebar-primary nav a.reference.internal'),
    prev: hrefs('.prev-next-area a.left-prev'),
    next: hrefs('.prev-next-area a.right-next'),
    downloads: hrefs('.dropdown-download-buttons a[href$=".ipynb"]'),
    search: !!document.querySelector('form.bd-search input[name=q], input[name=q]'),
  };
}"""


@pytest.fixture(scope="module")
def site_context(browser, served_site):
    """A browser context that lets only the site's own origin through; yields (context, blocked, failed)."""
    base, _, _ = served_site
    origin = urlsplit(base).netloc
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    blocked: list[str] = []

    def only_local(route):
        url = route.request.url
        if urlsplit(url).netloc == origin or url.startswith(("data:", "about:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", only_local)
    failed: list[str] = []
    yield context, blocked, failed
    context.close()


def _watch(page, failed: list[str]) -> None:
    local = ("data:", "about:blank")
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: None if r.url.startswith(local) else failed.append(f"failed {r.url}"))
    page.on("pageerror", lambda e: failed.append(f"script error on {page.url}: {e}"))


def test_every_page_of_the_site_renders(site_context, served_site, artifacts):
    context, blocked, failed = site_context
    base, out, build_seconds = served_site
    origin = urlsplit(base).netloc
    page = context.new_page()
    _watch(page, failed)
    sources = {p.target: ROOT / p.source for p in PAGES}
    lessons = {p.target for p in PAGES if p.kind == "lesson"}

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
        page.wait_for_selector("html[data-math-typeset]", state="attached", timeout=60_000)
        page.wait_for_function("[...document.images].every(i => i.complete)", timeout=30_000)
        facts[path] = page.evaluate(PAGE_FACTS)
        shot = artifacts / f"site-{path.replace('/', '-').removesuffix('.html')}.png"
        page.screenshot(path=str(shot), full_page=path == "index.html")
        for link in facts[path]["links"]:
            target, _ = urldefrag(link)
            if urlsplit(target).netloc == origin and target.endswith(".html") and target not in seen:
                to_visit.append(target)
    crawl_seconds = time.perf_counter() - start

    problems = list(failed) + [f"requested from outside the site: {u}" for u in blocked]
    problems += [f"{p} is not reachable from the home page" for p in READING_ORDER if p not in facts]
    ids = {path: set(f["ids"]) for path, f in facts.items()}
    rel = lambda urls: [urldefrag(u)[0][len(base) :] for u in urls]  # noqa: E731
    for path, f in facts.items():
        problems += [f"{path}: broken image {i['src']}" for i in f["images"] if not i["width"]]
        for link in f["links"]:
            target, anchor = urldefrag(link)
            if urlsplit(target).netloc != origin:
                continue  # links to elsewhere are allowed; fetches are not (the route above blocks them)
            target_path = target[len(base) :] or "index.html"
            if target_path not in facts:
                if not (out / target_path).is_file():
                    problems.append(f"{path}: link to missing {target_path}")
            elif anchor and anchor not in ids[target_path]:
                problems.append(f"{path}: link to {target_path}#{anchor}, which has no such anchor")
        if path not in READING_ORDER:
            continue  # search.html, genindex.html: checked above for links and requests only
        if not f["search"]:
            problems.append(f"{path}: no search box")
        if rel(f["sidebar"]) != READING_ORDER:
            problems.append(f"{path}: the sidebar lists {rel(f['sidebar'])}")
        i = READING_ORDER.index(path)
        want_prev = READING_ORDER[i - 1 : i] if i > 0 else []
        want_next = READING_ORDER[i + 1 : i + 2]
        if rel(f["prev"]) != want_prev or rel(f["next"]) != want_next:
            problems.append(f"{path}: previous/next are {rel(f['prev'])}/{rel(f['next'])}, not {want_prev}/{want_next}")
        source = sources.get(path)
        if source is None:
            continue
        if rel(f["downloads"]) != [f"_sources/{source.relative_to(ROOT).as_posix()}"]:
            problems.append(f"{path}: download offers {rel(f['downloads'])}")
        if _has_math(source):
            if not f["math"]:
                problems.append(f"{path}: has $…$ math but nothing was typeset")
            if f["mathErrors"]:
                problems.append(f"{path}: {f['mathErrors']} math errors")
        if f["rawTex"]:
            problems.append(f"{path}: raw TeX left in the text: {f['rawTex']}")
        if path in lessons and f["figures"] < _png_outputs(source):
            problems.append(f"{path}: shows {f['figures']} figures, its notebook has {_png_outputs(source)}")

    # The download button's file is the notebook as committed.
    for p in PAGES:
        response = context.request.get(base + f"_sources/{p.source}")
        if not response.ok or response.body() != (ROOT / p.source).read_bytes():
            problems.append(f"the download of {p.source} is not the committed notebook ({response.status})")
    page.close()
    print(
        f"\nsite: built in {build_seconds:.1f} s, {len(facts)} pages checked in {crawl_seconds:.1f} s; "
        f"{sum(len(f['images']) for f in facts.values())} images, {sum(len(f['links']) for f in facts.values())} "
        f"links, {sum(f['math'] for f in facts.values())} typeset formulas, {len(blocked)} requests blocked; "
        f"screenshots in {artifacts}/site-*.png"
    )
    assert not problems, "the rendered site has problems:\n" + "\n".join(problems)


def test_search_finds_a_lesson_by_a_word_in_it(site_context, served_site, artifacts):
    context, blocked, failed = site_context
    base, _, _ = served_site
    word, lesson = search_word()
    page = context.new_page()
    _watch(page, failed)

    def results(query: str) -> list[str]:
        page.goto(base + f"search.html?q={query}")
        page.wait_for_function(
            "() => { const s = document.querySelector('#search-results p.search-summary');"
            " return s && s.textContent.trim().length > 0; }",
            timeout=30_000,
        )
        hrefs = page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(a => a.href)")
        return [urldefrag(urlsplit(h)._replace(query="").geturl())[0][len(base) :] for h in hrefs]

    found = results(word)
    page.screenshot(path=str(artifacts / "site-search.png"))
    assert lesson in found, f"searching {word!r} (a word of {lesson} alone) found {found}"
    assert results("zqxjvwkyfnotaword") == [], "a made-up word should find nothing"
    page.close()
    assert not blocked and not failed, f"requests blocked {blocked}, failed {failed}"


def test_home_page_shows_the_course_map(site_context, served_site):
    context, _, _ = site_context
    base, _, _ = served_site
    page = context.new_page()
    page.goto(base + "index.html")
    rows = page.locator("article table tbody tr")
    assert rows.count() == len(site.LESSONS)
    first = rows.nth(0).inner_text()
    assert site.LESSONS[0].title in first and site.LESSONS[0].level_name in first, first
    links = page.eval_on_selector_all("article table a[href]", "els => els.map(a => a.getAttribute('href'))")
    for lesson in site.LESSONS:
        assert str(Path(lesson.path).with_suffix(".html")) in links, f"the map does not link {lesson.path}"
    page.close()


def _main_word(lesson) -> str:
    """The longest word of a lesson's course-map title that no other lesson's title holds."""
    others = " ".join(x.title.lower() for x in site.LESSONS if x is not lesson)
    words = [w for w in re.findall(r"[a-z]{5,}", lesson.title.lower()) if w not in others]
    return max(words, key=len) if words else ""


def test_a_search_for_a_lessons_main_word_ranks_that_lesson_first_with_a_snippet_of_its_text(
    site_context, served_site, artifacts
):
    context, blocked, failed = site_context
    base, _, _ = served_site
    page = context.new_page()
    _watch(page, failed)
    checked = 0
    for lesson in site.LESSONS:
        word = _main_word(lesson)
        if not word:
            continue
        page.goto(base + f"search.html?q={word}")
        page.wait_for_function(
            "() => { const s = document.querySelector('#search-results p.search-summary');"
            " return s && s.textContent.trim().length > 0; }",
            timeout=30_000,
        )
        page.wait_for_function(  # the first result's snippet arrives with its page
            "() => !!document.querySelector('#search-results ul.search li p.context')", timeout=30_000
        )
        first = page.eval_on_selector(
            "#search-results ul.search li",
            "li => [li.querySelector('a').getAttribute('href'), li.querySelector('p.context').textContent]",
        )
        href, snippet = first
        target = str(Path(lesson.path).with_suffix(".html"))
        assert href.split("?")[0].split("#")[0] == target, f"searching {word!r} ranked {href} before {target}"
        # The snippet is the lesson's own text, from its title on: not the page's buttons or its contents list.
        assert snippet.startswith(f"Lesson {lesson.number}"), f"searching {word!r}: snippet {snippet[:120]!r}"
        checked += 1
    page.screenshot(path=str(artifacts / "site-search-ranking.png"))
    page.close()
    assert checked >= len(site.LESSONS) // 2, f"only {checked} lessons have a word of their own in their title"
    assert not blocked and not failed, f"requests blocked {blocked}, failed {failed}"


def test_lesson_pages_offer_colab_binder_and_the_repository(site_context, served_site):
    from attnlib.notebooks import repository_url

    context, _, _ = site_context
    base, _, _ = served_site
    page = context.new_page()
    lesson = site.LESSONS[0].path
    page.goto(base + str(Path(lesson).with_suffix(".html")))
    hrefs = page.eval_on_selector_all("a[href^='https://']", "els => els.map(a => a.getAttribute('href'))")
    repo = repository_url().removeprefix("https://github.com/")
    assert f"https://colab.research.google.com/github/{repo}/blob/main/{lesson}" in hrefs, hrefs
    assert f"https://mybinder.org/v2/gh/{repo}/main?urlpath=lab/tree/{lesson}" in hrefs, hrefs
    assert repository_url() in hrefs
    assert "\\(" not in page.title() and "\\(" not in page.inner_text("nav.bd-docs-nav")
    page.close()
