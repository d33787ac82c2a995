"""Checks of exercise set 13 (lesson 13, FlashAttention): merging attention computed over key splits through
their logsumexps (flash-decoding's split-K), the backward's D term, and a bug to find in a Triton forward kernel
(run by the learner's code under Triton's interpreter, ``TRITON_INTERPRET=1``, at tiny sizes). References are
computed in float64; each known mistake is computed on the same inputs so that the grader can name it."""

from __future__ import annotations

import math

import numpy as np

from ..common import score_magnitude
from ..diagnose import close
from ..exercises import ATTNLIB, MHA, SDPA, SOFTMAX, Case, Exercise

SET = "13_flash_attention"
TITLE = "Lesson 13: merging attention over key splits with the logsumexp, the backward, and a Triton kernel's bug"


def _f(*shape, rng, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _t(x):
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float64))


def _scores(q, k, scale=None):
    q, k = _t(q), _t(k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return scale * q @ k.transpose(-2, -1)


def _forward(q, k, v, scale=None):
    """(out, lse) in float64: softmax(s) v and the natural-log logsumexp of s = scale q k^T."""
    import torch

    s = _scores(q, k, scale)
    return (torch.softmax(s, dim=-1) @ _t(v)).numpy(), torch.logsumexp(s, dim=-1).numpy()


# --------------------------------------------------------------------------------------------------------------
# 13.1: merge_attention_splits(outs, lses) -> (out, lse), the merge of flash-decoding's key splits


def _split_attention(q, k, v, visible, bounds):
    """Each key split's (out, lse) in float64, as a kernel that saw only that split returns them: a query that
    sees no key of a split gets out 0 and lse -inf. ``visible`` (..., S) marks the keys the queries may see."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    s = np.where(visible[..., None, :], s, -np.inf)
    outs, lses = [], []
    with np.errstate(all="ignore"):
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            sj = s[..., a:b]
            m = sj.max(axis=-1)
            shift = np.where(np.isfinite(m), m, 0.0)
            p = np.exp(sj - shift[..., None])
            l = p.sum(axis=-1)
            safe_l = np.where(l > 0, l, 1.0)
            outs.append(np.where(l[..., None] > 0, p @ v[..., a:b, :] / safe_l[..., None], 0.0))
            lses.append(np.where(l > 0, shift + np.log(safe_l), -np.inf))
    return np.stack(outs), np.stack(lses)


def _merge_cases(rng):
    cases = []
    for B, H, L, S, E, Ev, bounds, big in (
        (1, 1, 4, 12, 8, 4, (0, 4, 8, 12), 1.0),
        (2, 3, 5, 17, 8, 6, (0, 3, 10, 11, 17), 1.0),  # splits of unequal length, one of a single key
        (2, 4, 1, 40, 16, 8, (0, 8, 16, 24, 32, 40), 1.0),  # one query per sequence, as when decoding
        (1, 2, 6, 9, 4, 3, (0, 9), 1.0),  # one split: the merge gives it back unchanged
        (1, 2, 3, 12, 4, 5, (0, 5, 12), 4.0),  # large scores: the splits' lse differ by tens
    ):
        q, k = _f(B, H, L, E, rng=rng, scale=big), _f(B, H, S, E, rng=rng, scale=big)
        outs, lses = _split_attention(q, k, _f(B, H, S, Ev, rng=rng), np.ones((B, H, S), bool), bounds)
        cases.append(
            Case(
                f"{len(bounds) - 1} split(s) of S={S} keys, outs ({len(bounds) - 1}, {B}, {H}, {L}, {Ev})",
                (outs.astype(np.float32), lses.astype(np.float32)),
            )
        )
    # padding: the second sequence's last 7 keys are padding, so its last split sees no key (lse -inf, out 0)
    q, k, v = _f(2, 2, 3, 8, rng=rng), _f(2, 2, 15, 8, rng=rng), _f(2, 2, 15, 4, rng=rng)
    visible = np.ones((2, 2, 15), bool)
    visible[1, :, 8:] = False
    outs, lses = _split_attention(q, k, v, visible, (0, 4, 8, 15))
    cases.append(
        Case(
            "3 splits of S=15 keys; in the second sequence every key of the last split is padding (its lse -inf)",
            (outs.astype(np.float32), lses.astype(np.float32)),
        )
    )
    # rows at the edges of float32: in each (head, query) row the three splits' lse are ordinary (query 0), all
    # about -10000 (query 1), all about +800 (query 2), one of them -inf (query 3), all -inf (query 4: a query
    # that saw no key at all)
    lses = rng.uniform(-3.0, 3.0, size=(3, 1, 2, 5))
    lses[..., 1] -= 10_000.0
    lses[..., 2] += 800.0
    lses[int(rng.integers(3)), ..., 3] = -np.inf
    lses[..., 4] = -np.inf
    outs = _f(3, 1, 2, 5, 4, rng=rng)
    outs[np.isinf(lses)] = 0.0
    cases.append(
        Case(
            "rows whose splits' lse are ordinary, all about -10000, all about +800, one -inf, all -inf",
            (outs, lses.astype(np.float32)),
        )
    )
    return cases


def _merge_np(outs, lses, *, start=-np.inf, guard=True, shift=True, normalise=True, global_max=False, zero=True):
    """The merge in float64, a loop over the splits with a running max, and switches for its classic mistakes:
    ``start`` the running max's first value, ``guard`` the shift 0 for a row whose splits are all -inf,
    ``shift`` whether a max is subtracted at all, ``normalise`` the division by the weights' sum,
    ``global_max`` one max for the whole tensor; ``zero``: a row whose weights sum to 0 gives 0, not 0/0 (code
    that guards that division turns a mistake's NaN into 0)."""
    outs, lses = np.asarray(outs, np.float64), np.asarray(lses, np.float64)
    with np.errstate(all="ignore"):
        m = np.full(lses.shape[1:], lses.max() if global_max else start)
        for lse in lses:
            m = m if global_max else np.maximum(m, lse)
        ref = np.where(np.isfinite(m), m, 0.0) if guard else m
        ref = ref if shift else np.zeros_like(m)
        w = np.exp(lses - ref)  # (splits, ..., L)
        l = w.sum(axis=0)
        acc = (w[..., None] * outs).sum(axis=0)
        if not normalise:
            return {"out": acc}
        out = acc / l[..., None]
        if zero:
            out = np.where(l[..., None] == 0, 0.0, out)
        return {"out": out, "lse": ref + np.log(l)}


def _merge_expect(case):
    return _merge_np(*case.args)


def _merge_mistakes(case):
    outs, lses = case.args
    ref = _merge_expect(case)
    m = np.asarray(lses, np.float64).max(axis=0)
    shift = np.where(np.isfinite(m), m, 0.0)
    candidates = [
        (
            "the running max starts at 0 instead of -inf: for a row whose splits' lse are all very negative, "
            "exp(lse - 0) underflows to 0 for every split, so the weights sum to 0 and the output is 0/0",
            {"out": _merge_np(outs, lses, start=0.0, zero=False)["out"]},
        ),
        (
            "the max is taken over the whole tensor, not per (batch, head, query) row: in a row far below the "
            "largest lse anywhere every weight exp(lse - max) underflows to 0, and the output is 0/0",
            {"out": _merge_np(outs, lses, global_max=True, zero=False)["out"]},
        ),
        (
            "the weights are exp(lse) without the row's max subtracted: exp(800) overflows to inf and "
            "exp(-10000) underflows to 0, so such rows become inf/inf or 0/0",
            {"out": _merge_np(outs, lses, shift=False, zero=False)["out"]},
        ),
        (
            "a row whose every split has lse = -inf (a query that saw no key) gives NaN: its max is -inf too, "
            "and exp(-inf - (-inf)) is NaN; like a kernel's row with no visible key, its output must be 0 and "
            "its lse -inf",
            {"out": _merge_np(outs, lses, guard=False, zero=False)["out"]},
        ),
        (
            "the splits' outputs are averaged with equal weights, but each split's out was normalised by its own "
            "sum of exponentials: its share of the merged row is that sum over the row's total, which the lse give",
            {"out": np.asarray(outs, np.float64).mean(axis=0)},
        ),
        (
            "the weighted sum of the splits' outputs is not divided by the sum of the weights",
            _merge_np(outs, lses, normalise=False),
        ),
        (
            "lse is the largest of the splits' lse; the merged log-sum-exp also needs the log of the weights' sum",
            {"out": ref["out"], "lse": m},
        ),
        (
            "lse is the log of the weights' sum without the max the weights were taken relative to: add it back",
            {"out": ref["out"], "lse": ref["lse"] - shift},
        ),
    ]
    # the same three mistakes in code that guards the division by the weights' sum: 0 instead of 0/0
    candidates[3:3] = [
        (hint, {"out": _merge_np(outs, lses, zero=True, **switch)["out"]})
        for (hint, _), switch in zip(
            candidates[:3], ({"start": 0.0}, {"global_max": True}, {"shift": False}), strict=True
        )
    ]
    # only the mistakes this check can show (with one split, an equal-weight mean is right)
    return [(hint, wrong) for hint, wrong in candidates if not all(close(wrong[n], ref[n]) for n in wrong)]


# --------------------------------------------------------------------------------------------------------------
# 13.2: attention_backward(q, k, v, out, lse, dout) -> (dq, dk, dv)


def _backward_cases(rng):
    cases = []
    for B, H, L, S, E, Ev in ((1, 1, 4, 4, 4, 4), (2, 2, 6, 9, 8, 5), (1, 3, 12, 3, 4, 6)):
        q, k, v = _f(B, H, L, E, rng=rng), _f(B, H, S, E, rng=rng), _f(B, H, S, Ev, rng=rng)
        out, lse = _forward(q, k, v)
        cases.append(
            Case(
                f"q ({B}, {H}, {L}, {E}), k ({B}, {H}, {S}, {E}), v ({B}, {H}, {S}, {Ev})",
                (q, k, v, out.astype(np.float32), lse.astype(np.float32), _f(B, H, L, Ev, rng=rng)),
            )
        )
    return cases


def _grads(q, k, v, dout, *, D="right", scaled=True):
    """(dq, dk, dv) by the FlashAttention formulas in float64, with switches for the classic mistakes."""
    import torch

    tau = 1.0 / math.sqrt(q.shape[-1])
    q, k, v, dout = (_t(x) for x in (q, k, v, dout))
    p = torch.softmax(tau * q @ k.transpose(-2, -1), dim=-1)
    out = p @ v
    dp = dout @ v.transpose(-2, -1)
    if D == "right":
        d = (dout * out).sum(-1, keepdim=True)
    elif D == "none":
        d = torch.zeros_like(dp[..., :1])
    else:  # "rowsum dP"
        d = dp.sum(-1, keepdim=True)
    ds = p * (dp - d)
    factor = tau if scaled else 1.0
    return {
        "dq": (factor * ds @ k).numpy(),
        "dk": (factor * ds.transpose(-2, -1) @ q).numpy(),
        "dv": (p.transpose(-2, -1) @ dout).numpy(),
    }


def _backward_expect(case):
    q, k, v, _, _, dout = case.args
    return _grads(q, k, v, dout)


def _backward_mistakes(case):
    q, k, v, _, _, dout = case.args
    return [
        (
            "dS = P * dP is missing the softmax's normalisation: dS = P * (dP - D) with D_i = sum_j P_ij dP_ij, "
            "which equals dO_i . O_i (one dot product per query row)",
            _grads(q, k, v, dout, D="none"),
        ),
        (
            "D is the row sum of dP; it must be the row sum of P * dP, i.e. D_i = dO_i . O_i",
            _grads(q, k, v, dout, D="rowsum dP"),
        ),
        (
            "dq and dk miss the scale: the scores are scale * q k^T, so dQ = scale * dS K and dK = scale * dS^T Q",
            _grads(q, k, v, dout, scaled=False),
        ),
    ]


# --------------------------------------------------------------------------------------------------------------
# 13.3 (find the bug): fixed_flash_kernel_forward(q, k, v, block_m, block_n) -> (out, lse), a Triton kernel


def _kernel_cases(rng):
    cases = []
    for B, H, L, S, E, Ev in (
        (1, 1, 20, 40, 8, 8),  # 3 key blocks, the last one half full
        (2, 2, 17, 33, 16, 4),  # 2 query blocks, the last key block holds 1 key
        (1, 3, 5, 45, 4, 6),  # the last key block holds 13 keys; E and Ev below BLOCK_D = 16
    ):
        q, k, v = _f(B, H, L, E, rng=rng), _f(B, H, S, E, rng=rng), _f(B, H, S, Ev, rng=rng)
        k[..., -1, :] = 2.0 * q[..., -1, :]  # the last query's max rises in the last key block, on every seed
        cases.append(
            Case(
                f"q ({B}, {H}, {L}, {E}), k ({B}, {H}, {S}, {E}), v ({B}, {H}, {S}, {Ev}), blocks 16 x 16",
                (q, k, v, 16, 16),
                magnitude=score_magnitude(q, k),
            )
        )
    return cases


def _kernel_np(
    q, k, v, block_n, *, rescale_l=True, rescale_acc=True, mask_tail=True, past_end=0, log2e=True, to_natural=True
):
    """The kernel's loop in float64 (base 2, like the kernel), with switches for its classic mistakes."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    S = k.shape[-2]
    pad = -S % block_n
    kp = np.concatenate([k, np.zeros((*k.shape[:-2], pad, k.shape[-1]))], axis=-2)  # masked loads read 0
    vp = np.concatenate([v, np.zeros((*v.shape[:-2], pad, v.shape[-1]))], axis=-2)
    qk_scale = (math.log2(math.e) if log2e else 1.0) / math.sqrt(q.shape[-1])
    m = np.full(q.shape[:-1], -np.inf)
    l = np.zeros(q.shape[:-1])
    acc = np.zeros((*q.shape[:-1], v.shape[-1]))
    for j in range(0, S + pad, block_n):
        s = q @ np.swapaxes(kp[..., j : j + block_n, :], -1, -2) * qk_scale
        if mask_tail:
            s = np.where(np.arange(j, j + block_n) < S + past_end, s, -np.inf)
        m_new = np.maximum(m, s.max(axis=-1))
        alpha = np.exp2(m - m_new)
        p = np.exp2(s - m_new[..., None])
        l = (l * alpha if rescale_l else l) + p.sum(axis=-1)
        acc = (acc * alpha[..., None] if rescale_acc else acc) + p @ vp[..., j : j + block_n, :]
        m = m_new
    lse = m + np.log2(l)
    return {"out": acc / l[..., None], "lse": lse * math.log(2.0) if to_natural else lse}


def _kernel_expect(case):
    q, k, v, _, _ = case.args
    out, lse = _forward(q, k, v)
    return {"out": out, "lse": lse}


def _kernel_mistakes(case):
    q, k, v, _, bn = case.args
    found = [
        (
            "the running sum l_i is not rescaled: when a key block raises the max from m_i to m_new, l_i (a sum of "
            "exp2(s - m_i)) must be multiplied by alpha = exp2(m_i - m_new) before the block's sum is added, as acc is",
            _kernel_np(q, k, v, bn, rescale_l=False),
        ),
        (
            "the accumulator acc is not rescaled: multiply it by alpha = exp2(m_i - m_new) before adding p @ v, "
            "as l_i is",
            _kernel_np(q, k, v, bn, rescale_acc=False),
        ),
        (
            "neither l_i nor acc is rescaled when the max rises: both were accumulated under the old max; multiply "
            "both by alpha = exp2(m_i - m_new)",
            _kernel_np(q, k, v, bn, rescale_l=False, rescale_acc=False),
        ),
        (
            "the lse is left in base 2: the kernel's m_i + log2(l_i) is a base-2 logsumexp; multiply it by ln 2",
            _kernel_np(q, k, v, bn, to_natural=False),
        ),
        (
            "qk_scale lacks log2(e): exp2(scale * q.k) is exp(ln 2 * scale * q.k); the base-2 trick needs "
            "qk_scale = log2(e) / sqrt(E)",
            _kernel_np(q, k, v, bn, log2e=False),
        ),
    ]
    if k.shape[-2] % bn:
        found.append(
            (
                "one position past the end of the keys is treated as a key: the masked load reads it as zeros, so "
                "its score is 0 and it adds exp2(0 - m) to l_i",
                _kernel_np(q, k, v, bn, past_end=1),
            )
        )
        found.append(
            (
                f"the keys past the end (S={k.shape[-2]} is not a multiple of BLOCK_N={bn}) are not masked: the "
                "masked load reads them as 0, so each adds exp2(0 - m) to l_i; set their scores to -inf with "
                "tl.where(offs_n[None, :] < S, s, float('-inf'))",
                _kernel_np(q, k, v, bn, mask_tail=False),
            )
        )
    return found


NO_TRITON = (
    "Triton is not installed in this Python environment (it has Linux wheels only; on macOS there is none), so "
    "this kernel cannot run here and exercise 13.3 cannot be checked on this machine: grade it on Linux (the "
    "course's CI does), where `pip install triton` works"
)


def _kernel_raises(case):
    return [(r"No module named '?triton|name '(triton|tl)' is not defined", NO_TRITON)]


FORBIDDEN = (*SOFTMAX, *SDPA, *MHA, *ATTNLIB)

EXERCISES = [
    Exercise(
        key="13.1",
        set=SET,
        entry="merge_attention_splits",
        title="Merge the partial results of attention over key splits with their logsumexps",
        points=5,
        difficulty="hard",
        minutes=25,
        kind="function",
        returns=("out", "lse"),
        forbidden=FORBIDDEN,
        cases=_merge_cases,
        expect=_merge_expect,
        mistakes=_merge_mistakes,
        arg_names=("outs", "lses"),
    ),
    Exercise(
        key="13.2",
        set=SET,
        entry="attention_backward",
        title="The backward pass from the saved output and logsumexp, with the D term",
        points=5,
        difficulty="hard",
        minutes=25,
        kind="function",
        returns=("dq", "dk", "dv"),
        forbidden=FORBIDDEN,
        cases=_backward_cases,
        expect=_backward_expect,
        mistakes=_backward_mistakes,
    ),
    Exercise(
        key="13.3",
        set=SET,
        entry="fixed_flash_kernel_forward",
        title="Find the bug: a Triton forward kernel that is right for some key lengths only",
        points=4,
        difficulty="medium",
        minutes=20,
        kind="function",
        returns=("out", "lse"),
        forbidden=FORBIDDEN,
        cases=_kernel_cases,
        expect=_kernel_expect,
        mistakes=_kernel_mistakes,
        raises=_kernel_raises,
        arg_names=("q", "k", "v", "block_m", "block_n"),
        style="fix",
    ),
]
