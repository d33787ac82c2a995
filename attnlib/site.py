"""Build the course's web site with Sphinx: ``attnlib site --out site`` (what ``make site`` runs).

The engine is Sphinx with MyST-NB (notebooks as pages, with their committed outputs; nothing is executed) and
sphinx-book-theme (full-text search, a sidebar table of contents, previous/next links, a download button for each
notebook). Its configuration is ``docs/sphinx/conf.py``; this module stages the sources it reads:

* ``index.md``: the course map from :mod:`attnlib.course` and the table of contents, one section per level of
  :data:`attnlib.course.LESSONS` in their order, then every exercise set found in ``exercises/``;
* ``notebooks/NN_*.ipynb`` and ``exercises/NN_*_exercises.ipynb``: copies in which each ipywidgets explorer is
  replaced by the figure it showed when the notebook was executed and a note naming its controls (a static page has no
  kernel to drive it, and the widget manager would be fetched from a CDN); the download button still offers
  the notebook as committed;
* ``_static/mathjax``: MathJax 2.7 from the pinned ``jupyter-server-mathjax`` package, so math is typeset with
  nothing fetched from the network.

The site makes no request that leaves it (``tests/browser/test_site.py`` blocks and reports any).
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from .course import LESSONS, LEVELS
from .notebooks import SETUP_TAG

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "docs" / "sphinx"
SITE_TITLE = "Attention, from the ground up"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

COURSE_CSS = """\
/* MathJax hides a MathML copy of each formula for screen readers; Chromium styles it with TeX fonts this copy
   of MathJax does not ship, so the hidden copy inherits the page's font instead of requesting them. */
.MJX_Assistive_MathML, .MJX_Assistive_MathML * { font-family: inherit !important; }
.static-widget-note { margin: 0.3em 0; padding: 0.4em 0.8em; border-left: 4px solid #8250df; background: #fbefff;
  font-size: 0.9em; }
"""

# Marks the page once MathJax has typeset it (or at load, on a page without math), for tests and curious readers.
COURSE_JS = """\
(function () {
  function mark(state) { document.documentElement.setAttribute("data-math-typeset", state); }
  function wait(tries) {
    if (window.MathJax && window.MathJax.Hub && window.MathJax.Hub.Queue) {
      window.MathJax.Hub.Queue(function () { mark("done"); });
    } else if (!document.querySelector('script[src*="mathjax/MathJax.js"]')) {
      mark("none");
    } else if (tries > 0) {
      setTimeout(function () { wait(tries - 1); }, 50);
    }
  }
  window.addEventListener("load", function () { wait(400); });
  // Search snippets from the lesson's own text: Sphinx reads the whole [role=main] block, which here starts
  // with the page's buttons and its table of contents; read the article alone. (Search is a global const of
  // searchtools.js on the search page; it calls Search.htmlToText when each result's page arrives.)
  function patchSearch() {
    if (typeof Search === "undefined" || !Search.htmlToText || Search.courseText) return;
    var sphinxText = Search.htmlToText;
    Search.courseText = true;
    Search.htmlToText = function (htmlString, anchor) {
      var doc = new DOMParser().parseFromString(htmlString, "text/html");
      var article = doc.querySelector("article.bd-article");
      if (!article) return sphinxText(htmlString, anchor);
      article.querySelectorAll(".headerlink, script, style, .static-widget-note").forEach(function (el) {
        el.remove();
      });
      var part = anchor ? article.querySelector(anchor) : null;
      return (part || article).textContent.replace(/\\s+/g, " ").trim();
    };
  }
  patchSearch();
  document.addEventListener("DOMContentLoaded", patchSearch);
})();
"""


@dataclass(frozen=True)
class Page:
    """One notebook page: ``source`` (relative to the repository root) -> ``target`` html (relative to the site)."""

    source: str
    target: str
    kind: str  # "lesson" or "exercises"


def pages(root: Path = ROOT) -> list[Page]:
    """The site's notebook pages in reading order: every lesson of the course map, then every exercise set."""
    found = [Page(x.path, Path(x.path).with_suffix(".html").as_posix(), "lesson") for x in LESSONS]
    for path in sorted((root / "exercises").glob("[0-9]*.ipynb")):
        source = path.relative_to(root)
        found.append(Page(source.as_posix(), source.with_suffix(".html").as_posix(), "exercises"))
    return found


# --- widgets -------------------------------------------------------------------------------------------------


