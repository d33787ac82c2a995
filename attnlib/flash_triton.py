r"""FlashAttention-2 as Triton kernels: one forward kernel, two backward kernels, written to be read.

The algorithm is :mod:`attnlib.flash`'s, with one Triton *program* per tile instead of a Python loop iteration:

* ``_attn_fwd``: one program per (block of ``BLOCK_M`` queries, (batch, head) row). It loads its query block once,
  loops over key/value blocks with the online softmax in base 2, and writes the output block and the logsumexp.
* ``_attn_bwd_dkdv``: one program per (block of ``BLOCK_N`` keys, row): loops over query blocks, recomputes
  ``P^T`` from the saved logsumexp and accumulates dK and dV in registers.
* ``_attn_bwd_dq``: one program per (query block, row): loops over key blocks and accumulates dQ.
  Splitting dQ from dK/dV (FlashAttention-2's choice) means no two programs ever write the same output, so no
  atomics are needed; the price is recomputing the score block twice.

``D = rowsum(dO * O)`` is computed with one torch op before the backward kernels: it is a single memory-bound
pass with nothing to fuse.

Triton is optional (Linux only). Without it this module still imports; :data:`HAS_TRITON` is False and
:func:`flash_attention_triton` raises. The kernels run natively on CUDA tensors, and on CPU tensors under Triton's
interpreter: set ``TRITON_INTERPRET=1`` in the environment **before this module is imported**, because
``@triton.jit`` reads it when it decorates the kernels (at import time), not when they are launched.
:func:`interpreted` says which mode the kernels were built in.

Shapes follow (batch, heads, seq, dim): q (..., L, E), k (..., S, E), v (..., S, Ev), causal masking top-left or
bottom-right as in :func:`attnlib.flash.flash_attention`. fp32 dots use IEEE fp32 (no TF32) so that the CUDA path
matches the CPU reference; fp16/bf16 dots take fp16/bf16 inputs and accumulate in fp32.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ._checks import shape_str
from .blocked import LN2, LOG2E, blocked_attention, causal_offset, check_blocked_call

try:
    import triton
    import triton.language as tl
except ImportError:  # not installed (e.g. macOS): the rest of attnlib works without it
    triton = tl = None

HAS_TRITON = triton is not None

__all__ = ["HAS_TRITON", "flash_attention_triton", "interpreted", "unavailable_reason"]


if HAS_TRITON:

    @triton.jit
    def _attn_fwd(
        Q, K, V, O, LSE,  # pointers to (N, L, E), (N, S, E), (N, S, Ev), (N, L, Ev) and (N, L) tensors
        L, S, E, EV,  # sequence lengths and feature dims
        qk_scale,  # scale * log2(e): scores come out in base 2, so exp2 replaces exp
        offset,  # causal: query i sees key j iff j <= i + offset
        IS_CAUSAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0) * BLOCK_M  # which block of queries
        row = tl.program_id(1)  # which (batch, head)
        offs_m = start_m + tl.arange(0, BLOCK_M)  # query indices of this block
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        # Load the query block once; it stays in registers for the whole loop. Out-of-range entries read 0.
        q_ptrs = Q + row * L * E + offs_m[:, None] * E + offs_d[None, :]
        q = tl.load(q_ptrs, mask=(offs_m[:, None] < L) & (offs_d[None, :] < E), other=0.0)
        # The online softmax state, per query row.
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (base 2)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # running sum of exp2(s - m) v
        # Causal: keys after the block's last query (+ offset) are never visible: stop the loop there.
        hi = S
        if IS_CAUSAL:
            hi = tl.minimum(S, tl.maximum(0, start_m + BLOCK_M + offset))
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            # K^T block (BLOCK_D, BLOCK_N): the transpose is only a different pointer pattern.
            kt_ptrs = K + row * S * E + offs_n[None, :] * E + offs_d[:, None]
            kt = tl.load(kt_ptrs, mask=(offs_n[None, :] < S) & (offs_d[:, None] < E), other=0.0)
            s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N) scores, base 2
            visible = offs_n[None, :] < S
            if IS_CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + offset)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: exp2(-inf - 0) = 0
            p = tl.math.exp2(s - shift[:, None])
            rescale = tl.math.exp2(m_i - shift)  # how much the old terms shrink under the new max
            l_i = l_i * rescale + tl.sum(p, axis=1)
            v_ptrs = V + row * S * EV + offs_n[:, None] * EV + offs_dv[None, :]
            v = tl.load(v_ptrs, mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV), other=0.0)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        seen = l_i > 0.0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]  # a row with no visible key: 0 / 1 = 0
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("inf"))  # base 2
        o_ptrs = O + row * L * EV + offs_m[:, None] * EV + offs_dv[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV))
        tl.store(LSE + row * L + offs_m, lse, mask=offs_m < L)

    @triton.jit
    def _attn_bwd_dkdv(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        L, S, E, EV, qk_scale, scale, offset,
        IS_CAUSAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        start_n = tl.program_id(0) * BLOCK_N  # which block of keys
        row = tl.program_id(1)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        k_mask = (offs_n[:, None] < S) & (offs_d[None, :] < E)
        v_mask = (offs_n[:, None] < S) & (offs_dv[None, :] < EV)
        k = tl.load(K + row * S * E + offs_n[:, None] * E + offs_d[None, :], mask=k_mask, other=0.0)
        v = tl.load(V + row * S * EV + offs_n[:, None] * EV + offs_dv[None, :], mask=v_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
        # Causal: queries before start_n - offset cannot see any key of this block; start at their block.
        lo = 0
        if IS_CAUSAL:
            lo = (tl.maximum(0, start_n - offset) // BLOCK_M) * BLOCK_M
        for start_m in range(lo, L, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            qt_ptrs = Q + row * L * E + offs_m[None, :] * E + offs_d[:, None]  # Q^T block (BLOCK_D, BLOCK_M)
            qt = tl.load(qt_ptrs, mask=(offs_m[None, :] < L) & (offs_d[:, None] < E), other=0.0)
            do_ptrs = DO + row * L * EV + offs_m[:, None] * EV + offs_dv[None, :]
            do = tl.load(do_ptrs, mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV), other=0.0)
            lse = tl.load(LSE + row * L + offs_m, mask=offs_m < L, other=float("inf"))  # base 2
            delta = tl.load(DELTA + row * L + offs_m, mask=offs_m < L, other=0.0)  # D_i = dO_i . O_i
            st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale  # S^T (BLOCK_N, BLOCK_M), base 2
            visible = (offs_m[None, :] < L) & (offs_n[:, None] < S)
            if IS_CAUSAL:
                visible = visible & (offs_n[:, None] <= offs_m[None, :] + offset)
            pt = tl.where(visible, tl.math.exp2(st - lse[None, :]), 0.0)  # P^T, recomputed
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)  # dV += P^T dO
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # dP^T = V dO^T
            dst = pt * (dpt - delta[None, :])  # dS^T = P^T * (dP^T - D)
            dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)  # dK += dS^T Q
        dk_ptrs = DK + row * S * E + offs_n[:, None] * E + offs_d[None, :]
        tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=k_mask)
        dv_ptrs = DV + row * S * EV + offs_n[:, None] * EV + offs_dv[None, :]
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=v_mask)

    @triton.jit
    def _attn_bwd_dq(
        Q, K, V, DO, LSE, DELTA, DQ,
        L, S, E, EV, qk_scale, scale, offset,
        IS_CAUSAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0) * BLOCK_M
        row = tl.program_id(1)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        q_mask = (offs_m[:, None] < L) & (offs_d[None, :] < E)
        q = tl.load(Q + row * L * E + offs_m[:, None] * E + offs_d[None, :], mask=q_mask, other=0.0)
        do_ptrs = DO + row * L * EV + offs_m[:, None] * EV + offs_dv[None, :]
        do = tl.load(do_ptrs, mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV), other=0.0)
        lse = tl.load(LSE + row * L + offs_m, mask=offs_m < L, other=float("inf"))
        delta = tl.load(DELTA + row * L + offs_m, mask=offs_m < L, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        hi = S
        if IS_CAUSAL:
            hi = tl.minimum(S, tl.maximum(0, start_m + BLOCK_M + offset))
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_mask = (offs_n[:, None] < S) & (offs_d[None, :] < E)
            k = tl.load(K + row * S * E + offs_n[:, None] * E + offs_d[None, :], mask=k_mask, other=0.0)
            v_ptrs = V + row * S * EV + offs_n[:, None] * EV + offs_dv[None, :]
            v = tl.load(v_ptrs, mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV), other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            visible = (offs_n[None, :] < S) & (offs_m[:, None] < L)
            if IS_CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + offset)
            p = tl.where(visible, tl.math.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # dP = dO V^T
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)  # dQ += dS K
        dq_ptrs = DQ + row * L * E + offs_m[:, None] * E + offs_d[None, :]
        tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


def interpreted() -> bool:
    """True when the kernels were decorated under ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    if not HAS_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_attn_fwd, InterpretedFunction)


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the kernels cannot run on ``device`` here, or None if they can."""
    device = torch.device(device)
    if not HAS_TRITON:
        return "triton is not installed (it is optional and Linux only: pip install triton==3.9.0)"
    if interpreted():
        return None if device.type == "cpu" else f"the kernels were built for Triton's interpreter, not {device}"
    if device.type != "cuda":
        return (
            f"the Triton kernels run on CUDA; on {device} they need Triton's interpreter: set TRITON_INTERPRET=1 "
            "before attnlib.flash_triton is imported"
        )
    return None


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # ignored for fp16/bf16 inputs


class TritonFlashAttention2(torch.autograd.Function):
    """``TritonFlashAttention2.apply(q, k, v, is_causal, scale, block_q, block_k, causal_alignment)`` -> (out, lse).

    Inputs (N, L, E), (N, S, E), (N, S, Ev), contiguous, one of fp32/fp16/bf16. ``lse`` is the natural-log
    logsumexp (N, L) in fp32 (not differentiable here; see :func:`attnlib.flash.flash_attention` for that).
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_q, block_k, causal_alignment):
        N, L, E = q.shape
        S, EV = k.shape[1], v.shape[2]
        offset = causal_offset(is_causal, causal_alignment, L, S)
        out = torch.empty(N, L, EV, dtype=q.dtype, device=q.device)
        lse2 = torch.empty(N, L, dtype=torch.float32, device=q.device)
        grid = (triton.cdiv(L, block_q), N)
        _attn_fwd[grid](
            q, k, v, out, lse2, L, S, E, EV, scale * LOG2E, 0 if offset is None else offset,
            IS_CAUSAL=offset is not None, BLOCK_M=block_q, BLOCK_N=block_k, BLOCK_D=_block_d(E),
            BLOCK_DV=_block_d(EV), PRECISION=_precision(q.dtype),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse2)
        ctx.settings = (scale, offset, block_q, block_k)
        lse = (lse2 * LN2).masked_fill(lse2 == math.inf, -math.inf)  # natural log; no visible key: -inf
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse2 = ctx.saved_tensors
        scale, offset, block_q, block_k = ctx.settings
        N, L, E = q.shape
        S, EV = k.shape[1], v.shape[2]
        do = grad_out.contiguous()
        delta = (do.float() * out.float()).sum(dim=-1)  # D_i = dO_i . O_i, fp32 (N, L)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = dict(
            IS_CAUSAL=offset is not None, BLOCK_M=block_q, BLOCK_N=block_k, BLOCK_D=_block_d(E),
            BLOCK_DV=_block_d(EV), PRECISION=_precision(q.dtype),
        )  # fmt: skip
        args = (L, S, E, EV, scale * LOG2E, scale, 0 if offset is None else offset)
        _attn_bwd_dkdv[(triton.cdiv(S, block_k), N)](q, k, v, do, lse2, delta, dk, dv, *args, **common)
        _attn_bwd_dq[(triton.cdiv(L, block_q), N)](q, k, v, do, lse2, delta, dq, *args, **common)
        return dq, dk, dv, None, None, None, None, None


