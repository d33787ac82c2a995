r"""FlashAttention-2 in PyTorch: a tiled forward that saves the logsumexp, and a backward that recomputes.

Shapes follow (batch, heads, seq, dim): ``q`` is (..., L, E), ``k`` (..., S, E), ``v`` (..., S, Ev), with the
same leading dims (usually batch, heads). Only the causal mask is supported (no ``attn_mask``): query ``i`` may
see key ``j`` iff ``j <= i`` (``causal_alignment="top-left"``, SDPA's ``is_causal``) or ``j <= i + S - L``
(``"bottom-right"``, what decoding with a KV cache needs). Rows with no visible key give 0, like SDPA.

The forward pass walks over blocks of ``block_q`` queries and, for each, over blocks of ``block_k`` keys,
keeping per query row a running max ``m``, a running sum ``l`` and an unnormalised output ``acc`` (lesson 3's
online softmax, carried through the multiplication by V). It saves only the output ``O`` and the natural-log
logsumexp per query row,

.. math:: \mathrm{lse}_i = \log \sum_j e^{s_{ij}},\qquad s_{ij} = \mathrm{scale}\; q_i \cdot k_j,

shape (..., L). The backward pass never stores the (L, S) weights either: block by block it recomputes
:math:`P_{ij} = e^{s_{ij} - \mathrm{lse}_i}` and uses

.. math:: dV = P^\top dO,\quad dP = dO\, V^\top,\quad dS = P \circ (dP - D),\quad D_i = \textstyle\sum_j P_{ij}\,dP_{ij}
          = dO_i \cdot O_i,

so ``D`` (one number per query row) comes from ``dO`` and ``O`` alone, before any block is revisited.
Then :math:`dQ = \mathrm{scale}\; dS\, K` and :math:`dK = \mathrm{scale}\; dS^\top Q`.

Two implementations of the same algorithm:

* :func:`flash_attention_loops` — the algorithm as the math reads: natural-log ``exp``, out-of-place ops, plain
  autograd through it. For reading, and as a second oracle in the tests.
* :func:`flash_attention` / :class:`FlashAttention2` — the same loops made fast on the CPU, in
  :mod:`attnlib.blocked`, the core that lesson 12's :func:`attnlib.efficient.chunked_attention` runs too:
  :func:`~attnlib.blocked.forward_blocks` and :func:`~attnlib.blocked.backward_blocks` are these two loops with
  scores in base 2 (``exp2`` is cheaper than ``exp``), the scale and the running shift folded into the matmul,
  one reused score buffer exponentiated in place, causal blocks entirely in the future skipped, and one
  single-threaded worker per core on its own slice of the (batch, head) rows.

fp16 and bf16 inputs are computed (and accumulated) in fp32, and the backward uses the fp32 output, not the one
rounded to the input's dtype; the output has the input's dtype and the logsumexp is fp32 (fp64 for fp64 inputs).
Inputs are validated once, by :func:`attnlib.blocked.check_blocked_call` (the checks of every blocked front-end),
and never modified.
"""

from __future__ import annotations

import math

import torch

from .blocked import (
    blocked_attention,
    causal_offset,
    check_blocked_call,
    lse_from_stats,
    make_plan,
    refuse_double_backward,
    run_backward,
    run_forward,
    saved_for_backward,
)

__all__ = [
    "FlashAttention2",
    "flash_attention",
    "flash_attention_loops",
    "flash_backward_loops",
    "flash_matmuls_only",
]

ALIGNMENTS = ("top-left", "bottom-right")


def _check_inputs(q, k, v, is_causal, causal_alignment, scale, block_q, block_k) -> float:
    """The blocked front-ends' one validator, without a mask; returns the scale to use."""
    return check_blocked_call(q, k, v, None, is_causal, causal_alignment, scale, block_q, block_k, False)[3]


# --------------------------------------------------------------------------------------------------------------
# The algorithm as it reads (for the lesson, and a second oracle)
# --------------------------------------------------------------------------------------------------------------


