"""The course site's build (Sphinx + MyST-NB, staged by attnlib.site), checked on its files without a browser.

tests/browser/test_site.py opens the same build's pages in Chromium.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from site_build import built_site

from attnlib import site
from attnlib.course import LESSONS, LEVELS, Lesson

ROOT = Path(__file__).resolve().parents[1]
FETCHED = re.compile(r'<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)="((?:https?:)?//[^"]+)"')


def test_every_lesson_and_exercise_set_gets_a_page_in_reading_order():
    pages = site.pages()
    lessons = [p for p in pages if p.kind == "lesson"]
    sets = [p for p in pages if p.kind == "exercises"]
    assert [p.source for p in lessons] == [x.path for x in LESSONS]
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("exercises/[0-9]*.ipynb"))
    assert [p.source for p in sets] == on_disk
    assert pages == lessons + sets
    assert all(p.target == str(Path(p.source).with_suffix(".html")) for p in pages)


def _toctrees(markdown: str) -> list[tuple[str, list[str]]]:
    found = re.findall(r"```\{toctree\}\n:caption: ([^\n]+)\n:hidden:\n\n(.*?)```", markdown, flags=re.S)

    def path(entry: str) -> str:  # an entry is "path" or "Title <path>"
        explicit = re.search(r"<([^<>]+)>$", entry)
        return explicit[1] if explicit else entry

    return [(caption, [path(e.strip()) for e in body.splitlines() if e.strip()]) for caption, body in found]


def test_the_sidebar_names_lessons_in_plain_text_as_the_course_map_does():
    markdown = site.index_markdown()
    for lesson in LESSONS:
        entry = f"{lesson.number} · {lesson.title} <{Path(lesson.path).with_suffix('').as_posix()}>"
        assert entry in markdown
    assert "\\(" not in markdown and "$" not in markdown.split("```{toctree}", 1)[1]


def test_titles_with_math_become_plain_text():
    raw = "Lesson 2 — Similarity and scaling: why divide by \\(\\sqrt{d_k}\\)"
    assert site.plain_title(raw) == "Lesson 2 — Similarity and scaling: why divide by √d_k"
    span = 'Blocked keys: <span class="math notranslate nohighlight">\\(-\\infty\\)</span>'
    assert site.plain_title(span) == "Blocked keys: -∞"
    context = {"title": raw, "prev": {"title": span, "link": "x"}, "next": None}
    site.plain_titles(None, "p", "page.html", context, None)
    assert "\\(" not in context["title"] and "\\(" not in context["prev"]["title"]


def test_launch_buttons_and_repository_link_come_from_pyproject():
    import importlib.util

    from attnlib.notebooks import repository_url

    spec = importlib.util.spec_from_file_location("conf", ROOT / "docs" / "sphinx" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    options = conf.html_theme_options
    assert options["repository_url"] == repository_url() and options["use_repository_button"]
    assert options["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert options["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert options["path_to_docs"] == ""  # staged pages keep the repository's paths


def test_table_of_contents_follows_the_course_map(monkeypatch):
    trees = _toctrees(site.index_markdown())
    lessons = [entry for caption, entries in trees if caption != "Exercise sets" for entry in entries]
    assert lessons == [str(Path(x.path).with_suffix("")) for x in LESSONS]
    assert [c for c, _ in trees][:-1] == list(dict.fromkeys(LEVELS[x.level] for x in LESSONS))
    sets = [str(Path(p.source).with_suffix("")) for p in site.pages() if p.kind == "exercises"]
    assert trees[-1] == ("Exercise sets", sets)
    # A lesson added (or renumbered) in attnlib.course shows up in its level, in the map's order: nothing is typed.
    extra = Lesson(99, "notebooks/99_new.ipynb", "A new lesson", 1, "goal", None)
    monkeypatch.setattr(site, "LESSONS", [LESSONS[0], extra, *LESSONS[1:]])
    first_level = _toctrees(site.index_markdown())[0]
    assert first_level[1][:2] == [str(Path(LESSONS[0].path).with_suffix("")), "notebooks/99_new"]


def test_widgets_become_their_saved_figure_and_a_note():
    nb = nbformat.read(ROOT / "notebooks" / "03_softmax.ipynb", as_version=4)
    pngs_before = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert site.freeze_widgets(nb) >= 1
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not any(site.WIDGET_VIEW in o.get("data", {}) for o in outputs)
    assert "widgets" not in nb.metadata
    assert sum("image/png" in o.get("data", {}) for o in outputs) > pngs_before
    notes = [o["data"]["text/html"] for o in outputs if "static-widget-note" in o.get("data", {}).get("text/html", "")]
    assert notes and "temperature" in notes[0]


def test_the_build_writes_every_page_with_search_and_downloads():
    out, _ = built_site()
    assert (out / "index.html").is_file() and (out / "search.html").is_file()
    index = (out / "searchindex.js").read_text()
    for page in site.pages():
        html = (out / page.target).read_text()
        assert (out / page.target).is_file(), page.target
        # The download button offers the notebook itself, as committed (its explorers included).
        assert f'href="../_sources/{page.source}"' in html, f"{page.target} offers no download of its notebook"
        assert (out / "_sources" / page.source).read_bytes() == (ROOT / page.source).read_bytes()
        assert Path(page.target).with_suffix("").as_posix() in index, f"{page.target} is not in the search index"


def test_no_page_fetches_anything_from_elsewhere_and_math_is_local():
    out, _ = built_site()
    for path in out.rglob("*.html"):
        html = path.read_text()
        fetched = FETCHED.findall(html)
        assert not fetched, f"{path.relative_to(out)} would fetch {fetched}"
        assert "require.js" not in html and "html-manager" not in html and "widget-state+json" not in html
    lesson = (out / Path(LESSONS[0].path).with_suffix(".html")).read_text()
    assert 'src="../_static/mathjax/MathJax.js?config=' in lesson
    assert (out / "_static" / "mathjax" / "MathJax.js").is_file()


def test_each_explorer_is_shown_as_its_saved_figure_under_a_note():
    out, _ = built_site()
    for page in site.pages():
        nb = nbformat.read(ROOT / page.source, as_version=4)
        explorers = sum(site.WIDGET_VIEW in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        html = (out / page.target).read_text()
        assert html.count('class="static-widget-note"') == explorers, page.target


def test_previous_and_next_follow_the_reading_order():
    out, _ = built_site()
    pages = site.pages()
    for before, page, after in zip(pages, pages[1:], pages[2:], strict=False):
        html = (out / page.target).read_text()
        here = Path(page.target).parent
        for rel, neighbour in (("prev", before), ("next", after)):
            href = re.escape(os.path.relpath(neighbour.target, here))
            assert re.search(rf'<link rel="{rel}"[^>]*href="{href}"', html), f"{page.target}: {rel} is not {href}"


def test_build_refuses_to_replace_a_folder_that_is_not_a_site(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a site"):
        site._replace_folder(tmp_path, tmp_path / "nowhere")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_links_to_course_notebooks_in_outputs_point_at_their_pages():
    import nbformat

    nb = nbformat.v4.new_notebook()
    shown = "[set](../exercises/05_masking.ipynb), [lesson](../notebooks/03_softmax.ipynb#goals), [x](other.ipynb)"
    nb.cells = [
        nbformat.v4.new_code_cell(
            "pointer()", outputs=[nbformat.v4.new_output("display_data", {"text/markdown": shown})]
        )
    ]
    assert site.link_outputs(nb) == 2
    assert nb.cells[0].outputs[0]["data"]["text/markdown"] == (
        "[set](../exercises/05_masking.html), [lesson](../notebooks/03_softmax.html#goals), [x](other.ipynb)"
    )
