"""Set 03 (lesson 3, softmax): a stable softmax with temperature, the online (streaming) softmax, overflow."""

from __future__ import annotations

import math

import numpy as np

from ..common import LIBRARY_ATTENTION, SOFTMAX, Case, Exercise, f32, naive_softmax, question, softmax

SET = "03_softmax"
TITLE = "Lesson 3: stable softmax, temperature and the online softmax"
FROM_SCRATCH = (*SOFTMAX, *LIBRARY_ATTENTION)


def _softmax_cases(rng):
    big = np.array(
        [[1000.0, 999.0, 0.0, -5.0], [-1000.0, -1001.0, -999.0, -1000.5], [88.0, 90.0, 89.5, -90.0]], dtype=np.float32
    )
    big = big + rng.uniform(-0.5, 0.5, big.shape).astype(np.float32)
    part_inf = np.array([[0.5, -np.inf, 1.5, 0.0], [-np.inf, 2.0, -np.inf, -1.0]], dtype=np.float32)
    return [
        Case("1-D x of 5 scores", (f32(5, rng=rng),)),
        Case("2-D x (3, 6), dim=-1", (f32(3, 6, rng=rng),), {"dim": -1}),
        Case("3-D x (2, 3, 4), dim=1", (f32(2, 3, 4, rng=rng),), {"dim": 1}),
        Case("2-D x (4, 5), dim=0", (f32(4, 5, rng=rng),), {"dim": 0}),
        Case("temperature=0.5 (sharper)", (f32(3, 5, rng=rng),), {"temperature": 0.5}, magnitude=10.0),
        Case("temperature=3.0 (flatter), 4-D x (2, 2, 3, 4)", (f32(2, 2, 3, 4, rng=rng),), {"temperature": 3.0}),
        Case("large logits (+-1000)", (big,), magnitude=1001.0),
        Case("some entries -inf (blocked)", (part_inf,)),
    ]


def _softmax_expect(case):
    (x,) = case.args
    return {
        "out": softmax(np.asarray(x, np.float64) / case.kwargs.get("temperature", 1.0), axis=case.kwargs.get("dim", -1))
    }


def _softmax_mistakes(case):
    (x,) = case.args
    dim = case.kwargs.get("dim", -1)
    T = case.kwargs.get("temperature", 1.0)
    x64 = np.asarray(x, np.float64)
    found = []
    if T != 1.0:
        found += [
            (
                "the logits are multiplied by the temperature; divide x by it (T < 1 sharpens, T > 1 flattens)",
                {"out": softmax(x64 * T, dim)},
            ),
            ("the temperature is ignored: compute softmax(x / temperature)", {"out": softmax(x64, dim)}),
        ]
    if dim not in (-1, x.ndim - 1):
        found.append(
            (
                f"the softmax is taken over the last axis; this check asked for dim={dim}: "
                "use it for the max and the sum",
                {"out": softmax(x64 / T, -1)},
            )
        )
    for other in range(x.ndim):
        if other not in (dim, dim + x.ndim):
            found.append(
                (
                    f"the softmax is taken over dim={other} instead of dim={dim}: "
                    "pass dim to max and sum (keepdim=True)",
                    {"out": softmax(x64 / T, other)},
                )
            )
    z = x64 / T
    with np.errstate(all="ignore"):
        top = np.max(z[np.isfinite(z)]) if np.isfinite(z).any() else 0.0
        e32 = np.exp((z - top).astype(np.float32)).astype(np.float64)  # float32, as the learner's tensors
        found.append(
            (
                "one maximum over the whole tensor is subtracted: a row far below it underflows exp() to 0 in every "
                "entry and gives 0/0; subtract each row's own maximum, amax(dim=dim, keepdim=True)",
                {"out": e32 / e32.sum(axis=dim, keepdims=True)},
            )
        )
        m = np.max(z, axis=dim, keepdims=True)
        e = np.exp(z - np.where(np.isfinite(m), m, 0.0))
        found.append(
            (
                "the sum runs over the whole tensor (e.sum() without dim): every entry is divided by the sum of ALL "
                "entries; sum along dim with keepdim=True",
                {"out": e / e.sum()},
            )
        )
    found.append(
        (
            "NaN or inf for large logits: subtract the maximum along dim (keepdim=True) before exp",
            {"out": naive_softmax(x64 / T, dim)},
        )
    )
    with np.errstate(all="ignore"):
        found.append(
            (
                "the result is exp(x) without dividing by the sum along dim",
                {"out": np.exp(x64 / T - np.max(x64 / T, axis=dim, keepdims=True))},
            )
        )
        m = np.max(x64 / T, axis=dim, keepdims=True)
        found.append(
            (
                "the maximum is subtracted in the numerator only: exp(x - m) / sum(exp(x)); subtract it in both (it "
                "cancels only when it is in both)",
                {"out": np.exp(x64 / T - m) / np.exp(x64 / T).sum(axis=dim, keepdims=True)},
            )
        )
    return found


