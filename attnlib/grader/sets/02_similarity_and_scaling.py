"""Set 02 (lesson 2, similarity and scaling): scaled scores, the variance of q·k, and a scaling bug."""

from __future__ import annotations

import math

import numpy as np

from ..common import LIBRARY_ATTENTION, Case, Exercise, f32, qk_swap_raises, question, score_magnitude

SET = "02_similarity_and_scaling"
TITLE = "Lesson 2: dot products, the variance of q·k and the 1/sqrt(d_k) scale"


def _scores_cases(rng):
    cases = []
    for L, S, E in ((3, 5, 4), (4, 4, 16), (2, 6, 64), (1, 3, 9), (5, 2, 7)):
        q, k = f32(L, E, rng=rng), f32(S, E, rng=rng)
        cases.append(Case(f"q ({L}, {E}), k ({S}, {E})", (q, k), magnitude=score_magnitude(q, k)))
    return cases


def _scores_expect(case):
    q, k = (np.asarray(a, np.float64) for a in case.args)
    return {"out": q @ k.T / math.sqrt(q.shape[-1])}


def _scores_mistakes(case):
    q, k = (np.asarray(a, np.float64) for a in case.args)
    L, E = q.shape
    raw = q @ k.T
    found = [
        ("the scores are not scaled: divide q @ k^T by sqrt(d_k)", {"out": raw}),
        (f"the scores are divided by d_k = {E}; divide by sqrt(d_k) instead", {"out": raw / E}),
        ("the scores are multiplied by sqrt(d_k); divide by it instead", {"out": raw * math.sqrt(E)}),
        ("q and k are swapped: compute q @ k^T (one row per query), not k @ q^T", {"out": (k @ q.T) / math.sqrt(E)}),
    ]
    if L != E:
        found.append(
            (
                f"the scores are divided by sqrt({L}), the number of queries (q.shape[0]); d_k is the size of each "
                f"vector, q.shape[-1] = {E}",
                {"out": raw / math.sqrt(L)},
            )
        )
    if k.shape[0] not in (L, E):
        found.append(
            (
                f"the scores are divided by sqrt({k.shape[0]}), the number of keys; d_k is q.shape[-1] = {E}",
                {"out": raw / math.sqrt(k.shape[0])},
            )
        )
    return found


def _scores_raises(case):
    return qk_swap_raises(*case.args)


def _variance_cases(rng):
    # chosen so that every catalogued mistake gives a different number on every check (no sigma_q * sigma_k = 1)
    specs = [(64, 1.0, 1.5), (16, 2.0, 0.75), (512, 0.1, 3.0), (3, 1.5, 0.5), (int(rng.integers(5, 300)), 1.0, 2.0)]
    return [Case(f"d_k={d}, sigma_q={sq}, sigma_k={sk}", (d, sq, sk), magnitude=1.0) for d, sq, sk in specs]


def _variance_expect(case):
    d, sq, sk = case.args
    return {"out": np.array(float(d) * sq**2 * sk**2)}


def _variance_mistakes(case):
    d, sq, sk = case.args
    why = (
        "q·k = sum_i q_i k_i is a sum of d_k independent products q_i k_i, each of mean 0; work out the variance "
        "of ONE product from E[q_i^2] and E[k_i^2], then use that variances of independent terms add"
    )
    found = [
        ("the standard deviations are not squared: ", {"out": np.array(float(d) * sq * sk)}),
        (
            "that is the variance after scaling by 1/sqrt(d_k) (the question asks before): ",
            {"out": np.array(sq**2 * sk**2)},
        ),
        ("that is the standard deviation, not the variance: ", {"out": np.array(math.sqrt(d) * sq * sk)}),
        ("the spreads of q and k are ignored: ", {"out": np.array(float(d))}),
    ]
    out = []
    seen = {float(_variance_expect(case)["out"])}
    for hint, value in found:
        if float(value["out"]) not in seen:  # a candidate that coincides with the answer on this check
            out.append((hint + why, value))
    return [*out, ("not the variance of q·k: " + why, {})]


# Question 2.4's parameters; its key is computed from them (and tests check it against a simulation).
STD_DK, STD_SIGMA_Q, STD_SIGMA_K = 144, 0.5, 3.0


def scaled_score_std(d_k: int = STD_DK, sigma_q: float = STD_SIGMA_Q, sigma_k: float = STD_SIGMA_K) -> float:
    """The standard deviation of q·k / sqrt(d_k) for independent zero-mean entries with these spreads."""
    return math.sqrt(d_k * sigma_q**2 * sigma_k**2) / math.sqrt(d_k)


_std = question(
    scaled_score_std(),
    "Start from Var(q·k) (exercise 2.2) with these spreads; dividing a quantity by a constant c divides its "
    "standard deviation by c. Notice that d_k cancels, but the spreads of q and k do not.",
    {
        math.sqrt(STD_DK * STD_SIGMA_Q**2 * STD_SIGMA_K**2): "That is the standard deviation BEFORE dividing by "
        "sqrt(d_k).",
        STD_SIGMA_Q**2 * STD_SIGMA_K**2: "That is the variance of the scaled score; the question asks for its "
        "standard deviation.",
        1.0: "The scaled score has standard deviation 1 only when q's and k's entries have standard deviation 1.",
        math.sqrt(STD_DK): "That is sqrt(d_k), the divisor, not the spread of the result.",
        STD_SIGMA_Q * STD_SIGMA_K * STD_DK: "That multiplies the spreads by d_k; the d_k terms' variances add, "
        "so the standard deviation grows like sqrt(d_k), and the division by sqrt(d_k) then cancels it.",
    },
)

EXERCISES = [
    Exercise(
        key="02.1",
        set=SET,
        entry="scaled_scores",
        title="Scaled scores q k^T / sqrt(d_k)",
        points=2,
        difficulty="easy",
        minutes=5,
        forbidden=LIBRARY_ATTENTION,
        cases=_scores_cases,
        expect=_scores_expect,
        mistakes=_scores_mistakes,
        raises=_scores_raises,
        arg_names=("q", "k"),
    ),
    Exercise(
        key="02.2",
        set=SET,
        entry="score_variance",
        title="Question: the variance of q·k for given d_k and spreads",
        points=2,
        difficulty="medium",
        minutes=10,
        cases=_variance_cases,
        expect=_variance_expect,
        mistakes=_variance_mistakes,
        arg_names=("d_k", "sigma_q", "sigma_k"),
        style="question",
    ),
    Exercise(
        key="02.3",
        set=SET,
        entry="fixed_scaled_scores",
        title="Find the bug: scores that are right for some shapes only",
        points=2,
        difficulty="easy",
        minutes=5,
        forbidden=LIBRARY_ATTENTION,
        cases=_scores_cases,
        expect=_scores_expect,
        mistakes=_scores_mistakes,
        raises=_scores_raises,
        arg_names=("q", "k"),
        style="fix",
    ),
    Exercise(
        key="02.4",
        set=SET,
        entry="answer_score_std",
        title="Question: the spread of scaled scores when q and k are not unit-variance",
        points=1,
        difficulty="easy",
        minutes=3,
        cases=_std[0],
        expect=_std[1],
        mistakes=_std[2],
        style="question",
    ),
]
