"""Checks of exercise set 13 (lesson 13, FlashAttention): the tiled forward that returns the logsumexp, and the
backward's D term. References are computed in float64 with PyTorch; each known mistake is computed on the same
inputs so that the grader can name it."""

from __future__ import annotations

import math

import numpy as np

from ..exercises import ATTNLIB, MHA, SDPA, SOFTMAX, Case, Exercise

SET = "13_flash_attention"
TITLE = "Lesson 13: FlashAttention's tiled forward with the logsumexp, and its backward"


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
    return cases


def _forward_expect(case):
    q, k, v, _, _ = case.args
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
    q, k, v, _, bk = case.args
    out, lse = _forward(q, k, v)
    m = _scores(q, k).amax(-1).numpy()
    raw_out, raw_lse = _forward(q, k, v, scale=1.0)
    return [
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
]
