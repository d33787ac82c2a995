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
    return [Case(f"L={L}, window={w}", (L, w)) for L, w in ((6, 3), (8, 1), (5, 5), (4, 9), (10, 4))]


def window_expect(case):
    from ...variants import sliding_window_mask

    L, w = case.args
    return {"out": sliding_window_mask(L, window=w).numpy()}


def window_mistakes(case):
    L, w = case.args
    d = np.arange(L)[:, None] - np.arange(L)[None, :]  # i - j
    found = [
        (
            "off by one: each query must see exactly `window` keys (itself and window - 1 before it): "
            "use i - j < window",
            (d >= 0) & (d <= w),
        ),
        ("the band is not causal: a query must not see later keys (j > i); use 0 <= i - j < window", np.abs(d) < w),
        ("the mask is inverted: True means the query MAY attend", ~((d >= 0) & (d < w))),
        (
            "the band points into the future: keys j >= i; a query sees itself and EARLIER keys, 0 <= i - j < window",
            (d <= 0) & (-d < w),
        ),
    ]
    if w < L:
        found.append(("the window is ignored: this is the plain causal mask; also require i - j < window", d >= 0))
    return [(hint, {"out": out}) for hint, out in found]


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
        title="A causal sliding-window mask",
        points=2,
        difficulty="easy",
        minutes=10,
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
]
