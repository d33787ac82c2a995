"""The exercise registry: what each exercise asks for, its checks, the reference answers and the known mistakes.

Each :class:`Exercise` names the function or ``nn.Module`` a learner writes (``entry``), its points, difficulty
and time estimate, the library calls it may not use (``forbidden``), and three pure functions:

* ``cases(rng)`` — the inputs of every check (NumPy arrays and plain Python values), several shapes including
  query length != key length, batch and head dims, large logits, masks of each kind and fully masked rows;
* ``expect(case)`` — the reference outputs, computed with attnlib (and, for modules, its gradients);
* ``mistakes(case)`` — what classic wrong implementations return for the same inputs, each with its hint.

Nothing here runs submitted code: the grader sends ``cases`` to a child process and compares what comes back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .diagnose import Mistake, Outputs

# Canonical names of the library calls the sandbox records (see attnlib.grader.guard).
SOFTMAX = (
    "torch.softmax",
    "torch.log_softmax",
    "torch.special.softmax",
    "torch.nn.functional.softmax",
    "torch.nn.functional.log_softmax",
    "torch.Tensor.softmax",
    "torch.Tensor.log_softmax",
    "torch.nn.Softmax",
)
SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
MHA = ("torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward")
ATTNLIB = ("attnlib",)  # any call into attnlib's own implementations

EXERCISE_SETS = {
    "01_soft_lookup": "Lesson 1: hard and soft lookup",
    "02_softmax": "Lessons 2-3: stable softmax with temperature, scaled scores",
    "03_scaled_dot_product": "Lesson 4: attention scores and scaled dot-product attention",
    "04_masking": "Lesson 5: causal mask, padding mask, masked attention",
    "05_self_attention": "Lesson 6: self-attention with projections",
    "06_cross_attention": "Lesson 7: cross-attention",
    "07_multi_head_attention": "Lesson 8: split heads, merge heads, multi-head attention",
}


@dataclass(frozen=True)
class Case:
    """One check: positional/keyword arguments (arrays become tensors), and for modules the constructor's
    arguments, the parameters to load (``"w_q.weight"`` -> array) and the upstream gradient of the output."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: tuple[Any, ...] = ()
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    grad_output: np.ndarray | None = None


@dataclass(frozen=True)
class Exercise:
    key: str  # "02.1"
    set: str  # "02_softmax"
    entry: str  # the name the learner defines
    title: str
    points: int
    difficulty: str  # "easy" | "medium" | "hard"
    minutes: int
    kind: str  # "function" | "module"
    returns: tuple[str, ...]
    forbidden: tuple[str, ...]
    cases: Callable[[np.random.Generator], list[Case]]
    expect: Callable[[Case], Outputs]
    mistakes: Callable[[Case], list[Mistake]]
    distribution: str | None = None  # the output whose rows must sum to 1

    @property
    def header(self) -> str:
        """The line each exercise's heading in the notebook carries (tests check the notebooks state it)."""
        stars = {"easy": "★☆☆", "medium": "★★☆", "hard": "★★★"}[self.difficulty]
        return f"{self.points} points · difficulty {stars} ({self.difficulty}) · about {self.minutes} minutes"


# ----------------------------------------------------------------------------------------------------------
# NumPy helpers for references and mistakes (float64)


def _f(*shape: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    from ..reference import softmax

    return softmax(np.asarray(x, dtype=np.float64), axis=axis)


def _naive_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp / sum without subtracting the max, in float32 as a learner's torch code would run: overflows to NaN."""
    with np.errstate(all="ignore"):
        e = np.exp(np.asarray(x, dtype=np.float32))
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float64)


def _t(x: np.ndarray):
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float64))


