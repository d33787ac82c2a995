"""Set 05 (lesson 5, masking): causal masks in both alignments, padding, both combined, masked attention."""

from __future__ import annotations

import numpy as np

from ..common import (
    ATTNLIB,
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
)

SET = "05_masking"
TITLE = "Lesson 5: causal masks (both alignments), padding masks, combined masks and masked attention"


def _LS(case):
    L = case.args[0]
    S = case.args[1] if len(case.args) > 1 else L
    return L, S


def _causal_cases(rng):
    extra = int(rng.integers(2, 7))
    return [
        Case("L=4 (S defaults to L)", (4,)),
        Case("L=S=5", (5, 5)),
        Case("L=3 queries, S=6 keys", (3, 6)),
        Case("L=6 queries, S=3 keys", (6, 3)),
        Case("L=1, S=4", (1, 4)),
        Case("L=S=1", (1, 1)),
        Case(f"L=2, S={2 + extra}", (2, 2 + extra)),
    ]


def _tri_mistakes(L, S, want: int, *, top_left: bool):
    ones = np.ones((L, S), dtype=bool)
    found = [
        (
            "the mask keeps the upper triangle (triu): query i would see keys j >= i, the future, and not the past; "
            "causal attention keeps the lower triangle, tril",
            {"out": np.triu(ones, want)},
        ),
        (
            "the mask is inverted: True must mean 'may attend', so use tril, not ~tril or triu(1)",
            {"out": ~np.tril(ones, want)},
        ),
        (
            "the diagonal is off by one: query i may attend to keys up to and including its own position, not one "
            "further",
            {"out": np.tril(ones, want + 1)},
        ),
        (
            "the diagonal is off by one: each query must also attend to itself (its own position)",
            {"out": np.tril(ones, want - 1)},
        ),
        ("the mask is all True: the causal mask must block the later keys", {"out": ones}),
    ]
    if L != S:
        if top_left:
            found.append(
                (
                    "the mask is aligned to the bottom-right corner (tril with diagonal=S-L); this exercise asks for "
                    "the top-left alignment, as is_causal=True uses: query i sees keys j <= i",
                    {"out": np.tril(ones, S - L)},
                )
            )
        else:
            found.append(
                (
                    "the mask is aligned to the top-left corner (what is_causal=True does); with L queries that are "
                    "the LAST L positions of S keys, query i sees keys j <= i + (S - L): tril(diagonal=S-L)",
                    {"out": np.tril(ones)},
                )
            )
            found.append(
                (
                    "the diagonal offset has the wrong sign: the last query must see every key, so the offset is "
                    "S - L, not L - S",
                    {"out": np.tril(ones, L - S)},
                )
            )
    if not top_left:  # the alignment mistakes are this exercise's point: they win where outputs coincide
        found = found[5:] + found[:5]
    out, seen = [], [np.tril(ones, want)]
    for hint, wrong in found:
        if not any(np.array_equal(wrong["out"], s) for s in seen):
            seen.append(wrong["out"])
            out.append((hint, wrong))
    return out


def _causal_expect(case):
    L, S = _LS(case)
    return {"out": np.tril(np.ones((L, S), dtype=bool))}


def _causal_mistakes(case):
    L, S = _LS(case)
    return _tri_mistakes(L, S, 0, top_left=True)


def _br_cases(rng):
    extra = int(rng.integers(2, 7))
    return [
        Case("L=S=4", (4, 4)),
        Case("L=1 new query, S=5 keys (one decoding step)", (1, 5)),
        Case("L=3 queries, S=7 keys", (3, 7)),
        Case("L=5 queries, S=3 keys (the first 2 rows see nothing)", (5, 3)),
        Case(f"L=2, S={2 + extra}", (2, 2 + extra)),
    ]


def _br_expect(case):
    L, S = case.args
    return {"out": np.tril(np.ones((L, S), dtype=bool), S - L)}


def _br_mistakes(case):
    L, S = case.args
    return _tri_mistakes(L, S, S - L, top_left=False)


def _padding_cases(rng):
    n = int(rng.integers(1, 6))
    return [
        Case("lengths tensor [3, 5, 2], S=5", (np.array([3, 5, 2]), 5)),
        Case("lengths [1], S=4", (np.array([1]), 4)),
        Case("a length of 0: lengths [0, 2], S=3", (np.array([0, 2]), 3)),
        Case("lengths [4, 4], S=6 (padding in every item)", (np.array([4, 4]), 6)),
        Case(f"lengths as a Python list [{n}, 6, 1], S=6", ([n, 6, 1], 6)),
    ]


