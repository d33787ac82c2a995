r"""Lesson 9 (positions): an order-dependent toy task, a tiny classifier to train on it, and the lesson's figures.

The task: a sequence of ``N`` tokens drawn with replacement from ``V`` symbols; the answer is the **first**
token. The multiset of tokens is the same whatever the order, so a model that cannot see positions can at best
guess the most frequent token; :func:`best_order_blind_accuracy` measures that ceiling on a batch.

:class:`FirstTokenModel` is one :class:`attnlib.MultiHeadAttention` layer with a residual, mean-pooled, with a
linear read-out; ``positions`` chooses what is added to the token embeddings: nothing, a learned table or the
sinusoidal table. The position code itself is the lesson's subject and lives in :mod:`attnlib.positions`.

Shapes: tokens (batch, N) int64; weights (batch, heads, N, N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import viz
from .._checks import check_positive_int, check_tensor, shape_str
from ..modules import MultiHeadAttention
from ..positions import alibi_bias, apply_rope, sinusoidal_positions

__all__ = [
    "N",
    "V",
    "EMBED",
    "POSITION_KINDS",
    "FirstTokenBatch",
    "make_batch",
    "best_order_blind_accuracy",
    "FirstTokenModel",
    "train_first_token",
    "accuracy",
    "rope_score_matrix",
    "render_permutation",
    "render_positions",
]

N, V, EMBED = 8, 16, 32
POSITION_KINDS = ("none", "learned", "sinusoidal")


@dataclass(frozen=True)
class FirstTokenBatch:
    """``tokens`` (B, N) and ``first`` (B,), the answer: ``tokens[:, 0]``."""

    tokens: torch.Tensor
    first: torch.Tensor


def make_batch(batch_size: int, generator: torch.Generator) -> FirstTokenBatch:
    """``batch_size`` sequences of N tokens drawn uniformly, with replacement, from V symbols."""
    batch_size = check_positive_int(batch_size, "batch_size")
    tokens = torch.randint(0, V, (batch_size, N), generator=generator)
    return FirstTokenBatch(tokens, tokens[:, 0].clone())


def best_order_blind_accuracy(tokens: torch.Tensor) -> float:
    """The accuracy of the best rule that sees only the multiset of tokens: guess the most frequent one.

    Given the multiset, the first token is token t with probability count(t) / N, so the best guess is the mode
    and it is right with probability max_t count(t) / N; this returns its mean over the batch.
    """
    check_tensor(tokens, "tokens")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (batch, N), got shape {shape_str(tokens.shape)}")
    counts = torch.zeros(tokens.shape[0], int(tokens.max()) + 1).scatter_add_(
        1, tokens, torch.ones_like(tokens, dtype=torch.float32)
    )
    return float((counts.max(-1).values / tokens.shape[1]).mean())


class FirstTokenModel(nn.Module):
    """Embed, add positions (or not), one attention layer with a residual, mean-pool, read out V logits."""

    def __init__(self, positions: str = "none", *, heads: int = 2):
        super().__init__()
        if positions not in POSITION_KINDS:
            raise ValueError(f"positions must be one of {POSITION_KINDS}, got {positions!r}")
        self.positions = positions
        self.token = nn.Embedding(V, EMBED)
        self.learned = nn.Parameter(torch.randn(N, EMBED) * 0.1) if positions == "learned" else None
        self.register_buffer("sinusoidal", sinusoidal_positions(N, EMBED), persistent=False)
        self.attn = MultiHeadAttention(EMBED, heads)
        self.out = nn.Linear(EMBED, V)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, V) and attention weights (batch, heads, N, N)."""
        h = self.token(tokens)
        if self.positions == "learned":
            h = h + self.learned
        elif self.positions == "sinusoidal":
            h = h + self.sinusoidal
        a, weights = self.attn(h)
        return self.out((h + a).mean(dim=1)), weights


def train_first_token(positions: str, *, seed: int = 0, steps: int = 150, batch_size: int = 64):
    """Train a :class:`FirstTokenModel` with Adam; returns ``(model, losses)``, the model in eval mode."""
    torch.manual_seed(seed)
    model = FirstTokenModel(positions)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(check_positive_int(steps, "steps")):
        b = make_batch(batch_size, g)
        loss = nn.functional.cross_entropy(model(b.tokens)[0], b.first)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


@torch.no_grad()
def accuracy(model: FirstTokenModel, batch: FirstTokenBatch) -> float:
    """Fraction of sequences whose first token the model names."""
    return float((model(batch.tokens)[0].argmax(-1) == batch.first).float().mean())