def _widget_snapshot(model_id: str, state: dict) -> tuple[list[dict], list[str]]:
    """The outputs shown inside the widget ``model_id`` when it was saved, and its controls' descriptions."""
    outputs: list[dict] = []
    controls: list[str] = []
    seen: set[str] = set()

    def visit(mid: str) -> None:
        if mid in seen or mid not in state:
            return
        seen.add(mid)
        model = state[mid]
        fields = model.get("state", {})
        if model.get("model_name") == "OutputModel":
            outputs.extend(fields.get("outputs", []))
        elif "description" in fields and "value" in fields:
            kind = model.get("model_name", "control").removesuffix("Model")
            label = fields.get("description") or kind
            controls.append(f"{label} ({kind} at {fields['value']!r})")
        for child in fields.get("children", []):
            if isinstance(child, str) and child.startswith("IPY_MODEL_"):
                visit(child.removeprefix("IPY_MODEL_"))

    visit(model_id)
    return outputs, controls


def freeze_widgets(nb) -> int:
    """Replace every widget view in ``nb`` by its saved figure and a note; drop the widget state. Returns the count."""
    import nbformat

    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in nb.cells:
        new_outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                new_outputs.append(output)
                continue
            replaced += 1
            inner, controls = _widget_snapshot(view.get("model_id", ""), state)
            what = f": {'; '.join(controls)}" if controls else ""
            note = (
                '<div class="static-widget-note"><b>Interactive figure.</b> In JupyterLab this cell shows controls '
                f"that redraw the figure below{html.escape(what)}. Run the notebook to use them; here is the "
                "figure as it was saved.</div>"
            )
            new_outputs.append(nbformat.v4.new_output("display_data", data={"text/html": note}))
            new_outputs.extend(nbformat.from_dict(o) for o in inner)
        if "outputs" in cell:
            cell.outputs = new_outputs
    nb.metadata.pop("widgets", None)
    return replaced


# --- titles ----------------------------------------------------------------------------------------------------

_TEX_WORDS = {"infty": "∞", "cdot": "·", "times": "×", "ldots": "…", "dots": "…", "to": "→", "le": "≤", "ge": "≥"}
_MATH_SPAN = re.compile(r'<span class="math[^"]*">\\\((.*?)\\\)</span>')
_INLINE = re.compile(r"\\\((.*?)\\\)")


def tex_as_text(tex: str) -> str:
    """Simple inline TeX as plain text: ``\\sqrt{d_k}`` -> ``√d_k``, ``-\\infty`` -> ``-∞``."""
    text = re.sub(r"\\sqrt\{([^{}]*)\}", r"√\1", tex)
    text = re.sub(r"\\([A-Za-z]+)", lambda m: _TEX_WORDS.get(m[1], m[1]), text)
    return text.replace("{", "").replace("}", "").strip()


def plain_title(title: str) -> str:
    """A page title with its inline math (``\\(…\\)``, bare or in MathJax's span) written as plain text."""
    title = _MATH_SPAN.sub(lambda m: html.escape(tex_as_text(html.unescape(m[1]))), title)
    return _INLINE.sub(lambda m: tex_as_text(m[1]), title)


