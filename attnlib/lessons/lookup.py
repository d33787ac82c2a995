r"""Lesson 1 (the QKV analogy): a toy library searched by hard and by soft lookup.

The library has a handful of books. Each book's **key** is a point in a 2-D "topic space" (where its title
places it: science to the right, history up, cooking to the left), and its **value** is what the book contains,
as fractions of three kinds of content (``FEATURES``). A **query** is a question, placed in the same topic space.

* :func:`hard_lookup` returns the value of the single best-matching key (``argmax`` of the scores), as a
  dictionary would;
* :func:`soft_lookup` returns the softmax-weighted average of all values,

  .. math:: \mathrm{out} = \sum_j w_j v_j,\qquad w = \mathrm{softmax}\!\left(\frac{q\cdot k_j}{T}\right),

  which is exactly scaled dot-product attention with ``scale = 1/T``;
* :func:`query_gradient` and :func:`fit_query` show that gradients flow through the soft lookup and not
  through the hard one;
* :func:`render_lookup` is the pure render function behind the lesson's figure and widget.

Shapes: ``query`` (E,) or (L, E); ``keys`` (S, E); ``values`` (S, Ev). Nothing modifies its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import viz
from .._checks import check_float_tensor, check_positive_float, check_positive_int, shape_str
from ..functional import scaled_dot_product_attention

__all__ = [
    "FEATURES",
    "Library",
    "make_library",
    "query_vector",
    "scores",
    "hard_lookup",
    "soft_lookup",
    "query_gradient",
    "fit_query",
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


def _check_lookup(query: object, keys: object, values: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    query = check_float_tensor(query, "query")
    keys = check_float_tensor(keys, "keys")
    values = check_float_tensor(values, "values")
    if query.dim() not in (1, 2):
        raise ValueError(f"query must be (E,) or (L, E), got shape {shape_str(query.shape)}")
    if keys.dim() != 2 or values.dim() != 2:
        raise ValueError(
            f"keys must be (S, E) and values (S, Ev), got keys {shape_str(keys.shape)} and values "
            f"{shape_str(values.shape)}"
        )
    if keys.shape[0] != values.shape[0] or keys.shape[0] == 0:
        raise ValueError(
            f"keys and values must hold the same, non-zero number of entries S, got keys {shape_str(keys.shape)} "
            f"and values {shape_str(values.shape)}"
        )
    if query.shape[-1] != keys.shape[-1]:
        raise ValueError(
            f"query and keys must have the same feature dim E, got query {shape_str(query.shape)} and keys "
            f"{shape_str(keys.shape)}"
        )
    if query.dtype != keys.dtype or keys.dtype != values.dtype:
        raise TypeError(f"query, keys, values must share one dtype, got {query.dtype}, {keys.dtype}, {values.dtype}")
    return query, keys, values


def scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Dot-product similarity of the query (E,) or queries (L, E) with every key (S, E): (S,) or (L, S)."""
    query, keys, _ = _check_lookup(query, keys, keys)
    return query @ keys.T


def hard_lookup(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dictionary-style retrieval: the value of the best-matching key.

    Returns ``(value, index)``: value (Ev,) or (L, Ev), index () or (L,) = ``argmax_j q . k_j``. ``argmax`` is
    piecewise constant in the query, so no gradient reaches the query through it.
    """
    query, keys, values = _check_lookup(query, keys, values)
    index = (query @ keys.T).argmax(dim=-1)
    return values[index], index


def soft_lookup(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention as retrieval: the softmax(q . k / temperature)-weighted average of the values.

    Returns ``(output, weights)``: output (Ev,) or (L, Ev), weights (S,) or (L, S), each row summing to 1. Small
    temperatures approach :func:`hard_lookup`; large ones approach the plain mean of the values. Computed with
    :func:`attnlib.scaled_dot_product_attention` using ``scale = 1 / temperature``.
    """
    query, keys, values = _check_lookup(query, keys, values)
    temperature = check_positive_float(temperature, "temperature")
    q = query if query.dim() == 2 else query.unsqueeze(0)
    out, weights = scaled_dot_product_attention(q, keys, values, scale=1.0 / temperature)
    if query.dim() == 1:
        out, weights = out.squeeze(0), weights.squeeze(0)
    return out, weights


def query_gradient(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    mode: str = "soft",
    feature: int = 0,
    temperature: float = 1.0,
) -> torch.Tensor | None:
    """d(output[feature]) / d(query) for the soft or hard lookup of one query (E,).

    Returns the gradient (E,) for ``mode="soft"``. For ``mode="hard"`` returns ``None``: the retrieved value does
    not depend differentiably on the query (autograd has no path through ``argmax``), so there is no gradient.
    """
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    query, keys, values = _check_lookup(query, keys, values)
    if query.dim() != 1:
        raise ValueError(f"query_gradient takes one query (E,), got shape {shape_str(query.shape)}")
    if not 0 <= feature < values.shape[-1]:
        raise ValueError(f"feature={feature} is out of range for values of shape {shape_str(values.shape)}")
    q = query.detach().clone().requires_grad_(True)
    if mode == "soft":
        out, _ = soft_lookup(q, keys, values, temperature)
    else:
        out, _ = hard_lookup(q, keys, values)
    if not out.requires_grad:
        return None
    (grad,) = torch.autograd.grad(out[feature], q)
    return grad


def fit_query(
    start: torch.Tensor,
    target: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    mode: str = "soft",
    temperature: float = 1.0,
    steps: int = 60,
    lr: float = 0.5,
) -> tuple[torch.Tensor, list[float]]:
    """Learn a query by gradient descent so that its lookup retrieves ``target`` (Ev,).

    Minimises the squared error ``||lookup(q) - target||^2`` with plain SGD from ``start`` (E,). Returns the final
    query and the loss before each step (``steps + 1`` numbers). With ``mode="hard"`` there is never a gradient,
    so the query and the loss stay where they started.
    """
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    start, keys, values = _check_lookup(start, keys, values)
    target = check_float_tensor(target, "target")
    if target.shape != values.shape[-1:]:
        raise ValueError(f"target must be (Ev,) = ({values.shape[-1]},), got shape {shape_str(target.shape)}")
    steps = check_positive_int(steps, "steps")
    lr = check_positive_float(lr, "lr")
    q = start.detach().clone().requires_grad_(True)
    losses = []
    for step in range(steps + 1):
        if mode == "soft":
            out, _ = soft_lookup(q, keys, values, temperature)
        else:
            out, _ = hard_lookup(q, keys, values)
        loss = ((out - target) ** 2).sum()
        losses.append(float(loss.detach()))
        if step == steps or not loss.requires_grad:
            continue
        (grad,) = torch.autograd.grad(loss, q)
        with torch.no_grad():
            q -= lr * grad
    return q.detach(), losses


def render_lookup(angle: float = 30.0, temperature: float = 0.25, library: Library | None = None):
    """Figure of one search: where the query points, the soft weights per book, and what each lookup returns.

    Left: the books' keys in topic space and the query arrow at ``angle`` degrees. Middle: the soft-lookup
    weights over the titles (the hard lookup's pick is outlined in red). Right: the contents retrieved by the hard
    lookup and by the soft lookup. Pure: returns a new ``matplotlib.figure.Figure``.
    """
    lib = make_library() if library is None else library
    query = query_vector(angle, dtype=lib.keys.dtype)
    soft_out, weights = soft_lookup(query, lib.keys, lib.values, temperature)
    hard_out, index = hard_lookup(query, lib.keys, lib.values)

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
    ax_space.text(*(1.12 * query).tolist(), "query", color="tab:red", ha="center", fontsize=8)
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
