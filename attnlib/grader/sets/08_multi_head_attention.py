"""Set 08 (lesson 8, multi-head attention): split and merge heads, the module, its parameter count, a bug."""

from __future__ import annotations

import math

import numpy as np

from ..common import (
    ATTNLIB,
    LIBRARY_ATTENTION,
    SHAPE_ERROR,
    Case,
    Exercise,
    attn,
    f32,
    fingerprint_raises,
    linear,
    module_expect,
    score_magnitude,
    transpose_candidates,
)

SET = "08_multi_head_attention"
TITLE = "Lesson 8: split heads, merge heads, multi-head attention"


def split_cases(rng):
    return [
        Case("x (2, 5, 12), 3 heads", (f32(2, 5, 12, rng=rng), 3)),
        Case("x (1, 4, 8), 2 heads", (f32(1, 4, 8, rng=rng), 2)),
        Case("x (3, 2, 6), 6 heads of size 1", (f32(3, 2, 6, rng=rng), 6)),
        Case("x (2, 3, 4), 1 head", (f32(2, 3, 4, rng=rng), 1)),
        Case("x (2, 3, 8), 4 heads", (f32(2, 3, 8, rng=rng), 4)),
    ]


def split_expect(case):
    x, H = case.args
    B, L, E = x.shape
    return {"out": x.reshape(B, L, H, E // H).transpose(0, 2, 1, 3).astype(np.float64)}


def split_mistakes(case):
    x, H = case.args
    B, L, E = x.shape
    D = E // H
    return [
        (
            "heads split by view/reshape without the transpose: reshape to (batch, seq, heads, head_dim) first, then "
            "transpose(1, 2); a bare view to (batch, heads, seq, head_dim) mixes different tokens into one head",
            {"out": x.reshape(B, H, L, D)},
        ),
        (
            "head h must take features h*head_dim .. (h+1)*head_dim - 1 (contiguous), not every heads-th feature",
            {"out": x.reshape(B, L, D, H).transpose(0, 3, 1, 2)},
        ),
        (
            "the result is (batch, seq, heads, head_dim); transpose(1, 2) to get (batch, heads, seq, head_dim)",
            {"out": x.reshape(B, L, H, D)},
        ),
    ]


def _fix_split_cases(rng):
    # the bug (a view without the transpose) is invisible with one head or one token
    return [c for c in split_cases(rng) if c.args[1] > 1 and c.args[0].shape[1] > 1]


def merge_cases(rng):
    return [
        Case("x (2, 3, 5, 4): 3 heads of size 4", (f32(2, 3, 5, 4, rng=rng),)),
        Case("x (1, 2, 4, 3)", (f32(1, 2, 4, 3, rng=rng),)),
        Case("x (3, 4, 2, 2)", (f32(3, 4, 2, 2, rng=rng),)),
        Case("x (2, 1, 3, 5): one head", (f32(2, 1, 3, 5, rng=rng),)),
    ]


def merge_expect(case):
    (x,) = case.args
    B, H, L, D = x.shape
    return {"out": x.transpose(0, 2, 1, 3).reshape(B, L, H * D).astype(np.float64)}


def merge_mistakes(case):
    (x,) = case.args
    B, H, L, D = x.shape
    return [
        (
            "heads merged by view/reshape without the transpose: transpose(1, 2) to (batch, seq, heads, head_dim) "
            "first (then .contiguous() or .reshape), so each token's heads end up side by side",
            {"out": x.reshape(B, L, H * D)},
        ),
        (
            "heads merged in the wrong order: concatenate head 0's features, then head 1's, ... "
            "(transpose(1, 2), then flatten the last two dims), not feature-interleaved",
            {"out": x.transpose(0, 2, 3, 1).reshape(B, L, H * D)},
        ),
    ]


def mha_cases(rng):
    cases = []
    specs = (
        ("self-attention, batch 2, L=5, embed_dim=12, 3 heads", 2, 5, 5, 12, 3, None),
        ("cross-attention L=3 != S=6, embed_dim=8, 2 heads", 2, 3, 6, 8, 2, None),
        ("causal mask (4, 4), embed_dim=16, 4 heads", 1, 4, 4, 16, 4, "causal"),
        ("padding mask (2, 1, 1, 5), embed_dim=8, 4 heads", 2, 3, 5, 8, 4, "pad"),
        ("one head, embed_dim=6, L=S=3", 2, 3, 3, 6, 1, None),
        ("an empty sequence (lengths 4 and 0: every key of batch 1 masked), 2 heads", 2, 3, 4, 8, 2, "empty"),
    )
    for name, B, L, S, E, H, kind in specs:
        weights = {}
        for p in ("w_q", "w_k", "w_v", "w_o"):
            w, b = linear(rng, E, E, bias=True)
            weights[f"{p}.weight"], weights[f"{p}.bias"] = w, b
        query = f32(B, L, E, rng=rng)
        key = query if L == S and kind not in ("pad", "empty") else f32(B, S, E, rng=rng)
        value = key if kind is None and L == S else f32(B, S, E, rng=rng)
        args: tuple = (query, key, value)
        if kind == "causal":
            args += (np.tril(np.ones((L, S), dtype=bool)),)
        elif kind == "pad":
            args += ((np.arange(S)[None, :] < np.array([5, 2])[:, None])[:, None, None, :],)
        elif kind == "empty":
            args += ((np.arange(S)[None, :] < np.array([S, 0])[:, None])[:, None, None, :],)
        q = query.astype(np.float64) @ weights["w_q.weight"].T.astype(np.float64) + weights["w_q.bias"]
        k = key.astype(np.float64) @ weights["w_k.weight"].T.astype(np.float64) + weights["w_k.bias"]
        cases.append(
            Case(
                name,
                args,
                init=(E, H),
                weights=weights,
                grad_output=f32(B, L, E, rng=rng),
                magnitude=score_magnitude(q, k) * 4,
            )
        )
    return cases


def _build(c):
    from ...modules import MultiHeadAttention

    return MultiHeadAttention(*c.init)


def mha_expect(case):
    return module_expect(case, _build, 3)


def _np_mha(case, *, scale_dim=None, split="ok", merge="ok", out_proj=True, transposed=False, **attn_flags):
    query, key, value = (np.asarray(a, np.float64) for a in case.args[:3])
    mask = case.args[3] if len(case.args) > 3 else None
    E, H = case.init
    D = E // H
    W = {n: np.asarray(a, np.float64) for n, a in case.weights.items()}

    def proj(x, p):
        w = W[f"{p}.weight"]
        return x @ (w if transposed else w.T) + W[f"{p}.bias"]

    def split_heads(x):
        B, T, _ = x.shape
        if split == "view":
            return x.reshape(B, H, T, D)
        return x.reshape(B, T, H, D).transpose(0, 2, 1, 3)

    qh, kh, vh = split_heads(proj(query, "w_q")), split_heads(proj(key, "w_k")), split_heads(proj(value, "w_v"))
    o, w = attn(qh, kh, vh, mask, 1.0 / math.sqrt(scale_dim or D), **attn_flags)
    B, _, L, _ = o.shape
    if merge == "view":
        merged = o.reshape(B, L, E)
    elif merge == "order":
        merged = o.transpose(0, 2, 3, 1).reshape(B, L, E)
    else:
        merged = o.transpose(0, 2, 1, 3).reshape(B, L, E)
    return {"out": proj(merged, "w_o") if out_proj else merged, "weights": w}


def mha_mistakes(case):
    E, H = case.init
    ref = _np_mha(case)
    found = []
    if H > 1:
        found += [
            (
                f"the scores are scaled by 1/sqrt(embed_dim) = 1/sqrt({E}); "
                f"each head must use 1/sqrt(head_dim) = 1/sqrt({E // H})",
                _np_mha(case, scale_dim=E),
            ),
            (
                "heads split by view/reshape without the transpose (and merged back the same way): reshape to "
                "(batch, seq, heads, head_dim), then transpose(1, 2)",
                _np_mha(case, split="view", merge="view"),
            ),
            (
                "heads split by view/reshape without the transpose: reshape to (batch, seq, heads, head_dim), "
                "then transpose(1, 2)",
                _np_mha(case, split="view"),
            ),
            (
                "heads merged by view/reshape without the transpose: transpose(1, 2) before flattening the heads",
                _np_mha(case, merge="view"),
            ),
            (
                "heads merged in the wrong order: concatenate head 0's features, then head 1's, ...",
                _np_mha(case, merge="order"),
            ),
            (
                "the weights are averaged over the heads; return the per-head weights, shape (batch, heads, L, S)",
                {"weights": ref["weights"].mean(axis=1)},
            ),
        ]
    found += [
        ("the scores are not scaled: divide each head's q @ k^T by sqrt(head_dim)", _np_mha(case, scale_dim=1)),
        ("the output projection w_o is missing: apply it to the merged heads", _np_mha(case, out_proj=False)),
        ("the softmax is taken over the queries (dim=-2); use dim=-1", _np_mha(case, axis=-2)),
        (
            "the projections use the weight matrices transposed (x @ W + b instead of x @ W^T + b): nn.Linear "
            "stores its weight as (out_features, in_features); call the layers, self.w_q(query)",
            _np_mha(case, transposed=True),
        ),
    ]
    query, key, value = case.args[:3]
    if query.shape == key.shape:
        found.append(
            (
                "the keys are projected from the query input: use self.w_k(key) (the forward pass only looks right "
                "where query and key are the same tensor; the gradient shows the difference)",
                module_expect(case, _build, 3, args=(0, 0, 2)),
            )
        )
    if key.shape == value.shape:
        found.append(
            (
                "the values are projected from the key input: use self.w_v(value)",
                module_expect(case, _build, 3, args=(0, 1, 1)),
            )
        )
    if len(case.args) > 3:
        found += [
            ("the mask is inverted: True means the query MAY attend to that key", _np_mha(case, invert=True)),
            ("the mask is ignored: fill blocked scores with -inf before the softmax", _mha_no_mask(case)),
            ("the mask is applied after the softmax; apply it to the scores, before", _np_mha(case, after=True)),
        ]
        mask = np.broadcast_to(np.asarray(case.args[3], bool), ref["weights"].shape)
        dead = ~mask.any(axis=-1)  # (batch, heads, L): queries whose keys are all masked
        if dead.any():
            rows = dead.all(axis=1)  # the same keys for every head here
            found += [
                (
                    "NaN in fully masked rows: when every key of a query is masked, softmax gives 0/0; such rows must "
                    "give zero weights (use the NaN-free softmax of exercise 5.5)",
                    {
                        "out": np.where(rows[..., None], np.nan, ref["out"]),
                        "weights": np.where(dead[..., None], np.nan, ref["weights"]),
                    },
                ),
                (
                    "blocked scores are filled with a large finite number (-1e9) instead of -inf: a query whose keys "
                    "are all masked then gets uniform weights instead of zeros",
                    _np_mha(case, fill=-1e9),
                ),
                (
                    "blocked scores are filled with torch.finfo(dtype).min instead of -inf: a query whose keys are "
                    "all masked then gets uniform weights instead of zeros",
                    _np_mha(case, fill=float(np.finfo(np.float32).min)),
                ),
            ]
    return found


def _mha_no_mask(case):
    return _np_mha(Case(case.name, case.args[:3], init=case.init, weights=case.weights))


def mha_raises(case):
    query, key = case.args[:2]
    E, H = case.init
    B, L, S, D = query.shape[0], query.shape[1], key.shape[1], E // H
    found = transpose_candidates((B, H, L, D), (B, H, S, D))
    if L != S:
        if len(case.args) > 3:
            mask = case.args[3]
            found += [
                (
                    "q and k are swapped: k @ q^T gives (batch, heads, S, L) scores, which the mask does not fit",
                    lambda t: t.zeros(B, H, S, L).masked_fill(~t.from_numpy(np.asarray(mask, bool)), -math.inf),
                ),
                (
                    "the keys are projected from the query input: use self.w_k(key)",
                    lambda t: t.zeros(B, H, L, L).masked_fill(~t.from_numpy(np.asarray(mask, bool)), -math.inf),
                ),
            ]
        found += [
            (
                "q and k are swapped: k @ q^T gives (batch, heads, S, L) weights, which cannot multiply v",
                lambda t: (t.zeros(B, H, S, D) @ t.zeros(B, H, L, D).transpose(-2, -1)) @ t.zeros(B, H, S, D),
            ),
            (
                "the keys are projected from the query input: use self.w_k(key)",
                lambda t: (t.zeros(B, H, L, D) @ t.zeros(B, H, L, D).transpose(-2, -1)) @ t.zeros(B, H, S, D),
            ),
            (
                "the values are projected from the query input: use self.w_v(value)",
                lambda t: (t.zeros(B, H, L, D) @ t.zeros(B, H, S, D).transpose(-2, -1)) @ t.zeros(B, H, L, D),
            ),
        ]
    return fingerprint_raises(
        found,
        (
            SHAPE_ERROR,
            f"this check has batch={B}, L={L} queries, S={S} keys, {H} heads of {D}: q must be ({B}, {H}, {L}, {D}), "
            f"k and v ({B}, {H}, {S}, {D}), the weights ({B}, {H}, {L}, {S})",
        ),
    )


def _count_cases(rng):
    H = int(rng.choice([1, 2, 4, 8]))
    return [
        Case("embed_dim=512, 8 heads, with biases", (512, 8, True)),
        Case("embed_dim=384, 12 heads, with biases", (384, 12, True)),
        Case("embed_dim=64, 4 heads, no biases", (64, 4, False)),
        Case(f"embed_dim=16, {H} heads, with biases", (16, H, True)),
    ]


def _count_expect(case):
    E, _, bias = case.args
    return {"out": np.array(float(4 * E * E + (4 * E if bias else 0)))}


def _count_mistakes(case):
    E, H, bias = case.args
    why = (
        "list the layer's projections and the shape of each (an nn.Linear(n_in, n_out) has n_out·n_in weights and, "
        "with bias, n_out biases); then ask what splitting into heads does to those matrices"
    )
    right = 4 * E * E + (4 * E if bias else 0)
    candidates = [
        ("the output projection W_O is missing. ", 3 * E * E + (3 * E if bias else 0)),
        ("the biases are missing. ", 4 * E * E),
        ("biases are counted although this layer has none. ", 4 * E * E + 4 * E),
        ("the heads do not divide the parameters: ", 4 * E * E // H + (4 * E // H if bias else 0)),
        ("the heads do not multiply the parameters: ", 4 * E * E * H + (4 * E * H if bias else 0)),
    ]
    out = []
    for hint, value in candidates:
        if value != right:  # a candidate that does not apply to this check (no bias to forget, one head)
            out.append((hint + why, {"out": np.array(float(value))}))
    return [*out, ("not the parameter count: " + why, {})]


EXERCISES = [
    Exercise(
        key="08.1",
        set=SET,
        entry="split_heads",
        title="Split the embedding into heads",
        points=2,
        difficulty="easy",
        minutes=10,
        forbidden=ATTNLIB,
        cases=split_cases,
        expect=split_expect,
        mistakes=split_mistakes,
        arg_names=("x", "num_heads"),
    ),
    Exercise(
        key="08.2",
        set=SET,
        entry="merge_heads",
        title="Merge the heads back",
        points=2,
        difficulty="easy",
        minutes=10,
        forbidden=ATTNLIB,
        cases=merge_cases,
        expect=merge_expect,
        mistakes=merge_mistakes,
        arg_names=("x",),
    ),
    Exercise(
        key="08.3",
        set=SET,
        entry="MultiHeadAttention",
        title="Multi-head attention that matches nn.MultiheadAttention",
        points=8,
        difficulty="hard",
        minutes=40,
        kind="module",
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=mha_cases,
        expect=mha_expect,
        mistakes=mha_mistakes,
        raises=mha_raises,
        distribution="weights",
        arg_names=("query", "key", "value", "attn_mask"),
    ),
    Exercise(
        key="08.4",
        set=SET,
        entry="mha_param_count",
        title="Question: the parameter count of a multi-head attention layer",
        points=2,
        difficulty="easy",
        minutes=5,
        cases=_count_cases,
        expect=_count_expect,
        mistakes=_count_mistakes,
        arg_names=("embed_dim", "num_heads", "bias"),
        style="question",
    ),
    Exercise(
        key="08.5",
        set=SET,
        entry="fixed_split_heads",
        title="Find the bug: a head split with the right shape and the wrong contents",
        points=2,
        difficulty="easy",
        minutes=5,
        forbidden=ATTNLIB,
        cases=_fix_split_cases,
        expect=split_expect,
        mistakes=split_mistakes,
        arg_names=("x", "num_heads"),
        style="fix",
    ),
]