def _padding_expect(case):
    lengths, S = case.args
    return {"out": (np.arange(S)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]}


def _padding_mistakes(case):
    lengths, S = case.args
    real = np.arange(S)[None, :] < np.asarray(lengths)[:, None]
    return [
        (
            "the mask is inverted: True must mark the real tokens (position < length), False the padding",
            {"out": ~real[:, None, None, :]},
        ),
        (
            "off by one: positions 0..length-1 are real, so use position < length (not <=)",
            {"out": (np.arange(S)[None, :] <= np.asarray(lengths)[:, None])[:, None, None, :]},
        ),
        (
            "off by one: the last real token is masked; positions 0..length-1 are real, so use position < length "
            "(not < length - 1)",
            {"out": (np.arange(S)[None, :] < np.asarray(lengths)[:, None] - 1)[:, None, None, :]},
        ),
        (
            "the mask has shape (batch, S); return (batch, 1, 1, S) so it broadcasts over heads and queries",
            {"out": real},
        ),
        (
            "the mask has shape (batch, 1, S); return (batch, 1, 1, S) so it broadcasts over heads and queries",
            {"out": real[:, None, :]},
        ),
    ]


def _combined_cases(rng):
    n = int(rng.integers(1, 5))
    return [
        Case("lengths [4, 2], L=4", (np.array([4, 2]), 4)),
        Case("lengths [3], L=5", (np.array([3]), 5)),
        Case("a length of 0: lengths [0, 3, 1], L=3", (np.array([0, 3, 1]), 3)),
        Case(f"lengths as a Python list [{n}, 5], L=5", ([n, 5], 5)),
    ]


def _combined_parts(case):
    lengths, L = case.args
    pad = np.arange(L)[None, :] < np.asarray(lengths)[:, None]  # (B, L) keys
    causal = np.tril(np.ones((L, L), dtype=bool))
    return pad, causal


def _combined_expect(case):
    pad, causal = _combined_parts(case)
    return {"out": causal[None, None] & pad[:, None, None, :]}


def _combined_mistakes(case):
    pad, causal = _combined_parts(case)
    B = pad.shape[0]
    both = causal[None, None] & pad[:, None, None, :]
    found = [
        (
            "the masks are combined with OR: a key must be allowed by BOTH masks (not in the future AND not "
            "padding), so combine them with &",
            {"out": causal[None, None] | pad[:, None, None, :]},
        ),
        (
            "the padding is missing: padding keys must be blocked too (combine the causal mask with the padding mask)",
            {"out": np.broadcast_to(causal[None, None], both.shape).copy()},
        ),
        (
            "the causal part is missing: each query must also be blocked from the later keys",
            {"out": np.broadcast_to(pad[:, None, None, :], both.shape).copy()},
        ),
        (
            "the result has shape (batch, L, L); keep the head dim: (batch, 1, L, L)",
            {"out": both[:, 0]},
        ),
        (
            "the padding positions are used as QUERY positions (rows); padding masks keys: it must select columns "
            "(pad[:, None, None, :])",
            {"out": causal[None, None] & pad[:, None, :, None]},
        ),
        (
            "the padding queries' rows are blocked too; this exercise masks keys only: True where j <= i and "
            "j < length",
            {"out": both & pad[:, None, :, None]},
        ),
        (
            "the causal mask is inverted (triu): keys j <= i must be allowed, later keys blocked",
            {"out": ~causal[None, None] & pad[:, None, None, :]},
        ),
    ]
    if B == 1:
        found.append(("the batch dim is missing: return (batch, 1, L, L)", {"out": both[0]}))
    return found


