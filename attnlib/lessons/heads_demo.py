r"""Lesson 8 (multi-head attention): the two-lookup task, a small two-head model and its training, and figures.

The lesson writes split/merge and the multi-head module itself; this module holds the toy task around it.

The toy task needs two different lookups at once. A sequence holds ``K`` distinct symbols in a random order,
then the same ``K`` symbols again in another random order (``SEQ_LEN = 2K`` tokens). At every position ``i`` of
the second half the model must output **two** things:

* the **previous token** ``x[i-1]`` — found by *position* (look one step back);
* the **position of the earlier copy** of the current token, the ``j < K`` with ``x[j] == x[i]`` — found by
  *content* (look for the same symbol).

One :class:`attnlib.MultiHeadAttention` layer with two heads reads token + position embeddings under a
"strictly earlier" mask (query ``i`` sees keys ``j < i``), and two linear read-outs predict the two answers from
its output. Neither answer can come from the query token itself. :func:`head_scores` measures, per head, the
mean weight on the previous position and on the matching position, so the lesson can report honestly how far
each head specialised.

Shapes: tokens (batch, SEQ_LEN) int64; per-head weights (batch, heads, SEQ_LEN, SEQ_LEN). Boolean masks are
True = may attend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import viz
from .._checks import check_positive_int, check_tensor, shape_str
from ..modules import MultiHeadAttention

__all__ = [
    "K",
    "SEQ_LEN",
    "VOCAB",
    "CopyBatch",
    "make_batch",
    "strictly_earlier_mask",
    "TwoLookupModel",
    "train_two_lookups",
    "evaluate",
    "head_scores",
    "render_head",
]

K = 6  # distinct symbols per sequence; the sequence is 2K tokens long
SEQ_LEN = 2 * K
VOCAB = 16
EMBED, HEADS = 32, 2
PREV_COLOUR, MATCH_COLOUR, OTHER_COLOUR = "tab:orange", "magenta", "tab:gray"  # boxes on the map = bars


@dataclass(frozen=True)
class CopyBatch:
    """``tokens`` (B, SEQ_LEN); targets for the second-half positions ``K .. 2K-1``: ``prev`` (B, K) the previous
    token and ``match`` (B, K) the position of the earlier copy of the current token."""

    tokens: torch.Tensor
    prev: torch.Tensor
    match: torch.Tensor


def make_batch(batch_size: int, generator: torch.Generator | None = None) -> CopyBatch:
    """``batch_size`` random sequences (``K`` distinct symbols from ``VOCAB``, then the same symbols reshuffled)."""
    batch_size = check_positive_int(batch_size, "batch_size")
    symbols = torch.rand(batch_size, VOCAB, generator=generator).argsort(-1)[:, :K]  # K distinct symbols each
    order = torch.rand(batch_size, K, generator=generator).argsort(-1)  # second half: a reshuffle
    tokens = torch.cat([symbols, symbols.gather(1, order)], dim=1)
    prev = tokens[:, K - 1 : SEQ_LEN - 1]
    return CopyBatch(tokens, prev, order)  # second-half token i = K + m is first-half token order[m]


def strictly_earlier_mask(L: int) -> torch.Tensor:
    """(L, L) bool, True where key j < query i: the causal mask without the diagonal (row 0 sees nothing)."""
    L = check_positive_int(L, "L")
    return torch.ones(L, L, dtype=torch.bool).tril(diagonal=-1)


class TwoLookupModel(nn.Module):
    """Token + position embeddings -> 2-head :class:`attnlib.MultiHeadAttention` -> two read-outs.

    ``forward(tokens)`` returns ``(prev_logits (B, K, VOCAB), match_logits (B, K, K), weights (B, H, L, L))``,
    the logits for the second-half positions only.
    """

    def __init__(self, embed_dim: int = EMBED, num_heads: int = HEADS):
        super().__init__()
        self.token = nn.Embedding(VOCAB, embed_dim)
        self.position = nn.Embedding(SEQ_LEN, embed_dim)
        self.attn = MultiHeadAttention(embed_dim, num_heads)
        self.read_prev = nn.Linear(embed_dim, VOCAB)
        self.read_match = nn.Linear(embed_dim, K)
        self.register_buffer("mask", strictly_earlier_mask(SEQ_LEN), persistent=False)

    def forward(self, tokens: torch.Tensor):
        x = self.token(tokens) + self.position(torch.arange(tokens.shape[1]))
        out, weights = self.attn(x, attn_mask=self.mask)
        second = out[:, K:]
        return self.read_prev(second), self.read_match(second), weights


def train_two_lookups(
    steps: int = 150, batch_size: int = 64, lr: float = 0.01, seed: int = 0, match_weight: float = 3.0
) -> tuple[TwoLookupModel, list[float]]:
    """Train a fresh :class:`TwoLookupModel` with Adam on both answers; returns the model (eval mode) and the
    loss per step, ``CE(prev) + match_weight * CE(match)``. Deterministic given ``seed``.

    The previous-token lookup is much easier to find; with equal weights both heads often settle on it and the
    match answer stays at chance, so the match loss is weighted up by default.
    """
    steps = check_positive_int(steps, "steps")
    torch.manual_seed(seed)
    model = TwoLookupModel()
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        b = make_batch(batch_size, gen)
        prev_logits, match_logits, _ = model(b.tokens)
        loss_prev = nn.functional.cross_entropy(prev_logits.flatten(0, 1), b.prev.flatten())
        loss_match = nn.functional.cross_entropy(match_logits.flatten(0, 1), b.match.flatten())
        loss = loss_prev + match_weight * loss_match
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


@torch.no_grad()
def evaluate(model: TwoLookupModel, batch: CopyBatch) -> dict[str, float]:
    """Accuracy of the two answers on ``batch``: ``prev_accuracy`` and ``match_accuracy``."""
    prev_logits, match_logits, _ = model(batch.tokens)
    return {
        "prev_accuracy": float((prev_logits.argmax(-1) == batch.prev).float().mean()),
        "match_accuracy": float((match_logits.argmax(-1) == batch.match).float().mean()),
    }


def head_scores(weights: torch.Tensor, batch: CopyBatch) -> dict[str, torch.Tensor]:
    """Per head, over the second-half queries: mean weight on the previous position (``prev``), on the position
    of the earlier copy (``match``), and on the *other* first-half positions (``other_first``: neither the match
    nor the previous token). ``weights`` (B, H, SEQ_LEN, SEQ_LEN); returns three (H,) tensors.

    (For query K the previous position K-1 is in the first half; it counts as ``prev`` only, or as ``match``
    when it is the earlier copy.)
    """
    weights = check_tensor(weights, "weights").detach()
    B = batch.tokens.shape[0]
    if weights.dim() != 4 or weights.shape[0] != B or weights.shape[-2:] != (SEQ_LEN, SEQ_LEN):
        raise ValueError(f"weights must be (B={B}, heads, {SEQ_LEN}, {SEQ_LEN}), got shape {shape_str(weights.shape)}")
    second = weights[:, :, K:, :]  # (B, H, K, SEQ_LEN)
    queries = torch.arange(K, SEQ_LEN)
    on_prev = second[:, :, torch.arange(K), queries - 1]  # (B, H, K)
    match = batch.match[:, None, :, None].expand(-1, weights.shape[1], -1, 1)
    on_match = second.gather(-1, match).squeeze(-1)  # (B, H, K)
    first_half = second[..., :K].sum(-1)  # (B, H, K)
    prev_in_first = torch.zeros(K, dtype=torch.bool)
    prev_in_first[0] = True  # only query K has its previous token in the first half
    prev_is_match = (batch.match == K - 1)[:, None, :] & prev_in_first  # (B, 1, K)
    other = first_half - on_match - torch.where(prev_in_first & ~prev_is_match, on_prev, torch.zeros_like(on_prev))
    return {
        "prev": on_prev.mean(dim=(0, 2)),
        "match": on_match.mean(dim=(0, 2)),
        "other_first": other.mean(dim=(0, 2)),
    }


@torch.no_grad()
def render_head(model: TwoLookupModel, batch: CopyBatch, head: int = 0, example: int = 0):
    """One head's attention map for one example (token-labelled, previous positions outlined in orange, matching
    earlier copies in magenta), and a bar chart of every head's :func:`head_scores` over the whole ``batch`` (the
    chosen head's bars outlined in black)."""
    _, _, weights = model(batch.tokens)
    H = weights.shape[1]
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < H:
        raise ValueError(f"head must be an int in 0..{H - 1}, got {head!r}")
    B = batch.tokens.shape[0]
    if isinstance(example, bool) or not isinstance(example, int) or not 0 <= example < B:
        raise ValueError(f"example must be an int in 0..{B - 1}, got {example!r}")
    from matplotlib.patches import Rectangle

    labels = [f"{i}:{chr(ord('A') + int(t))}" for i, t in enumerate(batch.tokens[example])]
    fig, axes = viz.new_figure(2, width=5.0, height=4.4)
    ax_map, ax_bar = axes[0]
    viz.attention_heatmap(
        ax_map, weights[example, head], labels, labels, title=f"head {head}, example {example}", annotate=False
    )
    for m in range(K):
        i = K + m
        ax_map.add_patch(Rectangle((i - 1.5, i - 0.5), 1, 1, fill=False, edgecolor=PREV_COLOUR, linewidth=1.5))
        j = int(batch.match[example, m])
        ax_map.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=MATCH_COLOUR, linewidth=1.5))
    scores = head_scores(weights, batch)
    x = torch.arange(H).numpy()
    kinds = (
        ("prev", "previous token (orange boxes)", PREV_COLOUR),
        ("match", "earlier copy (magenta boxes)", MATCH_COLOUR),
        ("other_first", "other first-half", OTHER_COLOUR),
    )
    for offset, (key, label, colour) in zip((-0.27, 0.0, 0.27), kinds, strict=True):
        bars = ax_bar.bar(x + offset, scores[key].numpy(), width=0.27, label=label, color=colour)
        ax_bar.bar_label(bars, labels=[f"{b.get_height():.2f}" for b in bars], fontsize=7)
        bars[head].set_edgecolor("black")
        bars[head].set_linewidth(2)
    ax_bar.set_xticks(x, [f"head {h}" for h in range(H)])
    ax_bar.set_ylim(0, 1.4)
    ax_bar.set_xlabel("head")
    ax_bar.set_ylabel("mean weight (second-half queries)")
    ax_bar.set_title("what each head looks at")
    ax_bar.legend(fontsize=7, loc="upper center", ncols=2)
    return fig
