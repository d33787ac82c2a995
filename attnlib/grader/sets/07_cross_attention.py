"""Set 07 (lesson 7, cross-attention): the module over sources of different lengths, a bug to find, what the
padding mask hides."""

from __future__ import annotations

import math
from dataclasses import replace

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

SET = "07_cross_attention"
TITLE = "Lesson 7: cross-attention between two sequences"


def _lengths_mask(lengths, S):
    """(batch, 1, S) boolean padding mask of the context, True = a real token, from each source's length."""
    return (np.arange(S)[None, :] < np.asarray(lengths)[:, None])[:, None, :]


def _module_case(rng, name, B, L, S, dq, dc, dk, args_of):
    weights = {
        "w_q.weight": linear(rng, dk, dq)[0],
        "w_k.weight": linear(rng, dk, dc)[0],
        "w_v.weight": linear(rng, dk, dc)[0],
    }
    x, ctx = f32(B, L, dq, rng=rng), f32(B, S, dc, rng=rng)
    q, k = project(x, weights["w_q.weight"]), project(ctx, weights["w_k.weight"])
    return Case(
        name,
        args_of(x, ctx),
        init=(dq, dc, dk),
        weights=weights,
        grad_output=f32(B, L, dk, rng=rng),
        magnitude=score_magnitude(q, k) * 4,
    )


def lengths_cases(rng):
    """7.1: a padded context and each source's true length (the learner builds the mask)."""
    specs = (
        (
            "L=3 queries, S_max=6 context slots, lengths [6, 2], d_model=8, d_context=10",
            2,
            3,
            6,
            8,
            10,
            4,
            [6, 2],
        ),
        ("batch 3, L=4, S_max=5, lengths [5, 3, 1], d_model=6, d_context=12", 3, 4, 5, 6, 12, 6, [5, 3, 1]),
        ("L = S_max = 4, lengths [2, 4], d_model = d_context = 8", 2, 4, 4, 8, 8, 4, [2, 4]),
        ("a source of length 0: lengths [3, 0] (no key to read)", 2, 4, 3, 4, 6, 4, [3, 0]),
        ("no padding: lengths [3, 3], L=5 != S_max=3", 2, 5, 3, 6, 7, 4, [3, 3]),
    )
    cases = []
    for name, B, L, S, dq, dc, dk, lengths in specs:
        lens = np.array(lengths, dtype=np.int64)
        cases.append(_module_case(rng, name, B, L, S, dq, dc, dk, lambda x, ctx, lens=lens: (x, ctx, lens)))
    return cases


def _with_mask(case):
    """The same case with the (batch, 1, S) mask its lengths stand for, as attnlib's CrossAttention takes it."""
    x, ctx, lengths = case.args
    return replace(case, args=(x, ctx, _lengths_mask(lengths, ctx.shape[1])))


def lengths_expect(case):
    return module_expect(_with_mask(case), _build, 2)


def lengths_mistakes(case):
    x, ctx, lengths = case.args
    masked = _with_mask(case)
    found = cross_mistakes(masked)
    W = case.weights
    q = project(x, W["w_q.weight"])
    k, v = project(ctx, W["w_k.weight"]), project(ctx, W["w_v.weight"])
    S = ctx.shape[1]
    lengths = np.asarray(lengths)
    if (lengths < S).any():
        found.append(
            (
                "the mask keeps one slot too many: position j is a real token only when j < length (j <= length lets "
                "each query read the first padding slot)",
                pair(attn(q, k, v, _lengths_mask(lengths + 1, S))),
            )
        )
    if (lengths > 0).any():
        found.append(
            (
                "the mask drops the last real token: position j is a real token when j < length, and "
                "length - 1 is the last of them",
                pair(attn(q, k, v, _lengths_mask(lengths - 1, S))),
            )
        )
    if x.shape[1] == S:
        rows = np.swapaxes(_lengths_mask(lengths, S), -2, -1)  # (batch, S, 1): hides queries, not keys
        found.append(
            (
                "the mask hides queries (rows of the scores) instead of context keys (columns): the padding is on "
                "the context's side, so the mask must broadcast as (batch, 1, S_max)",
                pair(attn(q, k, v, rows)),
            )
        )
    return found


