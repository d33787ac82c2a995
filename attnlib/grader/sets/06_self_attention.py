"""Set 06 (lesson 6, self-attention): the module, a bug to find, its parameter count, symmetry."""

from __future__ import annotations

import numpy as np

from ..common import (
    LIBRARY_ATTENTION,
    SHAPE_ERROR,
    Case,
    Exercise,
    attention_mistakes,
    attn,
    f32,
    fingerprint_raises,
    linear,
    module_expect,
    pair,
    project,
    question,
    score_magnitude,
    transpose_candidates,
)

SET = "06_self_attention"
TITLE = "Lesson 6: self-attention with learned projections"


def self_cases(rng):
    cases = []
    specs = (
        ("no mask, batch 2, L=5, d_model=16, d_k=4", 2, 5, 16, 4, None),
        ("causal mask (6, 6), batch 1, d_model=8, d_k=8", 1, 6, 8, 8, "causal"),
        ("padding mask (2, 1, 5), d_model=12, d_k=6", 2, 5, 12, 6, "pad"),
        ("no mask, d_model = d_k = 6, batch 3, L=4", 3, 4, 6, 6, None),
        ("an empty sequence (lengths 4 and 0: every key of batch 1 masked), d_model=8, d_k=4", 2, 4, 8, 4, "empty"),
    )
    for name, B, L, dm, dk, kind in specs:
        weights = {f"{p}.weight": linear(rng, dk, dm)[0] for p in ("w_q", "w_k", "w_v")}
        x = f32(B, L, dm, rng=rng)
        mask = None
        if kind == "causal":
            mask = np.tril(np.ones((L, L), dtype=bool))
        elif kind == "pad":
            mask = (np.arange(L)[None, :] < np.array([L, 3])[:, None])[:, None, :]
        elif kind == "empty":
            mask = (np.arange(L)[None, :] < np.array([L, 0])[:, None])[:, None, :]
        args = (x,) if mask is None else (x, mask)
        q, k = project(x, weights["w_q.weight"]), project(x, weights["w_k.weight"])
        cases.append(
            Case(
                name,
                args,
                init=(dm, dk),
                weights=weights,
                grad_output=f32(B, L, dk, rng=rng),
                magnitude=score_magnitude(q, k) * 4,
            )
        )
    return cases


def self_expect(case):
    from ...modules import SelfAttention

    return module_expect(case, lambda c: SelfAttention(*c.init), 1)


def self_mistakes(case):
    x = case.args[0]
    mask = case.args[1] if len(case.args) > 1 else None
    W = case.weights
    q, k, v = (project(x, W[f"w_{n}.weight"]) for n in "qkv")
    found = attention_mistakes(q, k, v, mask, d_model=case.init[0])
    found.append(("the values are not projected: use v = w_v(x)", pair(attn(q, k, np.asarray(x, np.float64), mask))))
    dm, dk = case.init
    if dm == dk:
        qt, kt, vt = (np.asarray(x, np.float64) @ np.asarray(W[f"w_{n}.weight"], np.float64) for n in "qkv")
        found.append(
            (
                "the projections use the weight matrices transposed (x @ W instead of x @ W^T): nn.Linear stores "
                "its weight as (out_features, in_features); call the layer, self.w_q(x)",
                pair(attn(qt, kt, vt, mask)),
            )
        )
    return found


def self_raises(case):
    x = case.args[0]
    dm, dk = case.init
    B, L = x.shape[:2]
    found = transpose_candidates((B, L, dk), (B, L, dk))
    if dm != dk:
        found.append(
            (
                f"a weight is used the wrong way round: nn.Linear's weight is (d_k, d_model) = ({dk}, {dm}) and the "
                "layer computes x @ W^T; call the layer, self.w_q(x)",
                lambda t: t.zeros(B, L, dm) @ t.zeros(dk, dm),
            )
        )
    return fingerprint_raises(
        found,
        (
            SHAPE_ERROR,
            f"this check has batch={B}, L={L}, d_model={dm}, d_k={dk}: q, k "
            f"and v must be ({B}, {L}, {dk}) and the weights ({B}, {L}, {L})",
        ),
    )


