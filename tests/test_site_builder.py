"""The static-site builder's parts that need no browser (tests/browser/test_site.py opens the pages for real)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from attnlib import site

ROOT = Path(__file__).resolve().parents[1]


def test_links_to_notebooks_point_at_the_pages():
    text = (
        '<a href="../exercises/02_softmax.ipynb">x</a> <a href="03_softmax.ipynb#the-max-trick">y</a> '
        '<a href="https://example.org/a.ipynb">z</a> <a href="#top">t</a>'
    )
    assert site.rewrite_notebook_links(text) == (
        '<a href="../exercises/02_softmax.html">x</a> <a href="03_softmax.html#the-max-trick">y</a> '
        '<a href="https://example.org/a.ipynb">z</a> <a href="#top">t</a>'
    )


def test_every_lesson_and_exercise_set_gets_a_page_in_reading_order():
    pages = site.pages()
    lessons = [p for p in pages if p.kind == "lesson"]
    sets = [p for p in pages if p.kind == "exercises"]
    assert [p.source for p in lessons] == [x.path for x in site.LESSONS]
    assert len(sets) == len(list((ROOT / "exercises").glob("[0-9]*.ipynb")))
    assert pages == lessons + sets
    assert all(p.target == str(Path(p.source).with_suffix(".html")) for p in pages)


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


def test_a_page_has_navigation_local_mathjax_and_nothing_from_the_network():
    pages = site.pages()
    index = next(i for i, p in enumerate(pages) if p.source == "exercises/02_softmax.ipynb")
    html = site.render_notebook(ROOT / pages[index].source, pages, index)
    assert html.count('class="course-nav') == 2
    assert 'src="../static/mathjax/MathJax.js?config=' in html
    fetched = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?:[^"]+)"', html)
    assert not fetched, f"the page would fetch {fetched}"
    assert f'href="../{pages[index - 1].target}"' in html and f'href="../{pages[index + 1].target}"' in html