def lengths_raises(case):
    x, ctx, _ = case.args
    B, L, S = x.shape[0], x.shape[1], ctx.shape[1]
    rows = (
        "the mask hides queries (rows of the scores) instead of context keys (columns): the padding is on the "
        "context's side, so the mask must broadcast as (batch, 1, S_max)"
    )
    # each candidate counts only where it raises on this check (a mask on the rows runs when L == S_max)
    found = fingerprint_raises(
        [
            (rows, lambda t: t.zeros(B, L, S).masked_fill(t.zeros(B, S, 1, dtype=t.bool), -math.inf)),
            (
                "the mask has no axis for the queries: a (batch, S_max) mask lines up with the scores' last two "
                "dims (L, S_max); give it shape (batch, 1, S_max)",
                lambda t: t.zeros(B, L, S).masked_fill(t.zeros(B, S, dtype=t.bool), -math.inf),
            ),
            (
                "the length comparison is the wrong way round: positions[:, None] < lengths[None, :] gives a "
                "(S_max, batch) table; compare positions[None, :] < lengths[:, None] for (batch, S_max)",
                lambda t: t.zeros(B, L, S).masked_fill(t.zeros(S, 1, B, dtype=t.bool), -math.inf),
            ),
        ]
    )
    return found + cross_raises(_with_mask(case))


def cross_cases(rng):
    """7.2: the context's padding mask is given."""
    specs = (
        ("no mask: L=3 queries, S=6 context tokens, d_query=8, d_context=10, d_k=4", 2, 3, 6, 8, 10, 4, None),
        ("padding mask (2, 1, 5) on the context", 2, 4, 5, 6, 12, 6, [5, 2]),
        ("L = S = 4, d_query = d_context = 8, with a padding mask", 1, 4, 4, 8, 8, 8, [3]),
        ("a context of length 0 (fully masked rows)", 2, 2, 3, 4, 6, 4, [3, 0]),
        ("L=5 != S=3, d_query = d_context = 6, no mask", 2, 5, 3, 6, 6, 4, None),
    )
    cases = []
    for name, B, L, S, dq, dc, dk, lengths in specs:

        def args_of(x, ctx, lengths=lengths, S=S):
            return (x, ctx) if lengths is None else (x, ctx, _lengths_mask(lengths, S))

        cases.append(_module_case(rng, name, B, L, S, dq, dc, dk, args_of))
    return cases


def _build(c):
    from ...modules import CrossAttention

    return CrossAttention(*c.init)


def cross_expect(case):
    return module_expect(case, _build, 2)


def cross_mistakes(case):
    x, ctx = case.args[:2]
    mask = case.args[2] if len(case.args) > 2 else None
    W = case.weights
    q = project(x, W["w_q.weight"])
    k, v = project(ctx, W["w_k.weight"]), project(ctx, W["w_v.weight"])
    found = attention_mistakes(q, k, v, mask, d_model=case.init[0])
    dq, dc, _ = case.init
    same_length = x.shape[1] == ctx.shape[1]
    if dq == dc and (same_length or mask is None):
        # keys (and values) projected from the queries' sequence: no error where the shapes allow it
        variants = [("the keys and values", (0, 0, 0))] + ([("the keys", (0, 0, 1))] if same_length else [])
        for what, args in variants:
            wrong = _wrong_inputs(case, args)
            found.append(
                (
                    f"{what} are projected from x (the decoder side); in cross-attention keys and values come from "
                    "the context: w_k(context), w_v(context)",
                    wrong,
                )
            )
    return found


