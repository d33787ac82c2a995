"""Checks of exercise set 13 (lesson 13, FlashAttention): the tiled forward that returns the logsumexp, the
backward's D term, and a bug to find in a Triton forward kernel (run by the learner's code under Triton's
interpreter, ``TRITON_INTERPRET=1``, at tiny sizes). References are computed in float64 with PyTorch; each known
mistake is computed on the same inputs so that the grader can name it."""

from __future__ import annotations

import math

import numpy as np

from ..common import (
    NO_FULL_MATRIX_BUDGET,
    NO_FULL_MATRIX_LENGTH,
    full_attention_f64,
    is_no_full_matrix,
    memory_raises,
    no_full_matrix_case,
    score_magnitude,
)
from ..exercises import ATTNLIB, MHA, SDPA, SOFTMAX, Case, Exercise

SET = "13_flash_attention"
TITLE = "Lesson 13: FlashAttention's tiled forward with the logsumexp, its backward, and a Triton kernel's bug"


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
# 13.1: tiled_attention_forward(q, k, v, block_q, block_k) -> (out, lse)


def _forward_cases(rng):
    cases = []
    for B, H, L, S, E, Ev, bq, bk in (
        (1, 1, 8, 8, 4, 4, 4, 4),
        (2, 3, 10, 14, 8, 5, 4, 6),  # blocks that do not divide the lengths
        (1, 2, 16, 5, 4, 4, 16, 2),  # one query block; L > S
        (2, 1, 7, 33, 16, 8, 3, 8),
    ):
        cases.append(
            Case(
                f"q ({B}, {H}, {L}, {E}), k ({B}, {H}, {S}, {E}), blocks {bq} x {bk}",
                (_f(B, H, L, E, rng=rng), _f(B, H, S, E, rng=rng), _f(B, H, S, Ev, rng=rng), bq, bk),
            )
        )
    cases.append(  # the max moves from block to block by a lot: forgetting to rescale is visible
        Case(
            "large, growing scores (the running max changes from block to block), blocks 2 x 3",
            (
                _f(1, 1, 4, 8, rng=rng, scale=3.0),
                (_f(1, 1, 12, 8, rng=rng, scale=3.0) * np.linspace(0.2, 2.0, 12)[:, None]).astype(np.float32),
                _f(1, 1, 12, 3, rng=rng),
                2,
                3,
            ),
        )
    )
    # every score of the first query is about -200: a running max that starts at 0 instead of -inf underflows
    # exp(s - 0) to 0 for that row and gives 0/0
    u = np.zeros(8)
    u[int(rng.integers(8))] = 1.0  # a direction every key shares (6 standard deviations along it)
    k = (_f(1, 2, 9, 8, rng=rng) + 6.0 * u).astype(np.float32)
    q = _f(1, 2, 3, 8, rng=rng)
    along = k.astype(np.float64) @ u  # (1, 2, 9), all positive
    q[..., 0, :] = (-200.0 * math.sqrt(8) / along.min(axis=-1))[..., None] * u  # largest score of query 0: -200
    cases.append(
        Case(
            "a query whose scores are all about -200 or lower, blocks 2 x 4",
            (q, k, _f(1, 2, 9, 4, rng=rng), 2, 4),
            magnitude=score_magnitude(q, k),
        )
    )
    n = NO_FULL_MATRIX_LENGTH
    big = (_f(1, 1, n, 8, rng=rng), _f(1, 1, n, 8, rng=rng), _f(1, 1, n, 4, rng=rng), 256, 512)
    cases.append(no_full_matrix_case(f"L=S={n}, blocks 256 x 512", big, magnitude=score_magnitude(big[0], big[1])))
    return cases


def _forward_raises(case):
    return memory_raises(case.args[0].shape[-2], case.args[1].shape[-2])


def _forward_expect(case):
    q, k, v, _, _ = case.args
    if is_no_full_matrix(case):
        return full_attention_f64(q, k, v)
    out, lse = _forward(q, k, v)
    return {"out": out, "lse": lse}


def _no_rescale(q, k, v, block_k):
    """The online softmax without the factor exp(m_old - m_new) on what was accumulated."""
    import torch

    s = _scores(q, k)
    v = _t(v)
    m = torch.full(s.shape[:-1], -math.inf, dtype=torch.float64)
    l = torch.zeros(s.shape[:-1], dtype=torch.float64)
    acc = torch.zeros(*s.shape[:-1], v.shape[-1], dtype=torch.float64)
    for j in range(0, s.shape[-1], block_k):
        sj = s[..., j : j + block_k]
        m = torch.maximum(m, sj.amax(-1))
        p = torch.exp(sj - m[..., None])
        l = l + p.sum(-1)
        acc = acc + p @ v[..., j : j + block_k, :]
    return {"out": (acc / l[..., None]).numpy(), "lse": (m + torch.log(l)).numpy()}


def _forward_mistakes(case):
    if is_no_full_matrix(case):
        return []
    q, k, v, _, bk = case.args
    out, lse = _forward(q, k, v)
    m = _scores(q, k).amax(-1).numpy()
    raw_out, raw_lse = _forward(q, k, v, scale=1.0)
    found = []
    row_max = m
    dead = row_max < -104.0  # float32's exp(s) underflows to 0 below about -103.3 (subnormals included)
    if dead.any():
        found.append(
            (
                "the running max starts at 0 instead of -inf: for a query whose scores are all very negative, "
                "exp(s - 0) underflows to 0, so l = 0 and the output is 0/0; start m at -inf (torch.full(..., "
                "-math.inf)) so the first block sets it",
                {
                    "out": np.where(dead[..., None], np.nan, out),
                    "lse": np.where(dead, -np.inf, lse),
                },
            )
        )
    return found + [
        (
            "lse is log(l) without the running max: the sum l was taken of exp(s - m), so lse = m + log(l)",
            {"out": out, "lse": lse - m},
        ),
        (
            "lse is in base 2 (log2, or the exp2 trick without converting back); return the natural log: "
            "multiply a base-2 logsumexp by ln 2",
            {"out": out, "lse": lse / math.log(2.0)},
        ),
        (
            "when a key block raises the running max m, what was accumulated (l and the output) must be "
            "multiplied by exp(m_old - m_new) before the block's terms are added",
            _no_rescale(q, k, v, bk),
        ),
        (
            "the scores are not scaled: multiply q k^T by 1/sqrt(d_k) (d_k = q.shape[-1]) before the softmax",
            {"out": raw_out, "lse": raw_lse},
        ),
    ]


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
        (1, 3, 5, 48, 4, 6),  # S a multiple of the block; E and Ev below BLOCK_D = 16
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


def _kernel_np(q, k, v, block_n, *, rescale_l=True, rescale_acc=True, mask_tail=True, log2e=True, to_natural=True):
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
            s = np.where(np.arange(j, j + block_n) < S, s, -np.inf)
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
        entry="tiled_attention_forward",
        title="FlashAttention-2's tiled forward, returning the output and the logsumexp",
        points=6,
        difficulty="hard",
        minutes=30,
        kind="function",
        returns=("out", "lse"),
        forbidden=FORBIDDEN,
        cases=_forward_cases,
        expect=_forward_expect,
        mistakes=_forward_mistakes,
        raises=_forward_raises,
        memory_limit_bytes=NO_FULL_MATRIX_BUDGET,
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
        title="Find the bug: a Triton forward kernel that is right for one key block only",
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
