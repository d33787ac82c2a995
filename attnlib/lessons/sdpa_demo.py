r"""Lesson 4 (scaled dot-product attention): the known-answer example and the lesson's explorer figure. The loop,
matrix and batched versions of attention are written in the lesson's notebook, by the learner.

* :func:`known_answer` is the two-token example the course checks every implementation against
  (Q = K = [[1, 0, 2], [0, 4, 1]], V = [[0.5, 1.5], [2.5, 0.5]]).
* :func:`explorer_example` is a fixed six-token example (pseudo-random queries, keys and values in [0, 1]);
  :func:`render_attention` is the pure render function behind the lesson's figure and widget: the weights and
  the outputs of :func:`attnlib.scaled_dot_product_attention` on it, with the scale multiplied by a factor.

Shapes: Q (L, d_k), K (S, d_k), V (S, d_v). Nothing modifies its inputs.
"""

from __future__ import annotations

import math

import torch

from .. import viz
from .._checks import check_positive_float
from ..functional import scaled_dot_product_attention

__all__ = ["TOKENS", "known_answer", "explorer_example", "render_attention"]

TOKENS = tuple(f"x{i}" for i in range(6))  # random vectors: labelled x0..x5, not with words


def known_answer(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The known-answer example ``(Q, K, V)``: Q = K (2, 3), V (2, 2). Returns new tensors on each call."""
    q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 1.0]], dtype=dtype)
    v = torch.tensor([[0.5, 1.5], [2.5, 0.5]], dtype=dtype)
    return q, q.clone(), v


def explorer_example(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six tokens (``TOKENS``): Q, K (6, 8) ~ N(0, 1) and V (6, 4) uniform in [0, 1], float64, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(len(TOKENS), 8, generator=g, dtype=torch.float64)
    k = torch.randn(len(TOKENS), 8, generator=g, dtype=torch.float64)
    v = torch.rand(len(TOKENS), 4, generator=g, dtype=torch.float64)
    return q, k, v


def render_attention(scale_factor: float = 1.0, *, seed: int = 0):
    """Figure: attention on :func:`explorer_example` with scale ``scale_factor / sqrt(d_k)``.

    Left: the weights (queries x keys, token-labelled). Middle: the outputs, one row per query. Right: the values,
    for comparison. A small factor makes every row of weights uniform, so every output row tends to the mean of
    the values; a large one makes each row one-hot, so each output row tends to a single value row. Pure: returns
    a new ``matplotlib.figure.Figure``.
    """
    scale_factor = check_positive_float(scale_factor, "scale_factor")
    q, k, v = explorer_example(seed)
    out, weights = scaled_dot_product_attention(q, k, v, scale=scale_factor / math.sqrt(q.shape[-1]))
    features = [f"feature {c}" for c in range(v.shape[-1])]
    fig, axes = viz.new_figure(3, width=4.0, height=3.8)
    ax_w, ax_out, ax_v = axes[0]
    viz.attention_heatmap(ax_w, weights, TOKENS, TOKENS, title=f"weights, scale x {scale_factor:.3g}")
    for ax, data, title, ylabel in (
        (ax_out, out, "output = weights @ V", "query"),
        (ax_v, v, "values V", "key"),
    ):
        image = viz.attention_heatmap(
            ax, data, TOKENS, features, title=title, colorbar=False, xlabel="value feature", ylabel=ylabel
        )
        fig.colorbar(image, ax=ax, shrink=0.8, label="value")
    spread = float(out.std(dim=0).mean())
    ax_out.set_title(f"output = weights @ V (spread across rows {spread:.2f})", fontsize=9)
    return fig