def _attn(
    q,
    k,
    v,
    mask=None,
    scale=None,
    *,
    axis=-1,
    naive=False,
    after=False,
    invert=False,
    fill=None,
    swap=False,
):
    """Scaled dot-product attention in NumPy with switches that reproduce classic mistakes."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (k @ np.swapaxes(q, -1, -2) if swap else q @ np.swapaxes(k, -1, -2)) * scale
    keep = None
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        keep = np.broadcast_to(~keep if invert else keep, s.shape)
    if keep is not None and not after:
        s = np.where(keep, s, -np.inf if fill is None else fill)
    w = _naive_softmax(s, axis) if naive else _softmax(s, axis)
    if keep is not None and after:
        w = w * keep
    with np.errstate(all="ignore"):
        return w @ v, w


def _ok_attn(q, k, v, mask=None, scale=None):
    """The reference: attnlib.scaled_dot_product_attention in float64."""
    import torch

    from ..functional import scaled_dot_product_attention

    m = None if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool))
    out, w = scaled_dot_product_attention(_t(q), _t(k), _t(v), m, scale=scale)
    return out.numpy(), w.numpy()


def _pair(out_w) -> dict[str, np.ndarray]:
    return {"out": out_w[0], "weights": out_w[1]}


def _attention_mistakes(q, k, v, mask=None, scale=None, *, d_model: int | None = None) -> list[Mistake]:
    """The mistakes every attention exercise checks for, given its inputs."""
    E = q.shape[-1]
    given = 1.0 / math.sqrt(E) if scale is None else scale
    out: list[Mistake] = []
    if d_model is not None and d_model != E:
        out.append(
            (
                f"the scores are scaled by 1/sqrt(d_model) = 1/sqrt({d_model}); scale by 1/sqrt(d_k) = 1/sqrt({E}), "
                "the dimension of the vectors being dotted",
                _pair(_attn(q, k, v, mask, 1.0 / math.sqrt(d_model))),
            )
        )
    out += [
        ("the scores are not scaled: divide q @ k^T by sqrt(d_k)", _pair(_attn(q, k, v, mask, 1.0))),
        (f"the scores are divided by d_k = {E}; divide by sqrt(d_k) instead", _pair(_attn(q, k, v, mask, 1.0 / E))),
        ("the scores are multiplied by sqrt(d_k); divide by it instead", _pair(_attn(q, k, v, mask, math.sqrt(E)))),
        (
            "the softmax is taken over the queries (dim=-2); each query's weights over the keys must sum to 1: "
            "use dim=-1",
            _pair(_attn(q, k, v, mask, given, axis=-2)),
        ),
        (
            "q and k are swapped: the scores must be q @ k^T (one row per query), not k @ q^T",
            {"weights": np.swapaxes(_attn(q, k, v, mask, given)[1], -1, -2)},
        ),
    ]
    naive = _pair(_attn(q, k, v, mask, given, naive=True))
    if mask is None and np.isnan(naive["weights"]).any():  # only large scores overflow (masks have their own hint)
        out.append(
            (
                "NaN for large scores: exp() overflows unless you subtract each row's maximum before exponentiating",
                naive,
            )
        )
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        full = np.broadcast_to(mask, (*q.shape[:-1], k.shape[-2])).any(axis=-1)
        ref_out, ref_w = _ok_attn(q, k, v, mask, scale)
        if not full.all():  # some query has every key masked
            nan_w = np.where(full[..., None], ref_w, np.nan)
            nan_out = np.where(full[..., None], ref_out, np.nan)
            out.insert(
                0,
                (
                    "NaN in fully masked rows: when every key of a query is masked, softmax gives 0/0; such rows must "
                    "give zero weights and a zero output (replace a -inf row maximum by 0 and guard the division)",
                    {"out": nan_out, "weights": nan_w},
                ),
            )
        out += [
            (
                "the mask is inverted: True means the query MAY attend to that key, so fill the scores where the mask "
                "is False with -inf",
                _pair(_attn(q, k, v, mask, given, invert=True)),
            ),
            (
                "the mask is applied after the softmax: the weights of the allowed keys no longer sum to 1; set "
                "blocked scores to -inf before the softmax",
                _pair(_attn(q, k, v, mask, given, after=True)),
            ),
            (
                "blocked scores are set to 0 instead of -inf, so blocked keys still get weight: use float('-inf')",
                _pair(_attn(q, k, v, mask, given, fill=0.0)),
            ),
            (
                "the mask is ignored (padding and future keys still get weight): apply it to the scores",
                _pair(_attn(q, k, v, None, given)),
            ),
        ]
    return out


# ----------------------------------------------------------------------------------------------------------
# 01 soft lookup


def _lookup_cases(rng):
    cases = []
    for L, S, E, Ev in ((3, 5, 4, 2), (1, 7, 3, 5), (4, 4, 3, 3), (2, 6, 8, 4)):
        cases.append(
            Case(
                f"L={L} queries, S={S} keys, E={E}, Ev={Ev}", (_f(L, E, rng=rng), _f(S, E, rng=rng), _f(S, Ev, rng=rng))
            )
        )
    return cases


def _hard_expect(case):
    q, k, v = case.args
    return {"out": v[np.argmax(q.astype(np.float64) @ k.T.astype(np.float64), axis=-1)].astype(np.float64)}


def _hard_mistakes(case):
    q, k, v = case.args
    s = q.astype(np.float64) @ k.T
    found: list[Mistake] = [
        (
            "you picked the worst match (argmin); the best key has the highest score q·k: use argmax",
            {"out": v[np.argmin(s, axis=-1)]},
        ),
        (
            "that is a soft lookup (a weighted average); the hard lookup returns the single best value",
            {"out": _attn(q, k, v, scale=1.0)[0]},
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
        cases.append(
            Case(
                f"L={L}, S={S}, E={E}, temperature={T}",
                (_f(L, E, rng=rng), _f(S, E, rng=rng), _f(S, Ev, rng=rng)),
                {"temperature": T},
            )
        )
    cases.append(
        Case(
            "large scores (|q·k| ~ 1000), temperature=1",
            (_f(2, 3, rng=rng, scale=40.0), _f(5, 3, rng=rng, scale=40.0), _f(5, 2, rng=rng)),
            {"temperature": 1.0},
        )
    )
    return cases


def _soft_expect(case):
    q, k, v = case.args
    return _pair(_ok_attn(q, k, v, scale=1.0 / case.kwargs["temperature"]))


def _soft_mistakes(case):
    q, k, v = case.args
    T = case.kwargs["temperature"]
    found: list[Mistake] = []
    if T != 1.0:
        found += [
            (
                "the scores are multiplied by the temperature; divide by it (low T = sharper)",
                _pair(_attn(q, k, v, scale=T)),
            ),
            (
                "the temperature is ignored: divide the scores by it before the softmax",
                _pair(_attn(q, k, v, scale=1.0)),
            ),
        ]
    found += [
        (
            "the softmax is taken over the queries (dim=0); each query's weights over the keys must sum to 1",
            _pair(_attn(q, k, v, scale=1 / T, axis=-2)),
        ),
        ("the weights are exp(score) without dividing by their sum", _unnormalised(q, k, v, 1 / T)),
        (
            "NaN for large scores: subtract each row's maximum before exp (or use torch.softmax, allowed here)",
            _pair(_attn(q, k, v, scale=1 / T, naive=True)),
        ),
    ]
    return found


def _unnormalised(q, k, v, scale):
    with np.errstate(all="ignore"):
        w = np.exp((q.astype(np.float64) @ k.T.astype(np.float64)) * scale)
    return {"weights": w}


# ----------------------------------------------------------------------------------------------------------
# 02 softmax


def _softmax_cases(rng):
    big = np.array(
        [[1000.0, 999.0, 0.0, -5.0], [-1000.0, -1001.0, -999.0, -1000.5], [88.0, 90.0, 89.5, -90.0]], dtype=np.float32
    )
    part_inf = np.array([[0.5, -np.inf, 1.5, 0.0], [-np.inf, 2.0, -np.inf, -1.0]], dtype=np.float32)
    return [
        Case("1-D x of 5 scores", (_f(5, rng=rng),)),
        Case("2-D x (3, 6), dim=-1", (_f(3, 6, rng=rng),), {"dim": -1}),
        Case("3-D x (2, 3, 4), dim=1", (_f(2, 3, 4, rng=rng),), {"dim": 1}),
        Case("2-D x (4, 5), dim=0", (_f(4, 5, rng=rng),), {"dim": 0}),
        Case("temperature=0.5 (sharper)", (_f(3, 5, rng=rng),), {"temperature": 0.5}),
        Case("temperature=3.0 (flatter), 4-D x (2, 2, 3, 4)", (_f(2, 2, 3, 4, rng=rng),), {"temperature": 3.0}),
        Case("large logits (+-1000)", (big,)),
        Case("some entries -inf (blocked)", (part_inf,)),
    ]


def _softmax_expect(case):
    (x,) = case.args
    return {
        "out": _softmax(
            np.asarray(x, np.float64) / case.kwargs.get("temperature", 1.0), axis=case.kwargs.get("dim", -1)
        )
    }


def _softmax_mistakes(case):
    (x,) = case.args
    dim = case.kwargs.get("dim", -1)
    T = case.kwargs.get("temperature", 1.0)
    x64 = np.asarray(x, np.float64)
    found: list[Mistake] = []
    if T != 1.0:
        found += [
            (
                "the logits are multiplied by the temperature; divide x by it (T < 1 sharpens, T > 1 flattens)",
                {"out": _softmax(x64 * T, dim)},
            ),
            ("the temperature is ignored: compute softmax(x / temperature)", {"out": _softmax(x64, dim)}),
        ]
    if dim not in (-1, x.ndim - 1):
        found.append(
            (
                f"the softmax is taken over the last axis; this check asked for dim={dim}: "
                "use it for the max and the sum",
                {"out": _softmax(x64 / T, -1)},
            )
        )
    for other in range(x.ndim):
        if other not in (dim, dim + x.ndim):
            found.append(
                (
                    f"the softmax is taken over dim={other} instead of dim={dim}: "
                    "pass dim to max and sum (keepdim=True)",
                    {"out": _softmax(x64 / T, other)},
                )
            )
    found.append(
        (
            "NaN or inf for large logits: subtract the maximum along dim (keepdim=True) before exp",
            {"out": _naive_softmax(x64 / T, dim)},
        )
    )
    with np.errstate(all="ignore"):
        found.append(
            (
                "the result is exp(x) without dividing by the sum along dim",
                {"out": np.exp(x64 / T - np.max(x64 / T, axis=dim, keepdims=True))},
            )
        )
    return found


def _scores_cases(rng):
    return [
        Case(f"q ({L}, {E}), k ({S}, {E})", (_f(L, E, rng=rng), _f(S, E, rng=rng)))
        for L, S, E in ((3, 5, 4), (4, 4, 16), (2, 6, 64), (1, 3, 9))
    ]


def _scores_expect(case):
    q, k = (np.asarray(a, np.float64) for a in case.args)
    return {"out": q @ k.T / math.sqrt(q.shape[-1])}


def _scores_mistakes(case):
    q, k = (np.asarray(a, np.float64) for a in case.args)
    E = q.shape[-1]
    raw = q @ k.T
    return [
        ("the scores are not scaled: divide q @ k^T by sqrt(d_k)", {"out": raw}),
        (f"the scores are divided by d_k = {E}; divide by sqrt(d_k) instead", {"out": raw / E}),
        ("the scores are multiplied by sqrt(d_k); divide by it instead", {"out": raw * math.sqrt(E)}),
        ("q and k are swapped: compute q @ k^T (one row per query), not k @ q^T", {"out": (k @ q.T) / math.sqrt(E)}),
    ]


# ----------------------------------------------------------------------------------------------------------
# 03 attention scores and scaled dot-product attention


def _scores_batched_cases(rng):
    return [
        Case("2-D q (3, 4), k (5, 4)", (_f(3, 4, rng=rng), _f(5, 4, rng=rng))),
        Case("batch: q (2, 4, 8), k (2, 6, 8)", (_f(2, 4, 8, rng=rng), _f(2, 6, 8, rng=rng))),
        Case("batch and heads: q (2, 3, 5, 4), k (2, 3, 7, 4)", (_f(2, 3, 5, 4, rng=rng), _f(2, 3, 7, 4, rng=rng))),
        Case(
            "explicit scale=0.5, q (2, 3, 6), k (2, 3, 6)", (_f(2, 3, 6, rng=rng), _f(2, 3, 6, rng=rng)), {"scale": 0.5}
        ),
    ]


def _scores_batched_expect(case):
    from ..functional import attention_scores

    q, k = case.args
    return {"out": attention_scores(_t(q), _t(k), case.kwargs.get("scale")).numpy()}


def _scores_batched_mistakes(case):
    q, k = (np.asarray(a, np.float64) for a in case.args)
    E = q.shape[-1]
    scale = case.kwargs.get("scale")
    raw = q @ np.swapaxes(k, -1, -2)
    given = 1 / math.sqrt(E) if scale is None else scale
    found: list[Mistake] = []
    if scale is not None:
        found.append(
            (
                "the scale argument is ignored: when it is given, multiply by it instead of 1/sqrt(d_k)",
                {"out": raw / math.sqrt(E)},
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
    return [
        Case("2-D: q (3, 4), k (5, 4), v (5, 2)", (_f(3, 4, rng=rng), _f(5, 4, rng=rng), _f(5, 2, rng=rng))),
        Case(
            "batch: q (2, 4, 8), k (2, 6, 8), v (2, 6, 3)",
            (_f(2, 4, 8, rng=rng), _f(2, 6, 8, rng=rng), _f(2, 6, 3, rng=rng)),
        ),
        Case(
            "batch and heads, L != S: q (2, 3, 5, 4), k/v (2, 3, 7, 4)",
            (_f(2, 3, 5, 4, rng=rng), _f(2, 3, 7, 4, rng=rng), _f(2, 3, 7, 4, rng=rng)),
        ),
        Case("square L = S = 4, heads", (_f(1, 2, 4, 6, rng=rng), _f(1, 2, 4, 6, rng=rng), _f(1, 2, 4, 6, rng=rng))),
        Case(
            "large logits (|score| ~ 1000)",
            (_f(2, 3, 4, rng=rng, scale=40.0), _f(2, 5, 4, rng=rng, scale=40.0), _f(2, 5, 3, rng=rng)),
        ),
    ]


def _sdpa_expect(case):
    return _pair(_ok_attn(*case.args))


def _sdpa_mistakes(case):
    q, k, v = case.args
    return _attention_mistakes(q, k, v)


# ----------------------------------------------------------------------------------------------------------
# 04 masking


def _causal_cases(rng):
    return [
        Case("L=4 (S defaults to L)", (4,)),
        Case("L=S=5", (5, 5)),
        Case("L=3 queries, S=6 keys", (3, 6)),
        Case("L=6 queries, S=3 keys", (6, 3)),
        Case("L=1, S=4", (1, 4)),
        Case("L=S=1", (1, 1)),
    ]


def _LS(case):
    L = case.args[0]
    S = case.args[1] if len(case.args) > 1 else L
    return L, S


def _causal_expect(case):
    L, S = _LS(case)
    return {"out": np.tril(np.ones((L, S), dtype=bool))}


def _causal_mistakes(case):
    L, S = _LS(case)
    ones = np.ones((L, S), dtype=bool)
    found: list[Mistake] = [
        (
            "the mask is inverted: True must mean 'may attend' (keys j <= i), so use tril, not triu",
            {"out": ~np.tril(ones)},
        ),
        (
            "the diagonal is off by one: query i may attend to keys 0..i, including itself but not i+1 "
            "(tril with diagonal=0)",
            {"out": np.tril(ones, 1)},
        ),
        (
            "the diagonal is off by one: each query must also attend to itself (key j = i); use tril with diagonal=0",
            {"out": np.tril(ones, -1)},
        ),
        ("the mask is all True: the causal mask must block keys j > i", {"out": ones}),
    ]
    if L != S:
        found.append(
            (
                "the mask is aligned to the bottom-right corner (tril with diagonal=S-L); this exercise asks for the "
                "top-left alignment, as is_causal=True uses: query i sees keys j <= i",
                {"out": np.tril(ones, S - L)},
            )
        )
    return found


def _padding_cases(rng):
    return [
        Case("lengths [3, 5, 2], S=5", (np.array([3, 5, 2]), 5)),
        Case("lengths [1], S=4", (np.array([1]), 4)),
        Case("a length of 0: lengths [0, 2], S=3", (np.array([0, 2]), 3)),
        Case("lengths [4, 4], S=6 (padding in every item)", (np.array([4, 4]), 6)),
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
            "the mask has shape (batch, S); return (batch, 1, 1, S) so it broadcasts over heads and queries",
            {"out": real},
        ),
        (
            "the mask has shape (batch, 1, S); return (batch, 1, 1, S) so it broadcasts over heads and queries",
            {"out": real[:, None, :]},
        ),
    ]


def _masked_cases(rng):
    causal4 = np.tril(np.ones((4, 4), dtype=bool))
    causal_ls = np.tril(np.ones((3, 5), dtype=bool))
    pad = np.arange(5)[None, :] < np.array([5, 2])[:, None]
    pad0 = np.arange(4)[None, :] < np.array([3, 0])[:, None]
    combined = np.tril(np.ones((5, 5), dtype=bool))[None, None] & pad[:, None, None, :]
    return [
        Case(
            "causal mask (4, 4), q/k/v (2, 4, 6)",
            (_f(2, 4, 6, rng=rng), _f(2, 4, 6, rng=rng), _f(2, 4, 6, rng=rng), causal4),
        ),
        Case(
            "top-left causal mask with L=3 != S=5",
            (_f(1, 3, 4, rng=rng), _f(1, 5, 4, rng=rng), _f(1, 5, 2, rng=rng), causal_ls),
        ),
        Case(
            "padding mask (2, 1, 1, 5) with heads: q (2, 2, 3, 4)",
            (_f(2, 2, 3, 4, rng=rng), _f(2, 2, 5, 4, rng=rng), _f(2, 2, 5, 3, rng=rng), pad[:, None, None, :]),
        ),
        Case(
            "fully masked rows: an item of length 0",
            (_f(2, 1, 3, 4, rng=rng), _f(2, 1, 4, 4, rng=rng), _f(2, 1, 4, 2, rng=rng), pad0[:, None, None, :]),
        ),
        Case(
            "causal and padding combined (2, 1, 5, 5)",
            (_f(2, 2, 5, 4, rng=rng), _f(2, 2, 5, 4, rng=rng), _f(2, 2, 5, 4, rng=rng), combined),
        ),
        Case(
            "large logits with a causal mask",
            (_f(1, 4, 4, rng=rng, scale=40.0), _f(1, 4, 4, rng=rng, scale=40.0), _f(1, 4, 3, rng=rng), causal4),
        ),
    ]


def _masked_expect(case):
    return _pair(_ok_attn(*case.args))


def _masked_mistakes(case):
    return _attention_mistakes(*case.args)


# ----------------------------------------------------------------------------------------------------------
# 05-06 self- and cross-attention modules


def _linear(rng, n_out, n_in, bias=False):
    bound = 1.0 / math.sqrt(n_in)
    w = rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32)
    return (w, rng.uniform(-bound, bound, n_out).astype(np.float32)) if bias else (w, None)


def _self_cases(rng):
    cases = []
    specs = (
        ("no mask, batch 2, L=5, d_model=16, d_k=4", 2, 5, 16, 4, None),
        ("causal mask (6, 6), batch 1, d_model=8, d_k=8", 1, 6, 8, 8, "causal"),
        ("padding mask (2, 1, 5), d_model=12, d_k=6", 2, 5, 12, 6, "pad"),
    )
    for name, B, L, dm, dk, kind in specs:
        weights = {f"{p}.weight": _linear(rng, dk, dm)[0] for p in ("w_q", "w_k", "w_v")}
        x = _f(B, L, dm, rng=rng)
        mask = None
        if kind == "causal":
            mask = np.tril(np.ones((L, L), dtype=bool))
        elif kind == "pad":
            mask = (np.arange(L)[None, :] < np.array([L, 3])[:, None])[:, None, :]
        args = (x,) if mask is None else (x, mask)
        cases.append(Case(name, args, init=(dm, dk), weights=weights, grad_output=_f(B, L, dk, rng=rng)))
    return cases


def _module_expect(case, build, n_inputs):
    import torch

    module = build(case).double()
    with torch.no_grad():
        for name, value in case.weights.items():
            _param(module, name).copy_(torch.from_numpy(value.astype(np.float64)))
    inputs = [_t(a).requires_grad_() for a in case.args[:n_inputs]]
    rest = [torch.from_numpy(np.asarray(a)) for a in case.args[n_inputs:]]
    out, weights = module(*inputs, *rest)
    (out * _t(case.grad_output)).sum().backward()
    result = {"out": out.detach().numpy(), "weights": weights.detach().numpy()}
    for i, t in enumerate(inputs):
        result[f"grad:arg{i}"] = t.grad.numpy()
    for name in case.weights:
        result[f"grad:{name}"] = _param(module, name).grad.numpy()
    return result


def _param(module, dotted):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _self_expect(case):
    from ..modules import SelfAttention

    return _module_expect(case, lambda c: SelfAttention(*c.init), 1)


def _project(x, w, b=None):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return y if b is None else y + b


def _self_mistakes(case):
    x = case.args[0]
    mask = case.args[1] if len(case.args) > 1 else None
    W = case.weights
    q, k, v = (_project(x, W[f"w_{n}.weight"]) for n in "qkv")
    found = _attention_mistakes(q, k, v, mask, d_model=case.init[0])
    found.append(("the values are not projected: use v = w_v(x)", _pair(_attn(q, k, np.asarray(x, np.float64), mask))))
    return found


def _cross_cases(rng):
    cases = []
    specs = (
        ("no mask: L=3 queries, S=6 context tokens, d_query=8, d_context=10, d_k=4", 2, 3, 6, 8, 10, 4, None),
        ("padding mask (2, 1, 5) on the context", 2, 4, 5, 6, 12, 6, [5, 2]),
        ("L = S = 4 with a padding mask", 1, 4, 4, 8, 8, 8, [3]),
        ("a context of length 0 (fully masked rows)", 2, 2, 3, 4, 6, 4, [3, 0]),
    )
    for name, B, L, S, dq, dc, dk, lengths in specs:
        weights = {
            "w_q.weight": _linear(rng, dk, dq)[0],
            "w_k.weight": _linear(rng, dk, dc)[0],
            "w_v.weight": _linear(rng, dk, dc)[0],
        }
        args = (_f(B, L, dq, rng=rng), _f(B, S, dc, rng=rng))
        if lengths is not None:
            args += ((np.arange(S)[None, :] < np.array(lengths)[:, None])[:, None, :],)
        cases.append(Case(name, args, init=(dq, dc, dk), weights=weights, grad_output=_f(B, L, dk, rng=rng)))
    return cases


def _cross_expect(case):
    from ..modules import CrossAttention

    return _module_expect(case, lambda c: CrossAttention(*c.init), 2)


def _cross_mistakes(case):
    x, ctx = case.args[:2]
    mask = case.args[2] if len(case.args) > 2 else None
    W = case.weights
    q = _project(x, W["w_q.weight"])
    k, v = _project(ctx, W["w_k.weight"]), _project(ctx, W["w_v.weight"])
    return _attention_mistakes(q, k, v, mask, d_model=case.init[0])


# ----------------------------------------------------------------------------------------------------------
# 07 heads


def _split_cases(rng):
    return [
        Case("x (2, 5, 12), 3 heads", (_f(2, 5, 12, rng=rng), 3)),
        Case("x (1, 4, 8), 2 heads", (_f(1, 4, 8, rng=rng), 2)),
        Case("x (3, 2, 6), 6 heads of size 1", (_f(3, 2, 6, rng=rng), 6)),
        Case("x (2, 3, 4), 1 head", (_f(2, 3, 4, rng=rng), 1)),
    ]


def _split_expect(case):
    x, H = case.args
    B, L, E = x.shape
    return {"out": x.reshape(B, L, H, E // H).transpose(0, 2, 1, 3).astype(np.float64)}


def _split_mistakes(case):
    x, H = case.args
    B, L, E = x.shape
    D = E // H
    return [
        (
            "heads split by view/reshape without the transpose: reshape to (batch, seq, heads, head_dim) first, then "
            "transpose(1, 2); a bare view to (batch, heads, seq, head_dim) mixes different tokens into one head",
            {"out": x.reshape(B, H, L, D)},
        ),
        (
            "head h must take features h*head_dim .. (h+1)*head_dim - 1 (contiguous), not every heads-th feature",
            {"out": x.reshape(B, L, D, H).transpose(0, 3, 1, 2)},
        ),
        (
            "the result is (batch, seq, heads, head_dim); transpose(1, 2) to get (batch, heads, seq, head_dim)",
            {"out": x.reshape(B, L, H, D)},
        ),
    ]


def _merge_cases(rng):
    return [
        Case("x (2, 3, 5, 4): 3 heads of size 4", (_f(2, 3, 5, 4, rng=rng),)),
        Case("x (1, 2, 4, 3)", (_f(1, 2, 4, 3, rng=rng),)),
        Case("x (3, 4, 2, 2)", (_f(3, 4, 2, 2, rng=rng),)),
        Case("x (2, 1, 3, 5): one head", (_f(2, 1, 3, 5, rng=rng),)),
    ]


def _merge_expect(case):
    (x,) = case.args
    B, H, L, D = x.shape
    return {"out": x.transpose(0, 2, 1, 3).reshape(B, L, H * D).astype(np.float64)}


def _merge_mistakes(case):
    (x,) = case.args
    B, H, L, D = x.shape
    return [
        (
            "heads merged by view/reshape without the transpose: transpose(1, 2) to (batch, seq, heads, head_dim) "
            "first (then .contiguous() or .reshape), so each token's heads end up side by side",
            {"out": x.reshape(B, L, H * D)},
        ),
        (
            "heads merged in the wrong order: concatenate head 0's features, then head 1's, ... "
            "(transpose(1, 2), then flatten the last two dims), not feature-interleaved",
            {"out": x.transpose(0, 2, 3, 1).reshape(B, L, H * D)},
        ),
    ]


def _mha_cases(rng):
    cases = []
    specs = (
        ("self-attention, batch 2, L=5, embed_dim=12, 3 heads", 2, 5, 5, 12, 3, None),
        ("cross-attention L=3 != S=6, embed_dim=8, 2 heads", 2, 3, 6, 8, 2, None),
        ("causal mask (4, 4), embed_dim=16, 4 heads", 1, 4, 4, 16, 4, "causal"),
        ("padding mask (2, 1, 1, 5), embed_dim=8, 4 heads", 2, 3, 5, 8, 4, "pad"),
    )
    for name, B, L, S, E, H, kind in specs:
        weights = {}
        for p in ("w_q", "w_k", "w_v", "w_o"):
            w, b = _linear(rng, E, E, bias=True)
            weights[f"{p}.weight"], weights[f"{p}.bias"] = w, b
        query = _f(B, L, E, rng=rng)
        key = query if L == S and kind != "pad" else _f(B, S, E, rng=rng)
        value = key if kind is None and L == S else _f(B, S, E, rng=rng)
        args: tuple = (query, key, value)
        if kind == "causal":
            args += (np.tril(np.ones((L, S), dtype=bool)),)
        elif kind == "pad":
            args += ((np.arange(S)[None, :] < np.array([5, 2])[:, None])[:, None, None, :],)
        cases.append(Case(name, args, init=(E, H), weights=weights, grad_output=_f(B, L, E, rng=rng)))
    return cases


def _mha_expect(case):
    from ..modules import MultiHeadAttention

    return _module_expect(case, lambda c: MultiHeadAttention(*c.init), 3)


def _np_mha(case, *, scale_dim=None, split="ok", merge="ok", out_proj=True, **attn_flags):
    query, key, value = (np.asarray(a, np.float64) for a in case.args[:3])
    mask = case.args[3] if len(case.args) > 3 else None
    E, H = case.init
    D = E // H
    W = {n: np.asarray(a, np.float64) for n, a in case.weights.items()}

    def proj(x, p):
        return x @ W[f"{p}.weight"].T + W[f"{p}.bias"]

    def split_heads(x):
        B, T, _ = x.shape
        if split == "view":
            return x.reshape(B, H, T, D)
        return x.reshape(B, T, H, D).transpose(0, 2, 1, 3)

    qh, kh, vh = split_heads(proj(query, "w_q")), split_heads(proj(key, "w_k")), split_heads(proj(value, "w_v"))
    o, w = _attn(qh, kh, vh, mask, 1.0 / math.sqrt(scale_dim or D), **attn_flags)
    B, _, L, _ = o.shape
    if merge == "view":
        merged = o.reshape(B, L, E)
    elif merge == "order":
        merged = o.transpose(0, 2, 3, 1).reshape(B, L, E)
    else:
        merged = o.transpose(0, 2, 1, 3).reshape(B, L, E)
    return {"out": proj(merged, "w_o") if out_proj else merged, "weights": w}


def _mha_mistakes(case):
    E, H = case.init
    ref = _np_mha(case)
    found: list[Mistake] = [
        (
            f"the scores are scaled by 1/sqrt(embed_dim) = 1/sqrt({E}); "
            f"each head must use 1/sqrt(head_dim) = 1/sqrt({E // H})",
            _np_mha(case, scale_dim=E),
        ),
        ("the scores are not scaled: divide each head's q @ k^T by sqrt(head_dim)", _np_mha(case, scale_dim=1)),
        ("the output projection w_o is missing: apply it to the merged heads", _np_mha(case, out_proj=False)),
        (
            "heads split by view/reshape without the transpose (and merged back the same way): reshape to "
            "(batch, seq, heads, head_dim), then transpose(1, 2)",
            _np_mha(case, split="view", merge="view"),
        ),
        (
            "heads split by view/reshape without the transpose: reshape to (batch, seq, heads, head_dim), "
            "then transpose(1, 2)",
            _np_mha(case, split="view"),
        ),
        (
            "heads merged by view/reshape without the transpose: transpose(1, 2) before flattening the heads",
            _np_mha(case, merge="view"),
        ),
        (
            "heads merged in the wrong order: concatenate head 0's features, then head 1's, ...",
            _np_mha(case, merge="order"),
        ),
        ("the softmax is taken over the queries (dim=-2); use dim=-1", _np_mha(case, axis=-2)),
        (
            "the weights are averaged over the heads; return the per-head weights, shape (batch, heads, L, S)",
            {"weights": ref["weights"].mean(axis=1)},
        ),
    ]
    if len(case.args) > 3:
        found += [
            ("the mask is inverted: True means the query MAY attend to that key", _np_mha(case, invert=True)),
            ("the mask is ignored: fill blocked scores with -inf before the softmax", _mha_no_mask(case)),
            ("the mask is applied after the softmax; apply it to the scores, before", _np_mha(case, after=True)),
        ]
    return found


def _mha_no_mask(case):
    return _np_mha(Case(case.name, case.args[:3], init=case.init, weights=case.weights))


# ----------------------------------------------------------------------------------------------------------


EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        "01.1",
        "01_soft_lookup",
        "hard_lookup",
        "Hard lookup: the value of the best-matching key",
        2,
        "easy",
        5,
        "function",
        ("out",),
        ATTNLIB,
        _lookup_cases,
        _hard_expect,
        _hard_mistakes,
    ),
    Exercise(
        "01.2",
        "01_soft_lookup",
        "soft_lookup",
        "Soft lookup: a softmax-weighted average of all values",
        3,
        "easy",
        10,
        "function",
        ("out", "weights"),
        (*SDPA, *MHA, *ATTNLIB),
        _soft_cases,
        _soft_expect,
        _soft_mistakes,
        "weights",
    ),
    Exercise(
        "02.1",
        "02_softmax",
        "stable_softmax",
        "A numerically stable softmax with temperature, from scratch",
        4,
        "medium",
        15,
        "function",
        ("out",),
        (*SOFTMAX, *SDPA, *MHA, *ATTNLIB),
        _softmax_cases,
        _softmax_expect,
        _softmax_mistakes,
    ),
    Exercise(
        "02.2",
        "02_softmax",
        "scaled_scores",
        "Scaled scores q k^T / sqrt(d_k)",
        2,
        "easy",
        5,
        "function",
        ("out",),
        (*SDPA, *MHA, *ATTNLIB),
        _scores_cases,
        _scores_expect,
        _scores_mistakes,
    ),
    Exercise(
        "03.1",
        "03_scaled_dot_product",
        "attention_scores",
        "Attention scores over batch and head dims",
        3,
        "easy",
        10,
        "function",
        ("out",),
        (*SDPA, *MHA, *ATTNLIB),
        _scores_batched_cases,
        _scores_batched_expect,
        _scores_batched_mistakes,
    ),
    Exercise(
        "03.2",
        "03_scaled_dot_product",
        "scaled_dot_product_attention",
        "Scaled dot-product attention",
        4,
        "medium",
        15,
        "function",
        ("out", "weights"),
        (*SDPA, *MHA, *ATTNLIB),
        _sdpa_cases,
        _sdpa_expect,
        _sdpa_mistakes,
        "weights",
    ),
    Exercise(
        "04.1",
        "04_masking",
        "causal_mask",
        "A causal (look-ahead) mask",
        2,
        "easy",
        10,
        "function",
        ("out",),
        ATTNLIB,
        _causal_cases,
        _causal_expect,
        _causal_mistakes,
    ),
    Exercise(
        "04.2",
        "04_masking",
        "padding_mask",
        "A key-padding mask from sequence lengths",
        2,
        "easy",
        10,
        "function",
        ("out",),
        ATTNLIB,
        _padding_cases,
        _padding_expect,
        _padding_mistakes,
    ),
    Exercise(
        "04.3",
        "04_masking",
        "masked_attention",
        "Masked attention, safe for fully masked rows",
        5,
        "medium",
        20,
        "function",
        ("out", "weights"),
        (*SDPA, *MHA, *ATTNLIB),
        _masked_cases,
        _masked_expect,
        _masked_mistakes,
        "weights",
    ),
    Exercise(
        "05.1",
        "05_self_attention",
        "SelfAttention",
        "Self-attention with learned projections (an nn.Module)",
        5,
        "medium",
        20,
        "module",
        ("out", "weights"),
        (*SDPA, *MHA, *ATTNLIB),
        _self_cases,
        _self_expect,
        _self_mistakes,
        "weights",
    ),
    Exercise(
        "06.1",
        "06_cross_attention",
        "CrossAttention",
        "Cross-attention: queries from one sequence, keys and values from another",
        5,
        "medium",
        20,
        "module",
        ("out", "weights"),
        (*SDPA, *MHA, *ATTNLIB),
        _cross_cases,
        _cross_expect,
        _cross_mistakes,
        "weights",
    ),
    Exercise(
        "07.1",
        "07_multi_head_attention",
        "split_heads",
        "Split the embedding into heads",
        2,
        "easy",
        10,
        "function",
        ("out",),
        ATTNLIB,
        _split_cases,
        _split_expect,
        _split_mistakes,
    ),
    Exercise(
        "07.2",
        "07_multi_head_attention",
        "merge_heads",
        "Merge the heads back",
        2,
        "easy",
        10,
        "function",
        ("out",),
        ATTNLIB,
        _merge_cases,
        _merge_expect,
        _merge_mistakes,
    ),
    Exercise(
        "07.3",
        "07_multi_head_attention",
        "MultiHeadAttention",
        "Multi-head attention that matches nn.MultiheadAttention",
        8,
        "hard",
        40,
        "module",
        ("out", "weights"),
        (*SDPA, *MHA, *ATTNLIB),
        _mha_cases,
        _mha_expect,
        _mha_mistakes,
        "weights",
    ),
)

# The arguments' names, for messages ("your code modified its input q in place")
ARG_NAMES = {
    "hard_lookup": ("query", "keys", "values"),
    "soft_lookup": ("query", "keys", "values"),
    "stable_softmax": ("x",),
    "scaled_scores": ("q", "k"),
    "attention_scores": ("q", "k"),
    "scaled_dot_product_attention": ("q", "k", "v"),
    "causal_mask": ("L", "S"),
    "padding_mask": ("lengths", "S"),
    "masked_attention": ("q", "k", "v", "mask"),
    "SelfAttention": ("x", "mask"),
    "CrossAttention": ("x", "context", "mask"),
    "split_heads": ("x", "num_heads"),
    "merge_heads": ("x",),
    "MultiHeadAttention": ("query", "key", "value", "attn_mask"),
}

BY_KEY = {ex.key: ex for ex in EXERCISES}
BY_ENTRY = {ex.entry: ex for ex in EXERCISES}


def exercises_of(set_name: str) -> list[Exercise]:
    return [ex for ex in EXERCISES if ex.set == set_name]


def set_of_path(name: str) -> str | None:
    """The exercise set a notebook's file name belongs to: ``02_softmax.ipynb`` -> ``02_softmax``."""
    stem = name[: -len(".ipynb")] if name.endswith(".ipynb") else name
    if stem in EXERCISE_SETS:
        return stem
    prefix = stem[:3]
    matches = [s for s in EXERCISE_SETS if s.startswith(prefix)] if len(prefix) == 3 and prefix[:2].isdigit() else []
    return matches[0] if len(matches) == 1 else None
