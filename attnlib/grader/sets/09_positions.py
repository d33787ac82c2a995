"""Set 09 (lesson 9, where positions come from): the sinusoidal table's shift matrix, partial RoPE with positions per
batch row, a find-the-bug on RoPE in float16, RoPE layouts, ALiBi.

References come from :mod:`attnlib.positions` in float64; each mistake is what a classic wrong implementation
returns for the same inputs, with the hint that names it.
"""

from __future__ import annotations

import math

import numpy as np

from ..common import Case, Exercise, f32
from ..diagnose import close

SET = "09_positions"
TITLE = "Lesson 9: shifting the sinusoidal table, partial RoPE, RoPE layouts, ALiBi"

ATTNLIB = ("attnlib",)


def _omega(d, *, base=10000.0):
    return base ** (-np.arange(0, d, 2) / d)


# ---------------------------------------------------------------------------------------------- 09.1 shift
# Moving k positions turns pair i of the sinusoidal table by k·ω_i whatever p is, so PE(p + k) = M_k PE(p) with
# M_k block-diagonal: one 2x2 rotation per pair of neighbouring features (2i, 2i+1).


def shift_cases(rng):
    del rng  # the inputs are sizes only
    return [Case(f"k={k}, d={d}", (k, d)) for k, d in ((3, 6), (1, 16), (-4, 8), (0, 4), (25, 32), (7, 2))]


