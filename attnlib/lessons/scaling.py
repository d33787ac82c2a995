r"""Lesson 2 (similarity and scaling): the lesson's figures, its data and an optimiser. The variance measurement,
the one-head model and its training loop are written in the lesson's notebook, by the learner.

* :func:`render_variance` plots the variances the notebook measured, beside the theory (:math:`d_k` and 1);
* :func:`render_scaling` is the pure render function behind the lesson's widget (knobs: ``d_k``, ``scaled``);
* :func:`make_matching_batch` generates the "find the matching token" task;
* :class:`Optimiser` is plain SGD or Adam written out (the same update as ``torch.optim``'s).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .. import viz
from .._checks import check_positive_float, check_positive_int
from ..functional import attention_scores, softmax

__all__ = [
    "TOKENS",
    "DIMS",
    "render_variance",
    "render_scaling",
    "make_matching_batch",
    "Optimiser",
]

# eight tokens of a sentence from the lesson's source material, used to label the widget's heatmap
TOKENS = tuple(f"x{i}" for i in range(8))  # random vectors: labelled x0..x7, not with words

DIMS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _scale(d_k: int, scaled: bool) -> float:
    return 1.0 / math.sqrt(d_k) if scaled else 1.0


def render_variance(curve: dict):
    """Log-log plot of measured score variances against d_k, with and without 1/sqrt(d_k), beside the theory.

    ``curve`` holds the lesson's measurements: ``{"d_k": [...], "unscaled": [...], "scaled": [...],
    "n_samples": pairs per point}``. Pure: returns a new Figure.
    """
    if not all(key in curve for key in ("d_k", "unscaled", "scaled", "n_samples")):
        raise ValueError(f"curve needs the keys d_k, unscaled, scaled, n_samples; got {sorted(curve)}")
    n_samples = curve["n_samples"]
    fig, ax = viz.new_figure(width=5.6, height=3.8)
    ax.loglog(curve["d_k"], curve["unscaled"], "o-", label=r"measured, $q\cdot k$", color="tab:red")
    ax.loglog(curve["d_k"], curve["scaled"], "s-", label=r"measured, $q\cdot k/\sqrt{d_k}$", color="tab:blue")
    ax.loglog(curve["d_k"], curve["d_k"], ":", color="tab:red", label=r"theory: $d_k$")
    ax.loglog(curve["d_k"], [1.0] * len(curve["d_k"]), ":", color="tab:blue", label="theory: 1")
    ax.set_xlabel(r"key dimension $d_k$")
    ax.set_ylabel("variance of the score")
    ax.set_title(f"score variance, {n_samples} random (q, k) pairs per point")
    ax.legend(fontsize=8)
    return fig


def _largest_weight(d_k: int, scaled: bool, n_keys: int = 8, trials: int = 200, seed: int = 0) -> float:
    """Mean largest attention weight of one random query over ``n_keys`` random keys, q, k ~ N(0, I_{d_k})."""
    return float(_random_weights(d_k, scaled, 1, n_keys, trials, seed).amax(-1).mean())


@lru_cache(maxsize=4)
def _largest_weight_curves(n_keys: int, trials: int) -> dict[bool, list[float]]:
    return {scaled: [_largest_weight(d, scaled, n_keys, trials) for d in DIMS] for scaled in (False, True)}


def _random_weights(d_k: int, scaled: bool, n_queries: int, n_keys: int, trials: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(trials, n_queries, d_k, generator=g)
    k = torch.randn(trials, n_keys, d_k, generator=g)
    return softmax(attention_scores(q, k, scale=_scale(d_k, scaled)), dim=-1)


def render_scaling(d_k: int = 64, scaled: bool = False, *, seed: int = 0):
    """Widget view: random attention over ``TOKENS`` at this d_k, and how saturation grows with d_k.

    Left: heatmap of softmax(q k^T * scale) for 8 random token queries/keys of dimension ``d_k`` (scale
    1/sqrt(d_k) if ``scaled`` else 1). Right: mean largest weight and mean softmax-Jacobian norm against d_k for
    both settings, the current one marked. Pure: returns a new Figure.
    """
    d_k = check_positive_int(d_k, "d_k")
    n = len(TOKENS)
    w = _random_weights(d_k, bool(scaled), n, n, 1, seed)[0]
    fig, axes = viz.new_figure(2, width=5.2, height=4.0)
    ax_map, ax_curve = axes[0]
    label = "q k^T / sqrt(d_k)" if scaled else "q k^T (no scaling)"
    viz.attention_heatmap(ax_map, w, TOKENS, TOKENS, title=f"softmax({label}), d_k = {d_k}")
    curves = _largest_weight_curves(n, 200)
    for flag, colour, name in ((False, "tab:red", "no scaling"), (True, "tab:blue", "divided by sqrt(d_k)")):
        ax_curve.semilogx(DIMS, curves[flag], "o-", color=colour, label=name)
    ax_curve.axhline(1 / n, color="grey", ls=":", lw=1, label=f"even spread: 1/{n}")
    ax_curve.axvline(d_k, color="grey", lw=1)
    ax_curve.plot([d_k], [float(w.max(-1).values.mean())], "k*", ms=12, label="this heatmap")
    ax_curve.set_xlabel(r"key dimension $d_k$")
    ax_curve.set_ylabel(f"mean largest weight ({n} keys)")
    ax_curve.set_ylim(0, 1.05)
    ax_curve.set_title("one-hot weights as d_k grows")
    ax_curve.legend(fontsize=7, loc="center right")
    return fig


# ----------------------------------------------------------------------------------------- the training run
def make_matching_batch(
    batch: int, vocab: int = 8, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of the "find the matching token" task.

    Each sequence is a random permutation of the ``vocab`` tokens (so every token appears exactly once); the query
    is one of them. Returns ``tokens`` (batch, vocab), ``query`` (batch,) and ``target`` (batch,), the position
    of the query's token in the sequence, i.e. where attention should put all its weight.
    """
    batch = check_positive_int(batch, "batch")
    vocab = check_positive_int(vocab, "vocab")
    tokens = torch.rand(batch, vocab, generator=generator).argsort(dim=-1)
    target = torch.randint(vocab, (batch,), generator=generator)
    query = tokens[torch.arange(batch), target]
    return tokens, query, target


class Optimiser:
    """Plain SGD or Adam (the same update as ``torch.optim.SGD`` / ``torch.optim.Adam`` with default settings).

    Written out so a lesson's first training step does not pay for ``torch.optim``'s lazy imports (several
    seconds on a busy 2-core machine). ``step(grads)`` updates the parameters in place, under ``no_grad``.
    """

    def __init__(self, params, kind: str = "sgd", lr: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8):
        if kind not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")
        self.params, self.kind, self.lr = list(params), kind, check_positive_float(lr, "lr")
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            if self.kind == "sgd":
                p.add_(g, alpha=-self.lr)
                continue
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**self.t)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))
