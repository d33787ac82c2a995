r"""Lesson 11 (attention variants): figures and a timing table.

* :func:`render_groups` — which key/value head each query head reads under grouped-query attention.
* :func:`render_window` — a sliding-window mask beside the causal one, and how many scores each keeps.
* :func:`kernel_weights` / :func:`render_linear_vs_softmax` — the weights linear attention implicitly uses,
  :math:`\phi(q_i)\cdot\phi(k_j) / \sum_j \phi(q_i)\cdot\phi(k_j)`, beside softmax's, as the scores get sharper.
* :func:`time_table` — median times of several functions at several lengths, measured in one run.

The mechanisms themselves (GQA, sliding windows, linear attention) are written in the lesson and in
:mod:`attnlib.variants`. Shapes: (batch, heads, seq, head_dim); boolean masks are True = may attend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import viz
from .._checks import check_positive_int
from ..masks import causal_mask
from ..variants import elu_feature_map, sliding_window_mask
from .cost_demo import median_time

__all__ = ["render_groups", "render_window", "kernel_weights", "render_linear_vs_softmax", "time_table"]


def render_groups(q_heads: int = 8, kv_heads: int = 2):
    """A (query head × key/value head) grid: 1 where query head h reads kv head h // (q_heads / kv_heads)."""
    q_heads = check_positive_int(q_heads, "q_heads")
    kv_heads = check_positive_int(kv_heads, "kv_heads")
    if q_heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide q_heads={q_heads}")
    grid = torch.zeros(q_heads, kv_heads)
    grid[torch.arange(q_heads), torch.arange(q_heads) // (q_heads // kv_heads)] = 1.0
    fig, ax = viz.new_figure(width=3.6, height=3.8)
    name = {1: "multi-query", q_heads: "multi-head"}.get(kv_heads, "grouped-query")
    viz.attention_heatmap(
        ax,
        grid,
        [f"q{h}" for h in range(q_heads)],
        [f"kv{g}" for g in range(kv_heads)],
        title=f"{name}: {q_heads} query heads, {kv_heads} kv heads",
        xlabel="key/value head",
        ylabel="query head",
        annotate=False,
        colorbar=False,
    )
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="1 = query head reads this kv head")
    return fig


def render_window(L: int = 16, window: int = 4):
    """The causal mask and the sliding-window mask (L × L), and the number of scores each keeps against L."""
    L = check_positive_int(L, "L")
    window = check_positive_int(window, "window")
    fig, axes = viz.new_figure(3, width=3.6, height=3.6)
    labels = [str(i) for i in range(L)]
    local = sliding_window_mask(L, window=window).float()
    for ax, mask, title in ((axes[0, 0], causal_mask(L).float(), "causal"), (axes[0, 1], local, f"window {window}")):
        image = viz.attention_heatmap(ax, mask, labels, labels, title=title, annotate=False, colorbar=False)
        fig.colorbar(image, ax=ax, shrink=0.8, label="1 = may attend")
    ns = np.array([2**p for p in range(6, 15)])
    full = ns * (ns + 1) / 2
    banded = ns * window - window * (window - 1) / 2
    ax = axes[0, 2]
    ax.loglog(ns, full, "o-", label="causal: L(L+1)/2")
    ax.loglog(ns, np.maximum(banded, 1), "s-", label=f"window {window}: ≈ L·{window}")
    ax.set(xlabel="sequence length L", ylabel="scores kept (allowed entries)", title="what the mask keeps")
    ax.legend(fontsize=8)
    return fig


def kernel_weights(
    q: torch.Tensor, k: torch.Tensor, feature_map: Callable[[torch.Tensor], torch.Tensor] = elu_feature_map
) -> torch.Tensor:
    r"""The (..., L, S) weights linear attention implies: :math:`\phi(q_i)\cdot\phi(k_j)` normalised over j."""
    kernel = feature_map(q) @ feature_map(k).transpose(-2, -1)
    return kernel / kernel.sum(-1, keepdim=True)


def render_linear_vs_softmax(sharpness: float = 1.0, L: int = 12, d: int = 16, seed: int = 0):
    """Softmax weights and linear attention's implied weights for the same q and k (q scaled by ``sharpness``)."""
    L = check_positive_int(L, "L")
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, L, d, generator=g).unbind(0)
    q = q * sharpness
    soft = torch.softmax(q @ k.T / d**0.5, dim=-1)
    lin = kernel_weights(q, k)
    fig, axes = viz.new_figure(2, width=4.4, height=3.9)
    labels = [str(i) for i in range(L)]
    top = float(max(soft.max(), lin.max()))
    viz.attention_heatmap(axes[0, 0], soft, labels, labels, title="softmax attention", annotate=False, vmax=top)
    viz.attention_heatmap(axes[0, 1], lin, labels, labels, title="linear attention (elu+1)", annotate=False, vmax=top)
    gap = float((soft - lin).abs().sum(-1).mean() / 2)
    fig.suptitle(
        f"query scale {sharpness:g}: mean of the rows' largest weights {float(soft.max(-1).values.mean()):.2f} "
        "(softmax) vs "
        f"{float(lin.max(-1).values.mean()):.2f} (linear), mean total-variation distance {gap:.2f}"
    )
    return fig


def time_table(fns: dict[str, Callable[[int], Callable[[], object]]], ns: Sequence[int], repeats: int = 3):
    """``{name: [seconds at each n]}``: ``fns[name](n)`` builds the call to time; medians of ``repeats`` calls."""
    return {name: [median_time(make(n), repeats=repeats) for n in ns] for name, make in fns.items()}
