r"""Lesson 4 (scaled dot-product attention): the known-answer example, the "making" example, and its figures.

* :func:`known_answer` is the two-token example the course checks every implementation against
  (Q = K = [[1, 0, 2], [0, 4, 1]], V = [[0.5, 1.5], [2.5, 0.5]]).
* The "making" example of the source material: one query ("making") scored against the nine tokens of
  ``MAKING_TOKENS`` with ``MAKING_SCORES``. The source draws weights ``MAKING_ILLUSTRATED`` beside them, which are
  **not** the softmax of those scores (they do not even sum to 1). :func:`temperature_loss` measures how far
  ``softmax(scores / T)`` is from them and :func:`fit_temperature` finds the T that explains them best, with a
  golden-section search over ``log T`` (no SciPy needed).
* :func:`render_temperature` is the pure render function behind the lesson's figure and widget.

Shapes: scores and weights are 1-D (S,) tensors, one per key. Nothing modifies its inputs.
"""

from __future__ import annotations

import math

import torch

from .. import viz
from .._checks import check_float_tensor, check_positive_float, check_positive_int, shape_str
from ..functional import softmax

__all__ = [
    "MAKING_TOKENS",
    "MAKING_SCORES",
    "MAKING_ILLUSTRATED",
    "known_answer",
    "temperature_loss",
    "fit_temperature",
    "render_temperature",
]

MAKING_TOKENS = ("The", "Transformer", "is", "making", "it", "possible", "to", "understand", "language")
MAKING_SCORES = (0.1, 0.8, 0.2, 0.9, 0.7, 0.3, 0.1, 0.6, 0.4)
MAKING_ILLUSTRATED = (0.02, 0.25, 0.03, 0.35, 0.20, 0.04, 0.02, 0.15, 0.06)


def known_answer(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The known-answer example ``(Q, K, V)``: Q = K (2, 3), V (2, 2). Returns new tensors on each call."""
    q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 1.0]], dtype=dtype)
    v = torch.tensor([[0.5, 1.5], [2.5, 0.5]], dtype=dtype)
    return q, q.clone(), v


def _check_pair(scores: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    scores = check_float_tensor(scores, "scores")
    target = check_float_tensor(target, "target")
    if scores.dim() != 1 or scores.shape != target.shape or scores.numel() < 2:
        raise ValueError(
            f"scores and target must be 1-D with the same length >= 2, got scores {shape_str(scores.shape)} and "
            f"target {shape_str(target.shape)}"
        )
    return scores, target


def temperature_loss(scores: torch.Tensor, target: torch.Tensor, temperature: float) -> float:
    r"""Sum of squared differences :math:`\sum_j (\mathrm{softmax}(s / T)_j - t_j)^2` between the softmax of the
    scores (S,) at ``temperature`` and the target weights (S,)."""
    scores, target = _check_pair(scores, target)
    temperature = check_positive_float(temperature, "temperature")
    p = softmax(scores.double(), temperature=temperature)
    return float(((p - target.double()) ** 2).sum())


def fit_temperature(
    scores: torch.Tensor, target: torch.Tensor, *, low: float = 0.01, high: float = 100.0, iters: int = 80
) -> tuple[float, float]:
    """The temperature T in [low, high] whose ``softmax(scores / T)`` is closest (least squares) to ``target``.

    Golden-section search on ``log T``, which needs the loss to have one minimum in the bracket (true for the
    lesson's data; the tests check it against a dense grid). Returns ``(T, residual)``, the residual being the
    minimal sum of squares :func:`temperature_loss`. ``iters`` golden steps shrink the bracket by 0.618 each.
    """
    scores, target = _check_pair(scores, target)
    low, high = check_positive_float(low, "low"), check_positive_float(high, "high")
    iters = check_positive_int(iters, "iters")
    if low >= high:
        raise ValueError(f"need low < high, got low={low} and high={high}")
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0

    def f(log_t: float) -> float:
        return temperature_loss(scores, target, math.exp(log_t))

    a, b = math.log(low), math.log(high)
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:  # the minimum lies in [c, b]
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    t = math.exp((a + b) / 2.0)
    return t, temperature_loss(scores, target, t)


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
