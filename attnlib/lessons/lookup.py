r"""Lesson 1 (the QKV analogy): the toy library's data and the lesson's figure. The lookups themselves (hard and
soft) are written in the lesson's notebook, by the learner.

The library has a handful of books. Each book's **key** is a point in a 2-D "topic space" (where its title
places it: science to the right, history up, cooking to the left), and its **value** is what the book contains,
as fractions of three kinds of content (``FEATURES``). A **query** is a question, placed in the same topic space.

* :func:`make_library` and :func:`query_vector` generate the data;
* :func:`render_lookup` is the pure render function behind the lesson's figure and widget (it runs the soft lookup
  through :func:`attnlib.scaled_dot_product_attention` with ``scale = 1/T``, and the hard one with ``argmax``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import viz
from .._checks import check_positive_float
from ..functional import scaled_dot_product_attention

__all__ = [
    "FEATURES",
    "Library",
    "make_library",
    "query_vector",
    "render_lookup",
]

FEATURES = ("science", "history", "cooking")

# title, angle of its key in topic space (degrees), contents as fractions of FEATURES
_BOOKS = (
    ("Rockets and Orbits", 0.0, (1.0, 0.0, 0.0)),
    ("A History of Spaceflight", 45.0, (0.5, 0.5, 0.0)),
    ("The Roman Empire", 90.0, (0.0, 1.0, 0.0)),
    ("Medieval Feasts", 135.0, (0.0, 0.5, 0.5)),
    ("Baking Bread", 180.0, (0.0, 0.0, 1.0)),
    ("The Chemistry of Cooking", 270.0, (0.5, 0.0, 0.5)),
)


@dataclass(frozen=True)
class Library:
    """A toy library: ``titles`` (S,), ``keys`` (S, 2) topic-space positions, ``values`` (S, 3) contents."""

    titles: tuple[str, ...]
    keys: torch.Tensor
    values: torch.Tensor
    features: tuple[str, ...] = FEATURES


def make_library(dtype: torch.dtype = torch.float32) -> Library:
    """The six-book library the lesson searches (unit-length keys, contents that sum to 1)."""
    titles = tuple(title for title, _, _ in _BOOKS)
    keys = torch.stack([query_vector(angle, dtype=dtype) for _, angle, _ in _BOOKS])
    values = torch.tensor([contents for _, _, contents in _BOOKS], dtype=dtype)
    return Library(titles, keys, values)


def query_vector(angle: float, length: float = 1.0, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 2-D query pointing at ``angle`` degrees in topic space, of the given length; shape (2,)."""
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not math.isfinite(angle):
        raise ValueError(f"angle must be a finite number of degrees, got {angle!r}")
    length = check_positive_float(length, "length")
    rad = math.radians(angle)
    # round away the 1e-17 residue of cos(90 degrees) so printed keys read cleanly
    return torch.tensor([round(length * math.cos(rad), 12) + 0.0, round(length * math.sin(rad), 12) + 0.0], dtype=dtype)


def render_lookup(angle: float = 30.0, temperature: float = 0.25, library: Library | None = None):
    """Figure of one search: where the query points, the soft weights per book, and what each lookup returns.

    Left: the books' keys in topic space and the query arrow at ``angle`` degrees. Middle: the soft-lookup
    weights over the titles (the hard lookup's pick is outlined in red). Right: the contents retrieved by the hard
    lookup and by the soft lookup. Pure: returns a new ``matplotlib.figure.Figure``.
    """
    lib = make_library() if library is None else library
    temperature = check_positive_float(temperature, "temperature")
    query = query_vector(angle, dtype=lib.keys.dtype)
    soft_out, weights = scaled_dot_product_attention(query[None], lib.keys, lib.values, scale=1.0 / temperature)
    soft_out, weights = soft_out[0], weights[0]
    index = (lib.keys @ query).argmax()
    hard_out = lib.values[index]

    fig, axes = viz.new_figure(3, width=4.3, height=3.8)
    ax_space, ax_w, ax_out = axes[0]
    # 1. topic space
    k = lib.keys.numpy()
    ax_space.scatter(k[:, 0], k[:, 1], c="tab:blue", zorder=3)
    for (x, y), title in zip(k, lib.titles, strict=True):  # label each book radially outwards
        ha = "left" if x > 0.3 else "right" if x < -0.3 else "center"
        ax_space.annotate(title, (x, y), textcoords="offset points", xytext=(6 * x, 8 * y - 2), ha=ha, fontsize=7)
    ax_space.annotate(
        "", xy=tuple(query.tolist()), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 2}
    )
    # label the arrow halfway along, on its clockwise side: the titles all sit at radius 1, clear of it
    normal = torch.tensor([query[1], -query[0]])
    ax_space.text(
        *(0.5 * query + 0.22 * normal).tolist(), "query", color="tab:red", ha="center", va="center", fontsize=8
    )
    ax_space.set_xlim(-2.4, 2.4)
    ax_space.set_ylim(-1.4, 1.4)
    ax_space.set_aspect("equal")
    ax_space.set_xlabel("topic axis 1 (cooking <-> science)")
    ax_space.set_ylabel("topic axis 2 (history)")
    ax_space.set_title(f"query at {angle:.0f} degrees")
    # 2. soft weights, hard pick outlined
    bars = viz.weight_bars(ax_w, weights, lib.titles, title=f"soft lookup weights (T = {temperature:g})")
    bars[int(index)].set_edgecolor("tab:red")
    bars[int(index)].set_linewidth(2.5)
    ax_w.set_xlabel("book (key)")
    # 3. retrieved contents
    x = torch.arange(len(lib.features)).numpy()
    ax_out.bar(x - 0.2, hard_out.numpy(), width=0.4, color="tab:red", label=f"hard: {lib.titles[int(index)]}")
    ax_out.bar(x + 0.2, soft_out.numpy(), width=0.4, color="tab:blue", label="soft: weighted average")
    ax_out.set_xticks(x, lib.features)
    ax_out.set_ylim(0, 1.5)
    ax_out.set_xlabel("content feature")
    ax_out.set_ylabel("amount retrieved")
    ax_out.set_title("what the lookup returns")
    ax_out.legend(fontsize=7, loc="upper right")
    return fig
