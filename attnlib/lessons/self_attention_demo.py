r"""Lesson 6 (self-attention with learned projections): hand-built layers where context decides the meaning.

Nothing here is trained. The embeddings have named, readable features (``FEATURES``) and the projection matrices
:math:`W_Q, W_K, W_V` are written by hand, so that every weight can be explained. A randomly initialised layer
does none of this; a trained model has to *find* such projections (a later lesson looks at a real one).

* **"bank"** (:func:`bank_layer`): one :class:`attnlib.SelfAttention` layer whose queries ask "which topic is
  around?" only for ambiguous words, whose keys answer with a word's topic, and whose values carry the
  water/money features. Added back to the input (a residual connection), "bank" leans towards the river sense in
  one sentence and the money sense in the other.
* **"it"** (:func:`pronoun_layers`): two layers. Layer 1 lets the pronoun read the final adjective ("tired"
  describes something animate, "wide" a place); layer 2 lets the pronoun, now carrying that preference, find the
  matching noun. One layer cannot do it: the pronoun's query and the nouns' keys are the same in both sentences,
  so the ratio of its weights on "animal" and "street" is too (:func:`weight_ratio`).
* :func:`render_query` is the pure render function of the lesson's figure and widget.

Shapes: embeddings (L, d_model) for one sentence; weights (L, L), rows = queries, columns = keys.
"""

from __future__ import annotations

import torch

from .. import viz
from .._checks import check_float_tensor, shape_str
from ..modules import SelfAttention

__all__ = [
    "FEATURES",
    "SENTENCES",
    "tokens_of",
    "embed",
    "set_projections",
    "bank_layer",
    "pronoun_layers",
    "contextualise",
    "sense",
    "weight_ratio",
    "sentence_weights",
    "render_query",
]

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


def set_projections(layer: SelfAttention, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor) -> SelfAttention:
    """Copy math-convention matrices (``Q = X W_Q``: W_Q is (d_model, d_k)) into ``layer``'s ``nn.Linear`` weights
    (which store the transpose). Returns the layer."""
    for name, w, lin in (("w_q", w_q, layer.w_q), ("w_k", w_k, layer.w_k), ("w_v", w_v, layer.w_v)):
        w = check_float_tensor(w, name)
        if w.shape != lin.weight.T.shape:
            raise ValueError(
                f"{name} must be {shape_str(lin.weight.T.shape)} (d_model, d_out), got {shape_str(w.shape)}"
            )
        with torch.no_grad():
            lin.weight.copy_(w.T)
    return layer


def _matrix(d_in: int, d_out: int, entries: dict[tuple[int, int], float]) -> torch.Tensor:
    w = torch.zeros(d_in, d_out, dtype=torch.float64)
    for (i, j), value in entries.items():
        w[i, j] = value
    return w


def bank_layer(strength: float = 8.0) -> SelfAttention:
    """One hand-built self-attention layer (d_model = len(FEATURES), d_k = 1, d_v = d_model).

    Query: ``strength`` x "ambiguous"; key: "topic"; so an ambiguous word's score with a topic word is
    strength / sqrt(1) and 0 with every other word. Value: copies the "water" and "money" features.
    """
    d = len(FEATURES)
    layer = SelfAttention(d, 1, d, dtype=torch.float64)
    w_q = _matrix(d, 1, {(F["ambiguous"], 0): strength})
    w_k = _matrix(d, 1, {(F["topic"], 0): 1.0})
    w_v = _matrix(d, d, {(F["water"], F["water"]): 1.0, (F["money"], F["money"]): 1.0})
    return set_projections(layer, w_q, w_k, w_v)