def _count_cases(rng):
    d = int(rng.integers(4, 65))
    return [
        Case("d_model=512, d_k=64, d_v=64, no bias", (512, 64, 64, False)),
        Case("d_model=16, d_k=4, d_v=8, with bias", (16, 4, 8, True)),
        Case("d_model=384, d_k=32, d_v=32, with bias", (384, 32, 32, True)),
        Case(f"d_model={d}, d_k={d // 2}, d_v=3, no bias", (d, d // 2, 3, False)),
    ]


def _count(dm, dk, dv, bias):
    return dm * (2 * dk + dv) + (2 * dk + dv if bias else 0)


def _count_expect(case):
    return {"out": np.array(float(_count(*case.args)))}


def _count_mistakes(case):
    dm, dk, dv, bias = case.args
    why = (
        "count each of the three projections separately: an nn.Linear(n_in, n_out) has an (n_out, n_in) weight and, "
        "with bias, n_out biases; which n_in and n_out does each of W_Q, W_K, W_V have?"
    )
    right = _count(*case.args)
    candidates = [
        (
            "the biases are missing: each of the three layers has one bias per output feature. ",
            _count(dm, dk, dv, False),
        ),
        ("biases are counted although this layer has none. ", _count(dm, dk, dv, True)),
        ("that counts W_V as (d_k, d_model); its output size is d_v. ", 3 * dm * dk + (3 * dk if bias else 0)),
        ("that counts square (d_model, d_model) matrices. ", 3 * dm * dm + (3 * dm if bias else 0)),
        ("that counts only W_Q and W_K. ", 2 * dm * dk + (2 * dk if bias else 0)),
    ]
    out = []
    for hint, value in candidates:
        if value != right:  # a candidate that does not apply to this check (no bias to forget, one head)
            out.append((hint + why, {"out": np.array(float(value))}))
    return [*out, ("not the parameter count: " + why, {})]


_symmetric = question(
    2,
    "With W_Q = W_K, compare the scores s_ij and s_ji first; then write weight[i, j] and weight[j, i] as "
    "exp(score) divided by their rows' sums, and ask when those two sums are equal.",
    {
        1: "The scores are symmetric, but the softmax divides row i by Z_i and row j by Z_j.",
        3: "The scores x_i W W^T x_j are symmetric: swap i and j and the product is the same.",
        4: "The weights are a softmax of the scores: nothing makes them the identity.",
    },
)

EXERCISES = [
    Exercise(
        key="06.1",
        set=SET,
        entry="SelfAttention",
        title="Self-attention with learned projections (an nn.Module)",
        points=5,
        difficulty="medium",
        minutes=20,
        kind="module",
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=self_cases,
        expect=self_expect,
        mistakes=self_mistakes,
        raises=self_raises,
        distribution="weights",
        arg_names=("x", "mask"),
    ),
    Exercise(
        key="06.2",
        set=SET,
        entry="FixedSelfAttention",
        title="Find the bug: a self-attention layer that looks the wrong way",
        points=3,
        difficulty="medium",
        minutes=10,
        kind="module",
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=self_cases,
        expect=self_expect,
        mistakes=self_mistakes,
        raises=self_raises,
        distribution="weights",
        arg_names=("x", "mask"),
        style="fix",
    ),
    Exercise(
        key="06.3",
        set=SET,
        entry="self_attention_param_count",
        title="Question: the parameter count of a self-attention layer",
        points=2,
        difficulty="easy",
        minutes=5,
        cases=_count_cases,
        expect=_count_expect,
        mistakes=_count_mistakes,
        arg_names=("d_model", "d_k", "d_v", "bias"),
        style="question",
    ),
    Exercise(
        key="06.4",
        set=SET,
        entry="answer_symmetric_weights",
        title="Question: are the weights symmetric when W_Q = W_K?",
        points=1,
        difficulty="medium",
        minutes=5,
        cases=_symmetric[0],
        expect=_symmetric[1],
        mistakes=_symmetric[2],
        style="question",
    ),
]
