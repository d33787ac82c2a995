r"""Lesson 2 (similarity and scaling): why attention divides the scores by :math:`\sqrt{d_k}`.

* :func:`dot_product_variance` measures :math:`\mathrm{Var}(q\cdot k)` for random unit-variance q and k: it grows
  like :math:`d_k` unscaled and stays near 1 after dividing by :math:`\sqrt{d_k}`; :func:`render_variance`
  plots it.
* :func:`softmax_jacobian` and :func:`saturation` show what large scores do: the softmax becomes one-hot and its
  Jacobian, the only path for gradients to reach the scores, goes to zero.
* :func:`render_scaling` is the pure render function behind the lesson's widget (knobs: ``d_k``, ``scaled``).
* :func:`train_matcher` is a tiny retrieval model (about 4k parameters) that learns with the scale and
  flatlines without it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .. import viz
from .._checks import check_float_tensor, check_positive_float, check_positive_int, shape_str
from ..functional import attention_scores, softmax

__all__ = [
    "TOKENS",
    "dot_product_variance",
    "variance_curve",
    "render_variance",
    "softmax_jacobian",
    "saturation",
    "render_scaling",
    "make_matching_batch",
    "TokenMatcher",
    "Optimiser",
    "train_matcher",
]

# eight tokens of a sentence from the lesson's source material, used to label the widget's heatmap
TOKENS = ("The", "animal", "didn't", "cross", "the", "street", "because", "it")

DIMS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _scale(d_k: int, scaled: bool) -> float:
    return 1.0 / math.sqrt(d_k) if scaled else 1.0


def dot_product_variance(
    d_k: int, *, scaled: bool = False, n_samples: int = 4000, generator: torch.Generator | None = None
) -> float:
    r"""Measured variance of :math:`q\cdot k` (times :math:`1/\sqrt{d_k}` if ``scaled``) for q, k ~ N(0, I_{d_k}).

    Theory: :math:`d_k` unscaled, exactly 1 scaled. Uses ``n_samples`` independent pairs, in float64.
    """
    d_k = check_positive_int(d_k, "d_k")
    n_samples = check_positive_int(n_samples, "n_samples")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to estimate a variance, got {n_samples}")
    q = torch.randn(n_samples, d_k, generator=generator, dtype=torch.float64)
    k = torch.randn(n_samples, d_k, generator=generator, dtype=torch.float64)
    dots = (q * k).sum(-1) * _scale(d_k, scaled)
    return float(dots.var())


def variance_curve(dims=DIMS, *, n_samples: int = 4000, seed: int = 0) -> dict[str, list[float]]:
    """``{"n_samples", "d_k": dims, "unscaled": [...], "scaled": [...]}``: measured variances for each ``d_k``."""
    g = torch.Generator().manual_seed(seed)
    dims = [check_positive_int(d, "d_k") for d in dims]
    return {
        "n_samples": n_samples,
        "d_k": dims,
        "unscaled": [dot_product_variance(d, scaled=False, n_samples=n_samples, generator=g) for d in dims],
        "scaled": [dot_product_variance(d, scaled=True, n_samples=n_samples, generator=g) for d in dims],
    }


def render_variance(dims=DIMS, *, n_samples: int = 4000, seed: int = 0, curve: dict | None = None):
    """Log-log plot of the measured variance of the scores against d_k, with and without 1/sqrt(d_k).

    Pass ``curve`` (the output of :func:`variance_curve`) to plot measurements already made.
    """
    curve = variance_curve(dims, n_samples=n_samples, seed=seed) if curve is None else curve
    n_samples = curve.get("n_samples", n_samples)
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


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    r"""Jacobian of the softmax at output ``p`` (..., n): :math:`\partial p_i/\partial s_j = p_i(\delta_{ij} - p_j)`.

    Shape (..., n, n). It is all zeros when ``p`` is one-hot, which is why saturated attention stops learning.
    """
    p = check_float_tensor(p, "p")
    if p.dim() == 0:
        raise ValueError("p must be a probability vector (..., n), got a 0-dim tensor")
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def _random_weights(d_k: int, scaled: bool, n_queries: int, n_keys: int, trials: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(trials, n_queries, d_k, generator=g)
    k = torch.randn(trials, n_keys, d_k, generator=g)
    return softmax(attention_scores(q, k, scale=_scale(d_k, scaled)), dim=-1)


def saturation(d_k: int, *, scaled: bool, n_keys: int = 8, trials: int = 500, seed: int = 0) -> dict[str, float]:
    """How one-hot random attention gets: mean largest weight and mean Frobenius norm of the softmax Jacobian.

    q and k are N(0, I_{d_k}); each of ``trials`` draws has one query and ``n_keys`` keys. A uniform softmax over
    8 keys has largest weight 0.125 and Jacobian norm 0.33; a one-hot one has 1 and 0.
    """
    d_k = check_positive_int(d_k, "d_k")
    n_keys = check_positive_int(n_keys, "n_keys")
    trials = check_positive_int(trials, "trials")
    w = _random_weights(d_k, scaled, 1, n_keys, trials, seed)[:, 0]  # (trials, n_keys)
    jac = softmax_jacobian(w).flatten(-2).norm(dim=-1)
    return {"max_weight": float(w.max(-1).values.mean()), "jacobian_norm": float(jac.mean())}


@lru_cache(maxsize=4)
def _saturation_curves(n_keys: int, trials: int) -> dict[bool, tuple[list[float], list[float]]]:
    out = {}
    for scaled in (False, True):
        stats = [saturation(d, scaled=scaled, n_keys=n_keys, trials=trials) for d in DIMS]
        out[scaled] = ([s["max_weight"] for s in stats], [s["jacobian_norm"] for s in stats])
    return out


def render_scaling(d_k: int = 64, scaled: bool = False, *, seed: int = 0):
    """Widget view: random attention over ``TOKENS`` at this d_k, and how saturation grows with d_k.

    Left: heatmap of softmax(q k^T * scale) for 8 random token queries/keys of dimension ``d_k`` (scale
    1/sqrt(d_k) if ``scaled`` else 1). Right: mean largest weight and mean softmax-Jacobian norm against d_k for
    both settings, the current one marked. Pure: returns a new Figure.
    """
    d_k = check_positive_int(d_k, "d_k")
    n = len(TOKENS)
    w = _random_weights(d_k, bool(scaled), n, n, 1, seed)[0]
    jac = float(softmax_jacobian(w).flatten(-2).norm(dim=-1).mean())
    fig, axes = viz.new_figure(2, width=5.2, height=4.0)
    ax_map, ax_curve = axes[0]
    label = "q k^T / sqrt(d_k)" if scaled else "q k^T (no scaling)"
    viz.attention_heatmap(ax_map, w, TOKENS, TOKENS, title=f"softmax({label}), d_k = {d_k}")
    curves = _saturation_curves(n, 200)
    for flag, colour, name in ((False, "tab:red", "unscaled"), (True, "tab:blue", "scaled")):
        max_w, jac_norm = curves[flag]
        ax_curve.semilogx(DIMS, max_w, "o-", color=colour, label=f"{name}: mean largest weight")
        ax_curve.semilogx(DIMS, jac_norm, "s--", color=colour, label=f"{name}: softmax Jacobian norm")
    ax_curve.axvline(d_k, color="grey", lw=1)
    ax_curve.plot([d_k], [float(w.max(-1).values.mean())], "k*", ms=12, label="this heatmap")
    ax_curve.plot([d_k], [jac], "kx", ms=10)
    ax_curve.set_xlabel(r"key dimension $d_k$")
    ax_curve.set_ylabel("largest weight / gradient size")
    ax_curve.set_ylim(-0.02, 1.05)
    ax_curve.set_title("saturation as d_k grows")
    ax_curve.legend(fontsize=7, loc="center right", bbox_to_anchor=(1.0, 0.62))
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


class TokenMatcher(torch.nn.Module):
    r"""One attention head over token ids: ``q = W_Q[query]``, ``k_j = W_K[tokens_j]``, weights = softmax(q.k * scale).

    ``W_Q`` and ``W_K`` are (vocab, d_k), initialised N(0, 1) so q and k have unit-variance entries, as a layer
    with standard initialisation produces. ``scaled=True`` multiplies scores by 1/sqrt(d_k), else by 1.
    ``forward(tokens (B, S), query (B,)) -> weights (B, S)``.
    """

    def __init__(self, vocab: int = 8, d_k: int = 256, *, scaled: bool = True, generator=None):
        super().__init__()
        self.vocab = check_positive_int(vocab, "vocab")
        self.d_k = check_positive_int(d_k, "d_k")
        self.scale = _scale(d_k, scaled)
        # Drawn in float32, trained in float64: the unscaled model sits on a knife edge (scores with std ~ sqrt(d_k)),
        # where float32 rounding, which differs between CPUs, would change the printed history between machines.
        self.W_Q = torch.nn.Parameter(torch.randn(vocab, d_k, generator=generator).double())
        self.W_K = torch.nn.Parameter(torch.randn(vocab, d_k, generator=generator).double())

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or query.shape != tokens.shape[:1]:
            raise ValueError(
                f"tokens must be (B, S) and query (B,), got tokens {shape_str(tokens.shape)} and query "
                f"{shape_str(query.shape)}"
            )
        q = self.W_Q[query].unsqueeze(-2)  # (B, 1, d_k)
        k = self.W_K[tokens]  # (B, S, d_k)
        return softmax(attention_scores(q, k, scale=self.scale), dim=-1).squeeze(-2)


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


def train_matcher(
    scaled: bool,
    *,
    d_k: int = 256,
    vocab: int = 8,
    steps: int = 150,
    batch: int = 64,
    optimizer: str = "sgd",
    lr: float | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Train a :class:`TokenMatcher` on the matching task; return its history.

    The values are one-hot position codes, so the attention output *is* the weight vector, and the loss is the
    squared error between it and the target position's one-hot code (a loss taken after the softmax, as in a
    real network). Same seed, data and initialisation for ``scaled=True`` and ``False``. ``optimizer`` is
    ``"sgd"`` (default lr 1.0) or ``"adam"`` (default lr 0.05).

    Returns ``{"losses": [...] and "max_weight": [...] (per step: loss, and the mean largest attention weight),
    "accuracy": accuracy on the last batch, "wrong_score_grad": median norm of d(loss)/d(scores) over the last
    batch's wrongly answered examples (0.0 if there are none)}``.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    steps = check_positive_int(steps, "steps")
    lr = (1.0 if optimizer == "sgd" else 0.05) if lr is None else check_positive_float(lr, "lr")
    g = torch.Generator().manual_seed(seed)
    model = TokenMatcher(vocab, d_k, scaled=scaled, generator=g)
    params = [model.W_Q, model.W_K]
    opt = Optimiser(params, optimizer, lr)
    eye = torch.eye(vocab, dtype=torch.float64)
    losses: list[float] = []
    max_weight: list[float] = []
    history: dict[str, object] = {}
    for step in range(steps):
        tokens, query, target = make_matching_batch(batch, vocab, g)
        weights = model(tokens, query)
        per_example = ((weights - eye[target]) ** 2).sum(-1)
        loss = per_example.mean()
        if step == steps - 1:  # the gradient each wrongly answered example still sends back to its scores
            d_weights = torch.autograd.grad(per_example.sum(), weights, retain_graph=True)[0]
            d_scores = (softmax_jacobian(weights.detach()) @ d_weights.unsqueeze(-1)).squeeze(-1).norm(dim=-1)
            wrong = weights.argmax(-1) != target
            history["wrong_score_grad"] = float(d_scores[wrong].median()) if wrong.any() else 0.0
        opt.step(torch.autograd.grad(loss, params))
        losses.append(float(loss.detach()))
        max_weight.append(float(weights.detach().max(-1).values.mean()))
    history["losses"] = losses
    history["max_weight"] = max_weight
    history["accuracy"] = float((weights.argmax(-1) == target).float().mean())
    return history