def pronoun_layers(strength: float = 8.0) -> tuple[SelfAttention, SelfAttention]:
    """Two hand-built layers that resolve "it".

    Layer 1 (d_k = 1): a pronoun's query meets an adjective's key; the value copies "wants animate" / "wants
    place". Layer 2 (d_k = 2): the pronoun's query, now holding those preferences, meets the nouns' "animate" /
    "place" keys; the value copies "animate" and "place", so the pronoun takes on its referent's features.
    """
    d = len(FEATURES)
    first = SelfAttention(d, 1, d, dtype=torch.float64)
    set_projections(
        first,
        _matrix(d, 1, {(F["pronoun"], 0): strength}),
        _matrix(d, 1, {(F["adjective"], 0): 1.0}),
        _matrix(d, d, {(F["wants animate"], F["wants animate"]): 1.0, (F["wants place"], F["wants place"]): 1.0}),
    )
    second = SelfAttention(d, 2, d, dtype=torch.float64)
    set_projections(
        second,
        _matrix(d, 2, {(F["wants animate"], 0): strength, (F["wants place"], 1): strength}),
        _matrix(d, 2, {(F["animate"], 0): 1.0, (F["place"], 1): 1.0}),
        _matrix(d, d, {(F["animate"], F["animate"]): 1.0, (F["place"], F["place"]): 1.0}),
    )
    return first, second


@torch.no_grad()
def contextualise(x: torch.Tensor, layers) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``x`` (L, d_model) through ``layers`` in turn with residual connections, ``x <- x + layer(x)``.

    Returns the final representations (L, d_model) and each layer's weights (L, L). ``x`` is not modified.
    """
    x = check_float_tensor(x, "x")
    weights = []
    for layer in layers:
        out, w = layer(x)
        x = x + out
        weights.append(w)
    return x, weights


def sense(x: torch.Tensor, a: str, b: str) -> torch.Tensor:
    """How much more a representation (..., d_model) carries feature ``a`` than feature ``b``: x[a] - x[b]."""
    x = check_float_tensor(x, "x")
    for name in (a, b):
        if name not in F:
            raise ValueError(f"unknown feature {name!r}; features are {FEATURES}")
    return x[..., F[a]] - x[..., F[b]]


def weight_ratio(weights: torch.Tensor, tokens: list[str], query: str, key_a: str, key_b: str) -> float:
    """weights[query, key_a] / weights[query, key_b] for the first occurrence of each word in ``tokens``."""
    i, a, b = (tokens.index(w) for w in (query, key_a, key_b))
    return float(weights[i, a] / weights[i, b])


def sentence_weights(sentence: str, strength: float = 8.0) -> tuple[list[str], torch.Tensor, str]:
    """The weights (L, L) that matter for one of ``SENTENCES``: the bank layer's for "river"/"money", the second
    pronoun layer's for "tired"/"wide". Returns ``(tokens, weights, description)``."""
    if sentence not in SENTENCES:
        raise ValueError(f"sentence must be one of {list(SENTENCES)}, got {sentence!r}")
    tokens = tokens_of(sentence)
    x = embed(tokens)
    if sentence in ("river", "money"):
        _, (w,) = contextualise(x, [bank_layer(strength)])
        return tokens, w, "hand-built bank layer"
    _, (_, w) = contextualise(x, pronoun_layers(strength))
    return tokens, w, "hand-built pronoun layer 2"


def render_query(sentence: str = "tired", query: int = 7):
    """Figure: the full weight matrix of ``sentence`` (left, the chosen query's row outlined) and the chosen
    query's weights as bars over the token-labelled keys (right). Pure: returns a new Figure."""
    tokens, w, what = sentence_weights(sentence)
    if isinstance(query, bool) or not isinstance(query, int) or not 0 <= query < len(tokens):
        raise ValueError(f"query must be a token index in 0..{len(tokens) - 1} for {sentence!r}, got {query!r}")
    from matplotlib.patches import Rectangle

    fig, axes = viz.new_figure(2, width=5.2, height=4.2)
    ax_h, ax_b = axes[0]
    viz.attention_heatmap(ax_h, w, tokens, tokens, title=what, annotate=False)
    ax_h.add_patch(Rectangle((-0.5, query - 0.5), len(tokens), 1, fill=False, edgecolor="tab:red", linewidth=2))
    viz.weight_bars(ax_b, w[query], tokens, title=f'query "{tokens[query]}" (position {query})')
    return fig
