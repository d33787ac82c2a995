"""Set 03 (lesson 3, softmax): a stable log-softmax with temperature, the online (streaming) softmax, overflow."""

from __future__ import annotations

import math

import numpy as np

from ..common import LIBRARY_ATTENTION, LOGSUMEXP, SOFTMAX, Case, Exercise, f32, question, softmax

SET = "03_softmax"
TITLE = "Lesson 3: stable softmax, temperature and the online softmax"
FROM_SCRATCH = (*SOFTMAX, *LIBRARY_ATTENTION)


def _log_softmax_cases(rng):
    big = np.array(
        [[1000.0, 999.0, 0.0, -5.0], [-1000.0, -1001.0, -999.0, -1000.5], [88.0, 90.0, 89.5, -90.0]], dtype=np.float32
    )
    big = big + rng.uniform(-0.5, 0.5, big.shape).astype(np.float32)
    # at temperature 3: row 0 stays below exp's overflow after the division but not after subtracting max(x);
    # row 1 overflows without any shift
    warm = np.array([[200.0, 198.0, 150.0, 0.0], [300.0, 290.0, -60.0, -90.0]], dtype=np.float32)
    warm = warm + rng.uniform(-0.5, 0.5, warm.shape).astype(np.float32)
    part_inf = np.array(
        [[0.5, -np.inf, 1.5, 0.0], [-np.inf, 2.0, -np.inf, -1.0], [-np.inf, -np.inf, -np.inf, -np.inf]],
        dtype=np.float32,
    )
    return [
        Case("1-D x of 5 scores", (f32(5, rng=rng),)),
        Case("2-D x (3, 6), dim=-1", (f32(3, 6, rng=rng),), {"dim": -1}),
        Case("3-D x (2, 3, 4), dim=1", (f32(2, 3, 4, rng=rng),), {"dim": 1}),
        Case("2-D x (4, 5), dim=0", (f32(4, 5, rng=rng),), {"dim": 0}),
        Case("temperature=0.5 (sharper)", (f32(3, 5, rng=rng),), {"temperature": 0.5}, magnitude=10.0),
        Case("temperature=3.0 (flatter), 4-D x (2, 2, 3, 4)", (f32(2, 2, 3, 4, rng=rng),), {"temperature": 3.0}),
        Case("large logits (+-1000)", (big,)),
        Case("large logits (up to 300) at temperature=3.0", (warm,), {"temperature": 3.0}),
        Case("-inf entries; row 2 all -inf (gives all -inf)", (part_inf,)),
    ]


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log-softmax in float64; -inf entries give -inf, and an all -inf row gives -inf everywhere (the log of
    the zeros a safe softmax gives there)."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    s = x - np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        total = np.exp(s).sum(axis=axis, keepdims=True)
        return np.where(total > 0, s - np.log(np.where(total > 0, total, 1.0)), -np.inf)


def _log_softmax_expect(case):
    (x,) = case.args
    T = case.kwargs.get("temperature", 1.0)
    return {"out": log_softmax(np.asarray(x, np.float64) / T, axis=case.kwargs.get("dim", -1))}


def _lsm32(x, dim, T, *, shift="row", guard=True, log_of_softmax=False):
    """A learner's float32 log-softmax with the given shift (``"row"``: each row's max; ``"global"``: one max over
    the tensor; ``"none"``; ``"x"``: the max of x before the division by T), with or without the guard that gives
    -inf for a row whose sum is 0 (the task's all -inf row)."""
    with np.errstate(all="ignore"):
        x32 = np.asarray(x, np.float32)
        z = x32 / np.float32(T)
        if shift == "row":
            m = np.max(z, axis=dim, keepdims=True)
        elif shift == "x":
            m = np.max(x32, axis=dim, keepdims=True)
        elif shift == "global":
            m = np.max(z)
        else:
            m = np.float32(0.0)
        m = np.where(np.isfinite(m), m, np.float32(0.0)).astype(np.float32)
        s = z - m
        e = np.exp(s)
        total = e.sum(axis=dim, keepdims=True)
        if log_of_softmax:
            out = np.log(e / total)
        else:
            out = s - np.log(total)
        if guard:
            out = np.where(total > 0, out, np.float32(-np.inf))
        return out.astype(np.float64)