# ----------------------------------------------------------------------------------------------------------
# online softmax


def _update_ref(m, l, chunk, *, rescale="ok", shift=True):
    m, l, chunk = (np.asarray(a, np.float64) for a in (m, l, chunk))
    with np.errstate(all="ignore"):
        m_new = np.maximum(m, chunk.max(axis=-1))
        safe = np.where(np.isfinite(m_new), m_new, 0.0)
        if rescale == "ok":
            factor = np.where(np.isfinite(m_new), np.exp(m - safe), 0.0)
        elif rescale == "none":
            factor = np.ones_like(m)
        else:  # inverted
            factor = np.where(np.isfinite(m_new), np.exp(safe - m), 0.0)
        if shift:
            terms = np.exp(chunk - safe[..., None]).sum(axis=-1)
        else:
            terms = np.exp(chunk).sum(axis=-1)
        return {"m": m_new, "l": l * factor + terms}


def _stream_state(x, block):
    m = np.full(x.shape[:-1], -np.inf)
    l = np.zeros(x.shape[:-1])
    for j in range(0, x.shape[-1], block):
        st = _update_ref(m, l, x[..., j : j + block])
        m, l = st["m"], st["l"]
    return m, l


def _update_cases(rng):
    R = 3
    first = f32(R, 4, rng=rng)
    x = f32(R, 9, rng=rng)
    m1, l1 = _stream_state(x[:, :5], 5)
    m1, l1 = m1.astype(np.float32), l1.astype(np.float32)
    rising = (f32(R, 4, rng=rng) + 3.0).astype(np.float32)
    masked = f32(R, 4, rng=rng)
    masked[:, 1] = -np.inf
    masked[0] = -np.inf
    big = (f32(2, 5, rng=rng) * 3 + 1000.0).astype(np.float32)
    return [
        Case("the first chunk: state (-inf, 0)", (np.full(R, -np.inf, np.float32), np.zeros(R, np.float32), first)),
        Case("a later chunk (the max may or may not rise)", (m1, l1, x[:, 5:].copy())),
        Case("a chunk whose scores are all above the running max", (m1, l1, rising), magnitude=10.0),
        Case("a chunk with -inf (masked) scores; row 0 all -inf", (m1, l1, masked)),
        Case(
            "every score so far -inf: state (-inf, 0) and an all -inf chunk",
            (np.full(2, -np.inf, np.float32), np.zeros(2, np.float32), np.full((2, 3), -np.inf, np.float32)),
        ),
        Case(
            "large scores (~1000) after a state with m = 995",
            (np.full(2, 995.0, np.float32), np.full(2, 2.5, np.float32), big),
            magnitude=1010.0,
        ),
    ]


def _update_expect(case):
    return _update_ref(*case.args)


