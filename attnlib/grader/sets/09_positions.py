"""Set 09 (lesson 9, where positions come from): the sinusoidal table, the RoPE rotation, a find-the-bug on RoPE.

References come from :mod:`attnlib.positions` in float64; each mistake is what a classic wrong implementation
returns for the same inputs, with the hint that names it.
"""

from __future__ import annotations

import math

import numpy as np

from ..common import Case, Exercise, f32

SET = "09_positions"
TITLE = "Lesson 9: the sinusoidal table, RoPE, rotating the right pairs"

ATTNLIB = ("attnlib",)


def _omega(d, *, base=10000.0, per_feature=False):
    idx = np.arange(d) if per_feature else np.arange(0, d, 2)
    return base ** (-idx / d)


# ---------------------------------------------------------------------------------------------- 09.1 table


def table_cases(rng):
    del rng  # the inputs are sizes only
    return [Case(f"n={n}, d={d}", (n, d)) for n, d in ((4, 6), (10, 16), (1, 2), (7, 8), (50, 32))]


def table_expect(case):
    import torch

    from ...positions import sinusoidal_positions

    n, d = case.args
    return {"out": sinusoidal_positions(n, d, dtype=torch.float64).numpy()}


def _interleave(a, b):
    return np.stack([a, b], axis=-1).reshape(a.shape[0], -1)


def table_mistakes(case):
    n, d = case.args
    p = np.arange(n, dtype=np.float64)[:, None]
    w = _omega(d)
    found = [
        (
            "sines and cosines are swapped: even features 2i hold sin(p·ω_i), odd features cos",
            _interleave(np.cos(p * w), np.sin(p * w)),
        ),
        (
            "the sines fill the first half and the cosines the second; the table interleaves them: "
            "feature 2i is sin(p·ω_i), feature 2i+1 is cos(p·ω_i)",
            np.concatenate([np.sin(p * w), np.cos(p * w)], axis=-1),
        ),
        (
            "the frequencies grow instead of shrinking: ω_i = 10000^(-2i/d), with a minus sign",
            _interleave(np.sin(p / w), np.cos(p / w)),
        ),
    ]
    if d > 2:
        wf = _omega(d, per_feature=True)  # each feature its own frequency: pairs no longer share one
        wrong = np.where(np.arange(d) % 2 == 0, np.sin(p * wf), np.cos(p * wf))
        found.append(
            (
                "each feature j gets its own frequency 10000^(-j/d); both features of pair i share ω_i = "
                "10000^(-2i/d) (use i = j // 2)",
                wrong,
            )
        )
    return [(hint, {"out": out}) for hint, out in found]


# ---------------------------------------------------------------------------------------------- 09.2 RoPE


def rope_cases(rng):
    cases = []
    for B, H, L, D, start in ((1, 1, 5, 4, 0), (2, 3, 6, 8, 0), (1, 2, 4, 16, 10), (2, 1, 1, 6, 7), (1, 4, 9, 32, 0)):
        x = f32(B, H, L, D, rng=rng)
        positions = np.arange(start, start + L, dtype=np.int64)
        cases.append(Case(f"x ({B}, {H}, {L}, {D}), positions {start}..{start + L - 1}", (x, positions)))
    return cases


def rope_expect(case):
    import torch

    from ...positions import apply_rope

    x, positions = case.args
    return {"out": apply_rope(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(positions)).numpy()}


def _rope_np(x, positions, *, sign=1.0, pairs="half", angles="half", scale_positions=1.0):
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    theta = _omega(d)
    angle = positions.astype(np.float64)[:, None] * scale_positions * theta  # (L, d/2)
    if angles == "half":
        angle = np.concatenate([angle, angle], axis=-1)
    else:
        angle = np.repeat(angle, 2, axis=-1)  # pairs of neighbours share an angle
    if pairs == "half":
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        turned = np.concatenate([-x2, x1], axis=-1)
    else:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        turned = np.stack([-x2, x1], axis=-1).reshape(x.shape)
    return x * np.cos(angle) + sign * turned * np.sin(angle)


def rope_mistakes(case):
    x, positions = case.args
    found = [
        (
            "the rotation goes the wrong way: rotate_half([x1, x2]) is [-x2, x1] (the minus on the second half)",
            _rope_np(x, positions, sign=-1.0),
        ),
        (
            "neighbouring features (2i, 2i+1) are paired but the angles are laid out for halves (i, i + d/2): the "
            "two members of a pair turn by different angles. Pair feature i with feature i + d/2",
            _rope_np(x, positions, pairs="neighbours"),
        ),
        (
            "that is RoPE with neighbouring pairs (2i, 2i+1), a different convention: this course pairs feature i "
            "with feature i + d/2 (rotate-half)",
            _rope_np(x, positions, pairs="neighbours", angles="neighbours"),
        ),
    ]
    if positions.max() > 0:
        found.append(("the positions are ignored: rotate token p by the angle p·θ_i", np.asarray(x, np.float64)))
    return [(hint, {"out": out}) for hint, out in found]


