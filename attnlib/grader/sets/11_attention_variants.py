"""Set 11 (lesson 11, attention variants): grouped-query attention, a sliding-window mask, linear attention.

References: :mod:`attnlib.variants` in float64. Each mistake is what a classic wrong implementation returns for
the same inputs, with the hint that names it.
"""

from __future__ import annotations

import math

import numpy as np

from ..common import (
    NO_FULL_MATRIX_BUDGET,
    NO_FULL_MATRIX_LENGTH,
    Case,
    Exercise,
    f32,
    is_no_full_matrix,
    memory_raises,
    no_full_matrix_case,
)

SET = "11_attention_variants"
TITLE = "Lesson 11: grouped-query attention, sliding windows, linear attention"

SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
ATTNLIB = ("attnlib",)


def _t(a):
    import torch

    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _softmax(s, axis=-1):
    s = s - s.max(axis, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis, keepdims=True)


def _attend(q, k, v, scale=None, axis=-1):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    w = _softmax((q @ np.swapaxes(k, -1, -2)) * scale, axis)
    return w @ v, w


# ---------------------------------------------------------------------------------------------- 11.1 GQA


def gqa_cases(rng):
    cases = []
    for B, Hq, Hkv, L, S, D, Dv in (
        (1, 4, 2, 3, 3, 4, 4),
        (2, 8, 2, 5, 7, 8, 8),
        (1, 6, 3, 4, 4, 8, 5),
        (2, 4, 1, 2, 6, 4, 4),
        (1, 4, 4, 3, 5, 8, 8),
    ):
        q = f32(B, Hq, L, D, rng=rng)
        k, v = f32(B, Hkv, S, D, rng=rng), f32(B, Hkv, S, Dv, rng=rng)
        cases.append(Case(f"q ({B}, {Hq}, {L}, {D}), k/v with {Hkv} heads, S={S}", (q, k, v)))
    return cases


def gqa_expect(case):
    from ...variants import grouped_query_attention

    out, w = grouped_query_attention(*(_t(a) for a in case.args))
    return {"out": out.numpy(), "weights": w.numpy()}


def gqa_mistakes(case):
    q, k, v = (np.asarray(a, np.float64) for a in case.args)
    n_rep = q.shape[1] // k.shape[1]
    inter = (np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1))
    found = []
    if 1 < k.shape[1] < q.shape[1]:
        out, w = _attend(q, np.tile(k, (1, n_rep, 1, 1)), np.tile(v, (1, n_rep, 1, 1)))
        found.append(
            (
                "the key/value heads are tiled (kv0, kv1, kv0, kv1, ...) instead of repeated (kv0, kv0, kv1, "
                "kv1, ...): query heads g*n_rep .. (g+1)*n_rep - 1 share kv head g; use "
                "repeat_interleave(n_rep, dim=1), not repeat(1, n_rep, 1, 1)",
                {"out": out, "weights": w},
            )
        )
    if k.shape[1] > 1:
        out, w = _attend(q, k[:, :1].repeat(q.shape[1], 1), v[:, :1].repeat(q.shape[1], 1))
        found.append(
            ("every query head reads kv head 0; query head h reads kv head h // (Hq / Hkv)", {"out": out, "weights": w})
        )
    out, w = _attend(q, *inter, scale=1.0)
    found.append(("the scores are not scaled: divide by sqrt(head_dim)", {"out": out, "weights": w}))
    out, w = _attend(q, *inter, axis=-2)
    found.append(
        (
            "the softmax is taken over the queries (dim=-2); each query's weights over the keys sum to 1",
            {"out": out, "weights": w},
        )
    )
    return found


# ---------------------------------------------------------------------------------------------- 11.2 window


def window_cases(rng):
    del rng
    square = [Case(f"L={L}, window={w}", (L, w)) for L, w in ((6, 3), (8, 1), (5, 5), (4, 9), (10, 4))]
    # L queries that are the last L of S keys (a decoding step, or a chunk after a cache): bottom-right
    later = [
        Case(f"L={L} queries after {S - L} earlier keys (S={S}), window={w}", (L, w), {"S": S})
        for L, w, S in ((3, 4, 9), (1, 3, 6), (4, 2, 4), (2, 7, 5))
    ]
    return square + later


