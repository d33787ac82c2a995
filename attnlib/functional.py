r"""Attention as plain PyTorch functions, with autograd, on any device.

Shapes follow (batch, heads, seq, dim): queries ``q`` are (..., L, E), keys ``k`` (..., S, E) and values
``v`` (..., S, Ev), where ``...`` is any number of leading batch dims (usually batch, heads) shared by all three.

.. math::  \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_k}} + M\right) V

Mask convention (the same as ``torch.nn.functional.scaled_dot_product_attention``): a boolean mask is True
where a query **may attend**; a float mask is **added** to the scaled scores. A query whose every key is masked
gets a row of zero weights and a zero output, with finite gradients, never NaN. Inputs are never modified.
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    causal_bias_info,
    check_bool,
    check_dropout,
    check_finite,
    check_fits,
    check_float_tensor,
    check_generator,
    check_index,
    check_mask,
    check_min_rank,
    check_positive_float,
    check_positive_int,
    check_qk,
    check_qkv,
    shape_str,
)
from .masks import causal_mask

__all__ = [
    "softmax",
    "attention_scores",
    "scaled_dot_product_attention",
    "split_heads",
    "merge_heads",
]


def _safe_softmax_lse(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable softmax along ``dim`` and the natural-log logsumexp of ``z`` along it (``dim`` removed).

    A slice that is entirely -inf gets all-zero weights (not NaN) and logsumexp -inf, with finite gradients.
    """
    compute = torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype
    z = z.to(compute)
    m = z.amax(dim=dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf: shift by 0, exp gives zeros
    e = torch.exp(z - m)
    total = e.sum(dim=dim, keepdim=True)
    seen = total > 0
    safe_total = torch.where(seen, total, torch.ones_like(total))
    lse = torch.where(seen, m + torch.log(safe_total), torch.full_like(total, -math.inf)).squeeze(dim)
    return e / safe_total, lse


def _safe_softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    """Stable softmax along ``dim``; a slice that is entirely -inf becomes all zeros instead of NaN."""
    return _safe_softmax_lse(z, dim)[0]


def _max_shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The (detached) maximum of ``x`` along ``dim``, kept as a dim; 0 where the slice is all -inf."""
    m = x.amax(dim=dim, keepdim=True).detach()
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def softmax(x: torch.Tensor, dim: int = -1, temperature: float = 1.0) -> torch.Tensor:
    r"""Numerically stable softmax of ``x / temperature`` along ``dim``.

    .. math:: \mathrm{softmax}(x)_i = \frac{e^{x_i/T - m}}{\sum_j e^{x_j/T - m}},\quad m = \max_j x_j/T

    Subtracting the maximum changes nothing mathematically but keeps every exponent <= 0, so nothing overflows.
    For T < 1 the maximum is subtracted *before* dividing by T, so that even ``temperature=1e-40`` (where
    ``x / T`` alone would overflow to inf) gives the right, one-hot answer instead of NaN.
    ``-inf`` entries get weight 0; a slice that is entirely ``-inf`` gives all zeros (not NaN). Lower
    temperatures sharpen the distribution towards one-hot, higher ones flatten it towards uniform.
    fp16/bf16 inputs are computed in fp32 and returned in their own dtype.
    """
    x = check_float_tensor(x, "x")
    temperature = check_positive_float(temperature, "temperature")
    dim = check_index(dim, "dim")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim to take a softmax over, got a 0-dim tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for x of shape {shape_str(x.shape)}")
    if x.shape[dim] == 0:
        raise ValueError(f"x has size 0 along dim={dim} (shape {shape_str(x.shape)}); softmax needs >= 1 entry")
    if torch.isnan(x).any() or torch.isposinf(x).any():
        raise ValueError("x contains NaN or +inf; softmax needs finite values or -inf (blocked) entries")
    # Upcast before dividing: fp16 logits of 1e4 at temperature 0.1 would overflow to inf (and give NaN) otherwise.
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    z = x.to(compute)
    if temperature < 1.0:  # dividing enlarges: shift first, so that every entry is <= 0 before it grows
        z = z - _max_shift(z, dim)
    return _safe_softmax(z / temperature, dim).to(x.dtype)


_check_qk = check_qk  # the checks of q, k (and v) live in attnlib._checks, shared by every front-end
_check_qkv = check_qkv


def _resolve_scale(scale: float | None, E: int) -> float:
    return 1.0 / math.sqrt(E) if scale is None else check_positive_float(scale, "scale")


def _raw_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``q @ k^T``, refusing a product that overflows the dtype (it would turn into NaN further on)."""
    raw = q @ k.transpose(-2, -1)
    if not torch.isfinite(raw).all():
        _refuse_overflow(q, k, raw.dtype)
    return raw


def _refuse_overflow(q: torch.Tensor, k: torch.Tensor, dtype: torch.dtype):
    raise ValueError(
        f"q @ k^T overflows {dtype} (largest |q| {q.abs().max().item():.3g}, |k| {k.abs().max().item():.3g}); "
        "scale q and k down, or compute in float64"
    )


def check_attention_output(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
    """The one check after the core: q @ k^T too large for the dtype is the only way finite, validated inputs give a
    non-finite output (inf - inf in the softmax), so one pass over the (..., L, Ev) output replaces a pass over
    the (..., L, S) scores."""
    try:
        check_finite(out, "out")
    except ValueError:
        _refuse_overflow(q, k, out.dtype)


def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    r"""Scaled similarity of every query with every key: ``(q @ k^T) * scale``, shape (..., L, S).

    ``scale`` defaults to :math:`1/\sqrt{E}`, E being the (per-head) feature dim of q and k. Scores too large for
    the dtype raise ``ValueError`` (naming ``scale`` when it is the scale that makes them overflow).
    """
    check_qk(q, k)
    scale = _resolve_scale(scale, q.shape[-1])
    check_scores_fit(q, k)
    scores = _raw_scores(q, k) * scale
    if not torch.isfinite(scores).all():
        raise ValueError(
            f"scale={scale:g} makes the scores overflow {scores.dtype}; the scores themselves are not "
            "representable (scaled_dot_product_attention and softmax still work with this scale)"
        )
    return scores


def _resolve_attn_mask(attn_mask: object, is_causal: bool, L: int, S: int, device: torch.device):
    """Turn a ``torch.nn.attention.bias.CausalBias`` ``attn_mask`` into attnlib's boolean causal mask.

    ``causal_upper_left(L, S)`` becomes ``causal_mask(L, S, alignment="top-left")`` and ``causal_lower_right(L, S)``
    ``causal_mask(L, S, alignment="bottom-right")``; any other mask is returned as it is.
    """
    alignment = causal_bias_info(attn_mask, L, S)
    if alignment is None:
        return attn_mask
    if is_causal:
        raise ValueError(
            "is_causal=True and attn_mask (a CausalBias) were both given; the CausalBias alone says which causal "
            "mask to use"
        )
    return causal_mask(L, S, alignment=alignment, device=device)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
    return_lse: bool = False,
):
    r"""Scaled dot-product attention; returns ``(output, weights)``, or ``(output, weights, lse)``.

    Args:
        q: queries (..., L, E), typically (batch, heads, L, head_dim).
        k: keys (..., S, E).
        v: values (..., S, Ev).
        attn_mask: bool (True = may attend) or additive float mask of q's dtype, broadcastable to (..., L, S).
            torch's ``CausalBias`` (``torch.nn.attention.bias.causal_upper_left(L, S)`` /
            ``causal_lower_right(L, S)``) is read as the top-left / bottom-right causal mask, as SDPA reads it.
        is_causal: apply a top-left-aligned causal mask (query i sees keys j <= i), as SDPA's ``is_causal``.
            Must be a bool. Cannot be combined with ``attn_mask``: build
            ``combine_masks(causal_mask(L, S), attn_mask)`` instead.
        scale: multiplier of the scores, default :math:`1/\sqrt{E}`; any positive finite number (a scale > 1 is
            applied after subtracting each row's largest score, so even ``scale=1e38`` cannot overflow).
        dropout_p: dropout on the weights, applied whenever > 0 (as SDPA does); the returned weights are the
            ones actually used.
        generator: ``torch.Generator`` for dropout, or None.
        return_lse: also return ``lse`` (..., L): the natural-log logsumexp over keys of the masked, scaled
            scores, ``logsumexp(q k^T * scale + mask)`` (before dropout); ``-inf`` for a query whose keys are all
            masked. Differentiable; float32 for fp16/bf16 inputs, q's dtype otherwise. It overflows to +inf only
            when the scores themselves exceed the dtype's range.

    Returns:
        output (..., L, Ev) and weights (..., L, S) (and lse (..., L)); every row of weights sums to 1, or to 0
        where all of that query's keys are masked (its output row is then 0).

    Equals ``torch.nn.functional.scaled_dot_product_attention`` (which returns only the output) within
    floating-point tolerance. fp16/bf16 inputs are computed in fp32 throughout (scores, softmax and
    ``weights @ v``, forward and backward) and the output and weights are returned in their dtype, as SDPA does.
    """
    q_max, k_max, _ = check_qkv(q, k, v)
    is_causal = check_bool(is_causal, "is_causal")
    return_lse = check_bool(return_lse, "return_lse")
    dropout_p = check_dropout(dropout_p)
    generator = check_generator(generator)
    mask = prepare_mask(attn_mask, is_causal, q, k)
    scale = _resolve_scale(scale, q.shape[-1])
    check_scores_fit(q, k)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if (
        q.shape[-1] * q_max * k_max >= torch.finfo(compute).max
    ):  # q k^T might not fit the dtype: look at it (rare, so only then)
        _raw_scores(q.to(compute), k.to(compute))
    result = attention_core(q, k, v, mask, scale, dropout_p, generator, return_lse)
    check_attention_output(result[0], q, k)
    return result


def prepare_mask(attn_mask: object, is_causal: bool, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """The one mask the core applies: ``attn_mask`` checked (a CausalBias read as its causal mask), or the
    top-left causal mask for ``is_causal``. Both at once is a ValueError (attnlib's one rule, in every front-end)."""
    L, S = q.shape[-2], k.shape[-2]
    attn_mask = _resolve_attn_mask(attn_mask, is_causal, L, S, q.device)
    if attn_mask is not None:
        if is_causal:
            raise ValueError(
                "is_causal=True and attn_mask were both given; combine them explicitly with "
                "attnlib.combine_masks(attnlib.causal_mask(L, S), attn_mask)"
            )
        return check_mask(attn_mask, (*q.shape[:-2], L, S), q)
    if is_causal:
        return causal_mask(L, S, device=q.device)
    return None


def check_scores_fit(q: torch.Tensor, k: torch.Tensor) -> None:
    """Refuse, before allocating them, (..., L, S) scores that cannot fit in memory: the math path holds about
    three such tensors (scores, exponentials, weights) in the compute dtype."""
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    n = math.prod(q.shape[:-1]) * k.shape[-2]
    itemsize = torch.empty((), dtype=compute).element_size()
    check_fits(
        3 * n * itemsize, f"the (..., L, S) = {shape_str((*q.shape[:-1], k.shape[-2]))} scores", q.device, "q, k"
    )


def attention_core(q, k, v, mask, scale: float, dropout_p: float = 0.0, generator=None, return_lse: bool = False):
    """The math of :func:`scaled_dot_product_attention` on inputs it trusts: checked q, k, v, a checked mask
    (bool or additive, or None; the causal mask already built) and a resolved scale. No checks, no host syncs;
    :func:`check_attention_output` is the caller's one check after it."""
    # fp16/bf16: everything in fp32, as torch's kernels do; q @ k^T alone can overflow fp16 (max 65504), and
    # weights rounded to bf16 before weights @ v would lose two decimal digits of the gradient.
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    raw = q.to(compute) @ k.to(compute).transpose(-2, -1)
    if mask is not None and mask.dtype == torch.bool:
        raw = raw.masked_fill(~mask, float("-inf"))
    shift = None
    if scale > 1.0:  # multiplying enlarges: subtract each row's max first, so that nothing can overflow
        shift = _max_shift(raw, -1)
        raw = raw - shift
    scores = raw * scale
    if mask is not None and mask.dtype != torch.bool:
        scores = scores + mask
    weights, lse = _safe_softmax_lse(scores, dim=-1)
    if dropout_p > 0:
        keep = torch.rand(weights.shape, generator=generator, device=weights.device) >= dropout_p
        weights = weights * keep / (1.0 - dropout_p)
    out = weights @ v.to(compute)
    if not return_lse:
        return out.to(q.dtype) if compute != q.dtype else out, weights.to(q.dtype)
    if shift is not None:
        lse = lse + shift.squeeze(-1) * scale
    return out.to(q.dtype), weights.to(q.dtype), lse


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, seq, num_heads * head_dim) -> (batch, num_heads, seq, head_dim).

    Head h takes features ``h*head_dim .. (h+1)*head_dim - 1`` of each token. The transpose matters: a bare
    ``view(batch, num_heads, seq, head_dim)`` would mix different tokens' features into one "head".
    """
    check_float_tensor(x, "x")
    check_min_rank(x, "x", 2, "(..., seq, embed_dim)")
    num_heads = check_positive_int(num_heads, "num_heads")
    E = x.shape[-1]
    if E % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the embedding dim {E} of x {shape_str(x.shape)}")
    return x.unflatten(-1, (num_heads, E // num_heads)).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, num_heads, seq, head_dim) -> (batch, seq, num_heads * head_dim); the inverse of :func:`split_heads`."""
    check_float_tensor(x, "x")
    check_min_rank(x, "x", 3, "(..., heads, seq, head_dim)")
    return x.transpose(-3, -2).flatten(-2)