def _masked_cases(rng):
    causal4 = np.tril(np.ones((4, 4), dtype=bool))
    causal_ls = np.tril(np.ones((3, 5), dtype=bool))
    br = np.tril(np.ones((2, 5), dtype=bool), 3)
    pad = np.arange(5)[None, :] < np.array([5, 2])[:, None]
    pad0 = np.arange(4)[None, :] < np.array([3, 0])[:, None]
    combined = np.tril(np.ones((5, 5), dtype=bool))[None, None] & pad[:, None, None, :]
    specs = [
        ("causal mask (4, 4), q/k/v (2, 4, 6)", (2, 4, 6), (2, 4, 6), (2, 4, 6), causal4, 1.0),
        ("top-left causal mask with L=3 != S=5", (1, 3, 4), (1, 5, 4), (1, 5, 2), causal_ls, 1.0),
        ("bottom-right causal mask with L=2 != S=5", (2, 2, 4), (2, 5, 4), (2, 5, 3), br, 1.0),
        (
            "padding mask (2, 1, 1, 5) with heads: q (2, 2, 3, 4)",
            (2, 2, 3, 4),
            (2, 2, 5, 4),
            (2, 2, 5, 3),
            pad[:, None, None, :],
            1.0,
        ),
        (
            "fully masked rows: an item of length 0",
            (2, 1, 3, 4),
            (2, 1, 4, 4),
            (2, 1, 4, 2),
            pad0[:, None, None, :],
            1.0,
        ),
        ("causal and padding combined (2, 1, 5, 5)", (2, 2, 5, 4), (2, 2, 5, 4), (2, 2, 5, 4), combined, 1.0),
        ("large logits with a causal mask", (1, 4, 4), (1, 4, 4), (1, 4, 3), causal4, 40.0),
    ]
    cases = []
    for name, qs, ks, vs, mask, big in specs:
        q, k = f32(*qs, rng=rng, scale=big), f32(*ks, rng=rng, scale=big)
        cases.append(Case(name, (q, k, f32(*vs, rng=rng), mask), magnitude=score_magnitude(q, k)))
    return cases


def _masked_expect(case):
    return pair(ok_attn(*case.args))


def _masked_mistakes(case):
    return attention_mistakes(*case.args)


_decode = question(
    2,
    "The new token is the LAST of the S positions: list which of the S keys are in its past (or are itself), "
    "then ask which alignment of the causal mask gives exactly those for a single query row.",
    {
        1: "is_causal=True aligns the mask to the top-left corner: with L=1 the single query would see only key 0, "
        "the first token of the sequence.",
        3: "Nothing in the cache is in the new token's future: every cached key is an earlier position.",
        4: "A padding mask hides padding keys; with no padding there is nothing to hide, but the alignment question "
        "remains: the causal mask must be bottom-right aligned.",
    },
)

EXERCISES = [
    Exercise(
        key="05.1",
        set=SET,
        entry="causal_mask",
        title="A causal (look-ahead) mask, top-left aligned",
        points=2,
        difficulty="easy",
        minutes=10,
        forbidden=ATTNLIB,
        cases=_causal_cases,
        expect=_causal_expect,
        mistakes=_causal_mistakes,
        arg_names=("L", "S"),
    ),
    Exercise(
        key="05.2",
        set=SET,
        entry="causal_mask_bottom_right",
        title="A causal mask aligned to the bottom-right corner (queries are the last L positions)",
        points=2,
        difficulty="easy",
        minutes=10,
        forbidden=ATTNLIB,
        cases=_br_cases,
        expect=_br_expect,
        mistakes=_br_mistakes,
        arg_names=("L", "S"),
    ),
    Exercise(
        key="05.3",
        set=SET,
        entry="padding_mask",
        title="A key-padding mask from sequence lengths",
        points=2,
        difficulty="easy",
        minutes=10,
        forbidden=ATTNLIB,
        cases=_padding_cases,
        expect=_padding_expect,
        mistakes=_padding_mistakes,
        arg_names=("lengths", "S"),
    ),
    Exercise(
        key="05.4",
        set=SET,
        entry="padding_causal_mask",
        title="Padding and causal combined into one mask",
        points=3,
        difficulty="medium",
        minutes=15,
        forbidden=ATTNLIB,
        cases=_combined_cases,
        expect=_combined_expect,
        mistakes=_combined_mistakes,
        arg_names=("lengths", "L"),
    ),
    Exercise(
        key="05.5",
        set=SET,
        entry="masked_attention",
        title="Masked attention, safe for fully masked rows",
        points=5,
        difficulty="medium",
        minutes=20,
        returns=("out", "weights"),
        forbidden=LIBRARY_ATTENTION,
        cases=_masked_cases,
        expect=_masked_expect,
        mistakes=_masked_mistakes,
        raises=lambda c: qk_swap_raises(
            c.args[0], c.args[1], "the scores", v=c.args[2], mask=c.args[3] if len(c.args) > 3 else c.kwargs.get("mask")
        ),
        distribution="weights",
        arg_names=("q", "k", "v", "mask"),
    ),
    Exercise(
        key="05.6",
        set=SET,
        entry="answer_decoding_mask",
        title="Question: the mask of one decoding step",
        points=1,
        difficulty="easy",
        minutes=3,
        cases=_decode[0],
        expect=_decode[1],
        mistakes=_decode[2],
        style="question",
    ),
]
