r"""Lesson 10 (the Transformer block): the text the tiny model learns, how to measure what its heads do, and figures.

The text is generated here, nothing is downloaded. Every line is a random ``WORD_LEN``-letter word from a
``LETTERS``-letter alphabet followed by ``|``, written twice: ``"fbhkad|fbhkad|"``. The first word cannot be
predicted (the best a model can do is ``ln(len(LETTERS))`` nats per letter); everything after the first ``|`` can,
by looking back exactly ``WORD_LEN`` positions: to predict token t + 1 from position t, read position
t - WORD_LEN, the same slot of the previous copy. :func:`offset_weights` measures how much weight a head puts
at each offset, over many sequences and positions.

Shapes: tokens (batch, SEQ_LEN) int64; attention weights (batch, heads, SEQ_LEN, SEQ_LEN).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import viz
from .._checks import check_positive_int, check_tensor, shape_str

__all__ = [
    "LETTERS",
    "WORD_LEN",
    "SEQ_LEN",
    "VOCAB",
    "SEP",
    "make_text",
    "encode",
    "decode",
    "copy_queries",
    "per_position_loss",
    "offset_weights",
    "render_attention",
    "render_offsets",
    "render_position_loss",
]

LETTERS = "abcdefghijkl"
WORD_LEN = 6
SEQ_LEN = 2 * (WORD_LEN + 1)
VOCAB = list(LETTERS) + ["|"]
SEP = len(LETTERS)  # the id of "|"


def make_text(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` lines "word|word|" as token ids, shape (batch_size, SEQ_LEN)."""
    batch_size = check_positive_int(batch_size, "batch_size")
    words = torch.randint(0, len(LETTERS), (batch_size, WORD_LEN), generator=generator)
    segment = torch.cat([words, torch.full((batch_size, 1), SEP)], dim=1)
    return segment.repeat(1, 2)


def encode(text: str) -> torch.Tensor:
    """Characters -> ids (1-D int64)."""
    unknown = sorted(set(text) - set(VOCAB))
    if unknown:
        raise ValueError(f"text holds characters outside the vocabulary {''.join(VOCAB)!r}: {unknown}")
    return torch.tensor([VOCAB.index(c) for c in text])


def decode(ids: torch.Tensor) -> str:
    """Ids (1-D) -> characters."""
    check_tensor(ids, "ids")
    return "".join(VOCAB[int(i)] for i in ids)


def copy_queries() -> torch.Tensor:
    """The query positions t whose next token is a copy: t = WORD_LEN .. 2 WORD_LEN - 1 (x[t+1] == x[t - WORD_LEN])."""
    return torch.arange(WORD_LEN, 2 * WORD_LEN)


def per_position_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next-token prediction, (batch, SEQ_LEN - 1): entry t scores logits[:, t] on x[:, t+1]."""
    check_tensor(logits, "logits")
    if logits.dim() != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {shape_str(logits.shape)} must be (batch, T, vocab) for tokens {tokens.shape}")
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


def offset_weights(weights: torch.Tensor, queries: torch.Tensor, max_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the weight each head puts at offset o = 0 .. max_offset behind the query.

    ``weights`` (batch, heads, L, S); ``queries`` the query positions to average over (each needs
    ``t - o >= 0``; offsets that reach before position 0 count as weight 0). Returns two (heads, max_offset + 1)
    arrays, over batch × queries samples.
    """
    check_tensor(weights, "weights")
    if weights.dim() != 4:
        raise ValueError(f"weights must be (batch, heads, L, S), got {shape_str(weights.shape)}")
    max_offset = check_positive_int(max_offset, "max_offset")
    w = weights[:, :, queries]  # (B, H, Q, S)
    offsets = torch.arange(max_offset + 1)
    keys = queries[:, None] - offsets[None, :]  # (Q, O)
    valid = keys >= 0
    picked = w.gather(-1, keys.clamp(min=0).expand(w.shape[0], w.shape[1], -1, -1)) * valid  # (B, H, Q, O)
    samples = picked.permute(0, 2, 1, 3).reshape(-1, w.shape[1], max_offset + 1)  # (B*Q, H, O)
    return samples.mean(0).numpy(), samples.std(0).numpy()


def render_attention(
    weights: list[torch.Tensor], tokens: torch.Tensor, example: int = 0, layer: int = 0, head: int = 0
):
    """One head's causal attention map for one line, token-labelled, with the copy offset outlined."""
    if not 0 <= layer < len(weights):
        raise ValueError(f"layer must be in 0 .. {len(weights) - 1}, got {layer}")
    w = weights[layer]
    if not 0 <= head < w.shape[1] or not 0 <= example < w.shape[0]:
        raise ValueError(f"head must be in 0 .. {w.shape[1] - 1} and example in 0 .. {w.shape[0] - 1}")
    labels = [f"{c}{i}" for i, c in enumerate(decode(tokens[example]))]
    fig, ax = viz.new_figure(width=6.0, height=5.0)
    title = f"layer {layer}, head {head}\nwhite boxes: the key {WORD_LEN} positions back (the copy to read)"
    future = torch.ones(len(labels), len(labels), dtype=torch.bool).triu(1)  # the causal mask's hidden keys
    viz.attention_heatmap(ax, w[example, head], labels, labels, title=title, annotate=False, masked=future)
    for t in copy_queries().tolist():
        ax.add_patch(_box(t - WORD_LEN, t))
    return fig


def _box(col: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="white", lw=1.6)


def render_offsets(mean: np.ndarray, std: np.ndarray, layer: int = 0):
    """Bars: each head's mean weight at each offset behind the query, with ±1 standard deviation."""
    mean, std = np.asarray(mean), np.asarray(std)
    if mean.shape != std.shape or mean.ndim != 2:
        raise ValueError(f"mean and std must both be (heads, offsets), got {mean.shape} and {std.shape}")
    heads, n = mean.shape
    fig, ax = viz.new_figure(width=6.0, height=3.4)
    width = 0.8 / heads
    for h in range(heads):
        ax.bar(np.arange(n) + h * width, mean[h], width, yerr=std[h], capsize=2, label=f"head {h}")
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, [str(o) for o in range(n)])
    ax.set(
        xlabel="offset behind the query (t - key position)",
        ylabel="mean attention weight",
        ylim=(0, 1.1),
        title=f"layer {layer}: where the heads look, over the copy positions",
    )
    ax.legend(fontsize=8)
    return fig


def render_position_loss(before: torch.Tensor, after: torch.Tensor):
    """Mean next-token loss at each position, before and after training; (T - 1,) tensors."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 1:
        raise ValueError(f"before and after must be 1-D of one length, got {before.shape} and {after.shape}")
    fig, ax = viz.new_figure(width=6.0, height=3.2)
    t = np.arange(before.size)
    ax.plot(t, before, "o-", label="before training")
    ax.plot(t, after, "s-", label="after training")
    ax.axhline(np.log(len(LETTERS)), color="gray", ls=":", label=f"ln {len(LETTERS)} (a random letter)")
    ax.set_xticks(t, [f"{t_}→{t_ + 1}" for t_ in t], rotation=45)
    ax.set(xlabel="prediction: position t → token t + 1", ylabel="cross-entropy (nats)", title="loss per position")
    ax.legend(fontsize=8)
    return fig