def _offsets(case):
    L, _ = case.args
    S = case.kwargs.get("S", L)
    return (np.arange(L)[:, None] + (S - L)) - np.arange(S)[None, :], np.arange(L)[:, None] - np.arange(S)[None, :]


def window_expect(case):
    d, _ = _offsets(case)
    w = case.args[1]
    return {"out": (d >= 0) & (d < w)}


def window_mistakes(case):
    L, w = case.args
    d, top_left = _offsets(case)
    S = d.shape[1]
    found = [
        (
            "off by one: each query must see exactly `window` keys (itself and window - 1 before it): "
            "use i - j < window",
            (d >= 0) & (d <= w),
        ),
        ("the band is not causal: a query must not see later keys (j > i); use 0 <= i - j < window", np.abs(d) < w),
        ("the mask is inverted: True means the query MAY attend", ~((d >= 0) & (d < w))),
        (
            "the diagonal is missing: a query may attend to itself (i - j = 0 is inside the window): 0 <= i - j",
            (d > 0) & (d < w),
        ),
        (
            "the band points into the future: keys j >= i; a query sees itself and EARLIER keys, 0 <= i - j < window",
            (d <= 0) & (-d < w),
        ),
    ]
    if S != L:
        found.append(
            (
                f"the queries are aligned top-left: these L={L} queries are the LAST L of S={S} positions, so query "
                "i sits at position i + S - L (bottom-right); measure its distance to key j from there",
                (top_left >= 0) & (top_left < w),
            )
        )
    if w < S:
        found.append(("the window is ignored: this is the plain causal mask; also require i - j < window", d >= 0))
    ref = (d >= 0) & (d < w)
    return [(hint, {"out": out}) for hint, out in found if not np.array_equal(out, ref)]


# ---------------------------------------------------------------------------------------------- 11.3 linear


def linear_cases(rng):
    cases = []
    for B, H, L, S, D, Dv in ((1, 1, 4, 4, 4, 4), (2, 2, 5, 7, 8, 6), (1, 3, 6, 6, 16, 16), (2, 1, 1, 5, 4, 3)):
        q, k = f32(B, H, L, D, rng=rng), f32(B, H, S, D, rng=rng)
        v = f32(B, H, S, Dv, rng=rng)
        cases.append(Case(f"q ({B}, {H}, {L}, {D}), S={S}, d_v={Dv}", (q, k, v)))
    n = NO_FULL_MATRIX_LENGTH
    big = (f32(1, 1, n, 8, rng=rng), f32(1, 1, n, 8, rng=rng), f32(1, 1, n, 4, rng=rng))
    cases.append(no_full_matrix_case(f"long sequence L=S={n}", big))
    return cases


def linear_raises(case):
    return memory_raises(case.args[0].shape[-2], case.args[1].shape[-2])


def linear_expect(case):
    from ...variants import linear_attention

    return {"out": linear_attention(*(_t(a) for a in case.args)).numpy()}


def _elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(x))


def _linear_np(q, k, v, phi=_elu1, normalise=True):
    pq, pk = phi(q), phi(k)
    num = pq @ (np.swapaxes(pk, -1, -2) @ v)
    if not normalise:
        return num
    return num / ((pq * pk.sum(-2, keepdims=True)).sum(-1, keepdims=True) + 1e-6)


def linear_mistakes(case):
    if is_no_full_matrix(case):
        return []
    q, k, v = (np.asarray(a, np.float64) for a in case.args)
    return [
        (
            "that is softmax attention; linear attention replaces exp(q·k) by phi(q)·phi(k) with phi(x) = elu(x) + 1",
            {"out": _attend(q, k, v)[0]},
        ),
        (
            "the output is not normalised: divide by phi(q_i) · sum_j phi(k_j)",
            {"out": _linear_np(q, k, v, normalise=False)},
        ),
        (
            "the feature map is elu(x) without the + 1: phi must be positive, phi(x) = elu(x) + 1",
            {"out": _linear_np(q, k, v, phi=lambda x: _elu1(x) - 1.0)},
        ),
        (
            "the feature map is ReLU; this exercise uses phi(x) = elu(x) + 1",
            {"out": _linear_np(q, k, v, phi=lambda x: np.maximum(x, 0.0))},
        ),
    ]


# ---------------------------------------------------------------------------------------------- 11.4 causal linear


