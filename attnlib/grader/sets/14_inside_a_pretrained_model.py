"""Set 14 (lesson 14, inside a pretrained model): load the real all-MiniLM-L6-v2 attention weights of one layer
into attnlib's multi-head module (the one written in set 08) and match the real model; a loading bug to find."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..common import Case, Exercise, question

SET = "14_inside_a_pretrained_model"
TITLE = "Lesson 14: the real MiniLM attention weights in your multi-head module"
HEADS = 12
NAMES = ("query", "key", "value", "output")
ARGS = (
    "hidden",
    "attention_mask",
    *(f"{n}_{p}" for n in NAMES for p in ("weight", "bias")),
)
SENTENCES = (
    "The animal didn't cross the street because it was too tired.",
    "The animal didn't cross the street because it was too wide.",
    "She sat on the bank of the river.",
    "He deposited the cheque at the bank.",
    "Attention lets every token look at every other token.",
    "A small model.",
)


@functools.lru_cache(maxsize=1)
def _model():
    from ...minilm import load_minilm

    return load_minilm()


@functools.lru_cache(maxsize=1)
def _run_all():
    """Every sentence through the real model once: (hidden states per layer, lengths, per-layer weights)."""
    model = _model()
    out = model(list(SENTENCES))
    hidden = [h.numpy().astype(np.float32) for h in out.hidden_states]
    layers = []
    for layer in model.encoder.layers:
        mha = layer.attention
        weights = {}
        for name, lin in zip(NAMES, (mha.w_q, mha.w_k, mha.w_v, mha.w_o), strict=True):
            weights[f"{name}_weight"] = lin.weight.detach().numpy().astype(np.float32)
            weights[f"{name}_bias"] = lin.bias.detach().numpy().astype(np.float32)
        layers.append(weights)
    return hidden, out.lengths.numpy(), layers


@functools.lru_cache(maxsize=256)
def _layer_input(idx: tuple[int, ...], layer: int):
    """The arguments of a check: the hidden states entering ``layer`` of the sentences ``idx``, right-padded
    (B, L, 384) float32, attention_mask (B, L) int64 with 1 at real tokens, and the layer's eight attention
    tensors; and the check's magnitude."""
    hidden, lengths, layers = _run_all()
    idx = list(idx)
    L = int(lengths[idx].max())
    h = np.ascontiguousarray(hidden[layer][idx, :L])
    mask = (np.arange(L)[None, :] < lengths[idx][:, None]).astype(np.int64)
    args = (h, mask, *(layers[layer][a] for a in ARGS[2:]))
    return args, _magnitude(args)


def bert_cases(rng):
    order = rng.permutation(len(SENTENCES))
    layers = rng.choice(6, size=3, replace=False)
    picks = [
        (f"layer {layers[0]}, two sentences of different lengths (padding)", (order[0], order[1]), layers[0]),
        (f"layer {layers[1]}, one sentence (no padding)", (order[2],), layers[1]),
        (f"layer {layers[2]}, three sentences", (order[3], order[4], order[5]), layers[2]),
    ]
    cases = []
    for name, idx, layer in picks:
        args, magnitude = _layer_input(tuple(int(i) for i in idx), int(layer))
        cases.append(Case(name, args, magnitude=magnitude))
    return cases


def _np_bert(args, *, heads=HEADS, transposed=False, mask="ok", swap_qk=False, bias=True, out_proj=True):
    """The attention sublayer in float64 (torch, for speed), with switches that reproduce loading mistakes."""
    import torch

    from ..common import t64

    hidden, *w = (t64(a) for a in (args[0], *args[2:]))
    W = dict(zip(ARGS[2:], w, strict=True))
    B, L, E = hidden.shape
    D = E // heads

    def proj(x, name):
        m = W[f"{name}_weight"]
        y = x @ (m if transposed else m.T)
        return y + W[f"{name}_bias"] if bias else y

    def split(x):
        return x.reshape(B, L, heads, D).transpose(1, 2)

    qn, kn = ("key", "query") if swap_qk else ("query", "key")
    q, k, v = split(proj(hidden, qn)), split(proj(hidden, kn)), split(proj(hidden, "value"))
    s = q @ k.transpose(-2, -1) / math.sqrt(D)
    keep = torch.from_numpy(np.asarray(args[1]) > 0)[:, None, None, :]
    if mask != "none":
        s = s.masked_fill(keep if mask == "inverted" else ~keep, float("-inf"))
    top = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    total = e.sum(dim=-1, keepdim=True)
    weights = e / torch.where(total > 0, total, torch.ones_like(total))
    merged = (weights @ v).transpose(1, 2).reshape(B, L, E)
    return {"out": (proj(merged, "output") if out_proj else merged).numpy(), "weights": weights.numpy()}


