r"""Lesson 4 (scaled dot-product attention): the known-answer example, the "making" example, and its figures.

* :func:`known_answer` is the two-token example the course checks every implementation against
  (Q = K = [[1, 0, 2], [0, 4, 1]], V = [[0.5, 1.5], [2.5, 0.5]]).
* The "making" example of the source material: one query ("making") scored against the nine tokens of
  ``MAKING_TOKENS`` with ``MAKING_SCORES``. The source draws weights ``MAKING_ILLUSTRATED`` beside them, which are
  **not** the softmax of those scores (they do not even sum to 1). :func:`temperature_loss` measures how far
  ``softmax(scores / T)`` is from them and :func:`fit_temperature` finds the T that explains them best, with a
  golden-section search over ``log T`` (no SciPy needed). Lesson 3 meets the example first, so the data and
  both functions live in :mod:`attnlib.lessons.softmax_demo`; this module re-exports them.
* :func:`render_temperature` is the pure render function behind the lesson's figure and widget.

Shapes: scores and weights are 1-D (S,) tensors, one per key. Nothing modifies its inputs.
"""

from __future__ import annotations

import torch

from .. import viz
from .._checks import check_positive_float
from ..functional import softmax
from .softmax_demo import MAKING_ILLUSTRATED, MAKING_SCORES, MAKING_TOKENS, fit_temperature, temperature_loss

__all__ = [
    "MAKING_TOKENS",
    "MAKING_SCORES",
    "MAKING_ILLUSTRATED",
    "known_answer",
    "temperature_loss",
    "fit_temperature",
    "render_temperature",
]


def known_answer(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The known-answer example ``(Q, K, V)``: Q = K (2, 3), V (2, 2). Returns new tensors on each call."""
    q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 1.0]], dtype=dtype)
    v = torch.tensor([[0.5, 1.5], [2.5, 0.5]], dtype=dtype)
    return q, q.clone(), v


def render_temperature(
    temperature: float = 1.0,
    *,
    tokens: tuple[str, ...] = MAKING_TOKENS,
    scores: tuple[float, ...] = MAKING_SCORES,
    illustrated: tuple[float, ...] = MAKING_ILLUSTRATED,
):
    """Figure: the softmax of the "making" scores at ``temperature`` against the illustrated weights.

    Left: bars of ``softmax(scores / T)`` over the token-labelled keys, with the illustrated weights as red dots.
    Right: the squared error against the illustrated weights as a function of T (log axis), the current T and
    the best-fitting T marked. Pure: returns a new ``matplotlib.figure.Figure``.
    """
    temperature = check_positive_float(temperature, "temperature")
    s = torch.tensor(scores, dtype=torch.float64)
    target = torch.tensor(illustrated, dtype=torch.float64)
    if len(tokens) != s.numel():
        raise ValueError(f"got {len(tokens)} tokens for {s.numel()} scores")
    p = softmax(s, temperature=temperature)
    best_t, best_res = fit_temperature(s, target)

    fig, axes = viz.new_figure(2, width=5.0, height=3.8)
    ax_bars, ax_loss = axes[0]
    viz.weight_bars(ax_bars, p, tokens, title=f'query "making": softmax(scores / {temperature:.2f})')
    ax_bars.plot(range(len(tokens)), target.numpy(), "o", color="tab:red", label="illustrated in the source")
    ax_bars.set_ylim(0, 0.6)
    ax_bars.legend(fontsize=7, loc="upper left")
    ax_bars.set_xlabel("key token")

    grid = torch.logspace(-2, 1, 80, dtype=torch.float64)
    losses = [temperature_loss(s, target, float(t)) for t in grid]
    ax_loss.plot(grid.numpy(), losses, color="tab:blue")
    ax_loss.axvline(temperature, color="tab:orange", linestyle="--", label=f"T = {temperature:.2f}")
    ax_loss.plot([best_t], [best_res], "o", color="tab:red", label=f"best fit T = {best_t:.3f}")
    ax_loss.set_xscale("log")
    ax_loss.set_xlabel("temperature T")
    ax_loss.set_ylabel("squared error vs illustrated weights")
    ax_loss.set_title(f"error at this T: {temperature_loss(s, target, temperature):.4f}")
    ax_loss.legend(fontsize=7)
    return fig
