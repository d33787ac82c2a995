"""Set 04 (lesson 4, scaled dot-product attention): batched scores, attention, a bug to find, the shapes."""

from __future__ import annotations

import math

import numpy as np

from ..common import (
    LIBRARY_ATTENTION,
    Case,
    Exercise,
    attention_mistakes,
    f32,
    ok_attn,
    pair,
    qk_swap_raises,
    question,
    score_magnitude,
    t64,
)

SET = "04_scaled_dot_product_attention"
TITLE = "Lesson 4: attention scores and scaled dot-product attention over batch and head dims"


def _scores_cases(rng):
    specs = [
        ("2-D q (3, 4), k (5, 4)", (3, 4), (5, 4), {}),
        ("batch: q (2, 4, 8), k (2, 6, 8)", (2, 4, 8), (2, 6, 8), {}),
        ("batch and heads: q (2, 3, 5, 4), k (2, 3, 7, 4)", (2, 3, 5, 4), (2, 3, 7, 4), {}),
        ("explicit scale=0.5, q (2, 3, 6), k (2, 3, 6)", (2, 3, 6), (2, 3, 6), {"scale": 0.5}),
        ("explicit scale=2.0, L=4 != S=2", (1, 4, 3), (1, 2, 3), {"scale": 2.0}),
    ]
    cases = []
    for name, qs, ks, kw in specs:
        q, k = f32(*qs, rng=rng), f32(*ks, rng=rng)
        cases.append(Case(name, (q, k), kw, magnitude=score_magnitude(q, k, kw.get("scale"))))
    return cases


def _scores_expect(case):
    from ...functional import attention_scores

    q, k = case.args
    out = attention_scores(t64(q), t64(k), case.kwargs.get("scale")).numpy()
    # in the inputs' dtype: exercise 4.2 multiplies these scores' softmax with v, so a float64 result breaks it
    return {"out": out.astype(q.dtype)}


def _scores_mistakes(case):
    q, k = (np.asarray(a, np.float64) for a in case.args)
    E = q.shape[-1]
    scale = case.kwargs.get("scale")
    raw = q @ np.swapaxes(k, -1, -2)
    given = 1 / math.sqrt(E) if scale is None else scale
    found = []
    if scale is not None:
        found.append(
            (
                "the scale argument is ignored: when it is given, multiply by it instead of 1/sqrt(d_k)",
                {"out": raw / math.sqrt(E)},
            )
        )
        found.append(
            (
                "the scores are divided by the scale; multiply by it (scale is a factor, like 1/sqrt(d_k))",
                {"out": raw / scale},
            )
        )
    found += [
        ("the scores are not scaled: multiply q @ k^T by 1/sqrt(d_k)", {"out": raw}),
        (f"the scores are divided by d_k = {E}; the default scale is 1/sqrt(d_k)", {"out": raw / E}),
        (
            "q and k are swapped: compute q @ k.transpose(-2, -1), not k @ q.transpose(-2, -1)",
            {"out": np.swapaxes(raw, -1, -2) * given},
        ),
    ]
    return found


def _sdpa_cases(rng):
    specs = [
        ("2-D: q (3, 4), k (5, 4), v (5, 2)", (3, 4), (5, 4), (5, 2), 1.0, {}),
        ("batch: q (2, 4, 8), k (2, 6, 8), v (2, 6, 3)", (2, 4, 8), (2, 6, 8), (2, 6, 3), 1.0, {}),
        (
            "batch and heads, L != S: q (2, 3, 5, 4), k/v (2, 3, 7, 4)",
            (2, 3, 5, 4),
            (2, 3, 7, 4),
            (2, 3, 7, 4),
            1.0,
            {},
        ),
        ("square L = S = 4, heads", (1, 2, 4, 6), (1, 2, 4, 6), (1, 2, 4, 6), 1.0, {}),
        ("large logits (|score| ~ 1000)", (2, 3, 4), (2, 5, 4), (2, 5, 3), 40.0, {}),
        ("explicit scale=0.25, q (2, 3, 8), k/v (2, 6, 8)", (2, 3, 8), (2, 6, 8), (2, 6, 8), 1.0, {"scale": 0.25}),
    ]
    cases = []
    for name, qs, ks, vs, big, kw in specs:
        q, k = f32(*qs, rng=rng, scale=big), f32(*ks, rng=rng, scale=big)
        cases.append(Case(name, (q, k, f32(*vs, rng=rng)), kw, magnitude=score_magnitude(q, k, kw.get("scale"))))
    return cases


def _sdpa_expect(case):
    return pair(ok_attn(*case.args, scale=case.kwargs.get("scale")))


def _sdpa_mistakes(case):
    return attention_mistakes(*case.args, scale=case.kwargs.get("scale"))


DTYPE_MISMATCH = (
    r"(?i)dtype|Double|Half",
    "a dtype mismatch between tensors: if your attention_scores (exercise 4.1) returns float64 for float32 inputs "
    "(e.g. a float64 scale tensor), fix it there, so that the weights keep the dtype of v",
)


def _sdpa_raises(case):
    return [DTYPE_MISMATCH, *qk_swap_raises(case.args[0], case.args[1], "the weights", v=case.args[2])]


def _fix_cases(rng):
    # without the scale argument, and without the saturated large-logit check (any scale gives one-hot weights)
    return [c for c in _sdpa_cases(rng) if not c.kwargs and c.magnitude < 100]


_shape = question(
    1,
    "Think of one (batch, head) first: how many weights does each query get, and how many queries are there? "
    "Then keep the batch and head axes in front.",
    {
        2: "(B, H, S, L) is the transpose: one row per key. Row i of the weights must be query i's distribution "
        "over the keys.",
        3: "(B, H, L, Ev) is the shape of the output (weights @ v), not of the weights.",
        4: "The head dim stays: each head has its own weights.",
    },
)

EXERCISES = [
    Exercise(
        key="04.1",
        set=SET,
        entry="attention_scores",
        title="Attention scores over batch and head dims, with an optional scale",
        points=3,
        difficulty="easy",
        minutes=10,
        forbidden=LIBRARY_ATTENTION,
        cases=_scores_cases,
        expect=_scores_expect,
        mistakes=_scores_mistakes,
        raises=lambda c: qk_swap_raises(*c.args),
        arg_names=("q", "k"),
    ),
    Exercise(
        key="04.2",
        set=SET,
        entry="scaled_dot_product_attention",
        title="Scaled dot-product attention",
        points=4,
        difficulty="medium",
        minutes=15,
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=_sdpa_cases,
        expect=_sdpa_expect,
        mistakes=_sdpa_mistakes,
        raises=_sdpa_raises,
        distribution="weights",
        arg_names=("q", "k", "v"),
    ),
    Exercise(
        key="04.3",
        set=SET,
        entry="fixed_attention",
        title="Find the bug: attention that is scaled by the wrong number",
        points=2,
        difficulty="easy",
        minutes=5,
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=_fix_cases,
        expect=_sdpa_expect,
        mistakes=_sdpa_mistakes,
        raises=_sdpa_raises,
        distribution="weights",
        arg_names=("q", "k", "v"),
        style="fix",
    ),
    Exercise(
        key="04.4",
        set=SET,
        entry="answer_weights_shape",
        title="Question: the shape of the attention weights",
        points=1,
        difficulty="easy",
        minutes=3,
        cases=_shape[0],
        expect=_shape[1],
        mistakes=_shape[2],
        style="question",
    ),
]