def rope_score_matrix(q: torch.Tensor, k: torch.Tensor, length: int, *, base: float = 10000.0) -> torch.Tensor:
    """Scores (length, length): entry (m, n) is RoPE(q at position m) · RoPE(k at position n), for one q and k (d,)."""
    length = check_positive_int(length, "length")
    qs = apply_rope(q.expand(1, 1, length, -1), base=base)[0, 0]
    ks = apply_rope(k.expand(1, 1, length, -1), base=base)[0, 0]
    return qs @ ks.T


def render_permutation(weights: torch.Tensor, permuted: torch.Tensor, tokens: list[str], perm: list[int]):
    """Two token-labelled heatmaps: the weights of a sequence, and of its permutation ``perm``."""
    if len(tokens) != weights.shape[-1] or sorted(perm) != list(range(len(tokens))):
        raise ValueError("tokens and perm must label and permute the weights' positions")
    fig, axes = viz.new_figure(2, width=4.4, height=3.8)
    a, b = axes[0]
    viz.attention_heatmap(a, weights, tokens, tokens, title="original order", vmax=None)
    shuffled = [tokens[i] for i in perm]
    viz.attention_heatmap(b, permuted, shuffled, shuffled, title="the same tokens, shuffled", vmax=None)
    fig.suptitle("without positions, every (query, key) pair keeps its weight wherever it moves")
    return fig


def render_positions(kind: str = "sinusoidal", base: float = 10000.0, dim: int = 32, length: int = 48, head: int = 0):
    """One position scheme at a time, two panels.

    * ``"sinusoidal"``: the table (position × feature) and the dot product PE[p]·PE[p'] of every pair;
    * ``"rope"``: the RoPE score matrix of one fixed query and key at every pair of positions (constant along
      each diagonal: it depends only on the offset) and its first row against the offset;
    * ``"alibi"``: head ``head``'s bias matrix (8 heads) and every head's bias against the distance.
    """
    dim = check_positive_int(dim, "dim")
    length = check_positive_int(length, "length")
    fig, axes = viz.new_figure(2, width=5.0, height=3.9)
    left, right = axes[0]
    if kind == "sinusoidal":
        table = sinusoidal_positions(length, dim, base=base)
        im = left.imshow(table.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        fig.colorbar(im, ax=left, label="PE value")
        left.set(xlabel="feature (sin, cos pairs)", ylabel="position p", title=f"sinusoidal table, base {base:g}")
        sim = table @ table.T
        im = right.imshow(sim.numpy(), cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=right, label="PE[p] · PE[p']")
        right.set(xlabel="position p'", ylabel="position p", title="dot products between positions")
    elif kind == "rope":
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(2, dim, generator=g).unbind(0)
        scores = rope_score_matrix(q, k, length, base=base)
        limit = float(scores.abs().max())  # a diverging map centred on 0
        im = left.imshow(scores.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        fig.colorbar(im, ax=left, label="score q·k after RoPE")
        left.set(xlabel="key position n", ylabel="query position m", title=f"RoPE scores, base {base:g}")
        later = length // 3
        offsets = np.arange(length - later)
        right.plot(offsets, scores[offsets, 0].numpy(), "o-", ms=4, label="key at n = 0")
        right.plot(offsets, scores[offsets + later, later].numpy(), "x--", ms=5, label=f"key at n = {later}")
        right.set(xlabel="offset m - n", ylabel="score", title="the same curve from any start")
        right.legend(fontsize=8)
    elif kind == "alibi":
        heads = 8
        if not 0 <= head < heads:
            raise ValueError(f"head must be in 0 .. {heads - 1}, got {head}")
        bias = alibi_bias(heads, length)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        shown = bias[head].masked_fill(~causal, float("nan"))
        im = left.imshow(shown.numpy(), cmap="magma", aspect="auto")
        fig.colorbar(im, ax=left, label="bias added to the score")
        left.set(xlabel="key position j", ylabel="query position i", title=f"ALiBi head {head} (future masked)")
        distance = np.arange(length)
        for h in range(heads):
            right.plot(distance, bias[h, -1].flip(0).numpy(), lw=2.5 if h == head else 1, label=f"head {h}")
        right.set(xlabel="distance i - j", ylabel="bias", title="every head's penalty")
        right.legend(fontsize=7, ncol=2)
    else:
        raise ValueError(f"kind must be 'sinusoidal', 'rope' or 'alibi', got {kind!r}")
    return fig