def _log_softmax_mistakes(case):
    (x,) = case.args
    dim = case.kwargs.get("dim", -1)
    T = case.kwargs.get("temperature", 1.0)
    x64 = np.asarray(x, np.float64)
    z = x64 / T
    found = []
    if T != 1.0:
        found += [
            (
                "the logits are multiplied by the temperature; divide x by it (T < 1 sharpens, T > 1 flattens)",
                {"out": log_softmax(x64 * T, dim)},
            ),
            ("the temperature is ignored: compute the log-softmax of x / temperature", {"out": log_softmax(x64, dim)}),
        ]
    if dim not in (-1, x.ndim - 1):
        found.append(
            (
                f"the log-softmax is taken over the last axis; this check asked for dim={dim}: "
                "use it for the max and the sum",
                {"out": log_softmax(z, -1)},
            )
        )
    for other in range(x.ndim):
        if other not in (dim, dim + x.ndim):
            found.append(
                (
                    f"the log-softmax is taken over dim={other} instead of dim={dim}: "
                    "pass dim to the max and the sum (keepdim=True)",
                    {"out": log_softmax(z, other)},
                )
            )
    no_max = (
        "inf or -inf for large logits: exp() overflows to inf (or underflows to 0) before the log; subtract the "
        "maximum along dim (keepdim=True) before exp"
    )
    global_max = (
        "one maximum over the whole tensor is subtracted: a row far below it underflows exp() to 0 in every "
        "entry and its log is -inf; subtract each row's own maximum, amax(dim=dim, keepdim=True)"
    )
    x_max = (
        "the maximum of x is subtracted from x / temperature: at a temperature other than 1 that is not the "
        "maximum of what goes into exp(), which then overflows or underflows for large logits; take the maximum "
        "after dividing"
    )
    for guard in (True, False):
        found += [
            (no_max, {"out": _lsm32(x, dim, T, shift="none", guard=guard)}),
            (global_max, {"out": _lsm32(x, dim, T, shift="global", guard=guard)}),
        ]
        if T != 1.0:
            found.append((x_max, {"out": _lsm32(x, dim, T, shift="x", guard=guard)}))
    found.append(
        (
            "-inf where the log-softmax is finite (e.g. -1000): the log of a softmax computed first loses every "
            "probability that underflows to 0; subtract the log of the sum from the shifted logits instead",
            {"out": _lsm32(x, dim, T, log_of_softmax=True)},
        )
    )
    with np.errstate(all="ignore"):
        m = np.max(z, axis=dim, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        s = z - m
        e = np.exp(s)
        found += [
            (
                "the sum runs over the whole tensor (exp(...).sum() without dim): every entry is normalised by the "
                "sum of ALL entries; sum along dim with keepdim=True",
                {"out": np.where(np.isneginf(s), -np.inf, s - np.log(e.sum()))},
            ),
            (
                "the result is x - max(x) along dim: the log of the sum of the exponentials is not subtracted",
                {"out": s},
            ),
            (
                "the result is off by each row's maximum: the maximum taken out inside exp() must also come out of "
                "x, or be added back to the log of the sum",
                {"out": log_softmax(z, dim) + m},
            ),
        ]
        if np.isneginf(z).all(axis=dim).any():
            dead = np.isneginf(z).all(axis=dim, keepdims=True)
            found.insert(
                0,
                (
                    "NaN in a row whose entries are all -inf: its sum of exponentials is 0 and -inf - log(0) is NaN; "
                    "the task asks for -inf in every entry of such a row",
                    {"out": np.where(dead, np.nan, log_softmax(z, dim))},
                ),
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
        entry="stable_log_softmax",
        title="A numerically stable log-softmax with temperature, from scratch",
        points=4,
        difficulty="medium",
        minutes=20,
        forbidden=(*FROM_SCRATCH, *LOGSUMEXP),
        cases=_log_softmax_cases,
        expect=_log_softmax_expect,
        mistakes=_log_softmax_mistakes,
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