def _update_mistakes(case):
    m, l, chunk = case.args
    found = [
        (
            "the old sum is not rescaled: when the max rises from m to m', every term in l was exp(s - m), so "
            "multiply l by exp(m - m') before adding the chunk's terms",
            _update_ref(m, l, chunk, rescale="none"),
        ),
        (
            "the old sum is rescaled by exp(m' - m); it must shrink when the max rises: multiply by exp(m - m')",
            _update_ref(m, l, chunk, rescale="inverted"),
        ),
        (
            "the chunk's terms are exp(s) without subtracting the new max m': they overflow for large scores and do "
            "not match l's scale",
            _update_ref(m, l, chunk, shift=False),
        ),
    ]
    with np.errstate(all="ignore"):
        m_new = np.maximum(np.asarray(m, np.float64), np.asarray(chunk, np.float64).max(axis=-1))
        nan = dict(_update_expect(case))
        nan["l"] = np.where(np.isfinite(m_new), nan["l"], np.nan)
    if not np.isfinite(m_new).all():
        found.insert(
            0,
            (
                "NaN while every score so far is -inf: exp(-inf - (-inf)) is NaN; when the new max is -inf keep the "
                "state (-inf, 0) (shift by 0 instead of by -inf)",
                nan,
            ),
        )
    found.append(
        (
            "the running max is not updated: m' = max(m, max of the chunk)",
            {"m": np.asarray(m, np.float64)},
        )
    )
    return found


def _online_cases(rng):
    masked = f32(3, 7, rng=rng)
    masked[1, :] = -np.inf
    masked[2, 2:5] = -np.inf
    big = (f32(2, 10, rng=rng) * 4 + 1000.0).astype(np.float32)
    big[1] -= 2000.0
    return [
        Case("x (2, 8), blocks of 4", (f32(2, 8, rng=rng), 4)),
        Case("x (3, 10), blocks of 3 (the last block is shorter)", (f32(3, 10, rng=rng), 3)),
        Case("x (4, 5), a block larger than the row", (f32(4, 5, rng=rng), 8)),
        Case("x (2, 3, 6): leading dims, blocks of 1", (f32(2, 3, 6, rng=rng), 1)),
        Case("-inf entries; row 1 all -inf (gives zeros)", (masked, 2)),
        Case("large scores (+1000 and -1000), blocks of 4", (big, 4), magnitude=1020.0),
    ]


def _online_expect(case):
    x, _ = case.args
    return {"out": softmax(np.asarray(x, np.float64), -1)}


def _online_mistakes(case):
    x, block = case.args
    x64 = np.asarray(x, np.float64)
    found = []
    m = np.full(x.shape[:-1], -np.inf)
    l = np.zeros(x.shape[:-1])
    for j in range(0, x.shape[-1], block):
        st = _update_ref(m, l, x64[..., j : j + block], rescale="none")
        m, l = st["m"], st["l"]
    with np.errstate(all="ignore"):
        safe = np.where(np.isfinite(m), m, 0.0)
        e = np.exp(x64 - safe[..., None])
        found.append(
            (
                "the running sum is not rescaled when the max rises (multiply l by exp(m - m') in every update)",
                {"out": np.where(l[..., None] > 0, e / np.where(l > 0, l, 1.0)[..., None], 0.0)},
            )
        )
    n = x.shape[-1]
    if n % block:
        full = n - n % block
        m2, l2 = (
            _stream_state(x64[..., :full], block) if full else (np.full(x.shape[:-1], -np.inf), np.zeros(x.shape[:-1]))
        )
        with np.errstate(all="ignore"):
            safe = np.where(np.isfinite(m2), m2, 0.0)
            found.append(
                (
                    f"the last, shorter block (n={n} is not a multiple of block={block}) is left out of the max and "
                    "the sum: loop with range(0, n, block) and slice x[..., j:j + block]",
                    {"out": np.exp(x64 - safe[..., None]) / np.where(l2 > 0, l2, 1.0)[..., None]},
                )
            )
    with np.errstate(all="ignore"):
        if np.isneginf(x64).all(axis=-1).any():
            ref = softmax(x64, -1)
            dead = np.isneginf(x64).all(axis=-1)
            found.insert(
                0,
                (
                    "NaN in a row whose scores are all -inf: such a row must give zeros (its sum l is 0)",
                    {"out": np.where(dead[..., None], np.nan, ref)},
                ),
            )
    return found


# Question 3.4: where a naive float16 softmax's DENOMINATOR overflows, although no single exp(x) does. Its key is
# computed by the code that states the question (tests check the key answers it: the sum is finite at the key
# and inf at the next float16).
F16_ROW = 64  # the row's length: 64 equal scores x


