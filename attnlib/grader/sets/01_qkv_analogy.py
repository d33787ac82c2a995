"""Set 01 (lesson 1, the QKV analogy): hard and soft lookup, a bug to find, and the low-temperature limit."""

from __future__ import annotations

import numpy as np

from ..common import ATTNLIB, LIBRARY_ATTENTION, Case, Exercise, attn, f32, ok_attn, pair, question, score_magnitude

SET = "01_qkv_analogy"
TITLE = "Lesson 1: hard and soft lookup"
LOOKUP_ARGS = ("query", "keys", "values")


def _lookup_cases(rng):
    cases = []
    for L, S, E, Ev in ((3, 5, 4, 2), (1, 7, 3, 5), (4, 4, 3, 3), (2, 6, 8, 4)):
        cases.append(
            Case(
                f"L={L} queries, S={S} keys, E={E}, Ev={Ev}",
                (f32(L, E, rng=rng), f32(S, E, rng=rng), f32(S, Ev, rng=rng)),
            )
        )
    return cases


def _hard_expect(case):
    q, k, v = case.args
    return {"out": v[np.argmax(q.astype(np.float64) @ k.T.astype(np.float64), axis=-1)].astype(np.float64)}


def _hard_mistakes(case):
    q, k, v = case.args
    s = q.astype(np.float64) @ k.T
    found = [
        (
            "you picked the worst match (argmin); the best key has the highest score q·k: use argmax",
            {"out": v[np.argmin(s, axis=-1)]},
        ),
        (
            "that is a soft lookup (a weighted average); the hard lookup returns the single best value",
            {"out": attn(q, k, v, scale=1.0)[0]},
        ),
        (
            "you took the argmax over the queries (dim=0); each query picks its best key: argmax over dim=-1",
            {"out": v[np.argmax(s, axis=0)]},
        ),
    ]
    if k.shape == v.shape:
        found.append(("you returned the best key; return the value stored under it", {"out": k[np.argmax(s, axis=-1)]}))
    return found


def _soft_cases(rng):
    cases = []
    for (L, S, E, Ev), T in zip(
        ((3, 5, 4, 2), (1, 6, 2, 3), (4, 4, 3, 3), (2, 7, 8, 4)), (1.0, 0.25, 5.0, 0.5), strict=True
    ):
        q, k = f32(L, E, rng=rng), f32(S, E, rng=rng)
        cases.append(
            Case(
                f"L={L}, S={S}, E={E}, temperature={T}",
                (q, k, f32(S, Ev, rng=rng)),
                {"temperature": T},
                magnitude=score_magnitude(q, k, 1 / T),
            )
        )
    q, k = f32(2, 3, rng=rng, scale=40.0), f32(5, 3, rng=rng, scale=40.0)
    cases.append(
        Case(
            "large scores (|q·k| ~ 1000), temperature=1",
            (q, k, f32(5, 2, rng=rng)),
            {"temperature": 1.0},
            magnitude=score_magnitude(q, k, 1.0),
        )
    )
    cases.append(
        Case("the default temperature (not passed)", (f32(3, 4, rng=rng), f32(5, 4, rng=rng), f32(5, 2, rng=rng)))
    )
    return cases


def _soft_expect(case):
    q, k, v = case.args
    return pair(ok_attn(q, k, v, scale=1.0 / case.kwargs.get("temperature", 1.0)))


def _unnormalised(q, k, scale):
    with np.errstate(all="ignore"):
        return {"weights": np.exp((q.astype(np.float64) @ k.T.astype(np.float64)) * scale)}


def _soft_mistakes(case):
    q, k, v = case.args
    T = case.kwargs.get("temperature", 1.0)
    found = []
    if T != 1.0:
        found += [
            (
                "the scores are multiplied by the temperature; divide by it (low T = sharper)",
                pair(attn(q, k, v, scale=T)),
            ),
            (
                "the temperature is ignored: divide the scores by it before the softmax",
                pair(attn(q, k, v, scale=1.0)),
            ),
        ]
    found += [
        (
            "the softmax is taken over the queries (dim=0); each query's weights over the keys must sum to 1: "
            "use dim=-1",
            pair(attn(q, k, v, scale=1 / T, axis=-2)),
        ),
        ("the weights are exp(score) without dividing by their sum", _unnormalised(q, k, 1 / T)),
        (
            "NaN for large scores: subtract each row's maximum before exp (or use torch.softmax, allowed here)",
            pair(attn(q, k, v, scale=1 / T, naive=True)),
        ),
        (
            "the scores are divided by sqrt(d_k) as in scaled dot-product attention; this lookup divides by the "
            "temperature only",
            pair(attn(q, k, v, scale=1 / (T * np.sqrt(q.shape[-1])))),
        ),
    ]
    return found


_low_t = question(
    2,
    "Divide two scores by T and let T shrink: their gap, divided by T, grows without bound. Ask what the "
    "softmax does to weights whose exponents drift ever further apart, and what output such weights give.",
    {
        1: "Answer 1 (the mean of all values) is the limit T -> infinity, not T -> 0.",
        3: "The weights always sum to 1, so the output is a weighted average of the values, never zero by itself.",
        4: "The first key has no special role: the softmax favours the best-scoring key, wherever it is.",
    },
)

EXERCISES = [
    Exercise(
        key="01.1",
        set=SET,
        entry="hard_lookup",
        title="Hard lookup: the value of the best-matching key",
        points=2,
        difficulty="easy",
        minutes=5,
        forbidden=ATTNLIB,
        cases=_lookup_cases,
        expect=_hard_expect,
        mistakes=_hard_mistakes,
        arg_names=LOOKUP_ARGS,
    ),
    Exercise(
        key="01.2",
        set=SET,
        entry="soft_lookup",
        title="Soft lookup: a softmax-weighted average of all values",
        points=3,
        difficulty="easy",
        minutes=10,
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=_soft_cases,
        expect=_soft_expect,
        mistakes=_soft_mistakes,
        distribution="weights",
        arg_names=LOOKUP_ARGS,
    ),
    Exercise(
        key="01.3",
        set=SET,
        entry="fixed_soft_lookup",
        title="Find the bug: a soft lookup whose answers are wrong",
        points=2,
        difficulty="easy",
        minutes=5,
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=_soft_cases,
        expect=_soft_expect,
        mistakes=_soft_mistakes,
        distribution="weights",
        arg_names=LOOKUP_ARGS,
        style="fix",
    ),
    Exercise(
        key="01.4",
        set=SET,
        entry="answer_low_temperature",
        title="Question: what the soft lookup becomes as the temperature goes to 0",
        points=1,
        difficulty="easy",
        minutes=3,
        cases=_low_t[0],
        expect=_low_t[1],
        mistakes=_low_t[2],
        style="question",
    ),
]
