r"""Lesson 6 (self-attention with learned projections): the lesson's sentences, word features and figures.

The lesson writes the self-attention layer, the hand-built projections and the residual loop itself; this module
holds only what is not its subject:

* ``FEATURES`` / :func:`embed`: readable embeddings, each word's named features from a small lexicon (other words
  get zeros), so that hand-written :math:`W_Q, W_K, W_V` can be explained weight by weight;
* ``SENTENCES`` / :func:`tokens_of`: the four example sentences ("bank" by a river and at a loan office, "it" that
  is tired or wide);
* :func:`render_query` (the figure behind the lesson's explorer) and :func:`difference_heatmap` (a signed,
  token-labelled map of the difference of two weight matrices): pure render functions.

Shapes: embeddings (L, len(FEATURES)) for one sentence; weights (L, L), rows = queries, columns = keys.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import viz

__all__ = ["FEATURES", "SENTENCES", "tokens_of", "embed", "render_query", "difference_heatmap"]

FEATURES = (
    "water",  # 0: meaning features, carried by the values
    "money",  # 1
    "animate",  # 2
    "place",  # 3
    "ambiguous",  # 4: this word needs context to mean anything definite
    "topic",  # 5: this word sets the topic of a sentence
    "pronoun",  # 6
    "adjective",  # 7
    "wants animate",  # 8: an adjective that describes living things
    "wants place",  # 9: an adjective that describes places
)
F = {name: i for i, name in enumerate(FEATURES)}

_LEXICON = {
    "river": {"water": 1.0, "topic": 1.0},
    "fish": {"water": 1.0, "animate": 0.5, "topic": 1.0},
    "money": {"money": 1.0, "topic": 1.0},
    "loan": {"money": 1.0, "topic": 1.0},
    "bank": {"water": 0.5, "money": 0.5, "place": 0.5, "ambiguous": 1.0},
    "animal": {"animate": 1.0},
    "street": {"place": 1.0},
    "it": {"pronoun": 1.0},
    "tired": {"adjective": 1.0, "wants animate": 1.0},
    "wide": {"adjective": 1.0, "wants place": 1.0},
}

SENTENCES = {
    "river": "we sat on the bank of the river watching the fish",
    "money": "she took out a loan from the bank for more money",
    "tired": "the animal didn't cross the street because it was too tired",
    "wide": "the animal didn't cross the street because it was too wide",
}


def tokens_of(sentence: str) -> list[str]:
    """The tokens of one of ``SENTENCES`` (by its key) or of any lower-case string (split on spaces)."""
    text = SENTENCES.get(sentence, sentence)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"sentence must be a key of SENTENCES {list(SENTENCES)} or a non-empty string, got {sentence!r}"
        )
    return text.split()


def embed(tokens: list[str], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Hand-made embeddings (L, len(FEATURES)): each word's features from the lexicon; other words get zeros."""
    x = torch.zeros(len(tokens), len(FEATURES), dtype=dtype)
    for i, tok in enumerate(tokens):
        for feature, value in _LEXICON.get(tok, {}).items():
            x[i, F[feature]] = value
    return x


def render_query(maps: dict, sentence: str = "tired", query: int = 7):
    """Figure: the weight matrix of ``sentence`` (left, the chosen query's row outlined) and the chosen query's
    weights as bars over the token-labelled keys (right).

    ``maps`` holds ``{sentence: (tokens, weights (L, L), description)}``, as the lesson computes them. Pure:
    returns a new Figure.
    """
    if sentence not in maps:
        raise ValueError(f"sentence must be one of {list(maps)}, got {sentence!r}")
    tokens, w, what = maps[sentence]
    w = w.detach() if isinstance(w, torch.Tensor) else torch.as_tensor(w)
    if w.shape != (len(tokens), len(tokens)):
        raise ValueError(f"weights of {sentence!r} must be ({len(tokens)}, {len(tokens)}), got {tuple(w.shape)}")
    if isinstance(query, bool) or not isinstance(query, int) or not 0 <= query < len(tokens):
        raise ValueError(f"query must be a token index in 0..{len(tokens) - 1} for {sentence!r}, got {query!r}")
    from matplotlib.patches import Rectangle

    fig, axes = viz.new_figure(2, width=5.2, height=4.2)
    ax_h, ax_b = axes[0]
    viz.attention_heatmap(ax_h, w, tokens, tokens, title=what, annotate=False)
    ax_h.add_patch(Rectangle((-0.5, query - 0.5), len(tokens), 1, fill=False, edgecolor="tab:red", linewidth=2))
    viz.weight_bars(ax_b, w[query], tokens, title=f'query "{tokens[query]}" (position {query})')
    return fig


def difference_heatmap(ax, difference, tokens: list[str], *, title: str = "difference"):
    """Draw a signed (L, L) difference of two weight matrices on ``ax``: a diverging colour scale symmetric about 0
    (blue negative, red positive), token-labelled axes and a colour bar. Returns the image."""
    diff = difference.detach().cpu().numpy() if isinstance(difference, torch.Tensor) else np.asarray(difference)
    if diff.ndim != 2 or diff.shape != (len(tokens), len(tokens)):
        raise ValueError(f"difference must be ({len(tokens)}, {len(tokens)}), got shape {diff.shape}")
    limit = float(np.abs(diff).max()) or 1.0
    image = ax.imshow(diff, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(tokens)), tokens, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(tokens)), tokens)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="weight difference")
    return image