def causal_linear_cases(rng):
    cases = []
    for B, H, L, D, Dv in ((1, 1, 5, 4, 4), (2, 2, 7, 8, 6), (1, 3, 6, 16, 3), (2, 1, 1, 4, 3)):
        q, k, v = f32(B, H, L, D, rng=rng), f32(B, H, L, D, rng=rng), f32(B, H, L, Dv, rng=rng)
        cases.append(Case(f"q, k ({B}, {H}, {L}, {D}), v d_v={Dv}", (q, k, v)))
    n = NO_FULL_MATRIX_LENGTH
    big = (f32(1, 1, n, 8, rng=rng), f32(1, 1, n, 8, rng=rng), f32(1, 1, n, 4, rng=rng))
    cases.append(no_full_matrix_case(f"long sequence L={n}", big))
    return cases


def _causal_linear_np(q, k, v, *, shift=0, causal_norm=True, normalise=True):
    pq, pk, v = _elu1(np.asarray(q, np.float64)), _elu1(np.asarray(k, np.float64)), np.asarray(v, np.float64)
    kv = np.cumsum(pk[..., :, None] * v[..., None, :], axis=-3)  # (..., L, D, Dv): sum over j <= i
    z = np.cumsum(pk, axis=-2)
    if shift:  # sums over j < i only
        kv = np.concatenate([np.zeros_like(kv[..., :1, :, :]), kv[..., :-1, :, :]], axis=-3)
        z = np.concatenate([np.zeros_like(z[..., :1, :]), z[..., :-1, :]], axis=-2)
    if not causal_norm:
        z = np.broadcast_to(pk.sum(-2, keepdims=True), z.shape)
    num = np.einsum("...d,...de->...e", pq, kv)
    if not normalise:
        return num
    return num / ((pq * z).sum(-1, keepdims=True) + 1e-6)


def causal_linear_expect(case):
    return {"out": _causal_linear_np(*case.args)}


def causal_linear_mistakes(case):
    if is_no_full_matrix(case):
        return []
    q, k, v = (np.asarray(a, np.float64) for a in case.args)
    found = [
        (
            "that is non-causal linear attention (exercise 11.3): query i must only sum over keys j <= i; keep "
            "running sums (torch.cumsum over the sequence) of phi(k_j) v_j^T and of phi(k_j)",
            _linear_np(q, k, v),
        ),
        (
            "the numerator is causal but the normaliser sums phi(k_j) over ALL keys: use the running sum up to i",
            _causal_linear_np(q, k, v, causal_norm=False),
        ),
        (
            "the running sums stop at j < i: query i must include its own key and value (j <= i)",
            _causal_linear_np(q, k, v, shift=1),
        ),
        (
            "the output is not normalised: divide by phi(q_i) · sum_{j<=i} phi(k_j)",
            _causal_linear_np(q, k, v, normalise=False),
        ),
    ]
    return [(hint, {"out": out}) for hint, out in found]


# ---------------------------------------------------------------------------------------------- 11.5 mask_mod

DOC_IDS = (0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3)  # the notebook's DOC_IDS: 12 packed tokens of 4 documents


def _indices(B, H, q, kv):
    shape = (B, H, len(q), len(kv))
    b = np.broadcast_to(np.arange(B)[:, None, None, None], shape)
    h = np.broadcast_to(np.arange(H)[None, :, None, None], shape)
    qi = np.broadcast_to(np.asarray(q)[None, None, :, None], shape)
    ki = np.broadcast_to(np.asarray(kv)[None, None, None, :], shape)
    return tuple(np.ascontiguousarray(a, dtype=np.int64) for a in (b, h, qi, ki))


def mask_mod_cases(rng):
    n = len(DOC_IDS)
    perm = rng.permutation(n)
    return [
        Case("every (query, key) pair of the 12 tokens", _indices(1, 1, range(n), range(n))),
        Case("batch 2, heads 3", _indices(2, 3, range(n), range(n))),
        Case("queries 5..11 (a later chunk), every key", _indices(1, 2, range(5, n), range(n))),
        Case("queries and keys in a shuffled order", _indices(1, 1, perm, perm[::-1])),
    ]


def _mask_np(q, kv, *, causal=True, same_doc=True, upper=False):
    docs = np.asarray(DOC_IDS)
    out = np.ones(q.shape, dtype=bool)
    if same_doc:
        out &= docs[q] == docs[kv]
    if causal:
        out &= (kv >= q) if upper else (kv <= q)
    return out