def flash_attention_loops(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    return_lse: bool = False,
):
    """The FlashAttention-2 forward as plain loops over blocks; differentiable by ordinary autograd.

    Args:
        q: queries (batch, heads, L, E) (any leading dims). k: keys (batch, heads, S, E). v: values
            (batch, heads, S, Ev).
        is_causal, causal_alignment: causal mask, ``"top-left"`` (SDPA's) or ``"bottom-right"``.
        scale: multiplier of the scores, default 1/sqrt(E). block_q, block_k: tile sizes (any positive ints).
        return_lse: also return the natural-log logsumexp per query row, (batch, heads, L), fp32 (``-inf`` for a
            row with no visible key).

    Returns:
        output (batch, heads, L, Ev) in q's dtype, and the logsumexp if ``return_lse``.
    """
    scale = _check_inputs(q, k, v, is_causal, causal_alignment, scale, block_q, block_k)
    L, S = q.shape[-2], k.shape[-2]
    offset = causal_offset(is_causal, causal_alignment, L, S)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(compute), k.to(compute), v.to(compute)
    out_blocks, lse_blocks = [], []
    for i0 in range(0, L, block_q):
        qi = qf[..., i0 : i0 + block_q, :]
        rows = torch.arange(i0, i0 + qi.shape[-2], device=q.device)
        # The running max is kept of the dot products q.k, *before* the scale: exp(scale * (r - m)) has an
        # exponent <= 0 for any positive scale, where scale * r alone overflows for a scale like 1e38.
        m = torch.full(qi.shape[:-1], -math.inf, dtype=compute, device=q.device)  # running max of q.k
        l = torch.zeros_like(m)  # running sum of exp(scale * (r - m))
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=compute, device=q.device)  # sum of exp(...) v
        for j0 in range(0, S, block_k):
            kj, vj = kf[..., j0 : j0 + block_k, :], vf[..., j0 : j0 + block_k, :]
            r = qi @ kj.transpose(-2, -1)  # (..., block_q, block_k) dot products; the scores are scale * r
            if offset is not None:
                cols = torch.arange(j0, j0 + kj.shape[-2], device=q.device)
                r = r.masked_fill(cols[None, :] > rows[:, None] + offset, -math.inf)
            m_new = torch.maximum(m, r.amax(dim=-1))
            shift = torch.where(m_new == -math.inf, 0.0, m_new)  # nothing visible yet: exp(-inf - 0) = 0
            p = torch.exp(scale * (r - shift.unsqueeze(-1)))
            rescale = torch.exp(scale * (m - shift))  # how much the old terms shrink under the new max
            l = l * rescale + p.sum(dim=-1)
            acc = acc * rescale.unsqueeze(-1) + p @ vj
            m = m_new
        seen = l > 0
        out_blocks.append(acc / torch.where(seen, l, 1.0).unsqueeze(-1))  # no visible key: 0 / 1 = 0
        lse_blocks.append(torch.where(seen, scale * m + torch.log(torch.where(seen, l, 1.0)), -math.inf))
    out, lse = torch.cat(out_blocks, dim=-2).to(q.dtype), torch.cat(lse_blocks, dim=-1)
    lse = lse.to(torch.float32) if compute != torch.float64 else lse
    return (out, lse) if return_lse else out


