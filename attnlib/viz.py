"""Plotting primitives the lessons share, and the glue that turns a pure render function into a widget.

Every interactive view in the course follows one pattern:

1. a **pure render function** ``render(**state) -> matplotlib.figure.Figure`` (unit-tested, no widgets);
2. a **static figure**: the same function called once with fixed state, so the lesson reads without a kernel;
3. an **explorer**: :func:`explorer` wires ipywidgets controls to the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["attention_heatmap", "weight_bars", "new_figure", "explorer"]


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x, dtype=float)


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.6, **kwargs):
    """A figure of ``nrows x ncols`` axes sized for a notebook cell; returns ``(fig, axes)``.

    Uses ``matplotlib.figure.Figure`` directly (not pyplot), so render functions leak no global state and
    figures can be built in tests without a display.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, (axes[0, 0] if nrows == ncols == 1 else axes)


def attention_heatmap(
    ax,
    weights,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    annotate: bool | None = None,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    colorbar: bool = True,
    xlabel: str = "key (attended to)",
    ylabel: str = "query (attending)",
    masked=None,
):
    """Draw an (L, S) attention-weight matrix on ``ax``: rows are queries, columns keys, both token-labelled.

    ``annotate`` writes each weight in its cell (default: when the matrix is at most 12 x 12). ``masked``, an
    (L, S) boolean array with True where a key is masked out (not allowed), draws those cells in light grey,
    apart from the colour of a weight of 0, and says so in a legend entry.
    Returns the image so callers can add their own colorbar.
    """
    w = _as_numpy(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be a 2-D (L, S) matrix, got shape {w.shape}")
    L, S = w.shape
    query_labels = [str(i) for i in range(L)] if query_labels is None else list(query_labels)
    key_labels = [str(j) for j in range(S)] if key_labels is None else list(key_labels)
    if len(query_labels) != L or len(key_labels) != S:
        raise ValueError(
            f"got {len(query_labels)} query labels and {len(key_labels)} key labels for weights of shape {w.shape}"
        )
    shown, colours = w, cmap
    if masked is not None:
        import matplotlib
        from matplotlib.patches import Patch

        hidden = np.asarray(_as_numpy(masked), dtype=bool)
        if hidden.shape != w.shape:
            raise ValueError(f"masked must have the weights' shape {w.shape}, got {hidden.shape}")
        shown = np.ma.masked_where(hidden, w)
        colours = matplotlib.colormaps[cmap].copy()
        colours.set_bad("#d0d0d0")
        ax.legend(
            handles=[Patch(facecolor="#d0d0d0", label="masked (not allowed)")],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            fontsize=7,
            frameon=False,
        )
    image = ax.imshow(shown, cmap=colours, vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(S), key_labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(L), query_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if annotate is None:
        annotate = L <= 12 and S <= 12
    if annotate:
        top = vmax if vmax is not None else (w.max() if w.size else 1.0)
        for i in range(L):
            for j in range(S):
                if np.ma.is_masked(shown[i, j]):
                    continue
                colour = "black" if w[i, j] > 0.6 * top else "white"
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.8, label="weight")
    return image


def weight_bars(ax, weights, labels: Sequence[str], *, title: str | None = None, ylabel: str = "attention weight"):
    """Bar chart of one query's weights over labelled keys (values printed above the bars)."""
    w = _as_numpy(weights).reshape(-1)
    if len(labels) != w.size:
        raise ValueError(f"got {len(labels)} labels for {w.size} weights")
    bars = ax.bar(range(w.size), w, color="tab:blue")
    ax.bar_label(bars, labels=[f"{x:.2f}" for x in w], fontsize=8)
    ax.set_xticks(range(w.size), list(labels), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylabel(ylabel)
    ax.set_xlabel("key")
    ax.set_ylim(0, max(1.0, float(w.max()) * 1.15) if w.size else 1.0)
    if title:
        ax.set_title(title)
    return bars


def explorer(render: Callable[..., object], **controls):
    """An ipywidgets explorer over a pure render function.

    ``controls`` maps each keyword of ``render`` to an ipywidgets control (``FloatSlider``, ``Dropdown``, ...) or
    to a fixed value. Whenever a control moves, ``render(**state)`` is called and its figure replaces the last.
    Returns the widget (controls above, figure below) for the notebook to display. Every control's label is
    shown in full (``description_width="initial"``, not the default fixed width that cuts long labels), and the
    controls wrap onto a second row when they do not fit one.
    """
    import ipywidgets as widgets
    from IPython.display import display

    live = {k: v for k, v in controls.items() if isinstance(v, widgets.ValueWidget)}
    fixed = {k: v for k, v in controls.items() if k not in live}
    for control in live.values():
        style = getattr(control, "style", None)
        if style is not None and hasattr(style, "description_width"):
            style.description_width = "initial"

    def redraw(**state):
        display(render(**fixed, **state))

    row = widgets.HBox(list(live.values()), layout=widgets.Layout(flex_flow="row wrap"))
    return widgets.VBox([row, widgets.interactive_output(redraw, live)])
