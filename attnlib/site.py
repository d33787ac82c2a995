"""Render the course into a static web site: ``attnlib site --out site`` (what ``make site`` runs).

The site is what a learner can read before installing anything:

* ``index.html``: the course map (levels, lessons, goals, run times, exercise sets) from :mod:`attnlib.course`;
* ``notebooks/NN_*.html``: every lesson with its committed outputs and figures (nothing is executed);
* ``exercises/NN_*.html``: every exercise set as a learner receives it;
* previous / home / next links on every page, and links between a lesson and its exercise set.

Pages are rendered with nbconvert's ``lab`` template. Nothing on a page is fetched from the network: MathJax is
copied into ``static/mathjax`` from the pinned ``jupyter-server-mathjax`` package, figures are embedded as data
URIs, and the scripts the template would load from CDNs (require.js, the widget manager) are left out. An
ipywidgets explorer cannot run without a kernel, so each one is replaced by the figure it showed when the
notebook was executed and a note naming its controls.
"""

from __future__ import annotations

import argparse
import functools
import html
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .course import LESSONS

ROOT = Path(__file__).resolve().parents[1]
SITE_TITLE = "Attention, from the ground up"
MATHJAX_DIR = "static/mathjax"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# The page template: nbconvert's lab page, with the course's navigation, local MathJax and no CDN scripts.
PAGE_TEMPLATE = r"""{%- extends 'index.html.j2' -%}

{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}

{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  messageStyle: "none",
  menuSettings: {zoom: "None"}
});
// Tests (and curious readers) can tell when typesetting has finished.
MathJax.Hub.Queue(function () { document.documentElement.setAttribute("data-math-typeset", "done"); });
</script>
<script src="{{ resources.site.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}

{%- block html_head_css -%}
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{{ resources.site.prefix }}static/site.css">
{%- endblock html_head_css -%}

{%- block body_header -%}
{{ super() }}
{{ resources.site.nav }}
{%- endblock body_header -%}

{% block body_footer %}
{{ resources.site.nav_bottom }}
{{ super() }}
{% endblock body_footer %}
"""

SITE_CSS = """\
.course-nav { display: flex; flex-wrap: wrap; gap: 0.4em 1.5em; align-items: baseline; margin: 0.5em 0 1.2em;
  padding: 0.6em 1em; border: 1px solid #d0d7de; border-radius: 6px; background: #f6f8fa;
  font-family: system-ui, sans-serif; font-size: 14px; }
.course-nav a { text-decoration: none; color: #0969da; }
.course-nav a:hover { text-decoration: underline; }
.course-nav .here { font-weight: 600; }
.course-nav .spacer { flex: 1; }
.course-home { max-width: 1100px; margin: 0 auto; padding: 1em 2em; font-family: system-ui, sans-serif;
  line-height: 1.5; color: #1f2328; }
.course-home table { border-collapse: collapse; margin: 1em 0; }
.course-home th, .course-home td { border: 1px solid #d0d7de; padding: 0.35em 0.7em; vertical-align: top; }
.course-home th { background: #f6f8fa; text-align: left; }
.course-home code, .course-home pre { background: #f6f8fa; border-radius: 4px; padding: 0.1em 0.3em; }
.course-home pre { padding: 0.8em; }
.course-home pre code { padding: 0; }
/* MathJax hides a MathML copy of each formula for screen readers; Chromium styles it with TeX fonts this copy
   of MathJax does not ship, so the hidden copy inherits the page's font instead of requesting them. */
.MJX_Assistive_MathML, .MJX_Assistive_MathML * { font-family: inherit !important; }
.static-widget-note { margin: 0.3em 0; padding: 0.4em 0.8em; border-left: 4px solid #8250df; background: #fbefff;
  font-family: system-ui, sans-serif; font-size: 13px; }
"""


