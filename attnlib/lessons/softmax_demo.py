r"""Lesson 3 (softmax): overflow, stability, temperature, -inf entries and the online (streaming) softmax.

* :func:`naive_softmax` is the textbook formula ``exp(x) / sum(exp(x))`` computed in ``x``'s own dtype: it
  overflows to inf/NaN once a logit passes :math:`\ln(\text{largest float})`; :func:`exp_overflow_point` finds
  that logit exactly for a dtype. :func:`max_shifted_softmax` subtracts the row maximum first (stable, but still
  NaN on a row that is entirely ``-inf``; :func:`attnlib.softmax` returns zeros there).
* :func:`online_softmax` computes the softmax one chunk at a time with a running maximum and a running sum, and
  :func:`streaming_attention` uses the same recurrence to compute attention in one pass over key/value chunks,
  the idea behind memory-efficient ("flash") attention. :func:`online_softmax_trace` records the running state.
* The source material's "making" example (``MAKING_TOKENS``, ``MAKING_SCORES`` and the weights it illustrates,
  ``MAKING_ILLUSTRATED``, which sum to 1.12): :func:`temperature_loss` and :func:`fit_temperature` find the
  temperature whose softmax comes closest to them (lesson 4 returns to it).
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
    "naive_softmax",
    "max_shifted_softmax",
    "exp_overflow_point",
    "entropy",
    "temperature_loss",
    "fit_temperature",
    "online_softmax_trace",
    "online_softmax",
    "streaming_attention",
    "render_temperature",
    "render_online",
]

# The source lesson's worked example: the scores of the query "making" against each word of its sentence, and
# the weights it illustrates "after softmax" (which are not a softmax of those scores: they sum to 1.12).
MAKING_TOKENS = ("The", "Transformer", "is", "making", "it", "possible", "to", "understand", "language")
MAKING_SCORES = (0.1, 0.8, 0.2, 0.9, 0.7, 0.3, 0.1, 0.6, 0.4)
MAKING_ILLUSTRATED = (0.02, 0.25, 0.03, 0.35, 0.20, 0.04, 0.02, 0.15, 0.06)


def naive_softmax(x: torch.Tensor) -> torch.Tensor:
    """``exp(x) / exp(x).sum()`` along the last dim, in ``x``'s dtype: the version that overflows. Do not use."""
    x = check_float_tensor(x, "x")
    e = torch.exp(x)
    return e / e.sum(dim=-1, keepdim=True)