# ---------------------------------------------------------------------------------------------- 09.3 fix


def _fix_cases(rng):
    # the bug is invisible when every position is 0 or the head is one pair wide
    return [c for c in rope_cases(rng) if c.args[1].max() > 0 and c.args[0].shape[-1] > 2]


def _fix_mistakes(case):
    x, positions = case.args
    still = (
        "the bug is still there: the features are paired as neighbours (2i, 2i+1) while the angles are laid out for "
        "halves. Which two features does rotate_half turn together, and which angle does each get?",
        {"out": _rope_np(x, positions, pairs="neighbours")},
    )
    return [still, *[m for m in rope_mistakes(case) if "neighbouring features" not in m[0]]]


# ---------------------------------------------------------------------------------------------- 09.4/09.5 layouts
# RoPE checkpoints come in two layouts: "interleaved" pairs neighbours (2i, 2i+1) (the original paper, Meta's
# reference code), "half-split" pairs i with i + d/2 (rotate_half, Hugging Face, attnlib). Converting the
# features of q and k (or the rows of W_Q, W_K) from one to the other makes the two RoPEs agree.


def layout_cases(rng):
    shapes = ((6,), (2, 8), (1, 2, 3, 4), (2, 3, 5, 16), (3, 2))
    return [Case(f"x {shape}", (f32(*shape, rng=rng),)) for shape in shapes]


def _to_half(x):
    x = np.asarray(x, np.float64)
    return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def _to_interleaved(x):
    x = np.asarray(x, np.float64)
    h = x.shape[-1] // 2
    return np.stack([x[..., :h], x[..., h:]], axis=-1).reshape(x.shape)


def to_half_expect(case):
    return {"out": _to_half(case.args[0])}


def to_interleaved_expect(case):
    return {"out": _to_interleaved(case.args[0])}


def to_half_mistakes(case):
    x = np.asarray(case.args[0], np.float64)
    found = [
        (
            "the halves are swapped: the first half must hold the FIRST member of every pair (features 0, 2, 4, ...)",
            np.concatenate([x[..., 1::2], x[..., 0::2]], axis=-1),
        ),
        (
            "that is the opposite conversion (half-split to interleaved): here pair (2i, 2i+1) must land at "
            "(i, i + d/2)",
            _to_interleaved(x),
        ),
        ("the features are returned unchanged: move feature 2i to i and feature 2i+1 to i + d/2", x),
    ]
    return [(hint, {"out": out}) for hint, out in found]


def to_interleaved_mistakes(case):
    x = np.asarray(case.args[0], np.float64)
    h = x.shape[-1] // 2
    found = [
        (
            "the members of each pair are in the wrong order: feature i goes to 2i and feature i + d/2 to 2i + 1",
            np.stack([x[..., h:], x[..., :h]], axis=-1).reshape(x.shape),
        ),
        (
            "that is the opposite conversion (interleaved to half-split): here pair (i, i + d/2) must land at "
            "(2i, 2i+1)",
            _to_half(x),
        ),
        ("the features are returned unchanged: move feature i to 2i and feature i + d/2 to 2i + 1", x),
    ]
    return [(hint, {"out": out}) for hint, out in found]


# ---------------------------------------------------------------------------------------------- 09.6 ALiBi slopes


def _powers(n):
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]


def slopes_cases(rng):
    odd = int(rng.choice([5, 7, 10, 20]))
    return [Case(f"num_heads={h}", (h,)) for h in (8, 1, 12, 6, 3, odd)]


def slopes_expect(case):
    import torch

    from ...positions import alibi_slopes

    return {"out": alibi_slopes(case.args[0], dtype=torch.float64).numpy()}


def slopes_mistakes(case):
    (H,) = case.args
    lower = 2 ** int(math.floor(math.log2(H)))
    found = [
        (
            "2^(-8h/H) with h counting from 0: the first head's slope must be 2^(-8/H), not 1",
            [2.0 ** (-8.0 * h / H) for h in range(H)],
        ),
        ("the slopes are 2^(-h); the geometric sequence is 2^(-8h/H), h = 1..H", [2.0**-h for h in range(1, H + 1)]),
    ]
    if lower != H:
        found += [
            (
                f"2^(-8h/H) is the rule for a power of two only; for H={H} the paper takes the {lower} slopes of "
                f"the next-lower power of two, then every other slope of twice that many",
                _powers(H),
            ),
        ]
        if H - lower > 1:  # with one extra slope, "the first" and "every other" coincide
            found.append(
                (
                    f"the extra {H - lower} slopes must be every OTHER slope of the {2 * lower}-head sequence "
                    "(indices 0, 2, 4, ...), not its first ones",
                    _powers(lower) + _powers(2 * lower)[: H - lower],
                )
            )
        found += [
            (
                f"the extra {H - lower} slopes come from the {2 * lower}-head sequence at its even positions "
                "(indices 0, 2, ...: 2^(-8/(2n)), 2^(-24/(2n)), ...), not its odd ones",
                _powers(lower) + _powers(2 * lower)[1::2][: H - lower],
            ),
        ]
    return [(hint, {"out": np.array(out, np.float64)}) for hint, out in found]


