r"""Lesson 7 (cross-attention): data, metrics and figures for a toy encoder-decoder that reverses digit strings.

The data: strings of ``MIN_LEN .. MAX_LEN`` digits, e.g. ``3 1 4``. The **source** is the string followed by an
end marker ``</s>`` and padding up to ``S = MAX_LEN + 1`` slots; the **target** is the reversed string, padded to
``L = MAX_LEN`` decoder steps. Lengths vary inside a batch, so the encoder's padding must be masked.

The lesson writes the model (encoder embeddings, one cross-attention layer, a read-out) and its training loop in
its own cells. This module holds what is not its subject: the data (:func:`make_batch`), the metrics
(:func:`evaluate`) and the figures. A model here is any ``nn.Module`` whose
``forward(src, lengths, use_mask=True)`` returns ``(logits (B, L, 10), weights (B, L, S))``.

Reversal means decoder step ``t`` should read source position ``n - 1 - t``: the anti-diagonal.
:func:`expected_source` gives that position, :func:`alignment_score` measures how much weight lands on it, and
:func:`render_alignment` / :func:`render_cross_attention_row` draw the map (pure render functions).

Shapes: ``src`` (batch, S) int64, ``tgt`` (batch, L) int64, ``lengths`` (batch,) int64; weights (batch, L, S).
Mask convention: boolean, True = may attend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import viz
from .._checks import check_positive_int, check_tensor, shape_str
from ..masks import padding_mask

__all__ = [
    "MIN_LEN",
    "MAX_LEN",
    "PAD",
    "EOS",
    "VOCAB",
    "Batch",
    "make_batch",
    "token_labels",
    "expected_source",
    "evaluate",
    "alignment_score",
    "padding_weight",
    "render_alignment",
    "render_cross_attention_row",
]

MIN_LEN, MAX_LEN = 3, 6
PAD, EOS = 10, 11  # digits are 0..9
VOCAB = 12
D_ENC, D_DEC = 24, 16


@dataclass(frozen=True)
class Batch:
    """A batch of reversal examples: ``src`` (B, S), ``tgt`` (B, L), ``lengths`` (B,); targets past a string's
    length hold ``PAD`` and are not scored."""

    src: torch.Tensor
    tgt: torch.Tensor
    lengths: torch.Tensor

    @property
    def source_mask(self) -> torch.Tensor:
        """Padding mask of the source, (B, 1, S), True = a real key (the digits and ``</s>``)."""
        return padding_mask(self.lengths + 1, self.src.shape[1])[:, 0]

    @property
    def target_valid(self) -> torch.Tensor:
        """(B, L) bool: which decoder steps produce a digit (t < length)."""
        return torch.arange(self.tgt.shape[1])[None, :] < self.lengths[:, None]


def make_batch(batch_size: int, generator: torch.Generator | None = None) -> Batch:
    """``batch_size`` random strings of ``MIN_LEN..MAX_LEN`` digits, with their reversals; deterministic given
    ``generator``."""
    batch_size = check_positive_int(batch_size, "batch_size")
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (batch_size,), generator=generator)
    digits = torch.randint(0, 10, (batch_size, MAX_LEN), generator=generator)
    pos = torch.arange(MAX_LEN)[None, :]
    real = pos < lengths[:, None]
    src = torch.full((batch_size, MAX_LEN + 1), PAD, dtype=torch.long)
    src[:, :MAX_LEN] = torch.where(real, digits, torch.full_like(digits, PAD))
    src[torch.arange(batch_size), lengths] = EOS
    # reversed: target t = digit at n - 1 - t
    rev_index = (lengths[:, None] - 1 - pos).clamp(min=0)
    tgt = torch.where(real, digits.gather(1, rev_index), torch.full_like(digits, PAD))
    return Batch(src, tgt, lengths)


def token_labels(tokens: torch.Tensor) -> list[str]:
    """Printable labels of a 1-D token sequence: digits, ``</s>`` and ``<pad>``."""
    tokens = check_tensor(tokens, "tokens")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D (seq,), got shape {shape_str(tokens.shape)}")
    names = {PAD: "<pad>", EOS: "</s>"}
    return [names.get(int(t), str(int(t))) for t in tokens]


def expected_source(lengths: torch.Tensor, L: int = MAX_LEN) -> torch.Tensor:
    """(B, L) int64: the source position decoder step t should read when reversing, ``n - 1 - t``; -1 where
    ``t >= n`` (no output there)."""
    lengths = check_tensor(lengths, "lengths")
    t = torch.arange(L)[None, :]
    pos = lengths[:, None] - 1 - t
    return torch.where(pos >= 0, pos, torch.full_like(pos, -1))


@torch.no_grad()
def evaluate(model: nn.Module, batch: Batch, use_mask: bool = True) -> dict[str, float]:
    """Token accuracy, whole-string accuracy, :func:`alignment_score` and :func:`padding_weight` on ``batch``."""
    logits, weights = model(batch.src, batch.lengths, use_mask=use_mask)
    valid = batch.target_valid
    correct = (logits.argmax(-1) == batch.tgt) | ~valid
    return {
        "token_accuracy": float(correct[valid].float().mean()),
        "string_accuracy": float(correct.all(dim=1).float().mean()),
        "alignment": alignment_score(weights, batch.lengths),
        "padding_weight": padding_weight(weights, batch.lengths),
    }


def alignment_score(weights: torch.Tensor, lengths: torch.Tensor) -> float:
    """Mean weight that decoder steps t < n put on the source position ``n - 1 - t`` (1.0 = a perfect
    anti-diagonal). ``weights`` (B, L, S)."""
    weights = check_tensor(weights, "weights").detach()
    if weights.dim() != 3 or weights.shape[0] != len(lengths):
        raise ValueError(f"weights must be (B, L, S) with B = len(lengths), got {shape_str(weights.shape)}")
    target = expected_source(lengths, weights.shape[1])
    valid = target >= 0
    picked = weights.gather(2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(picked[valid].mean())


def padding_weight(weights: torch.Tensor, lengths: torch.Tensor) -> float:
    """Mean total weight that the decoder steps t < n put on padding keys (positions after ``</s>``)."""
    weights = check_tensor(weights, "weights").detach()
    S = weights.shape[-1]
    pad = ~padding_mask(lengths + 1, S)[:, 0]  # (B, 1, S): True on padding
    valid = expected_source(lengths, weights.shape[1]) >= 0
    per_step = (weights * pad).sum(-1)
    return float(per_step[valid].mean())


def _axis_labels(batch: Batch, example: int) -> tuple[list[str], list[str]]:
    n = int(batch.lengths[example])
    src = token_labels(batch.src[example])
    keys = [f"{j}:{tok}" for j, tok in enumerate(src)]
    queries = [
        f"t={t} -> {int(batch.tgt[example, t])}" if t < n else f"t={t} (unused)" for t in range(batch.tgt.shape[1])
    ]
    return queries, keys


def _check_example(batch: Batch, example: int) -> int:
    if isinstance(example, bool) or not isinstance(example, int) or not 0 <= example < len(batch.lengths):
        raise ValueError(f"example must be an int in 0..{len(batch.lengths) - 1}, got {example!r}")
    return example


@torch.no_grad()
def render_alignment(models: dict[str, nn.Module], batch: Batch, example: int = 0):
    """One cross-attention heatmap per model (e.g. ``{"before training": m0, "after training": m1}``) for one
    example, token-labelled: rows are decoder steps (with the digit they should output), columns source tokens.
    The expected anti-diagonal cells are outlined in red."""
    example = _check_example(batch, example)
    if not models:
        raise ValueError("models must hold at least one model")
    fig, axes = viz.new_figure(len(models), width=4.6, height=3.9)
    axes = [axes] if len(models) == 1 else list(axes[0])
    queries, keys = _axis_labels(batch, example)
    target = expected_source(batch.lengths[example : example + 1], len(queries))[0]
    for ax, (name, model) in zip(axes, models.items(), strict=True):
        _, w = model(batch.src[example : example + 1], batch.lengths[example : example + 1])
        score = alignment_score(w, batch.lengths[example : example + 1])
        viz.attention_heatmap(
            ax,
            w[0],
            queries,
            keys,
            title=f"{name}: {score:.2f} on expected",
            xlabel="source token (key)",
            ylabel="decoder step (query)",
        )
        for t, j in enumerate(target.tolist()):
            if j >= 0:
                ax.add_patch(_outline(j, t))
    return fig


def _outline(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=2)


@torch.no_grad()
def render_cross_attention_row(model: nn.Module, batch: Batch, example: int = 0, step: int = 0):
    """The cross-attention of one decoder ``step`` of one ``example``: the whole map with that row outlined
    (left) and the row's weights over the source tokens (right), with the prediction in the title."""
    example = _check_example(batch, example)
    L = batch.tgt.shape[1]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < L:
        raise ValueError(f"step must be an int in 0..{L - 1}, got {step!r}")
    logits, w = model(batch.src[example : example + 1], batch.lengths[example : example + 1])
    queries, keys = _axis_labels(batch, example)
    fig, axes = viz.new_figure(2, width=4.6, height=3.9)
    ax_map, ax_row = axes[0]
    viz.attention_heatmap(
        ax_map,
        w[0],
        queries,
        keys,
        title="cross-attention map",
        xlabel="source token (key)",
        ylabel="decoder step (query)",
    )
    from matplotlib.patches import Rectangle

    ax_map.add_patch(Rectangle((-0.5, step - 0.5), len(keys), 1, fill=False, edgecolor="tab:red", linewidth=2))
    n = int(batch.lengths[example])
    predicted = int(logits[0, step].argmax())
    what = f"predicts {predicted}, should be {int(batch.tgt[example, step])}" if step < n else "no output here"
    viz.weight_bars(ax_row, w[0, step], keys, title=f"step t={step}: {what}")
    ax_row.set_xlabel("source token (key)")
    return fig