def max_shifted_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax along the last dim after subtracting each row's maximum, in ``x``'s dtype.

    Never overflows (every exponent is <= 0 and the largest term is exactly 1), but a row that is entirely
    ``-inf`` still gives NaN: its maximum is -inf and ``-inf - (-inf)`` is NaN. :func:`attnlib.softmax` adds
    that case.
    """
    x = check_float_tensor(x, "x")
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


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


# ------------------------------------------------------------------------------------------- online softmax
def _chunks(n: int, chunk_size: int):
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _update(m: torch.Tensor, total: torch.Tensor, chunk: torch.Tensor):
    """One step of the recurrence: new running max, rescale factor for the old state, and the new sum."""
    m_new = torch.maximum(m, chunk.amax(dim=-1, keepdim=True))
    safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # all -inf so far: shift by 0
    rescale = torch.exp(m - safe)  # exp(-inf) = 0 on the first chunk
    total = total * rescale + torch.exp(chunk - safe).sum(dim=-1, keepdim=True)
    return m_new, safe, rescale, total


def online_softmax_trace(x: torch.Tensor, chunk_size: int) -> list[dict[str, torch.Tensor]]:
    """Run the online-softmax recurrence over chunks of the last dim; one record per chunk.

    Each record holds ``chunk`` ((start, stop)), ``max`` (running maximum m) and ``sum`` (running sum l of
    exp(x - m) over everything seen so far), both of shape (..., 1). The last record's m and l are the row's
    maximum and its softmax denominator.
    """
    x = check_float_tensor(x, "x")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have at least one entry along its last dim, got shape {shape_str(x.shape)}")
    m = torch.full((*x.shape[:-1], 1), -math.inf, dtype=x.dtype, device=x.device)
    total = torch.zeros_like(m)
    trace = []
    for start, stop in _chunks(x.shape[-1], chunk_size):
        m, _, _, total = _update(m, total, x[..., start:stop])
        trace.append({"chunk": (start, stop), "max": m.clone(), "sum": total.clone()})
    return trace


def online_softmax(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    r"""Softmax along the last dim, computed chunk by chunk (the streaming form).

    Pass 1 keeps only a running maximum :math:`m` and a running sum :math:`\ell` of :math:`e^{x - m}`; whenever
    the maximum grows from :math:`m` to :math:`m'` the sum so far is rescaled by :math:`e^{m - m'}`. Pass 2
    writes :math:`e^{x - m}/\ell`. A row that is entirely ``-inf`` gives zeros. Equals :func:`attnlib.softmax`.
    """
    trace = online_softmax_trace(x, chunk_size)
    m, total = trace[-1]["max"], trace[-1]["sum"]
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - safe)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def streaming_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int, scale: float | None = None
) -> torch.Tensor:
    r"""Attention in **one pass** over key/value chunks, never holding the full (L, S) weight matrix.

    q (..., L, E), k (..., S, E), v (..., S, Ev) -> output (..., L, Ev). For each chunk of keys: scores
    :math:`s = q k^\top \cdot \text{scale}`, new running max :math:`m'`, and the un-normalised output
    accumulator and the running sum are both rescaled by :math:`e^{m - m'}` before the chunk's
    :math:`e^{s - m'} V` and :math:`\sum e^{s - m'}` are added. One division at the end. Queries whose scores are
    all ``-inf`` give zeros. Equals ``softmax(q k^T * scale) v``.
    """
    q = check_float_tensor(q, "q")
    k = check_float_tensor(k, "k")
    v = check_float_tensor(v, "v")
    if q.dim() < 2 or k.shape[:-2] != q.shape[:-2] or v.shape[:-1] != k.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q, k, v must be (..., L, E), (..., S, E), (..., S, Ev) with shared leading dims, got "
            f"q {shape_str(q.shape)}, k {shape_str(k.shape)}, v {shape_str(v.shape)}"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check_positive_float(scale, "scale")
    m = torch.full((*q.shape[:-1], 1), -math.inf, dtype=q.dtype, device=q.device)
    total = torch.zeros_like(m)
    acc = torch.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
    for start, stop in _chunks(k.shape[-2], chunk_size):
        s = (q @ k[..., start:stop, :].transpose(-2, -1)) * scale  # (..., L, chunk)
        m, safe, rescale, total = _update(m, total, s)
        acc = acc * rescale + torch.exp(s - safe) @ v[..., start:stop, :]
    return acc / torch.where(total > 0, total, torch.ones_like(total))


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
    ax_h.semilogx(temps.numpy(), ent.numpy(), color="tab:blue")
    ax_h.axhline(math.log(len(MAKING_SCORES)), color="grey", ls=":", label="uniform: ln 9")
    ax_h.plot([temperature], [float(entropy(w))], "k*", ms=12, label="current T")
    ax_h.set_ylim(-0.05, 2.4)
    ax_h.set_xlabel("temperature T")
    ax_h.set_ylabel("entropy of the weights (nats)")
    ax_h.set_title("low T: sharp; high T: flat")
    ax_h.legend(fontsize=8, loc="lower right")
    return fig


def render_online(x: torch.Tensor, chunk_size: int):
    """The online softmax of one row ``x`` (S,) chunk by chunk: the scores with chunk boundaries and the running
    maximum (left), and the running sum of exp(x - m) after each chunk (right)."""
    x = check_float_tensor(x, "x")
    if x.dim() != 1:
        raise ValueError(f"render_online draws one row: x must be (S,), got shape {shape_str(x.shape)}")
    trace = online_softmax_trace(x.double(), chunk_size)
    fig, axes = viz.new_figure(2, width=5.0, height=3.4)
    ax_x, ax_l = axes[0]
    ax_x.plot(range(x.numel()), x.double().numpy(), "o", color="tab:blue", ms=4, label="score")
    for rec in trace:
        start, stop = rec["chunk"]
        ax_x.axvline(start - 0.5, color="grey", lw=0.8)
        ax_x.hlines(float(rec["max"]), start - 0.5, stop - 0.5, color="tab:red", lw=2)
    ax_x.plot([], [], color="tab:red", lw=2, label="running max after the chunk")
    ax_x.set_xlabel("key position")
    ax_x.set_ylabel("score")
    ax_x.set_title(f"chunks of {chunk_size}")
    ax_x.legend(fontsize=8, loc="lower right")
    ax_l.plot(range(1, len(trace) + 1), [float(r["sum"]) for r in trace], "s-", color="tab:green")
    ax_l.set_xticks(range(1, len(trace) + 1))
    ax_l.set_xlabel("chunks processed")
    ax_l.set_ylabel("running sum of exp(x - running max)")
    ax_l.set_title("the denominator, built up and rescaled")
    return fig