def flash_backward_loops(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The FlashAttention-2 backward as plain loops: (dq, dk, dv) from q, k, v, the output, its logsumexp and dO.

    ``out`` (batch, heads, L, Ev) and ``lse`` (batch, heads, L) are what the forward saved; ``grad_out`` is dO,
    shaped like ``out``. Nothing of size (L, S) is stored: each block of weights is recomputed as
    ``exp(s - lse)``, and ``D = rowsum(dO * O)`` replaces the row sums of ``P * dP`` that would need them all.
    """
    scale = _check_inputs(q, k, v, is_causal, causal_alignment, scale, block_q, block_k)
    L, S = q.shape[-2], k.shape[-2]
    offset = causal_offset(is_causal, causal_alignment, L, S)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf, of, dof = (t.to(compute) for t in (q, k, v, out, grad_out))
    lse = lse.to(compute)
    lse = torch.where(lse == -math.inf, math.inf, lse)  # no visible key: exp(s - inf) = 0, not exp(-inf + inf)
    D = (dof * of).sum(dim=-1)  # (..., L): D_i = dO_i . O_i
    dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
    for i0 in range(0, L, block_q):
        i1 = min(i0 + block_q, L)
        rows = torch.arange(i0, i1, device=q.device)
        qi, doi, lse_i, D_i = qf[..., i0:i1, :], dof[..., i0:i1, :], lse[..., i0:i1, None], D[..., i0:i1, None]
        for j0 in range(0, S, block_k):
            j1 = min(j0 + block_k, S)
            kj, vj = kf[..., j0:j1, :], vf[..., j0:j1, :]
            s = scale * qi @ kj.transpose(-2, -1)
            if offset is not None:
                cols = torch.arange(j0, j1, device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None] + offset, -math.inf)
            p = torch.exp(s - lse_i)  # the forward's weights, recomputed
            dv[..., j0:j1, :] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)
            ds = p * (dp - D_i)  # gradient of the scores
            dq[..., i0:i1, :] += scale * ds @ kj
            dk[..., j0:j1, :] += scale * ds.transpose(-2, -1) @ qi
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------------------------
# The fast path: attnlib.blocked's kernels
# --------------------------------------------------------------------------------------------------------------


class FlashAttention2(torch.autograd.Function):
    """FlashAttention-2 as an autograd Function: ``FlashAttention2.apply(q, k, v, is_causal=False, ...)``.

    ``q`` (..., L, E), ``k`` (..., S, E), ``v`` (..., S, Ev); extra positional arguments after ``is_causal``:
    ``scale`` (None: 1/sqrt(E)), ``block_q``, ``block_k``, ``causal_alignment``. Returns the output (..., L, Ev).
    ``apply`` checks the arguments (as :func:`flash_attention` does) before autograd sees them. The forward
    saves q, k, v, the output (fp32 for fp16/bf16 inputs) and the natural-log logsumexp (..., L) (fp32; for
    inputs of shape (batch, n_queries, d), a (batch, n_queries) tensor, what CS336's tests look for in
    ``ctx.saved_tensors``).
    """

    @classmethod
    def apply(cls, q, k, v, is_causal=False, scale=None, block_q=512, block_k=512, causal_alignment="top-left"):
        _, is_causal, causal_alignment, scale, maxima = check_blocked_call(
            q, k, v, None, is_causal, causal_alignment, scale, block_q, block_k, False
        )
        return super().apply(q, k, v, is_causal, scale, block_q, block_k, causal_alignment, maxima)

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_q, block_k, causal_alignment, maxima):
        batch, L, Ev = q.shape[:-2], q.shape[-2], v.shape[-1]
        q3, k3, v3, _, plan = make_plan(q, k, v, None, is_causal, causal_alignment, scale, block_q, block_k, maxima)
        q3, k3, v3 = q3.contiguous(), k3.contiguous(), v3.contiguous()
        out3, stats = run_forward(q3, k3, v3, plan)
        lse = lse_from_stats(stats, plan).reshape(*batch, L)
        ctx.save_for_backward(q3, k3, v3, out3, stats, lse)
        ctx.plan, ctx.scale, ctx.shapes = plan, scale, (q.shape, k.shape, v.shape, q.dtype)
        return out3.reshape(*batch, L, Ev).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        refuse_double_backward()
        q3, k3, v3, out3, stats, _ = saved_for_backward(ctx)
        q_shape, k_shape, v_shape, dtype = ctx.shapes
        do3 = grad_out.reshape(out3.shape).to(out3.dtype).contiguous()
        zero = torch.zeros(out3.shape[:2], dtype=out3.dtype, device=out3.device)
        dq, dk, dv, _ = run_backward(do3, zero, q3, k3, v3, out3, stats, ctx.plan)
        dq = dq.mul_(ctx.scale).reshape(q_shape).to(dtype)
        dk = dk.mul_(ctx.scale).reshape(k_shape).to(dtype)
        return dq, dk, dv.reshape(v_shape).to(dtype), None, None, None, None, None, None


def flash_matmuls_only(q, k, v, grad_out=None, *, is_causal=False, block_q=512, block_k=512) -> torch.Tensor:
    """The fast path's loops, threads and buffers with **only their matmuls** (the result is not attention).

    Its time is the floor under :func:`flash_attention` on this machine: what is left when the softmax bookkeeping
    (max, exp2, sums, rescaling, masking; elementwise passes over every score block) costs nothing. ``attnlib
    bench`` times it as ``flash-mm`` to show, measured, how much of the tiled path's time is outside the matmuls.
    With ``grad_out`` it also runs the backward's five matmuls per block. Inputs (batch, heads, seq, dim), fp32/64.
    """
    _, is_causal, _, scale, maxima = check_blocked_call(
        q, k, v, None, is_causal, "top-left", None, block_q, block_k, False
    )
    batch, L = q.shape[:-2], q.shape[-2]
    with torch.no_grad():
        q3, k3, v3, _, plan = make_plan(q, k, v, None, is_causal, "top-left", scale, block_q, block_k, maxima)
        q3, k3, v3 = q3.contiguous(), k3.contiguous(), v3.contiguous()
        out, stats = run_forward(q3, k3, v3, plan, matmuls_only=True)
        if grad_out is not None:
            do3 = grad_out.reshape(out.shape).to(out.dtype).contiguous()
            run_backward(do3, None, q3, k3, v3, out, stats, plan, matmuls_only=True)
        return out.reshape(*batch, L, v.shape[-1])


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 512,
    block_k: int = 512,
    return_lse: bool = False,
):
    r"""Scaled dot-product attention by FlashAttention-2 (tiled forward, recomputing backward), in PyTorch.

    Equal to ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=..., scale=...)`` within
    rounding, with memory linear in L and S: one (block_q, block_k) block of scores per (batch, head) row alive at
    a time, and only the output and one logsumexp per query row saved for the backward pass.

    Args:
        q: queries (batch, heads, L, E); any number of leading dims, shared by k and v.
        k: keys (batch, heads, S, E).
        v: values (batch, heads, S, Ev).
        is_causal: mask every key after the query's position; blocks entirely in the future are skipped.
        causal_alignment: ``"top-left"`` (query i sees keys j <= i, SDPA's ``is_causal``) or ``"bottom-right"``
            (j <= i + S - L, attnlib's ``causal_mask(..., alignment="bottom-right")``). Same when L == S.
        scale: multiplier of the scores, default 1/sqrt(E).
        block_q, block_k: tile sizes along L and S; any positive ints (they need not divide L or S).
        return_lse: also return the natural-log logsumexp of the scaled, masked scores per query row,
            (batch, heads, L), fp32 (fp64 for fp64 inputs); ``-inf`` for a row with no visible key. Differentiable.

    Returns:
        output (batch, heads, L, Ev) in q's dtype (rows with no visible key are 0, with zero gradients), and the
        logsumexp if ``return_lse``.

    Raises:
        TypeError / ValueError naming the argument for non-tensors, integer dtypes, mismatched dtypes or devices,
        shapes that do not fit, empty sequences (L, S or E = 0, as :func:`attnlib.scaled_dot_product_attention`),
        NaN/inf inputs, non-bool ``is_causal``, unknown alignments, bad block sizes or scale. Any positive scale
        works: ``scale=1e38`` gives the exact limit (attention on the largest score), not NaN.
    """
    _, is_causal, causal_alignment, scale, maxima = check_blocked_call(
        q, k, v, None, is_causal, causal_alignment, scale, block_q, block_k, return_lse
    )
    return blocked_attention(q, k, v, None, is_causal, causal_alignment, scale, block_q, block_k, return_lse, maxima)
