r"""Memory-efficient attention: the FlashAttention algorithm in plain PyTorch.

The math path (:func:`attnlib.scaled_dot_product_attention`) builds the whole (L, S) score matrix, so its memory
grows with L·S: 8 GiB per (batch, heads) pair of fp32 scores at B=4, H=8, L=S=8192. :func:`chunked_attention`
gives the same output while holding only one (block_q, block_k) block of scores at a time. It walks over query
blocks and, for each, over key blocks, and keeps three running quantities per query row:

* ``m``, the largest score seen so far (the running max),
* ``l``, the sum of ``exp(score - m)`` over the keys seen so far (the running sum),
* ``acc``, the sum of ``exp(score - m) * value`` (the unnormalised output).

When a new block raises the max from ``m`` to ``m'``, everything accumulated so far was computed relative to the
old max, so ``l`` and ``acc`` are multiplied by ``exp(m - m')`` before the block's terms are added. At the end
``out = acc / l`` and ``logsumexp = m + log(l)``. :func:`online_softmax` shows the same update on one vector.

Training stays linear in memory too: the backward pass saves only q, k, v, the output and the per-row logsumexp
(as its two parts, m and log l), and recomputes each block of weights as ``exp(score - m - log l)`` when it needs it.

The loops themselves live in :mod:`attnlib.blocked`, the one blocked-attention core that lesson 13's
:func:`attnlib.flash.flash_attention` runs too (its docstring says what makes a Python loop over blocks fast);
this module is its front-end with masks, and the online softmax on one vector.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ._checks import check_float_tensor, shape_str
from .blocked import blocked_attention, check_blocked_call

__all__ = ["chunked_attention", "online_softmax", "online_softmax_update"]


# --------------------------------------------------------------------------------------------------------------
# The idea on one vector
# --------------------------------------------------------------------------------------------------------------


def online_softmax_update(state: tuple[float, float], chunk: torch.Tensor) -> tuple[float, float]:
    r"""One step of the online softmax: fold ``chunk`` into the running ``(max, sum)``.

    ``state`` is ``(m, l)``: the largest score seen so far and :math:`\sum_j e^{s_j - m}` over those scores
    (start from ``(-inf, 0.0)``). With :math:`m' = \max(m, \max \text{chunk})` the new state is

    .. math:: l' = l\, e^{m - m'} + \sum_{s \in \text{chunk}} e^{s - m'}

    The factor :math:`e^{m - m'}` rescales the old sum to the new max; forgetting it is the classic bug.
    ``-inf`` scores (masked) add nothing; while every score so far is ``-inf`` the state stays ``(-inf, 0)``.
    """
    m, l = state
    chunk = check_float_tensor(chunk, "chunk")
    if chunk.dim() != 1 or chunk.numel() == 0:
        raise ValueError(f"chunk must be a non-empty 1-D tensor of scores, got shape {shape_str(chunk.shape)}")
    m_new = max(m, float(chunk.max()))
    if m_new == -math.inf:  # nothing but masked scores so far
        return m_new, 0.0
    rescale = math.exp(m - m_new)  # exp(-inf) = 0 on the first real chunk
    return m_new, l * rescale + float(torch.exp(chunk - m_new).sum())


def online_softmax(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """Softmax of a 1-D score vector given as consecutive chunks, reading each chunk once to get the normaliser.

    Pass 1 streams over the chunks with :func:`online_softmax_update`, keeping only the running max ``m`` and
    running sum ``l``; pass 2 returns ``exp(chunk - m) / l`` for every chunk, concatenated. The result equals
    ``torch.softmax(torch.cat(chunks), 0)``; an all ``-inf`` vector gives zeros (not NaN), as in attnlib.
    The attention kernel :func:`chunked_attention` goes one step further and never needs a second pass, because it
    multiplies the weights by the values on the fly (rescaling the partial output exactly like ``l``).
    """
    chunks = list(chunks)
    if not chunks:
        raise ValueError("chunks is empty: need at least one chunk of scores")
    for i, c in enumerate(chunks):
        check_float_tensor(c, f"chunks[{i}]")
        if c.dim() != 1 or c.numel() == 0:
            raise ValueError(f"chunks[{i}] must be a non-empty 1-D tensor, got shape {shape_str(c.shape)}")
        if torch.isnan(c).any() or torch.isposinf(c).any():
            raise ValueError(f"chunks[{i}] contains NaN or +inf; scores must be finite or -inf (masked)")
    state = (-math.inf, 0.0)
    for c in chunks:
        state = online_softmax_update(state, c)
    m, l = state
    if l == 0.0:
        return torch.zeros_like(torch.cat(chunks))
    return torch.cat([torch.exp(c - m) / l for c in chunks])


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 256,
    block_k: int = 512,
    return_lse: bool = False,
):
    r"""Scaled dot-product attention computed block by block with the online softmax; returns the output.

    Same result as ``attnlib.scaled_dot_product_attention(q, k, v, attn_mask, ...)[0]`` (within floating-point
    rounding) with memory that grows linearly in L and S: at most one (block_q, block_k) block of scores per
    (batch, head) is alive at a time (on the CPU, one block of about ``SCORES_PER_OP`` scores per worker thread),
    and no (L, S) weight matrix is ever built or returned.

    Args:
        q: queries (..., L, E), typically (batch, heads, L, head_dim).
        k: keys (..., S, E).
        v: values (..., S, Ev).
        attn_mask: bool (True = may attend) or additive float mask of q's dtype, broadcastable to (..., L, S),
            e.g. a padding mask (batch, 1, 1, S). It is sliced per block, never expanded to (..., L, S).
            torch's ``CausalBias`` (``causal_upper_left(L, S)`` / ``causal_lower_right(L, S)``) is read as
            ``is_causal=True`` with ``causal_alignment="top-left"`` / ``"bottom-right"``.
        is_causal: apply a causal mask generated block by block; key blocks that are entirely in the future are
            skipped, which roughly halves the work when L == S. As everywhere in attnlib it cannot be combined
            with ``attn_mask`` (a ValueError): pass ``combine_masks(causal_mask(L, S, alignment=...), attn_mask)``.
        causal_alignment: ``"top-left"`` (query i sees keys j <= i, SDPA's ``is_causal``) or ``"bottom-right"``
            (query i sees keys j <= i + S - L, what decoding with a KV cache needs). Same when L == S.
        scale: multiplier of the scores, default :math:`1/\sqrt{E}`.
        block_q, block_k: block sizes along L and S; any positive ints (they need not divide L or S).
        return_lse: also return ``lse`` (..., L), the natural-log logsumexp over keys of the masked, scaled
            scores (what FlashAttention keeps for its backward pass); ``-inf`` for a query whose keys are all
            masked. Differentiable; float32 for fp16/bf16 inputs, q's dtype otherwise.

    Returns:
        output (..., L, Ev), or ``(output, lse)`` with ``return_lse=True``. Rows whose keys are all masked are
        zeros, with zero gradients, never NaN.

    Gradients flow to q, k, v and to a float ``attn_mask`` that requires grad; the backward pass saves only
    q, k, v, the output and one logsumexp per query row, and recomputes the weights block by block.
    fp16/bf16 inputs are computed in fp32 and the output is returned in their dtype. No dropout.
    Scores too large for base-2 arithmetic (a huge ``scale``, ``finfo.min`` masks) are computed in natural-log
    units, and, where even those would overflow float32, in float64; a ``ValueError`` naming ``scale`` is raised
    only where float64 overflows too.
    """
    attn_mask, is_causal, causal_alignment, scale, maxima = check_blocked_call(
        q, k, v, attn_mask, is_causal, causal_alignment, scale, block_q, block_k, return_lse
    )
    return blocked_attention(
        q, k, v, attn_mask, is_causal, causal_alignment, scale, block_q, block_k, return_lse, maxima
    )