def f16_row_sum_is_finite(x: float, n: int = F16_ROW) -> bool:
    """The question's condition: is ``torch.exp(torch.full((n,), x, dtype=torch.float16)).sum()`` finite?"""
    import torch

    return bool(torch.isfinite(torch.exp(torch.full((n,), float(x), dtype=torch.float16)).sum()))


def f16_row_sum_limit(n: int = F16_ROW) -> float:
    """The largest float16 x for which the float16 sum of n copies of exp(x) is finite (walks the float16 grid
    from ln(65504 / n) with np.nextafter)."""
    x = np.float16(math.log(float(np.finfo(np.float16).max) / n))
    up, down = np.float16(np.inf), np.float16(-np.inf)
    while not f16_row_sum_is_finite(float(x), n):
        x = np.nextafter(x, down)
    while f16_row_sum_is_finite(float(np.nextafter(x, up)), n):
        x = np.nextafter(x, up)
    return float(x)


def _f16_question():
    key = f16_row_sum_limit()
    f16max = float(np.finfo(np.float16).max)
    real = math.log(f16max / F16_ROW)
    explain = (
        "The sum overflows once n·exp(x) exceeds float16's largest value (torch.finfo(torch.float16).max), so the "
        "real-number threshold is ln(max / n); x itself is a float16, so the answer is the largest float16 at or "
        "below that threshold for which the sum still rounds to a finite value. Compute it: start from "
        "torch.tensor(math.log(max / n), dtype=torch.float16) and step with torch.nextafter (or np.nextafter on "
        "np.float16) while the sum is inf, then return float(x)."
    )
    wrong = {
        math.log(f16max): "That is where ONE exp(x) overflows (ln of the largest float16); here 64 of them are "
        "added, and the sum overflows much earlier.",
        float(np.float16(math.log(f16max))): "That is where one exp(x) overflows; the sum of 64 overflows earlier.",
        math.log(float(np.finfo(np.float32).max) / F16_ROW): "That is float32's threshold.",
        f16max / F16_ROW: "That is the largest value each exp(x) may take, not x.",
    }
    if not math.isclose(real, key, rel_tol=1e-4):
        wrong[real] = (
            "That is the real-number threshold ln(max / 64); x must be a float16: check which float16 values "
            "keep the sum finite, with torch.nextafter, and return the largest one exactly."
        )
    return question(key, explain, wrong)


_f16 = _f16_question()

EXERCISES = [
    Exercise(
        key="03.1",
        set=SET,
        entry="stable_softmax",
        title="A numerically stable softmax with temperature, from scratch",
        points=4,
        difficulty="medium",
        minutes=15,
        forbidden=FROM_SCRATCH,
        cases=_softmax_cases,
        expect=_softmax_expect,
        mistakes=_softmax_mistakes,
        arg_names=("x",),
    ),
    Exercise(
        key="03.2",
        set=SET,
        entry="online_softmax_update",
        title="One step of the online softmax: fold a chunk into the running max and sum",
        points=4,
        difficulty="medium",
        minutes=20,
        returns=("m", "l"),
        forbidden=FROM_SCRATCH,
        cases=_update_cases,
        expect=_update_expect,
        mistakes=_update_mistakes,
        arg_names=("m", "l", "chunk"),
    ),
    Exercise(
        key="03.3",
        set=SET,
        entry="online_softmax",
        title="The online softmax of a row read block by block",
        points=3,
        difficulty="medium",
        minutes=15,
        forbidden=FROM_SCRATCH,
        cases=_online_cases,
        expect=_online_expect,
        mistakes=_online_mistakes,
        arg_names=("x", "block"),
    ),
    Exercise(
        key="03.4",
        set=SET,
        entry="answer_float16_overflow",
        title="Question: where a float16 softmax's denominator overflows",
        points=1,
        difficulty="easy",
        minutes=5,
        cases=_f16[0],
        expect=_f16[1],
        mistakes=_f16[2],
        style="question",
    ),
]
