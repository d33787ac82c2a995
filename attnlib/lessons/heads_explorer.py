"""Lesson 14 (inside a pretrained model): per-head statistics and pure render functions.

Everything here takes one sentence's attention weights ``attention`` of shape (layers, heads, n, n) (rows are
queries, columns keys, each real row sums to 1; e.g. :meth:`attnlib.minilm.MiniLMOutput.attention_of`) and its
``n`` word pieces ``tokens``. Statistics return a (layers, heads) tensor, one number per head. Render functions
return a fresh ``matplotlib.figure.Figure`` and touch no global state, so they can be tested and wrapped in
:func:`attnlib.viz.explorer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import viz
from .._checks import check_positive_int, check_tensor, shape_str

__all__ = [
    "check_attention",
    "token_index",
    "attention_from_to",
    "head_entropy",
    "previous_token_score",
    "special_token_score",
    "pattern_difference",
    "top_heads",
    "render_head",
    "render_all_heads",
    "render_head_scores",
    "BANK_SENTENCES",
    "SVO_SENTENCES",
    "OTHER_SENTENCES",
    "SURVEY_SENTENCES",
]

SPECIAL_TOKENS = ("[CLS]", "[SEP]")


def check_attention(attention: object, tokens: Sequence[str] | None = None) -> torch.Tensor:
    """Validate a (layers, heads, n, n) weight tensor (and, if given, that there are n tokens)."""
    attention = check_tensor(attention, "attention")
    if not attention.is_floating_point() or attention.dim() != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(
            f"attention must be a float tensor (layers, heads, n, n), got {attention.dtype} of shape "
            f"{shape_str(attention.shape)}"
        )
    if attention.shape[-1] == 0:
        raise ValueError("attention has n=0 tokens")
    if tokens is not None and len(tokens) != attention.shape[-1]:
        raise ValueError(f"got {len(tokens)} tokens for attention over n={attention.shape[-1]} tokens")
    return attention


def _check_index(value: object, name: str, size: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < size:
        raise ValueError(f"{name}={value} is out of range: this model has {what} 0..{size - 1}")
    return value


def token_index(tokens: Sequence[str], word: str, occurrence: int = 0) -> int:
    """Position of the ``occurrence``-th (0-based) word piece equal to ``word`` (case-insensitive)."""
    hits = [i for i, t in enumerate(tokens) if t.lower() == word.lower()]
    if len(hits) <= occurrence:
        raise ValueError(f"{word!r} occurs {len(hits)} time(s) in tokens {list(tokens)}; asked for #{occurrence}")
    return hits[occurrence]


def attention_from_to(attention: torch.Tensor, query: int, key: int) -> torch.Tensor:
    """(layers, heads): the weight every head puts on token ``key`` when token ``query`` attends."""
    attention = check_attention(attention)
    n = attention.shape[-1]
    return attention[..., _check_index(query, "query", n, "tokens"), _check_index(key, "key", n, "tokens")]


def head_entropy(attention: torch.Tensor) -> torch.Tensor:
    r"""(layers, heads): mean over queries of the entropy :math:`-\sum_j w_{ij} \ln w_{ij}` of each row, in nats.

    0 means every query looks at a single key; :math:`\ln n` means every query spreads evenly over all n keys.
    """
    attention = check_attention(attention)
    w = attention.double()
    plogp = torch.where(w > 0, w * torch.log(w.clamp_min(1e-300)), torch.zeros_like(w))
    return (-plogp.sum(-1)).mean(-1).to(attention.dtype)


def previous_token_score(attention: torch.Tensor) -> torch.Tensor:
    """(layers, heads): mean weight token i puts on token i - 1, over i = 1..n-1 (1 = a pure previous-token head)."""
    attention = check_attention(attention)
    if attention.shape[-1] < 2:
        raise ValueError("previous_token_score needs at least 2 tokens")
    return attention.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def special_token_score(attention: torch.Tensor, tokens: Sequence[str], special: Sequence[str] = SPECIAL_TOKENS):
    """(layers, heads): mean over queries of the total weight on the ``special`` tokens ([CLS] and [SEP])."""
    attention = check_attention(attention, tokens)
    columns = [j for j, t in enumerate(tokens) if t in special]
    if not columns:
        raise ValueError(f"none of {list(special)} is in tokens {list(tokens)}")
    return attention[..., columns].sum(-1).mean(-1)


def pattern_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""(layers, heads): mean over queries of the total-variation distance :math:`\tfrac12\sum_j |a_{ij}-b_{ij}|`.

    0 = the head attends identically in both sentences; 1 = every query moved all of its weight. The two
    sentences must have the same number of tokens (position i compared with position i).
    """
    a, b = check_attention(a), check_attention(b)
    if a.shape != b.shape:
        raise ValueError(
            f"a {shape_str(a.shape)} and b {shape_str(b.shape)} must have the same shape: compare sentences with the "
            "same number of tokens"
        )
    return 0.5 * (a - b).abs().sum(-1).mean(-1)


