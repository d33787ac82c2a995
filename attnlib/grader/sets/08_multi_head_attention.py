"""Set 08 (lesson 8, multi-head attention): a fused projection split into heads, each head's share of the output
projection, the module, its parameter count, a bug in one head's slice of the projections."""

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


def _differs(found, expected):
    """The mistakes whose outputs differ from the reference on this check (one head hides some of them)."""
    kept = []
    for hint, outputs in found:
        same = all(
            np.shape(outputs[n]) == np.shape(expected[n]) and np.allclose(outputs[n], expected[n]) for n in outputs
        )
        if not same:
            kept.append((hint, outputs))
    return kept


def qkv_cases(rng):
    # (batch, seq, heads, head_dim): batch, seq, heads and head_dim differ within a check, so that no mistake
    # that mixes two of the axes has the right shape by chance
    specs = ((2, 5, 3, 4), (1, 4, 2, 3), (3, 2, 6, 1), (2, 3, 1, 5), (2, 3, 4, 2))
    return [
        Case(f"qkv ({B}, {L}, 3*{H * D}), {H} head{'s' if H > 1 else ''} of {D}", (f32(B, L, 3 * H * D, rng=rng), H))
        for B, L, H, D in specs
    ]


def _qkv(parts):
    return {"q": parts[0], "k": parts[1], "v": parts[2]}