def plain_titles(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Sphinx's ``html-page-context`` hook: the browser tab's title and the previous/next links in plain text."""
    if context.get("title"):
        context["title"] = plain_title(context["title"])
    for key in ("prev", "next"):
        if context.get(key) and context[key].get("title"):
            context[key] = {**context[key], "title": plain_title(context[key]["title"])}


# --- the sources Sphinx reads ---------------------------------------------------------------------------------


def index_markdown(root: Path = ROOT) -> str:
    """The home page: the course map, how to run it, and the table of contents (one section per level)."""
    from .course import course_map_markdown

    parts = [
        f"# {SITE_TITLE}",
        "",
        "An open course on the attention mechanism. Each lesson is a Jupyter notebook, shown here with the outputs",
        "and figures it produced when it was last run; the exercise sets are the notebooks learners fill in. Use",
        "the download button at the top of a page for its notebook; to run the lessons and use their interactive",
        "figures, clone the course and type `make lab`.",
        "",
        "## Course map",
        "",
        course_map_markdown(),
        "",
        "## Run it yourself",
        "",
        "```bash",
        "make lab     # set up once, then open JupyterLab on the first lesson",
        "make test    # run every test of the course",
        "```",
        "",
    ]
    for level, lessons in groupby(LESSONS, key=lambda x: x.level):
        # The sidebar names each lesson as the course map does: plain text, where a notebook's own heading may
        # hold math (lesson 2's "why divide by $\sqrt{d_k}$").
        entries = [f"{x.number} · {x.title} <{Path(x.path).with_suffix('').as_posix()}>" for x in lessons]
        parts += ["```{toctree}", f":caption: {LEVELS[level]}", ":hidden:", "", *entries, "```", ""]
    sets = [Path(p.source).with_suffix("").as_posix() for p in pages(root) if p.kind == "exercises"]
    if sets:
        parts += ["```{toctree}", ":caption: Exercise sets", ":hidden:", "", *sets, "```", ""]
    return "\n".join(parts)


def _copy_mathjax(static: Path) -> None:
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (source / "MathJax.js").exists():
        raise FileNotFoundError(f"MathJax is missing from {source}; reinstall jupyter-server-mathjax")

    def skip(folder: str, names: list[str]) -> list[str]:
        # Translations other than English are only fetched by browsers set to another language.
        if Path(folder).name == "localization":
            return [name for name in names if name != "en"]
        return [name for name in names if name.endswith(".py") or name == "__pycache__"]

    shutil.copytree(source, static / "mathjax", ignore=skip, dirs_exist_ok=True)


_NOTEBOOK_LINK = re.compile(r"\]\(((?:\.\./)?(?:notebooks|exercises)/[0-9][0-9]_[A-Za-z0-9_]+)\.ipynb(#[^)]*)?\)")


def link_outputs(nb) -> int:
    """Point links to course notebooks in Markdown *outputs* (the lessons' exercise pointers) at their pages.

    Sphinx resolves links in Markdown cells, not in what a cell printed, so
    ``](../exercises/05_masking_exercises.ipynb)`` in an output is rewritten to the page
    ``../exercises/05_masking_exercises.html``. Returns how many were rewritten."""
    count = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/markdown")
            if text is None:
                continue
            joined = "".join(text) if isinstance(text, list) else text
            fixed, n = _NOTEBOOK_LINK.subn(lambda m: f"]({m.group(1)}.html{m.group(2) or ''})", joined)
            if n:
                out["data"]["text/markdown"] = fixed
                count += n
    return count


def stage_sources(src: Path, root: Path = ROOT) -> list[Page]:
    """Write what Sphinx reads into ``src``: index.md, frozen copies of the notebooks, _static. Returns the pages."""
    import nbformat

    all_pages = pages(root)
    for page in all_pages:
        nb = nbformat.read(root / page.source, as_version=4)
        # The setup cell installs the course on Colab; the site has launch buttons for that instead.
        nb.cells = [c for c in nb.cells if SETUP_TAG not in c.get("metadata", {}).get("tags", [])]
        freeze_widgets(nb)
        link_outputs(nb)
        target = src / page.source
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    (src / "index.md").write_text(index_markdown(root))
    static = src / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / "course.css").write_text(COURSE_CSS)
    (static / "course.js").write_text(COURSE_JS)
    _copy_mathjax(static)
    return all_pages


def _replace_folder(out: Path, built: Path) -> None:
    """Put the site ``built`` at ``out``, removing a site built there before (and nothing else)."""
    if out.exists():
        if any(out.iterdir()) and not (out / ".buildinfo").exists():
            raise FileExistsError(f"{out} exists and is not a site built by attnlib site; choose another --out")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(built, out)


def build_site(out: str | Path, root: str | Path = ROOT, *, quiet: bool = True) -> list[Path]:
    """Build the site into ``out`` with Sphinx (warnings are errors); return the html pages, home page first."""
    from sphinx.application import Sphinx

    out, root = Path(out).resolve(), Path(root)
    with tempfile.TemporaryDirectory(prefix="attnlib-site-") as tmp:
        src = Path(tmp) / "src"
        all_pages = stage_sources(src, root)
        app = Sphinx(
            srcdir=src,
            confdir=CONF_DIR,
            # MyST-NB writes the outputs' image files next to the output folder (its ../jupyter_execute), so
            # Sphinx writes into the staging folder too and the finished site is moved to ``out``.
            outdir=Path(tmp) / "html",
            doctreedir=Path(tmp) / "doctrees",
            buildername="html",
            status=None if quiet else sys.stdout,
            warningiserror=True,
            freshenv=True,
            confoverrides={"html_static_path": [str(src / "_static")]},
        )
        with warnings.catch_warnings():  # the theme and MyST use Sphinx APIs that Sphinx 11 will remove
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            app.build()
        if app.statuscode:
            raise RuntimeError(f"sphinx-build failed with status {app.statuscode}")
        # The download button offers the notebook as committed (explorers and all), not the staged copy.
        for page in all_pages:
            shutil.copyfile(root / page.source, Path(tmp) / "html" / "_sources" / page.source)
        _replace_folder(out, Path(tmp) / "html")
    return [out / "index.html", *(out / p.target for p in all_pages)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="site", help="folder to write the site to (default: site)")
    parser.add_argument("--verbose", action="store_true", help="print Sphinx's progress")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    written = build_site(args.out, quiet=not args.verbose)
    seconds = time.perf_counter() - start
    print(f"wrote {len(written)} pages to {args.out}/ in {seconds:.1f} s; open {Path(args.out) / 'index.html'}")
    return 0
