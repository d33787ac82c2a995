"""Sphinx configuration of the course site (``make site``; staged and built by :mod:`attnlib.site`).

Sphinx + MyST-NB render the committed notebooks (nothing is executed) with sphinx-book-theme: full-text search,
a sidebar with the table of contents, previous/next links and a download button for each notebook. The site
makes no request that leaves it: MathJax 2.7 is served from ``_static/mathjax`` (copied from the pinned
jupyter-server-mathjax package by attnlib.site), and the ipywidgets explorers are replaced by the figures they
saved before MyST-NB sees them, so it adds neither require.js nor the widget manager from a CDN.
"""

from pathlib import Path

from attnlib.notebooks import repository_url
from attnlib.site import MATHJAX_CONFIG, SITE_TITLE, plain_titles

project = SITE_TITLE
author = "The attention course's authors"
copyright = "the attention course's authors, MIT licence"

extensions = ["myst_nb"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
master_doc = "index"

# Notebooks are shown with the outputs they were committed with.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 4
myst_dmath_double_inline = True
# MyST's MathJax settings are MathJax 3's (they mark every section "ignore" for MathJax 2): keep MathJax 2's own.
myst_update_mathjax = False

# Math: a local MathJax 2.7 (the jupyter-server-mathjax copy), nothing from a CDN.
mathjax_path = f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"
mathjax2_config = {
    # Sphinx writes inline math as \( \) and display math as \[ \] (amsmath environments as they are).
    "tex2jax": {
        "inlineMath": [["\\(", "\\)"]],
        "displayMath": [["\\[", "\\]"]],
        "processEscapes": True,
        "processEnvironments": True,
    },
    "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None},
    "messageStyle": "none",
    "menuSettings": {"zoom": "None"},
}

# Search: a page named after the words searched for first, lessons before their exercise sets (search_scorer.js).
html_search_scorer = str(Path(__file__).resolve().parent / "search_scorer.js")

html_theme = "sphinx_book_theme"
html_title = SITE_TITLE
html_static_path: list[str] = []  # the staging folder's _static (set by attnlib.site)
html_css_files = ["course.css"]
html_js_files = ["course.js"]
html_copy_source = True  # _sources/… is what the download button offers: the .ipynb itself
html_show_sourcelink = False
html_last_updated_fmt = None
# The repository, its Colab and Binder launch buttons: all from pyproject.toml's [project.urls] Repository. The
# staged sources keep the repository's layout (notebooks/NN_*.ipynb, exercises/NN_*.ipynb), so a page's path is
# its notebook's path in the repository.
html_theme_options = {
    "repository_url": repository_url(),
    "repository_branch": "main",
    "path_to_docs": "",
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": True,
    "use_source_button": False,
    "use_issues_button": False,
    "use_edit_page_button": False,
    "show_prev_next": True,
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "launch_buttons": {
        "colab_url": "https://colab.research.google.com",
        "binderhub_url": "https://mybinder.org",
        "notebook_interface": "jupyterlab",
    },
    "navigation_with_keys": False,
}


def setup(app):
    # Page titles (the browser tab, previous/next links) as plain text: never raw TeX such as \(\sqrt{d_k}\).
    app.connect("html-page-context", plain_titles)