def flash_attention_triton(
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
    """FlashAttention-2 with the Triton kernels above; same arguments and results as
    :func:`attnlib.flash.flash_attention` (q (batch, heads, L, E), k (batch, heads, S, E), v (batch, heads, S, Ev)).

    ``block_q`` and ``block_k`` must be powers of two >= 16 (``tl.arange`` and ``tl.dot`` need them). fp64 is not
    supported, nor bf16 under Triton's interpreter (a TypeError: its ``tl.dot`` gives wrong bf16 results). The
    arguments are checked by :func:`attnlib.blocked.check_blocked_call`, the check of every blocked front-end.
    Raises ``RuntimeError`` saying why when the kernels cannot run on q's device
    (:func:`unavailable_reason`). The logsumexp returned with ``return_lse=True`` carries no gradient.
    """
    _, is_causal, causal_alignment, scale, maxima = check_blocked_call(
        q, k, v, None, is_causal, causal_alignment, scale, block_q, block_k, return_lse
    )
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16 for the Triton kernels, got {b}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"q must be float32, float16 or bfloat16 for the Triton kernels, got {q.dtype}")
    reason = unavailable_reason(q.device)
    if reason:
        raise RuntimeError(reason)
    if q.dtype == torch.bfloat16 and interpreted():
        raise TypeError(
            f"q is bfloat16 (shape {shape_str(q.shape)}), which Triton's interpreter does not run (its tl.dot "
            "returns garbage for bf16: outputs near 1e9 where they should be near 1); use float16 or float32 on the "
            "CPU, or run the bf16 kernels on CUDA"
        )
    batch, L, EV = q.shape[:-2], q.shape[-2], v.shape[-1]
    N = math.prod(batch)
    if N == 0:  # nothing to launch: the PyTorch core gives the empty result, with the graph
        return blocked_attention(
            q, k, v, None, is_causal, causal_alignment, scale, block_q, block_k, return_lse, maxima
        )
    q3, k3, v3 = (t.reshape(N, t.shape[-2], t.shape[-1]).contiguous() for t in (q, k, v))
    out, lse = TritonFlashAttention2.apply(q3, k3, v3, is_causal, scale, block_q, block_k, causal_alignment)
    out, lse = out.reshape(*batch, L, EV), lse.reshape(*batch, L)
    return (out, lse) if return_lse else out