# ---------------------------------------------------------------------------------------------- 09.7 ALiBi bias


def bias_cases(rng):
    del rng
    return [Case(f"{H} heads, L={L}, S={S}", (H, L, S)) for H, L, S in ((4, 5, 5), (6, 1, 7), (8, 3, 9), (3, 4, 6))]


def bias_expect(case):
    import torch

    from ...positions import alibi_bias

    return {"out": alibi_bias(*case.args, dtype=torch.float64).numpy()}


def bias_mistakes(case):
    import torch

    from ...positions import alibi_slopes

    H, L, S = case.args
    m = alibi_slopes(H, dtype=torch.float64).numpy()[:, None, None]
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    pos = i + S - L
    found = [
        (
            f"the queries are aligned top-left: with L={L} queries after S - L = {S - L} cached keys, query i sits "
            "at position i + S - L (bottom-right), and its distance to key j is |i + S - L - j|",
            -m * np.abs(i - j),
        ),
        ("the bias has the wrong sign: ALiBi SUBTRACTS slope·distance from the scores", m * np.abs(pos - j)),
        (
            "the distance is not the absolute value: attnlib's bias is -slope·|pos_i - j| for every key (keys after "
            "the query get the same penalty; a causal mask removes them anyway)",
            -m * (pos - j),
        ),
        (
            f"the slopes are 2^(-8h/H) for every head: for H={H}, not a power of two, the slopes must follow the "
            "paper's rule; this exercise uses your alibi_slopes (exercise 9.6): fix it there",
            -np.array(_powers(H))[:, None, None] * np.abs(pos - j),
        ),
    ]
    return [(hint, {"out": out}) for hint, out in found if not np.array_equal(out, bias_expect(case)["out"])]


EXERCISES = [
    Exercise(
        key="09.1",
        set=SET,
        entry="sinusoidal_positions",
        title="The sinusoidal position table",
        points=3,
        difficulty="easy",
        minutes=15,
        kind="function",
        returns=("out",),
        forbidden=ATTNLIB,
        cases=table_cases,
        expect=table_expect,
        mistakes=table_mistakes,
        distribution=None,
        arg_names=("n", "d"),
    ),
    Exercise(
        key="09.2",
        set=SET,
        entry="apply_rope",
        title="Rotate queries and keys by their positions (RoPE)",
        points=4,
        difficulty="medium",
        minutes=20,
        kind="function",
        returns=("out",),
        forbidden=ATTNLIB,
        cases=rope_cases,
        expect=rope_expect,
        mistakes=rope_mistakes,
        distribution=None,
        arg_names=("x", "positions"),
    ),
    Exercise(
        key="09.3",
        set=SET,
        entry="fixed_apply_rope",
        title="Find the bug: a RoPE whose scores depend on more than the offset",
        points=2,
        difficulty="medium",
        minutes=10,
        kind="function",
        returns=("out",),
        forbidden=ATTNLIB,
        cases=_fix_cases,
        expect=rope_expect,
        mistakes=_fix_mistakes,
        distribution=None,
        arg_names=("x", "positions"),
        style="fix",
    ),
    Exercise(
        key="09.4",
        set=SET,
        entry="interleaved_to_half_split",
        title="Convert RoPE features from the interleaved layout to the half-split one",
        points=2,
        difficulty="medium",
        minutes=10,
        returns=("out",),
        forbidden=ATTNLIB,
        cases=layout_cases,
        expect=to_half_expect,
        mistakes=to_half_mistakes,
        arg_names=("x",),
    ),
    Exercise(
        key="09.5",
        set=SET,
        entry="half_split_to_interleaved",
        title="Convert RoPE features back from the half-split layout to the interleaved one",
        points=2,
        difficulty="medium",
        minutes=10,
        returns=("out",),
        forbidden=ATTNLIB,
        cases=layout_cases,
        expect=to_interleaved_expect,
        mistakes=to_interleaved_mistakes,
        arg_names=("x",),
    ),
    Exercise(
        key="09.6",
        set=SET,
        entry="alibi_slopes",
        title="ALiBi's slopes for any number of heads",
        points=3,
        difficulty="medium",
        minutes=15,
        forbidden=ATTNLIB,
        cases=slopes_cases,
        expect=slopes_expect,
        mistakes=slopes_mistakes,
        arg_names=("num_heads",),
    ),
    Exercise(
        key="09.7",
        set=SET,
        entry="alibi_bias",
        title="ALiBi's bias for L queries that are the last L of S positions",
        points=3,
        difficulty="medium",
        minutes=15,
        forbidden=ATTNLIB,
        cases=bias_cases,
        expect=bias_expect,
        mistakes=bias_mistakes,
        arg_names=("num_heads", "L", "S"),
    ),
]
