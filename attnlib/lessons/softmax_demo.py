r"""Lesson 3 (softmax): the lesson's data, measurements and figures. The softmaxes themselves (naive, stable,
online) and the softmax Jacobian are written in the lesson's notebook, by the learner.

* :func:`exp_overflow_point` finds, for a dtype, the exact logit where ``exp`` overflows (the naive softmax's
  breaking point), by stepping through the representable numbers;
* The source material's "making" example (``MAKING_TOKENS``, ``MAKING_SCORES`` and the weights it illustrates,
  ``MAKING_ILLUSTRATED``, which sum to 1.12): :func:`temperature_loss` and :func:`fit_temperature` find the
  temperature whose softmax comes closest to them (``sdpa_demo`` re-exports the data).
* :func:`entropy` measures a distribution's spread (for the widget);
* :func:`render_temperature` (the lesson's widget) and :func:`render_online` are pure render functions.

Everything works along the last dim and over any leading dims; nothing modifies its inputs.
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
    "exp_overflow_point",
    "entropy",
    "temperature_loss",
    "fit_temperature",
    "render_temperature",
    "render_online",
]

# The source lesson's worked example: the scores of the query "making" against each word of its sentence, and
# the weights it illustrates "after softmax" (which are not a softmax of those scores: they sum to 1.12).
MAKING_TOKENS = ("The", "Transformer", "is", "making", "it", "possible", "to", "understand", "language")
MAKING_SCORES = (0.1, 0.8, 0.2, 0.9, 0.7, 0.3, 0.1, 0.6, 0.4)
MAKING_ILLUSTRATED = (0.02, 0.25, 0.03, 0.35, 0.20, 0.04, 0.02, 0.15, 0.06)


def exp_overflow_point(dtype: torch.dtype) -> dict[str, float]:
    r"""Where ``exp`` overflows in ``dtype``.

    Returns ``{"log_max": ln(finfo.max), "largest_finite": the largest x representable in dtype whose exp is
    finite, "overflows_at": the next representable x, whose exp is inf}``, found by stepping with
    ``torch.nextafter`` from :math:`\ln(\text{finfo.max})` rounded to the dtype (exp computed on the CPU).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    log_max = math.log(torch.finfo(dtype).max)
    up = torch.tensor(math.inf, dtype=dtype)
    down = torch.tensor(-math.inf, dtype=dtype)
    x = torch.tensor(log_max, dtype=dtype)
    while not torch.isfinite(torch.exp(x)):
        x = torch.nextafter(x, down)
    while torch.isfinite(torch.exp(torch.nextafter(x, up))):
        x = torch.nextafter(x, up)
    return {"log_max": log_max, "largest_finite": float(x), "overflows_at": float(torch.nextafter(x, up))}


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of distributions along the last dim; 0 * log 0 counts as 0. ln(n) when uniform."""
    p = check_float_tensor(p, "p")
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1)


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


# ------------------------------------------------------------------------------------------------- figures
def render_temperature(temperature: float = 1.0, *, show_source: bool = True):
    """Widget view: softmax(MAKING_SCORES / temperature) over the sentence, and entropy against temperature.

    Left: the weights of the query "making" over each word (bars); with ``show_source`` the weights the source
    lesson illustrates are drawn as red dots for comparison. Right: the entropy of the weights for temperatures
    from 0.05 to 20 (log scale), the current one marked, between 0 (one-hot) and ln 9 (uniform).
    """
    temperature = check_positive_float(temperature, "temperature")
    scores = torch.tensor(MAKING_SCORES, dtype=torch.float64)
    w = softmax(scores, temperature=temperature)
    fig, axes = viz.new_figure(2, width=5.0, height=3.8)
    ax_w, ax_h = axes[0]
    viz.weight_bars(ax_w, w, MAKING_TOKENS, title=f'weights of the query "making", T = {temperature:.3g}')
    for label in list(ax_w.texts):  # the bars' value labels would sit under the source's dots
        label.remove()
    ax_w.containers[0].set_label(f"softmax of the scores at T = {temperature:.3g}")
    if show_source:
        ax_w.plot(
            range(len(MAKING_TOKENS)),
            MAKING_ILLUSTRATED,
            "o",
            color="tab:red",
            label=f"source figure (sums to {sum(MAKING_ILLUSTRATED):.2f})",
        )
    ax_w.legend(fontsize=8, loc="upper right")
    ax_w.set_xlabel("word (key)")
    temps = torch.logspace(math.log10(0.05), math.log10(20.0), 200, dtype=torch.float64)
    ent = entropy(softmax(scores / temps[:, None], dim=-1))
    ax_h.semilogx(temps.numpy(), ent.numpy(), color="tab:blue", label="entropy at each T")
    ax_h.axhline(math.log(len(MAKING_SCORES)), color="grey", ls=":", label="uniform: ln 9")
    ax_h.plot([temperature], [float(entropy(w))], "k*", ms=12, label="current T")
    ax_h.set_ylim(-0.05, 2.4)
    ax_h.set_xlabel("temperature T")
    ax_h.set_ylabel("entropy of the weights (nats)")
    ax_h.set_title("low T: sharp; high T: flat")
    ax_h.legend(fontsize=8, loc="lower right")
    return fig


def render_online(x: torch.Tensor, trace) -> object:
    """The online softmax of one row ``x`` (S,) chunk by chunk, from the ``trace`` the lesson's own
    ``online_softmax`` records: one ``(start, stop, running max m, running sum l)`` per chunk. Left: the scores
    with the chunk boundaries and the running maximum; right: the running sum of exp(x - m) after each chunk."""
    x = check_float_tensor(x, "x")
    if x.dim() != 1:
        raise ValueError(f"render_online draws one row: x must be (S,), got shape {shape_str(x.shape)}")
    trace = [tuple(rec) for rec in trace]
    if not trace or any(len(rec) != 4 for rec in trace) or trace[-1][1] != x.numel():
        raise ValueError(f"trace must hold (start, stop, m, l) per chunk and end at S={x.numel()}, got {trace!r}")
    chunk_size = trace[0][1] - trace[0][0]
    fig, axes = viz.new_figure(2, width=5.0, height=3.4)
    ax_x, ax_l = axes[0]
    ax_x.plot(range(x.numel()), x.double().numpy(), "o", color="tab:blue", ms=4, label="score")
    for start, stop, m, _ in trace:
        ax_x.axvline(start - 0.5, color="grey", lw=0.8)
        ax_x.hlines(float(m), start - 0.5, stop - 0.5, color="tab:red", lw=2)
    ax_x.plot([], [], color="tab:red", lw=2, label="running max after the chunk")
    ax_x.set_xlabel("key position")
    ax_x.set_ylabel("score")
    ax_x.set_title(f"chunks of {chunk_size}")
    ax_x.legend(fontsize=8, loc="upper left")
    ax_l.plot(range(1, len(trace) + 1), [float(rec[3]) for rec in trace], "s-", color="tab:green")
    ax_l.set_xticks(range(1, len(trace) + 1))
    ax_l.set_xlabel("chunks processed")
    ax_l.set_ylabel("running sum of exp(x - running max)")
    ax_l.set_title("the denominator, built up and rescaled")
    return fig