def mask_mod_expect(case):
    _, _, q, kv = case.args
    return {"out": _mask_np(q, kv)}


def mask_mod_mistakes(case):
    _, _, q, kv = case.args
    docs = np.asarray(DOC_IDS)
    found = [
        (
            "only the causal condition: a token must not see tokens of OTHER documents packed before it",
            _mask_np(q, kv, same_doc=False),
        ),
        (
            "only the same-document condition: within a document a token must not see later tokens (kv_idx <= q_idx)",
            _mask_np(q, kv, causal=False),
        ),
        (
            "the causal condition is reversed: keys at or before the query (kv_idx <= q_idx) may be seen",
            _mask_np(q, kv, upper=True),
        ),
        (
            "earlier documents are visible: compare the documents with ==, not >=",
            (docs[q] >= docs[kv]) & (kv <= q),
        ),
        ("the diagonal is excluded: a token may attend to itself (kv_idx <= q_idx)", _mask_np(q, kv) & (kv != q)),
    ]
    ref = _mask_np(q, kv)
    return [(hint, {"out": out}) for hint, out in found if not np.array_equal(out, ref)]


# ---------------------------------------------------------------------------------------------- 11.6 score_mod

CAP = 5.0  # the notebook's CAP


def score_mod_cases(rng):
    cases = []
    for B, H, L, S, spread in ((1, 1, 4, 4, 3.0), (2, 3, 3, 5, 20.0), (1, 2, 6, 6, 60.0)):
        b, h, q, kv = _indices(B, H, range(L), range(S))
        score = f32(B, H, L, S, rng=rng, scale=spread)
        cases.append(Case(f"scores ({B}, {H}, {L}, {S}) spread ±{spread:g}", (score, b, h, q, kv), magnitude=spread))
    return cases


def score_mod_expect(case):
    return {"out": CAP * np.tanh(np.asarray(case.args[0], np.float64) / CAP)}


def score_mod_mistakes(case):
    s = np.asarray(case.args[0], np.float64)
    found = [
        ("tanh(score) caps at ±1; scale it: CAP * tanh(score / CAP)", np.tanh(s)),
        ("CAP * tanh(score) without dividing by CAP first: small scores get multiplied by CAP", CAP * np.tanh(s)),
        ("tanh(score / CAP) without multiplying by CAP: the scores then lie in (-1, 1)", np.tanh(s / CAP)),
        (
            "a hard clamp to [-CAP, CAP]: the soft cap is smooth, CAP * tanh(score / CAP), so large scores still "
            "keep their order and their gradient",
            np.clip(s, -CAP, CAP),
        ),
    ]
    return [(hint, {"out": out}) for hint, out in found]


# ---------------------------------------------------------------------------------------------- 11.7/11.8 reach


def reach_cases(rng):
    w = int(rng.choice([16, 64, 256]))
    return [Case(f"window={w_}, {n} layers", (w_, n)) for w_, n in ((4, 3), (128, 6), (3, 5), (2, 7), (w, 12))]


def reach_expect(case):
    w, n = case.args
    return {"out": np.array(float(n * (w - 1)))}


def reach_mistakes(case):
    w, n = case.args
    why = (
        "with a causal window of w keys (i - j < w), one layer moves information at most w - 1 positions back; "
        "each further layer can move it that far again"
    )
    right = n * (w - 1)
    candidates = [
        ("that counts w positions per layer; the farthest key a window of w reaches is w - 1 back. ", n * w),
        ("that is one layer's reach; information hops again in every layer. ", w - 1),
        ("the reach adds up over layers, it does not multiply. ", w**n if w**n < 2**53 else 2.0**53),
        ("that counts w positions per layer, minus one. ", n * w - 1),
    ]
    out = [(hint + why, {"out": np.array(float(v))}) for hint, v in candidates if v != right]
    return [*out, ("not the reach: " + why, {})]


def layers_cases(rng):
    d = int(rng.integers(1000, 5000))
    return [
        Case(f"distance {d_}, window={w}", (d_, w)) for d_, w in ((4000, 512), (10, 3), (100, 5), (1000, 33), (d, 129))
    ]