@dataclass(frozen=True)
class Page:
    """One page of the site: ``source`` notebook (relative to the root) -> ``target`` html (relative to the site)."""

    source: str
    target: str
    title: str
    kind: str  # "lesson" or "exercises"


def _exercise_title(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem.replace("_", " ")


def pages(root: Path = ROOT) -> list[Page]:
    """The site's notebook pages in reading order: every lesson of the course map, then every exercise set."""
    found = []
    for lesson in LESSONS:
        source = Path(lesson.path)
        title = f"{lesson.number} · {lesson.title}"
        found.append(Page(lesson.path, source.with_suffix(".html").as_posix(), title, "lesson"))
    for path in sorted((root / "exercises").glob("[0-9]*.ipynb")):
        source = path.relative_to(root)
        target = source.with_suffix(".html").as_posix()
        found.append(Page(source.as_posix(), target, _exercise_title(path), "exercises"))
    return found


# --- link handling -------------------------------------------------------------------------------------------

_HREF = re.compile(r'(href=")([^"#:]+?)\.ipynb((?:#[^"]*)?")')


def rewrite_notebook_links(text: str) -> str:
    """Point relative links to notebooks (``../exercises/02_softmax.ipynb#x``) at the site's ``.html`` pages."""
    return _HREF.sub(lambda m: f"{m[1]}{m[2]}.html{m[3]}", text)


def _rel(target: str, frm: str) -> str:
    """The relative URL of site path ``target`` as seen from the page at site path ``frm``."""
    depth = frm.count("/")
    return "../" * depth + target


# --- navigation ----------------------------------------------------------------------------------------------


def _nav(all_pages: list[Page], index: int, *, bottom: bool = False) -> str:
    page = all_pages[index]

    def link(target: str, text: str) -> str:
        return f'<a href="{html.escape(_rel(target, page.target))}">{html.escape(text)}</a>'

    parts = [link("index.html", "⌂ Course map")]
    if index > 0:
        prev = all_pages[index - 1]
        parts.append(f'<span class="prev">← {link(prev.target, prev.title)}</span>')
    parts.append(f'<span class="here">{html.escape(page.title)}</span>')
    if index + 1 < len(all_pages):
        nxt = all_pages[index + 1]
        parts.append(f'<span class="next">{link(nxt.target, nxt.title)} →</span>')
    parts.append('<span class="spacer"></span>')
    if page.kind == "lesson":
        lesson = next(x for x in LESSONS if x.path == page.source)
        if lesson.exercise:
            target = Path(lesson.exercise).with_suffix(".html").as_posix()
            title = next((p.title for p in all_pages if p.target == target), target)
            parts.append(f"Exercises: {link(target, title)}")
    else:
        companions = [next(p for p in all_pages if p.source == x.path) for x in LESSONS if x.exercise == page.source]
        if companions:
            parts.append("Lessons: " + ", ".join(link(p.target, p.title) for p in companions))
    where = "course-nav bottom" if bottom else "course-nav top"
    return f'<nav class="{where}" aria-label="course navigation">{" ".join(parts)}</nav>'


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


# --- rendering -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"course_page.html.j2": PAGE_TEMPLATE})],
        theme="light",
        embed_images=True,
    )
    exporter.template_file = "course_page.html.j2"
    # nbconvert warns about every image without alt text and gives each a placeholder; render_notebook names them.
    exporter.log.addFilter(lambda record: "Alternative text is missing" not in record.getMessage())
    return exporter