def _shift_np(k, d, *, sign=1.0, layout="neighbours", omega=None):
    w = _omega(d) if omega is None else omega
    c, s = np.cos(k * w), sign * np.sin(k * w)
    m = np.zeros((d, d))
    first = np.arange(0, d, 2) if layout == "neighbours" else np.arange(d // 2)
    second = first + 1 if layout == "neighbours" else first + d // 2
    m[first, first], m[first, second], m[second, first], m[second, second] = c, s, -s, c
    return m


def shift_expect(case):
    return {"out": _shift_np(*case.args)}


def shift_mistakes(case):
    k, d = case.args
    found = [
        (
            "M moves the table k positions BACK: M @ PE(p) gives PE(p - k). sin((p+k)ω) = sin(pω)cos(kω) + "
            "cos(pω)sin(kω): check the sign of each sin(kω) entry",
            _shift_np(k, d, sign=-1.0),
        ),
        (
            "the blocks couple feature i with feature i + d/2; in the sinusoidal table the sine and the cosine of "
            "one frequency are neighbours (2i, 2i+1)",
            _shift_np(k, d, layout="halves"),
        ),
        (
            "the frequencies grow instead of shrinking: ω_i = 10000^(-2i/d), with a minus sign",
            _shift_np(k, d, omega=1.0 / _omega(d)),
        ),
        (
            "pair i turns at 10000^(-i/d); the table's frequency of pair i is ω_i = 10000^(-2i/d) (2i is the index "
            "of the pair's first feature)",
            _shift_np(k, d, omega=10000.0 ** (-np.arange(d // 2) / d)),
        ),
    ]
    want = shift_expect(case)["out"]
    return [(hint, {"out": out}) for hint, out in found if not np.allclose(out, want, atol=1e-9)]


# ---------------------------------------------------------------------------------------------- 09.2 partial RoPE
# GPT-NeoX, Phi and others rotate only the first rotary_dim features of each head (half-split pairs (i, i + r/2)
# inside them, θ_i = 10000^(-2i/r)) and pass the rest through; a left-padded batch gives each row its positions.


def partial_cases(rng):
    cases = []
    shapes = ((2, 3, 5, 8, 4), (1, 2, 6, 16, 16), (3, 1, 4, 12, 8), (2, 2, 7, 32, 8), (1, 1, 1, 6, 2), (2, 4, 3, 10, 6))
    for n, (B, H, L, D, R) in enumerate(shapes):
        x = f32(B, H, L, D, rng=rng)
        starts = rng.integers(0, 40, size=B)
        pads = [0 if b == 0 else int(rng.integers(0, L)) for b in range(B)]  # left padding: leading zeros
        positions = np.stack([np.maximum(np.arange(L) - p, 0) + s for p, s in zip(pads, starts, strict=True)])
        if n == 0:
            positions[1] = np.arange(L) + 50  # a second row far from the first
        name = f"x ({B}, {H}, {L}, {D}), rotary_dim {R}, positions rows start at {positions[:, 0].tolist()}"
        cases.append(Case(name, (x, positions.astype(np.int64), R)))
    return cases


def partial_expect(case):
    import torch

    from ...positions import apply_rope

    x, positions, r = case.args
    x = torch.from_numpy(x.astype(np.float64))
    rows = [apply_rope(x[b : b + 1, ..., :r], torch.from_numpy(positions[b])) for b in range(x.shape[0])]
    return {"out": torch.cat([torch.cat(rows), x[..., r:]], dim=-1).numpy()}


def _partial_np(x, positions, r, *, sign=1.0, pairs="half", base_dim=None, where="first", rows=True):
    x = np.asarray(x, np.float64)
    positions = np.asarray(positions, np.float64)
    if not rows:
        positions = np.broadcast_to(positions[:1], positions.shape)
    part = x[..., :r] if where == "first" else x[..., x.shape[-1] - r :]
    theta = 10000.0 ** (-np.arange(0, r, 2) / (r if base_dim is None else base_dim))
    angle = positions[:, None, :, None] * theta
    if pairs == "half":
        a, b = part[..., : r // 2], part[..., r // 2 :]
        c, s = np.cos(angle), sign * np.sin(angle)
        turned = np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
    else:
        a, b = part[..., 0::2], part[..., 1::2]
        c, s = np.cos(angle), sign * np.sin(angle)
        turned = np.stack([a * c - b * s, b * c + a * s], axis=-1).reshape(part.shape)
    if where == "first":
        return np.concatenate([turned, x[..., r:]], axis=-1)
    return np.concatenate([x[..., : x.shape[-1] - r], turned], axis=-1)


def partial_mistakes(case):
    x, positions, r = case.args
    d = x.shape[-1]
    found = [
        (
            "the rotation goes the wrong way: the first member of pair i becomes x_i cos - x_(i+r/2) sin, the "
            "second x_(i+r/2) cos + x_i sin",
            _partial_np(x, positions, r, sign=-1.0),
        ),
        (
            f"the frequencies are computed for the whole head: θ_i = 10000^(-2i/rotary_dim) uses the width of the "
            f"rotated part ({r}), not head_dim ({d})",
            _partial_np(x, positions, r, base_dim=d),
        ),
        (
            f"the whole head is rotated: only the first rotary_dim = {r} features turn, the other {d - r} pass "
            "through unchanged",
            _partial_np(x, positions, d),
        ),
        (
            f"the LAST rotary_dim features are rotated: the rotated part is the first {r} features of each head",
            _partial_np(x, positions, r, where="last"),
        ),
        (
            "every batch row uses the positions of row 0: token t of row b sits at positions[b, t] (a left-padded "
            "row starts later)",
            _partial_np(x, positions, r, rows=False),
        ),
        (
            "that is RoPE with neighbouring pairs (2i, 2i+1), the interleaved layout: this exercise pairs feature i "
            "with feature i + rotary_dim/2 (half-split)",
            _partial_np(x, positions, r, pairs="neighbours"),
        ),
        (
            "the positions are ignored: token t of row b turns by positions[b, t]·θ_i",
            np.asarray(x, np.float64),
        ),
    ]
    want = partial_expect(case)["out"]
    return [(hint, {"out": out}) for hint, out in found if not np.allclose(out, want, atol=1e-9)]


# ---------------------------------------------------------------------------------------------- 09.3 fix
# A half-precision model hands RoPE float16 queries and keys. Computing the angles p·θ_i in float16 rounds the
# positions (float16 holds every integer only up to 2048) and θ (11 significant bits): at a long context the
# angles are off by whole radians. The angles must be computed in float32 or float64, cos and sin cast after.


def fix_cases(rng):
    # every check is at positions where the bug shows (its error grows with the position; at a few dozen it is
    # within float16's rounding): an exercise left as given scores nothing
    cases = []
    for B, H, L, D, start in ((1, 2, 6, 8, 2345), (2, 1, 5, 16, 4093), (1, 3, 4, 12, 28677), (2, 2, 3, 32, 1500)):
        x = f32(B, H, L, D, rng=rng).astype(np.float16)
        positions = np.arange(start, start + L, dtype=np.int64)
        cases.append(Case(f"x float16 ({B}, {H}, {L}, {D}), positions {start}..{start + L - 1}", (x, positions)))
    return cases


def fix_expect(case):
    import torch

    from ...positions import apply_rope

    x, positions = case.args
    return {"out": apply_rope(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(positions)).numpy()}


def _rope_in(x, positions, *, positions_dtype, theta_dtype):
    """The given code's RoPE with the positions and θ cast to the given dtypes before their product (torch, as
    the learner's code runs)."""
    import torch

    x = torch.from_numpy(np.asarray(x))
    half = x.shape[-1] // 2
    inv_freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    freqs = torch.from_numpy(positions).to(positions_dtype)[:, None] * inv_freq.to(theta_dtype)
    cos, sin = freqs.cos().repeat(1, 2).to(x.dtype), freqs.sin().repeat(1, 2).to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return (x * cos + torch.cat([-second, first], dim=-1) * sin).double().numpy()


def fix_mistakes(case):
    import torch

    x, positions = case.args
    found = [
        (
            "the bug is still there: at long positions the float16 rotation turns by the wrong angles. In which "
            "dtype are the angles p·θ_i computed, and which integers can that dtype hold exactly?",
            _rope_in(x, positions, positions_dtype=torch.float16, theta_dtype=torch.float16),
        ),
        (
            "the positions are exact now, but θ is still rounded to float16 (about 3 significant digits) before "
            "the product: at position p its rounding error is multiplied by p",
            _rope_in(x, positions, positions_dtype=torch.float64, theta_dtype=torch.float16),
        ),
        (
            "θ is exact now, but the positions are still rounded to float16 before the product: above 2048 "
            "float16 cannot hold every integer",
            _rope_in(x, positions, positions_dtype=torch.float16, theta_dtype=torch.float64),
        ),
    ]
    d = x.shape[-1]
    theta = np.repeat(_omega(d), 2)  # the interleaved layout: pair (2i, 2i+1) turns by p·θ_i
    angle = positions.astype(np.float64)[:, None] * theta
    x64 = np.asarray(x, np.float64)
    turned = np.stack([-x64[..., 1::2], x64[..., 0::2]], axis=-1).reshape(x64.shape)
    found.append(
        (
            "that is RoPE with neighbouring pairs (2i, 2i+1), the interleaved layout: valid, but these checks "
            "require the half-split layout of the given code (feature i paired with i + head_dim/2)",
            x64 * np.cos(angle) + turned * np.sin(angle),
        )
    )
    want = fix_expect(case)["out"]
    return [(hint, {"out": out}) for hint, out in found if not close(out.astype(np.float16), want)]


# ---------------------------------------------------------------------------------------------- 09.4/09.5 layouts
# RoPE checkpoints come in two layouts: "interleaved" pairs neighbours (2i, 2i+1) (the original paper, Meta's
# reference code), "half-split" pairs i with i + d/2 (rotate_half, Hugging Face, attnlib). Reordering the rows of
# W_Q and W_K inside each head makes a checkpoint of one layout run with the other RoPE (9.4); 9.5 reorders the
# features of a tensor back.


def weight_cases(rng):
    shapes = ((8, 8, 2), (12, 12, 3), (16, 6, 2), (6, 10, 1), (24, 24, 4), (32, 16, 2))
    return [Case(f"w ({o}, {i}), {h} heads", (f32(o, i, rng=rng), h)) for o, i, h in shapes]


def _per_head(w, num_heads, convert):
    w = np.asarray(w, np.float64)
    out, inp = w.shape
    heads = w.reshape(num_heads, out // num_heads, inp).swapaxes(1, 2)  # (heads, in, head_dim): rows last
    return convert(heads).swapaxes(1, 2).reshape(out, inp)


def weight_expect(case):
    w, h = case.args
    return {"out": _per_head(w, h, _to_half)}


def weight_mistakes(case):
    w, h = case.args
    w64 = np.asarray(w, np.float64)
    found = [
        (
            "the pairs live inside each head: reorder each head's head_dim rows on their own, not the "
            "d_model rows as one block",
            _per_head(w, 1, _to_half),
        ),
        (
            "that is the opposite conversion (half-split to interleaved): here each head's rows (2i, 2i+1) must "
            "land at (i, i + head_dim/2)",
            _per_head(w, h, _to_interleaved),
        ),
        (
            "the halves are swapped: each head's first half must hold the FIRST member of every pair "
            "(rows 0, 2, 4, ... of the head)",
            _per_head(w, h, lambda t: np.concatenate([t[..., 1::2], t[..., 0::2]], axis=-1)),
        ),
        ("the rows are returned unchanged: each head's row 2i goes to i and row 2i+1 to i + head_dim/2", w64),
    ]
    if w64.shape[0] == w64.shape[1]:
        perm = _per_head(np.arange(w64.shape[0], dtype=np.float64)[:, None], h, _to_half)[:, 0].astype(int)
        found.append(
            (
                "the columns are reordered: the pairs are OUTPUT features of x @ w.T, one per row of w; reorder the "
                "rows",
                w64[:, perm],
            )
        )
    want = weight_expect(case)["out"]
    return [(hint, {"out": out}) for hint, out in found if not np.array_equal(out, want)]


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


def to_interleaved_expect(case):
    return {"out": _to_interleaved(case.args[0])}


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
        entry="sinusoidal_shift",
        title="The matrix that moves the sinusoidal table k positions",
        points=3,
        difficulty="medium",
        minutes=15,
        kind="function",
        returns=("out",),
        forbidden=ATTNLIB,
        cases=shift_cases,
        expect=shift_expect,
        mistakes=shift_mistakes,
        distribution=None,
        arg_names=("k", "d"),
    ),
    Exercise(
        key="09.2",
        set=SET,
        entry="apply_partial_rope",
        title="Partial RoPE on the first rotary_dim features, positions per batch row",
        points=4,
        difficulty="medium",
        minutes=20,
        kind="function",
        returns=("out",),
        forbidden=ATTNLIB,
        cases=partial_cases,
        expect=partial_expect,
        mistakes=partial_mistakes,
        distribution=None,
        arg_names=("x", "positions", "rotary_dim"),
    ),
    Exercise(
        key="09.3",
        set=SET,
        entry="fixed_half_precision_rope",
        title="Find the bug: a float16 RoPE that goes wrong at long positions",
        points=2,
        difficulty="medium",
        minutes=10,
        kind="function",
        returns=("out",),
        forbidden=ATTNLIB,
        cases=fix_cases,
        expect=fix_expect,
        mistakes=fix_mistakes,
        distribution=None,
        arg_names=("x", "positions"),
        style="fix",
    ),
    Exercise(
        key="09.4",
        set=SET,
        entry="interleaved_to_half_split_weight",
        title="Reorder a projection's rows per head from the interleaved RoPE layout to the half-split one",
        points=3,
        difficulty="medium",
        minutes=15,
        returns=("out",),
        forbidden=ATTNLIB,
        cases=weight_cases,
        expect=weight_expect,
        mistakes=weight_mistakes,
        arg_names=("w", "num_heads"),
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