def _magnitude(args):
    """The largest sum of |q_i k_i| / sqrt(head_dim) over every head's query-key pairs (in torch: fast)."""
    from ..common import t64

    hidden, _, qw, qb, kw, kb, *_ = (t64(a).abs() for a in args)
    B, L, E = hidden.shape
    q = (hidden @ qw.T + qb).reshape(B, L, HEADS, E // HEADS).transpose(1, 2)
    k = (hidden @ kw.T + kb).reshape(B, L, HEADS, E // HEADS).transpose(1, 2)
    return float((q @ k.transpose(-2, -1)).max()) / math.sqrt(E // HEADS)


def bert_expect(case):
    """The real model's attention sublayer on these inputs, in float64 (tests/test_exercise_sets.py checks that it
    equals attnlib's MultiHeadAttention and the lesson's MiniLM encoder)."""
    return _np_bert(case.args)


def bert_mistakes(case):
    a = case.args
    has_padding = not (np.asarray(a[1]) > 0).all()
    found = [
        (
            "the weights are loaded transposed: BERT's query/key/value/output.dense weights are (out_features, "
            "in_features), exactly nn.Linear's layout, so copy them as they are (no .T)",
            _np_bert(a, transposed=True),
        ),
        (
            f"one head of size 384: all-MiniLM-L6-v2 has {HEADS} heads of size 32 (build "
            f"MultiHeadAttention(384, {HEADS})); the scale is 1/sqrt(32)",
            _np_bert(a, heads=1),
        ),
        ("the query and key weights are swapped: query_* go into w_q, key_* into w_k", _np_bert(a, swap_qk=True)),
        ("the biases are not loaded (or are zero): copy query_bias into w_q.bias, etc.", _np_bert(a, bias=False)),
        ("the output projection (output_weight, output_bias -> w_o) is not applied", _np_bert(a, out_proj=False)),
    ]
    found.append(
        (
            "the padding mask is inverted: attention_mask is 1 at real tokens, and attnlib's boolean mask is True "
            "where a query MAY attend: attention_mask.bool()[:, None, None, :]",
            _np_bert(a, mask="inverted"),
        )
    )
    if has_padding:
        found += [
            (
                "the padding is not masked: real tokens give weight to [PAD] keys; pass "
                "attention_mask.bool()[:, None, None, :] as attn_mask",
                _np_bert(a, mask="none"),
            ),
        ]
    return found


# Question 14.2: the parameters of one whole MiniLM encoder layer, from the model's published sizes (a test
# checks the key against the loaded model's layer).
HIDDEN, FEED_FORWARD = 384, 1536


def linear_params(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def encoder_layer_params(hidden: int = HIDDEN, ff: int = FEED_FORWARD) -> int:
    """Attention (four hidden x hidden projections with biases), two LayerNorms (weight and bias), and the
    feed-forward network hidden -> ff -> hidden with biases."""
    attention = 4 * linear_params(hidden, hidden)
    norms = 2 * 2 * hidden
    feed_forward = linear_params(hidden, ff) + linear_params(ff, hidden)
    return attention + norms + feed_forward


def _params_question():
    h, f = HIDDEN, FEED_FORWARD
    attention, norms = 4 * linear_params(h, h), 4 * h
    ff = linear_params(h, f) + linear_params(f, h)
    wrong = {
        attention: "That is the attention sublayer alone; the layer also has two LayerNorms and a feed-forward "
        "network.",
        attention + ff: "The two LayerNorms are missing: each has a weight and a bias of the hidden size.",
        attention + norms + 2 * h * f: "The feed-forward network's biases are missing.",
        4 * h * h + norms + 2 * h * f: "The biases of the projections are missing.",
        attention + 2 * h + ff: "Each LayerNorm has TWO vectors (a weight and a bias), and there are two LayerNorms.",
        attention + norms + 2 * linear_params(h, f): "The feed-forward's second layer maps the wide width back to the "
        "hidden size: its bias has the hidden size, not the wide one.",
        12 * attention + norms + ff: "The 12 heads share the four projection matrices (each uses a slice): they "
        "do not multiply the count.",
    }
    explain = (
        "List every module of the layer (four attention projections, a LayerNorm after attention, the two "
        "feed-forward layers, a LayerNorm after them) and count each one's weight and bias from the published "
        "sizes (hidden 384, feed-forward 1536)."
    )
    return question(encoder_layer_params(), explain, wrong)


_params = _params_question()

# ----------------------------------------------------------------------------------------------------------
# 14.4: a statistic over heads with its spread over sentences: the previous-token score


def stats_cases(rng):
    cases = []
    for N, H, L in ((5, 3, 6), (8, 12, 9), (4, 2, 4)):
        lengths = rng.integers(2, L + 1, size=N)
        lengths[0] = L  # one sentence without padding
        scores = rng.standard_normal((N, H, L, L)) * 2.0
        keep = np.arange(L)[None, None, None, :] < lengths[:, None, None, None]
        scores = np.where(keep, scores, -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = (w / w.sum(-1, keepdims=True)).astype(np.float32)
        cases.append(Case(f"{N} sentences, {H} heads, padded to {L}", (w, lengths.astype(np.int64))))
    return cases


def _per_sentence(w, lengths, *, first=1, pad=False, offset=1):
    """(N, H): each sentence's mean weight from query i on key i - offset, over its real queries i >= first."""
    w = np.asarray(w, np.float64)
    N, H, L, _ = w.shape
    out = np.zeros((N, H))
    for n in range(N):
        stop = L if pad else int(lengths[n])
        rows = np.arange(first, stop)
        out[n] = w[n, :, rows, rows - offset].mean(axis=0)
    return out


def stats_expect(case):
    s = _per_sentence(*case.args)
    return {"mean": s.mean(axis=0), "std": s.std(axis=0, ddof=1)}


def stats_mistakes(case):
    w, lengths = case.args
    ref = _per_sentence(w, lengths)
    found = [
        (
            "the spread is the population std (ddof=0); use the sample std over sentences (torch.std's default, "
            "ddof=1): the sentences are a sample",
            {"mean": ref.mean(0), "std": ref.std(0)},
        ),
        (
            "padding queries are included: average over each sentence's real tokens only (i < lengths[n])",
            {
                "mean": _per_sentence(w, lengths, pad=True).mean(0),
                "std": _per_sentence(w, lengths, pad=True).std(0, ddof=1),
            },
        ),
        (
            "the first token is included: query 0 has no previous token (index -1 wraps to the last column)",
            {
                "mean": _per_sentence(w, lengths, first=0).mean(0),
                "std": _per_sentence(w, lengths, first=0).std(0, ddof=1),
            },
        ),
        (
            "that is the weight on the token itself (the diagonal); the previous token of query i is key i - 1",
            {
                "mean": _per_sentence(w, lengths, offset=0).mean(0),
                "std": _per_sentence(w, lengths, offset=0).std(0, ddof=1),
            },
        ),
    ]
    return found


EXERCISES = [
    Exercise(
        key="14.1",
        set=SET,
        entry="bert_attention",
        title="Load a real MiniLM layer's attention weights into MultiHeadAttention and match the model",
        points=6,
        difficulty="hard",
        minutes=30,
        returns=("out", "weights"),
        cases=bert_cases,
        expect=bert_expect,
        mistakes=bert_mistakes,
        distribution="weights",
        arg_names=ARGS,
        provides=("attnlib.MultiHeadAttention",),
    ),
    Exercise(
        key="14.2",
        set=SET,
        entry="answer_minilm_layer_params",
        title="Question: the parameters of one whole MiniLM encoder layer",
        points=1,
        difficulty="easy",
        minutes=5,
        cases=_params[0],
        expect=_params[1],
        mistakes=_params[2],
        style="question",
    ),
    Exercise(
        key="14.3",
        set=SET,
        entry="fixed_bert_attention",
        title="Find the bug: a loader whose outputs do not match the model",
        points=3,
        difficulty="medium",
        minutes=15,
        returns=("out", "weights"),
        cases=bert_cases,
        expect=bert_expect,
        mistakes=bert_mistakes,
        distribution="weights",
        arg_names=ARGS,
        provides=("attnlib.MultiHeadAttention",),
        style="fix",
    ),
    Exercise(
        key="14.4",
        set=SET,
        entry="previous_token_stats",
        title="A statistic over heads with its spread: the previous-token score over many sentences",
        points=4,
        difficulty="medium",
        minutes=20,
        returns=("mean", "std"),
        cases=stats_cases,
        expect=stats_expect,
        mistakes=stats_mistakes,
        arg_names=("weights", "lengths"),
    ),
]