def top_heads(scores: torch.Tensor, k: int = 5, *, largest: bool = True) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the largest (or smallest) score, as ``(layer, head, score)``, best first."""
    scores = check_tensor(scores, "scores")
    if scores.dim() != 2:
        raise ValueError(f"scores must be (layers, heads), got shape {shape_str(scores.shape)}")
    k = min(check_positive_int(k, "k"), scores.numel())
    values, flat = scores.flatten().topk(k, largest=largest)
    heads = scores.shape[1]
    return [(int(i) // heads, int(i) % heads, float(v)) for v, i in zip(values, flat, strict=True)]


def render_head(attention: torch.Tensor, tokens: Sequence[str], layer: int, head: int, query: int):
    """One head in detail: its (n, n) token-labelled heatmap with the ``query`` row outlined, and that row's bars.

    Returns a Figure whose first two axes are [heatmap, bars] (then the heatmap's colour bar).
    """
    from matplotlib.patches import Rectangle

    attention = check_attention(attention, tokens)
    layers, heads, n, _ = attention.shape
    layer = _check_index(layer, "layer", layers, "layers")
    head = _check_index(head, "head", heads, "heads")
    query = _check_index(query, "query", n, "tokens")
    w = attention[layer, head]
    fig, axes = viz.new_figure(2, width=5.2, height=4.6)
    ax_map, ax_bar = axes[0]
    viz.attention_heatmap(ax_map, w, tokens, tokens, title=f"layer {layer}, head {head}", annotate=False, colorbar=True)
    ax_map.add_patch(Rectangle((-0.5, query - 0.5), n, 1, fill=False, edgecolor="red", linewidth=2))
    viz.weight_bars(ax_bar, w[query], list(tokens), title=f"weights from {tokens[query]!r} (query {query})")
    return fig


def render_all_heads(attention: torch.Tensor, tokens: Sequence[str], *, cell: float = 0.95):
    """Every head of every layer for one sentence, as one mosaic: a (layers x heads) grid of (n, n) heatmaps.

    Rows of the grid are layers, columns heads; within a cell, rows are queries and columns keys, both in token
    order (the tokens are listed in the title). All cells share the colour scale 0..1. One image on one axes,
    so it draws quickly.
    """
    from matplotlib.figure import Figure

    attention = check_attention(attention, tokens)
    layers, heads, n, _ = attention.shape
    step = n + 1  # one blank row/column between cells
    mosaic = np.full((layers * step - 1, heads * step - 1), np.nan)
    data = attention.detach().to("cpu", torch.float32).numpy()
    for i in range(layers):
        for j in range(heads):
            mosaic[i * step : i * step + n, j * step : j * step + n] = data[i, j]
    fig = Figure(figsize=(cell * heads + 1.2, cell * layers + 1.0), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(mosaic, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    centres = [k * step + (n - 1) / 2 for k in range(max(layers, heads))]
    ax.set_xticks(centres[:heads], [str(h) for h in range(heads)])
    ax.set_yticks(centres[:layers], [str(layer) for layer in range(layers)])
    ax.set_xlabel("head (in each cell: key, attended to, across)")
    ax.set_ylabel("layer (in each cell: query down)")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"All {layers} x {heads} heads: {' '.join(tokens)}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6, label="weight")
    return fig


def render_head_scores(
    scores: torch.Tensor,
    *,
    title: str,
    label: str,
    fmt: str = "{:.2f}",
    cmap: str = "magma",
    vmin: float | None = None,
    vmax: float | None = None,
):
    """A (layers, heads) table of one number per head as an annotated heatmap (layer down, head across)."""
    scores = check_tensor(scores, "scores")
    if scores.dim() != 2:
        raise ValueError(f"scores must be (layers, heads), got shape {shape_str(scores.shape)}")
    values = scores.detach().to("cpu", torch.float32).numpy()
    layers, heads = values.shape
    fig, ax = viz.new_figure(width=0.62 * heads + 1.6, height=0.42 * layers + 1.2)
    lo = float(values.min()) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    image = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    ax.set_xticks(range(heads), [str(h) for h in range(heads)])
    ax.set_yticks(range(layers), [str(layer) for layer in range(layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    for i in range(layers):
        for j in range(heads):
            r, g, b, _ = image.cmap(image.norm(values[i, j]))
            colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            text = fmt.format(values[i, j])
            text = fmt.format(0.0) if float(text) == 0 else text  # no "-0.00"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, shrink=0.9, label=label)
    return fig


# Short sentences that use "bank" in one sense each, for lesson 14's measurement of whether the encoder separates
# the senses (hand-written for the course; every sentence holds the word "bank" exactly once).
BANK_SENTENCES = {
    "river": (
        "We sat on the bank of the river.",
        "The boat drifted toward the muddy bank.",
        "Reeds grew thick along the bank.",
        "He fished from the grassy bank all morning.",
        "The flood washed away part of the bank.",
        "Ducks rested on the far bank of the stream.",
        "She climbed down the steep bank to the water.",
        "Willows lined the bank of the canal.",
        "The otter slid off the bank into the river.",
        "They had a picnic on the river bank.",
        "Erosion is eating away the bank of the creek.",
        "The canoe scraped against the rocky bank.",
        "A heron stood still near the bank.",
        "Wild flowers covered the bank by the lake.",
        "The children ran along the bank of the pond.",
        "Mud from the bank slid into the water.",
        "The fisherman pulled his boat onto the bank.",
        "Frogs croaked from the wet bank at night.",
        "The path follows the bank of the river for a mile.",
        "Water rose over the bank after the storm.",
        "We pitched our tent on the sandy bank.",
        "Roots held the bank together against the current.",
        "The dog swam back to the bank.",
        "Tall grass hid the bank from the road.",
    ),
    "money": (
        "I deposited my salary at the bank.",
        "The bank approved the loan yesterday.",
        "She opened a savings account at the bank.",
        "The bank charges a fee for transfers.",
        "He withdrew cash from the bank this morning.",
        "The central bank raised interest rates.",
        "Our bank closes at five on Fridays.",
        "The bank sent me a new credit card.",
        "They robbed the bank and escaped in a van.",
        "The bank refused to lend him more money.",
        "My mortgage is with a small local bank.",
        "The bank froze the account after the fraud.",
        "She works as a teller at the bank.",
        "The bank pays little interest on savings.",
        "I need to call the bank about my card.",
        "The bank merged with a larger rival.",
        "He keeps his gold in a bank vault.",
        "The bank statement arrived by mail.",
        "Investors pulled their money out of the bank.",
        "The bank offered her a loan for the house.",
        "You can pay the bill at any bank branch.",
        "The bank manager reviewed the application.",
        "The online bank has no branches at all.",
        "A bank transfer takes one working day.",
    ),
}

# Lesson 14's head survey (hand-written for the course). SVO_SENTENCES all have the shape "The <subject> <verb> the
# <object>.", so after joining word pieces the object is word 5 and its verb word 3 ([CLS] is word 0): the
# lesson tests the source's "syntactic head" label on them. OTHER_SENTENCES vary in length and structure.
SVO_SENTENCES = (
    "The dog chased the cat.",
    "The teacher praised the student.",
    "The farmer planted the seeds.",
    "The girl kicked the ball.",
    "The chef cooked the soup.",
    "The boy broke the window.",
    "The nurse helped the patient.",
    "The pilot landed the plane.",
    "The child hugged the puppy.",
    "The wind shook the trees.",
    "The police arrested the thief.",
    "The artist painted the portrait.",
    "The company hired the engineer.",
    "The baker sold the bread.",
    "The cat caught the mouse.",
    "The student answered the question.",
    "The doctor examined the wound.",
    "The mechanic fixed the engine.",
    "The judge sentenced the criminal.",
    "The storm damaged the roof.",
    "The waiter brought the menu.",
    "The king ruled the country.",
    "The author wrote the novel.",
    "The team won the match.",
    "The gardener watered the roses.",
    "The fox stole the chicken.",
    "The singer performed the song.",
    "The soldier guarded the gate.",
    "The manager signed the contract.",
    "The baby dropped the spoon.",
    "The hunter tracked the deer.",
    "The driver parked the truck.",
    "The scientist tested the theory.",
    "The mother read the story.",
    "The player scored the goal.",
    "The workers built the bridge.",
    "The owl watched the field.",
    "The reporter interviewed the mayor.",
    "The tourist photographed the castle.",
    "The river flooded the valley.",
    "The programmer debugged the code.",
    "The students cleaned the classroom.",
    "The horse pulled the cart.",
    "The customer returned the shoes.",
    "The lawyer questioned the witness.",
    "The sun warmed the sand.",
    "The bird built the nest.",
    "The crowd cheered the winner.",
    "The fire destroyed the barn.",
    "The boy fed the goats.",
    "The girl opened the door.",
    "The captain steered the ship.",
    "The guard locked the cell.",
    "The cook sliced the onions.",
    "The monkey grabbed the banana.",
    "The neighbour borrowed the ladder.",
    "The teacher graded the exams.",
    "The thief hid the jewels.",
    "The bee stung the child.",
    "The army defended the city.",
)
OTHER_SENTENCES = (
    "The animal didn't cross the street because it was too tired.",
    "The animal didn't cross the street because it was too wide.",
    "Java programming is fun.",
    "The Transformer is making it possible to understand language.",
    "It rained all night, so the match was cancelled.",
    "She said that he would arrive before noon.",
    "After the meeting, everyone went home early.",
    "My brother, who lives in Paris, plays the violin.",
    "Can you pass me the salt, please?",
    "The old house at the end of the road is empty.",
    "Although it was cold, we swam in the lake.",
    "Nobody knew where the keys had gone.",
    "He bought three apples and a loaf of bread.",
    "The results surprised even the researchers.",
    "If you heat ice, it melts.",
    "They have lived here for twenty years.",
    "What time does the train leave tomorrow?",
    "The museum is closed on Mondays.",
    "Reading before bed helps me sleep.",
    "The children laughed when the clown fell over.",
    "We need more time to finish the project.",
    "Her answer was short but correct.",
    "The price of coffee rose again this year.",
    "I think the movie was better than the book.",
    "The small bird sang from the top of the tree.",
    "Please close the window when you leave.",
    "The car that he sold me broke down twice.",
    "Most people prefer summer to winter.",
    "The letter arrived three days late.",
    "Learning a new language takes patience.",
    "The village lies between two tall mountains.",
    "He forgot his umbrella and got wet.",
    "Few students passed the difficult exam.",
    "The lights went out during the storm.",
    "She has never seen the ocean.",
    "The recipe calls for two eggs and some milk.",
    "Our team lost the final by one point.",
    "The quiet library was full of students.",
    "Why did the chicken cross the road?",
    "The new phone is lighter than the old one.",
    "Every morning he runs five miles.",
    "The painting was sold for a fortune.",
    "Trains are faster than buses in this city.",
    "The doctor told him to rest for a week.",
    "They planted tomatoes in the garden last spring.",
    "The word bank has more than one meaning.",
    "A cold wind blew across the empty field.",
    "She smiled and waved from the platform.",
    "The computer restarted without any warning.",
    "Both of my parents were born in the same town.",
)
SURVEY_SENTENCES = SVO_SENTENCES + OTHER_SENTENCES
