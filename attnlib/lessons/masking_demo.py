r"""Lesson 5 (masking): the mask explorer, and a tiny causal language model trained with and without its mask.

**Mask explorer.** A cache of ``S`` key slots holds the sentence ``SENTENCE`` (right-padded with ``PAD`` when
``pad > 0``); the queries are the **last** ``L`` slots, as when a model decodes with a KV cache.
:func:`build_mask` combines a causal mask (either alignment) with a padding mask; :func:`masked_weights`
attends with it; :func:`render_mask` draws the mask and the weights side by side (pure render function).

**Tiny language model (a harness; the lesson's notebook writes its training loop).** The corpus is generated,
never downloaded: each line is a random three-letter word and a space, repeated, ``"cab cab cab cab"``, so every
line repeats with period 4. The first word of a line cannot be predicted; everything after it can, by copying the
token four places back. :class:`TinyLM` is token embeddings + position embeddings, one
:class:`attnlib.SelfAttention` layer, and a linear read-out (about 2,500 parameters); :func:`generate` decodes
greedily, one token at a time, and :func:`future_weight` measures how much attention falls on later positions.
Without the mask each position can see the token it is asked to predict, so the training loss collapses while
generation, where the future does not exist yet, fails.

Mask convention: boolean, True = may attend. Shapes: token ids (batch, T) int64; logits (batch, T, vocab);
weights (batch, T, T).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import viz
from .._checks import check_positive_int, check_tensor, shape_str
from ..functional import scaled_dot_product_attention
from ..masks import causal_mask, combine_masks, padding_mask
from ..modules import SelfAttention

__all__ = [
    "SENTENCE",
    "PAD",
    "build_mask",
    "masked_weights",
    "render_mask",
    "LETTERS",
    "VOCAB",
    "BLOCK",
    "encode",
    "decode",
    "make_corpus",
    "TinyLM",
    "generate",
    "future_weight",
]

SENTENCE = ("the", "cat", "sat", "on", "the", "mat")
PAD = "<pad>"


# ------------------------------------------------------------------------------------------------ mask explorer
def build_mask(L: int, S: int, *, causal: bool, alignment: str = "bottom-right", pad: int = 0) -> torch.Tensor:
    """Boolean (L, S) mask, True = may attend: a causal mask (if ``causal``) AND a key-padding mask that blocks
    the last ``pad`` of the S key slots. With neither, every entry is True."""
    L, S = check_positive_int(L, "L"), check_positive_int(S, "S")
    if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad <= S:
        raise ValueError(f"pad must be an int in 0..S={S}, got {pad!r}")
    if L > S:
        raise ValueError(f"the queries are the last L of the S slots, so need L <= S, got L={L}, S={S}")
    keep = padding_mask([S - pad], S)[0, 0]  # (1, S) -> broadcasts over the queries
    mask = combine_masks(causal_mask(L, S, alignment=alignment) if causal else None, keep)
    return mask.expand(L, S).clone()


def _slot_labels(S: int, pad: int) -> list[str]:
    words = [SENTENCE[i % len(SENTENCE)] for i in range(S - pad)]
    return words + [PAD] * pad


def masked_weights(L: int, S: int, *, causal: bool, alignment: str = "bottom-right", pad: int = 0):
    """Attention weights (L, S) of the last L slots over all S slots under :func:`build_mask`.

    The slots' vectors are fixed pseudo-random embeddings (seed 0, width 8) used as both queries and keys. Returns
    ``(weights, query_labels, key_labels)``; rows whose every key is masked are all zeros.
    """
    mask = build_mask(L, S, causal=causal, alignment=alignment, pad=pad)
    x = torch.randn(S, 8, generator=torch.Generator().manual_seed(0))
    _, weights = scaled_dot_product_attention(x[S - L :], x, x, mask)
    labels = _slot_labels(S, pad)
    return weights, labels[S - L :], labels


def render_mask(causal: bool = True, alignment: str = "bottom-right", n_queries: int = 6, pad: int = 0, S: int = 6):
    """Figure: the mask (left, 1 = may attend) and the attention weights it produces (right), token-labelled.

    The queries are the last ``n_queries`` of ``S`` key slots; ``pad`` slots at the end are padding. Pure:
    returns a new ``matplotlib.figure.Figure``.
    """
    mask = build_mask(n_queries, S, causal=causal, alignment=alignment, pad=pad)
    weights, q_labels, k_labels = masked_weights(n_queries, S, causal=causal, alignment=alignment, pad=pad)
    fig, axes = viz.new_figure(2, width=4.6, height=3.9)
    ax_m, ax_w = axes[0]
    what = (f"causal ({alignment})" if causal else "no causal mask") + (f" + {pad} padding" if pad else "")
    image = viz.attention_heatmap(
        ax_m, mask.float(), q_labels, k_labels, title=f"mask: {what}", cmap="Greys_r", colorbar=False
    )
    bar = fig.colorbar(image, ax=ax_m, shrink=0.8, ticks=[0, 1])
    bar.ax.set_yticklabels(["0: blocked", "1: may attend"])
    for text in ax_m.texts:  # write the mask as 1/0, not as weights
        text.set_text("1" if text.get_text() == "1.00" else "0")
        text.set_color("black" if text.get_text() == "1" else "white")
    empty = int((mask.sum(-1) == 0).sum())
    title = f"weights (L={n_queries}, S={S})" + (f": {empty} row(s) see nothing -> zeros" if empty else "")
    viz.attention_heatmap(ax_w, weights, q_labels, k_labels, title=title)
    return fig


# ------------------------------------------------------------------------------------------- tiny language model
LETTERS = "abcdefgh"
VOCAB = (" ", *LETTERS)
BLOCK = 16  # context length the model is trained on


def encode(text: str) -> torch.Tensor:
    """Characters -> token ids (int64); raises ValueError on a character outside ``VOCAB``."""
    bad = sorted({c for c in text if c not in VOCAB})
    if bad:
        raise ValueError(f"text contains characters outside the vocabulary {VOCAB!r}: {bad}")
    return torch.tensor([VOCAB.index(c) for c in text], dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    """Token ids (T,) -> text."""
    return "".join(VOCAB[int(i)] for i in check_tensor(ids, "ids").reshape(-1))


def make_corpus(n_lines: int, *, seed: int = 0, length: int = BLOCK + 1) -> torch.Tensor:
    """``n_lines`` lines of ``length`` tokens, each a random three-letter word repeated: "cab cab cab cab ...".

    Deterministic for a given ``seed``. Returns int64 ids (n_lines, length).
    """
    n_lines, length = check_positive_int(n_lines, "n_lines"), check_positive_int(length, "length")
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(1, len(VOCAB), (n_lines, 3), generator=g)
    period = torch.cat([words, torch.zeros(n_lines, 1, dtype=torch.long)], dim=1)  # word + space
    return period.repeat(1, length // 4 + 1)[:, :length].clone()


class TinyLM(nn.Module):
    r"""Token + position embeddings, one single-head self-attention layer, a linear read-out.

    .. math:: h = E_{\text{tok}}[x] + E_{\text{pos}},\quad a = \mathrm{SelfAttention}(h, M),\quad
              \text{logits} = a W_{\text{out}} + b

    ``forward(ids, causal)`` takes ids (batch, T <= block) and returns ``(logits (batch, T, vocab),
    weights (batch, T, T))``; ``causal=True`` applies :func:`attnlib.causal_mask`.

    Lesson 5 passes its own functions: ``attention(q, k, v, mask) -> (out, weights)`` (its ``masked_attention``)
    and ``causal_mask(T) -> (T, T) bool`` (True = may attend). Then the layer's projections feed the learner's
    attention, with the learner's causal mask when ``causal=True`` and an all-True mask otherwise; the parameters
    (and so the training run for a seed) are the same either way.
    """

    def __init__(self, vocab: int = len(VOCAB), d: int = 24, block: int = BLOCK, *, attention=None, causal_mask=None):
        super().__init__()
        if (attention is None) != (causal_mask is None):
            raise ValueError("give both attention and causal_mask (the learner's functions) or neither")
        self.attention, self.causal_mask = attention, causal_mask
        self.block = check_positive_int(block, "block")
        self.tok = nn.Embedding(check_positive_int(vocab, "vocab"), check_positive_int(d, "d"))
        self.pos = nn.Embedding(block, d)
        self.attn = SelfAttention(d, d)
        self.out = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor, causal: bool = True):
        ids = check_tensor(ids, "ids")
        if ids.dtype != torch.long or ids.dim() != 2 or not 0 < ids.shape[1] <= self.block:
            raise ValueError(
                f"ids must be int64 (batch, T) with 1 <= T <= {self.block}, got {ids.dtype} {shape_str(ids.shape)}"
            )
        T = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(T, device=ids.device))
        if self.attention is not None:
            q, k, v = self.attn.w_q(h), self.attn.w_k(h), self.attn.w_v(h)
            mask = self.causal_mask(T) if causal else torch.ones(T, T, dtype=torch.bool)
            a, weights = self.attention(q, k, v, mask.to(ids.device))
            return self.out(a), weights
        mask = causal_mask(T, device=ids.device) if causal else None
        a, weights = self.attn(h, mask)
        return self.out(a), weights


@torch.no_grad()
def generate(model: TinyLM, prompt: str, n_new: int, *, causal: bool) -> str:
    """Greedy decoding: append the most likely next token ``n_new`` times, re-running the model on the growing
    context (cropped to the last ``block`` tokens) and reading the prediction at the **last** position."""
    ids = encode(prompt)
    if ids.numel() == 0:
        raise ValueError("prompt is empty: give at least one character")
    n_new = check_positive_int(n_new, "n_new")
    for _ in range(n_new):
        context = ids[-model.block :][None]
        logits, _ = model(context, causal=causal)
        ids = torch.cat([ids, logits[0, -1].argmax().reshape(1)])
    return decode(ids)


@torch.no_grad()
def future_weight(model: TinyLM, lines: torch.Tensor, *, causal: bool) -> float:
    """Mean total attention weight that a position puts on **later** positions (j > i), over every position but
    the last of ``lines[:, :-1]``. 0 under the causal mask; near 1 means the model reads the answers ahead of it."""
    _, weights = model(lines[:, :-1], causal=causal)
    later = torch.ones_like(weights[0], dtype=torch.bool).triu(diagonal=1)
    return float((weights * later).sum(-1)[:, :-1].mean())