def layers_expect(case):
    d, w = case.args
    return {"out": np.array(float(math.ceil(d / (w - 1))))}


def layers_mistakes(case):
    d, w = case.args
    why = "each layer moves information at most w - 1 positions back, and a part of a layer does not exist"
    right = math.ceil(d / (w - 1))
    candidates = [
        ("that divides by w; one layer reaches w - 1 positions back. ", math.ceil(d / w)),
        ("that is not a whole number of layers: round up. ", d / (w - 1)),
        ("one layer too many. ", right + 1),
    ]
    out = [(hint + why, {"out": np.array(float(v))}) for hint, v in candidates if v != right]
    return [*out, ("not the number of layers: " + why, {})]


EXERCISES = [
    Exercise(
        key="11.1",
        set=SET,
        entry="grouped_query_attention",
        title="Grouped-query attention",
        points=4,
        difficulty="medium",
        minutes=20,
        kind="function",
        returns=("out", "weights"),
        forbidden=(*SDPA, *ATTNLIB),
        cases=gqa_cases,
        expect=gqa_expect,
        mistakes=gqa_mistakes,
        distribution="weights",
        arg_names=("q", "k", "v"),
    ),
    Exercise(
        key="11.2",
        set=SET,
        entry="sliding_window_mask",
        title="A causal sliding-window mask, also for queries that come after earlier keys",
        points=3,
        difficulty="medium",
        minutes=15,
        kind="function",
        returns=("out",),
        forbidden=ATTNLIB,
        cases=window_cases,
        expect=window_expect,
        mistakes=window_mistakes,
        distribution=None,
        arg_names=("L", "window"),
    ),
    Exercise(
        key="11.3",
        set=SET,
        entry="linear_attention",
        title="Linear attention with the elu + 1 feature map",
        points=4,
        difficulty="medium",
        minutes=20,
        kind="function",
        returns=("out",),
        forbidden=(*SDPA, *ATTNLIB),
        cases=linear_cases,
        expect=linear_expect,
        mistakes=linear_mistakes,
        raises=linear_raises,
        distribution=None,
        arg_names=("q", "k", "v"),
        memory_limit_bytes=NO_FULL_MATRIX_BUDGET,
    ),
    Exercise(
        key="11.4",
        set=SET,
        entry="causal_linear_attention",
        title="Causal linear attention with running sums, without the L×S matrix",
        points=4,
        difficulty="hard",
        minutes=25,
        forbidden=(*SDPA, *ATTNLIB),
        cases=causal_linear_cases,
        expect=causal_linear_expect,
        mistakes=causal_linear_mistakes,
        raises=linear_raises,
        arg_names=("q", "k", "v"),
        memory_limit_bytes=NO_FULL_MATRIX_BUDGET,
    ),
    Exercise(
        key="11.5",
        set=SET,
        entry="document_mask_mod",
        title="A FlexAttention mask_mod for packed documents",
        points=2,
        difficulty="medium",
        minutes=10,
        forbidden=ATTNLIB,
        cases=mask_mod_cases,
        expect=mask_mod_expect,
        mistakes=mask_mod_mistakes,
        arg_names=("b", "h", "q_idx", "kv_idx"),
    ),
    Exercise(
        key="11.6",
        set=SET,
        entry="softcap_score_mod",
        title="A FlexAttention score_mod that soft-caps the scores",
        points=2,
        difficulty="easy",
        minutes=5,
        forbidden=ATTNLIB,
        cases=score_mod_cases,
        expect=score_mod_expect,
        mistakes=score_mod_mistakes,
        arg_names=("score", "b", "h", "q_idx", "kv_idx"),
    ),
    Exercise(
        key="11.7",
        set=SET,
        entry="sliding_window_reach",
        title="Question: how far back a stack of sliding-window layers can see",
        points=2,
        difficulty="medium",
        minutes=10,
        cases=reach_cases,
        expect=reach_expect,
        mistakes=reach_mistakes,
        arg_names=("window", "layers"),
        style="question",
    ),
    Exercise(
        key="11.8",
        set=SET,
        entry="window_layers_needed",
        title="Question: how many sliding-window layers a distance needs",
        points=1,
        difficulty="easy",
        minutes=5,
        cases=layers_cases,
        expect=layers_expect,
        mistakes=layers_mistakes,
        arg_names=("distance", "window"),
        style="question",
    ),
]