def _wrong_inputs(case, which):
    """CrossAttention whose q, k, v projections read args[which[0]], args[which[1]], args[which[2]]."""
    import torch

    from ..common import param, t64

    module = _build(case).double()
    with torch.no_grad():
        for name, value in case.weights.items():
            param(module, name).copy_(torch.from_numpy(value.astype(np.float64)))
    inputs = [t64(a).requires_grad_() for a in case.args[:2]]
    mask = torch.from_numpy(np.asarray(case.args[2])) if len(case.args) > 2 else None
    from ...functional import scaled_dot_product_attention

    q = module.w_q(inputs[which[0]])
    k = module.w_k(inputs[which[1]])
    v = module.w_v(inputs[which[2]])
    out, w = scaled_dot_product_attention(q, k, v, mask)
    (out * t64(case.grad_output)).sum().backward()
    result = {"out": out.detach().numpy(), "weights": w.detach().numpy()}
    for i, t in enumerate(inputs):
        result[f"grad:arg{i}"] = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
    return result


def cross_raises(case):
    x, ctx = case.args[:2]
    dq, dc, dk = case.init
    B, L, S = x.shape[0], x.shape[1], ctx.shape[1]
    found = transpose_candidates((B, L, dk), (B, S, dk))
    wrong_input = "a layer got the wrong input: w_q takes x; w_k and w_v take the context (d_context features)"
    if dq != dc:
        found += [
            (wrong_input, lambda t: t.nn.functional.linear(t.zeros(B, L, dq), t.zeros(dk, dc))),
            (wrong_input, lambda t: t.nn.functional.linear(t.zeros(B, S, dc), t.zeros(dk, dq))),
        ]
    if L != S:
        found.append(
            (
                "q and k are swapped: k @ q^T gives (batch, S, L) weights, which cannot multiply v (batch, S, d_k); "
                "the scores are q @ k^T",
                lambda t: (t.zeros(B, S, dk) @ t.zeros(B, L, dk).transpose(-2, -1)) @ t.zeros(B, S, dk),
            )
        )
        if dq == dc:
            found.append(
                (
                    "the keys are projected from x instead of the context (w_k(context))",
                    lambda t: (t.zeros(B, L, dk) @ t.zeros(B, L, dk).transpose(-2, -1)) @ t.zeros(B, S, dk),
                )
            )
    return fingerprint_raises(
        found,
        (
            SHAPE_ERROR,
            f"this check has batch={B}, L={L} queries (d_query={dq}), S={S} context tokens (d_context={dc}), "
            f"d_k={dk}: q must be ({B}, {L}, {dk}), k and v ({B}, {S}, {dk}), the weights ({B}, {L}, {S})",
        ),
    )


_which = question(
    2,
    "Ask which tokens the decoder's queries read from in cross-attention, which of those are padding, and "
    "whether a padded decoder position's own output matters to the loss.",
    {
        1: "Masking the decoder's queries (rows) leaves the padded encoder tokens visible to every real query.",
        3: "Only the keys need masking for real outputs to be right; masking query rows as well changes nothing "
        "for the real tokens.",
        4: "Without a mask the real queries give weight to the encoder's padding tokens.",
    },
)

EXERCISES = [
    Exercise(
        key="07.1",
        set=SET,
        entry="CrossAttention",
        title="Cross-attention over a batch of sources of different lengths",
        points=5,
        difficulty="hard",
        minutes=30,
        kind="module",
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=lengths_cases,
        expect=lengths_expect,
        mistakes=lengths_mistakes,
        raises=lengths_raises,
        distribution="weights",
        arg_names=("x", "context", "context_lengths"),
    ),
    Exercise(
        key="07.2",
        set=SET,
        entry="FixedCrossAttention",
        title="Find the bug: a cross-attention layer that reads the wrong sequence",
        points=3,
        difficulty="medium",
        minutes=10,
        kind="module",
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=cross_cases,
        expect=cross_expect,
        mistakes=cross_mistakes,
        raises=cross_raises,
        distribution="weights",
        arg_names=("x", "context", "mask"),
        style="fix",
    ),
    Exercise(
        key="07.3",
        set=SET,
        entry="answer_cross_padding",
        title="Question: what a cross-attention padding mask hides",
        points=1,
        difficulty="easy",
        minutes=3,
        cases=_which[0],
        expect=_which[1],
        mistakes=_which[2],
        style="question",
    ),
]