def render_notebook(path: Path, all_pages: list[Page], index: int) -> str:
    """The html of ``all_pages[index]``, read from ``path``, with its committed outputs."""
    import nbformat

    page = all_pages[index]
    nb = nbformat.read(path, as_version=4)
    freeze_widgets(nb)
    nb.metadata["title"] = f"{page.title} — {SITE_TITLE}"
    prefix = _rel("", page.target)
    resources = {
        "metadata": {"name": page.title, "path": str(path.parent)},
        "site": {
            "prefix": prefix,
            "mathjax_url": f"{prefix}{MATHJAX_DIR}/MathJax.js?config={MATHJAX_CONFIG}",
            "nav": _nav(all_pages, index),
            "nav_bottom": _nav(all_pages, index, bottom=True),
        },
    }
    body, _ = _exporter().from_notebook_node(nb, resources=resources)
    count = iter(range(1, 10_000))
    body = re.sub(
        r'alt="No description has been provided for this image"',
        lambda _: f'alt="{html.escape(page.title)}: figure {next(count)}"',
        body,
    )
    return rewrite_notebook_links(body)


def course_map_html() -> str:
    """The README's course-map table (from :func:`attnlib.course.course_map_markdown`) as html for the site."""
    from markdown_it import MarkdownIt

    from .course import course_map_markdown

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return rewrite_notebook_links(md.render(course_map_markdown()))


def render_home(all_pages: list[Page]) -> str:
    exercise_items = "\n".join(
        f'<li><a href="{html.escape(p.target)}">{html.escape(p.title)}</a></li>'
        for p in all_pages
        if p.kind == "exercises"
    )
    first = next(p for p in all_pages if p.kind == "lesson")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(SITE_TITLE)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/site.css">
</head>
<body>
<main class="course-home">
<nav class="course-nav top" aria-label="course navigation"><span class="here">⌂ Course map</span>
<span class="next"><a href="{html.escape(first.target)}">{html.escape(first.title)}</a> →</span></nav>
<h1>{html.escape(SITE_TITLE)}</h1>
<p>An open course on the attention mechanism. Each lesson below is a Jupyter notebook, shown here with the
outputs and figures it produced when it was last run; the exercise sets are the notebooks learners fill in.
To run them and use their interactive figures, clone the course and type <code>make lab</code>.</p>
<h2 id="course-map">Course map</h2>
{course_map_html()}
<h2 id="exercise-sets">Exercise sets</h2>
<p>Each set has self-check cells that give feedback as you go; <code>attnlib grade</code> scores them.</p>
<ul>
{exercise_items}
</ul>
<h2 id="run-it">Run it yourself</h2>
<pre><code>make lab     # set up once, then open JupyterLab on the first lesson
make test    # run every test of the course</code></pre>
</main>
</body>
</html>
"""


def _copy_mathjax(out: Path) -> None:
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (source / "MathJax.js").exists():
        raise FileNotFoundError(f"MathJax is missing from {source}; reinstall jupyter-server-mathjax")
    target = out / MATHJAX_DIR
    if target.exists():
        shutil.rmtree(target)

    def skip(folder: str, names: list[str]) -> list[str]:
        # Translations other than English are only fetched by browsers set to another language.
        if Path(folder).name == "localization":
            return [name for name in names if name != "en"]
        return [name for name in names if name.endswith(".py") or name == "__pycache__"]

    shutil.copytree(source, target, ignore=skip)


def build_site(out: str | Path, root: str | Path = ROOT) -> list[Path]:
    """Render the course into ``out`` (created or refreshed); return the html files written, home page first."""
    out, root = Path(out), Path(root)
    out.mkdir(parents=True, exist_ok=True)
    (out / "static").mkdir(exist_ok=True)
    (out / "static" / "site.css").write_text(SITE_CSS)
    _copy_mathjax(out)
    all_pages = pages(root)
    written = [out / "index.html"]
    written[0].write_text(render_home(all_pages))
    for index, page in enumerate(all_pages):
        target = out / page.target
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_notebook(root / page.source, all_pages, index))
        written.append(target)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="site", help="folder to write the site to (default: site)")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    written = build_site(args.out)
    seconds = time.perf_counter() - start
    print(f"wrote {len(written)} pages to {args.out}/ in {seconds:.1f} s; open {Path(args.out) / 'index.html'}")
    return 0