def qkv_expect(case):
    qkv, H = case.args
    B, L, F = qkv.shape
    parts = qkv.astype(np.float64).reshape(B, L, 3, H, F // (3 * H)).transpose(2, 0, 3, 1, 4)
    return _qkv(parts)


def qkv_mistakes(case):
    qkv, H = case.args
    B, L, F = qkv.shape
    D = F // (3 * H)
    x = qkv.astype(np.float64)
    thirds = x.reshape(B, L, 3, H * D).transpose(2, 0, 1, 3)  # q, k, v as (batch, seq, E), each still whole
    found = [
        (
            "q, k and v are taken as interleaved per head (a reshape to (..., heads, 3, head_dim)): the fused "
            "projection packs them as [q | k | v], all of q's features first, so the 3 comes before the heads",
            _qkv(x.reshape(B, L, H, 3, D).transpose(3, 0, 2, 1, 4)),
        ),
        (
            "q, k and v are cut every third feature: the fused projection packs them as [q | k | v], three "
            "contiguous blocks of embed_dim features each",
            _qkv(x.reshape(B, L, H * D, 3).transpose(3, 0, 1, 2).reshape(3, B, L, H, D).transpose(0, 1, 3, 2, 4)),
        ),
        (
            "heads split by view/reshape without the transpose: a bare reshape of (batch, seq, embed_dim) to "
            "(batch, heads, seq, head_dim) mixes different tokens into one head",
            _qkv(thirds.reshape(3, B, H, L, D)),
        ),
        (
            "head h must take features h*head_dim .. (h+1)*head_dim - 1 of q (and of k, v), not every heads-th feature",
            _qkv(thirds.reshape(3, B, L, D, H).transpose(0, 1, 4, 2, 3)),
        ),
        (
            "the result is (batch, seq, heads, head_dim); move the heads in front of the sequence: "
            "(batch, heads, seq, head_dim)",
            _qkv(thirds.reshape(3, B, L, H, D)),
        ),
    ]
    return _differs(found, qkv_expect(case))


def qkv_raises(case):
    qkv, H = case.args
    B, L, F = qkv.shape
    D = F // (3 * H)
    found = [
        (
            f"head_dim is embed_dim // heads, and embed_dim is a third of the last axis here ({F} = 3 * {F // 3}): "
            f"head_dim = {F} // (3 * {H}) = {D}",
            lambda t: t.zeros(B, L, F).reshape(B, L, 3, H, F // H),
        )
    ]
    return fingerprint_raises(
        found,
        (
            SHAPE_ERROR,
            f"this check has qkv ({B}, {L}, {F}) and {H} heads: q, k and v must each be ({B}, {H}, {L}, {D})",
        ),
    )


def contrib_cases(rng):
    specs = ((2, 3, 5, 4), (1, 2, 4, 3), (3, 4, 2, 2), (2, 1, 3, 5), (2, 4, 3, 1))
    cases = []
    for B, H, L, D in specs:
        E = H * D
        cases.append(Case(f"o ({B}, {H}, {L}, {D}), w_o ({E}, {E})", (f32(B, H, L, D, rng=rng), linear(rng, E, E)[0])))
    return cases


def _contrib(o, w_o, cols):
    """Each head's share of merge(o) @ w_o^T when head h's features meet the columns ``cols(w_o)[h]`` of w_o."""
    return np.einsum("bhld,hed->bhle", np.asarray(o, np.float64), cols(np.asarray(w_o, np.float64)))


def contrib_expect(case):
    o, w_o = case.args
    H, D = o.shape[1], o.shape[3]
    return {"out": _contrib(o, w_o, lambda w: w.reshape(w.shape[0], H, D).transpose(1, 0, 2))}


def contrib_mistakes(case):
    o, w_o = case.args
    B, H, L, D = o.shape
    E = w_o.shape[0]
    merged = np.asarray(o, np.float64).transpose(0, 2, 1, 3).reshape(B, L, H * D) @ np.asarray(w_o, np.float64).T
    found = [
        (
            "each head multiplies ROWS h*head_dim .. of w_o: nn.Linear stores its weight as (out_features, "
            "in_features), so the merged features, and with them head h's, index its columns",
            {"out": _contrib(o, w_o, lambda w: w.reshape(H, D, E).transpose(0, 2, 1))},
        ),
        (
            "head h's features are taken as every heads-th column of w_o: merging puts head 0's head_dim features "
            "first, then head 1's, so head h owns a contiguous block of columns",
            {"out": _contrib(o, w_o, lambda w: w.reshape(E, D, H).transpose(2, 0, 1))},
        ),
        (
            "every head gets the whole output divided by the number of heads: the heads' contributions differ, "
            "each is its own features times its own columns of w_o",
            {"out": np.broadcast_to((merged / H)[:, None], (B, H, L, E))},
        ),
    ]
    return _differs(found, contrib_expect(case))


def contrib_raises(case):
    o, w_o = case.args
    B, H, L, D = o.shape
    E = w_o.shape[0]
    return fingerprint_raises(
        [
            (
                "head h's slice of w_o is (embed_dim, head_dim), columns of the (out, in) weight: multiply by its "
                "transpose",
                lambda t: t.zeros(B, L, D) @ t.zeros(E, D),
            ),
            (
                "head h's block of w_o is (embed_dim, head_dim), columns of the (out, in) weight: multiply the head's "
                "outputs by its transpose, (head_dim, embed_dim)",
                lambda t: t.zeros(B, H, L, D) @ t.zeros(H, E, D),
            ),
        ],
        (
            SHAPE_ERROR,
            f"this check has o ({B}, {H}, {L}, {D}) and w_o ({E}, {E}): the result must be ({B}, {H}, {L}, {E})",
        ),
    )


def head_weight_cases(rng):
    # (batch, L, heads, head_dim, head asked for); more than one head, or the bug would not show
    specs = ((2, 5, 3, 4, 1), (1, 4, 2, 4, 0), (3, 3, 4, 4, 3), (2, 6, 3, 2, 2))
    cases = []
    for B, L, H, D, h in specs:
        E = H * D
        cases.append(
            Case(
                f"x ({B}, {L}, {E}), {H} heads, head {h}",
                (f32(B, L, E, rng=rng), linear(rng, E, E)[0], linear(rng, E, E)[0], H, h),
                magnitude=4.0,
            )
        )
    return cases


def _head_weights(case, *, q_rows=True, k_rows=True, scale_dim=None, interleaved=False):
    x, w_q, w_k, H, h = case.args
    E = w_q.shape[0]
    D = E // H
    x = np.asarray(x, np.float64)

    def part(w, rows):
        w = np.asarray(w, np.float64)
        if interleaved:
            return w[h::H].T
        return w[h * D : (h + 1) * D].T if rows else w[:, h * D : (h + 1) * D]

    q, k = x @ part(w_q, q_rows), x @ part(w_k, k_rows)
    return {"out": attn(q, k, k, None, 1.0 / math.sqrt(scale_dim or D))[1]}


def head_weight_expect(case):
    return _head_weights(case)


def head_weight_mistakes(case):
    _, w_q, _, H, _ = case.args
    E = w_q.shape[0]
    found = [
        (
            "head h's q and k are taken from COLUMNS of w_q and w_k: nn.Linear stores its weight as (out_features, "
            "in_features), so head h's output features are ROWS h*head_dim .. (h+1)*head_dim - 1",
            _head_weights(case, q_rows=False, k_rows=False),
        ),
        ("head h's q is taken from columns of w_q (its k from rows): both use rows", _head_weights(case, q_rows=False)),
        ("head h's k is taken from columns of w_k (its q from rows): both use rows", _head_weights(case, k_rows=False)),
        (
            f"the scores are scaled by 1/sqrt(embed_dim) = 1/sqrt({E}); a head dots vectors of head_dim features",
            _head_weights(case, scale_dim=E),
        ),
        (
            "head h's rows are taken every heads-th row: head h owns a contiguous block of head_dim rows",
            _head_weights(case, interleaved=True),
        ),
    ]
    return _differs(found, head_weight_expect(case))


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
        entry="split_qkv",
        title="Split a fused q, k, v projection into heads",
        points=2,
        difficulty="medium",
        minutes=15,
        returns=("q", "k", "v"),
        forbidden=ATTNLIB,
        cases=qkv_cases,
        expect=qkv_expect,
        mistakes=qkv_mistakes,
        raises=qkv_raises,
        arg_names=("qkv", "num_heads"),
    ),
    Exercise(
        key="08.2",
        set=SET,
        entry="head_contributions",
        title="What each head adds to the output projection",
        points=3,
        difficulty="medium",
        minutes=20,
        forbidden=ATTNLIB,
        cases=contrib_cases,
        expect=contrib_expect,
        mistakes=contrib_mistakes,
        raises=contrib_raises,
        arg_names=("o", "w_o"),
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
        entry="fixed_head_weights",
        title="Find the bug: one head's weights rebuilt from the wrong slice of the projections",
        points=2,
        difficulty="easy",
        minutes=10,
        forbidden=ATTNLIB,
        cases=head_weight_cases,
        expect=head_weight_expect,
        mistakes=head_weight_mistakes,
        distribution="out",
        arg_names=("x", "w_q", "w_k", "num_heads", "head"),
        style="fix",
    ),
]
