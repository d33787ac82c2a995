r"""Attention variants that real models use: grouped-query attention, sliding windows, linear attention.

* :func:`repeat_kv` / :func:`grouped_query_attention` — GQA: ``Hq`` query heads share ``Hkv`` key/value heads
  (``Hkv = 1`` is multi-query attention, ``Hkv = Hq`` ordinary multi-head attention). The KV cache shrinks by
  ``Hq / Hkv``. Equals ``F.scaled_dot_product_attention(..., enable_gqa=True)``.
* :func:`sliding_window_mask` — causal local attention: each query sees only its ``window`` most recent keys.
* :func:`linear_attention` — kernelised attention :math:`\phi(Q)(\phi(K)^\top V)`, cost linear in the length,
  with :func:`elu_feature_map` (:math:`\phi(x) = \mathrm{elu}(x) + 1`) as the default feature map.

Shapes: (batch, heads, seq, head_dim). Boolean masks are True = may attend. Nothing modifies its inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._checks import (
    check_bool,
    check_finite,
    check_fits,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
    check_rank,
    check_same_dtype_device,
    shape_str,
)
from .functional import scaled_dot_product_attention
from .masks import Alignment

__all__ = ["repeat_kv", "grouped_query_attention", "sliding_window_mask", "elu_feature_map", "linear_attention"]

_LAYOUT = "(batch, heads, seq, head_dim)"


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, dim) -> (batch, kv_heads * n_rep, seq, dim): each key/value head repeated n_rep times.

    Copies are adjacent (``repeat_interleave`` along the head dim): query heads ``g*n_rep .. (g+1)*n_rep - 1``
    form group g and share key/value head g, as in ``F.scaled_dot_product_attention(..., enable_gqa=True)``.
    """
    check_float_tensor(x, "x")
    check_rank(x, "x", (4,), "(batch, kv_heads, seq, dim)")
    n_rep = check_positive_int(n_rep, "n_rep")
    return x.repeat_interleave(n_rep, dim=1)


def grouped_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Grouped-query attention; returns ``(output, weights)`` as :func:`attnlib.scaled_dot_product_attention`.

    Args:
        q: queries (batch, Hq, L, head_dim).
        k: keys (batch, Hkv, S, head_dim), with ``Hq % Hkv == 0``.
        v: values (batch, Hkv, S, v_dim).
        attn_mask: bool (True = may attend) or additive float mask broadcastable to (batch, Hq, L, S).
        is_causal: top-left-aligned causal mask, as in SDPA.
        scale: default :math:`1/\sqrt{\text{head\_dim}}`.

    Returns:
        output (batch, Hq, L, v_dim) and weights (batch, Hq, L, S).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(t, name)
        check_rank(t, name, (4,), _LAYOUT)
    hq, hkv = q.shape[1], k.shape[1]
    if v.shape[1] != hkv:
        raise ValueError(f"k {shape_str(k.shape)} and v {shape_str(v.shape)} must have the same number of heads")
    if hkv == 0 or hq == 0:
        raise ValueError(
            f"q has {hq} heads and k, v {hkv}: every tensor needs at least one head (q {shape_str(q.shape)}, "
            f"k {shape_str(k.shape)})"
        )
    if hq % hkv:
        raise ValueError(
            f"q has {hq} heads, k and v {hkv}: the number of query heads must be a multiple of the key/value heads "
            f"(q {shape_str(q.shape)}, k {shape_str(k.shape)})"
        )
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0] or q.shape[-1] != k.shape[-1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            "expected q (batch, Hq, L, head_dim), k (batch, Hkv, S, head_dim), v (batch, Hkv, S, v_dim); got "
            f"q {shape_str(q.shape)}, k {shape_str(k.shape)}, v {shape_str(v.shape)}"
        )
    n_rep = hq // hkv
    return scaled_dot_product_attention(
        q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask, is_causal=is_causal, scale=scale
    )


def sliding_window_mask(
    L: int,
    S: int | None = None,
    *,
    window: int,
    alignment: Alignment = "top-left",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean causal sliding-window mask of shape (L, S); True = may attend.

    Query i (at position ``p_i = i``, or ``i + S - L`` with ``alignment="bottom-right"``) sees the ``window``
    keys ``p_i - window < j <= p_i``, itself included. ``window >= S`` gives the plain causal mask
    (:func:`attnlib.causal_mask`); ``window = 1`` lets each query see only itself.
    """
    L = check_positive_int(L, "L")
    S = L if S is None else check_positive_int(S, "S")
    window = check_positive_int(window, "window")
    if alignment not in ("top-left", "bottom-right"):
        raise ValueError(f"alignment must be 'top-left' or 'bottom-right', got {alignment!r}")
    check_fits(2 * L * S, f"an ({L}, {S}) boolean mask", device, "L, S")
    shift = S - L if alignment == "bottom-right" else 0  # query i sits at position i + shift
    # key j is visible iff 0 <= (i + shift) - j < window: between two diagonals, built as bool (1 byte a score)
    ones = torch.ones(L, S, dtype=torch.bool, device=device)
    return ones.tril_(shift).triu_(shift - window + 1)


def _check_feature(phi: object, x: torch.Tensor, name: str) -> None:
    """phi(x): a finite, non-negative tensor of x's shape. A negative feature can make the denominator
    phi(q) . sum phi(k) zero or negative, and the output then means nothing."""
    if not isinstance(phi, torch.Tensor) or phi.shape != x.shape:
        got = shape_str(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
        raise ValueError(f"{name} must return a tensor of the input's shape {shape_str(x.shape)}, got {got}")
    smallest = float(phi.detach().amin()) if phi.numel() else 0.0
    if not torch.isfinite(phi).all():
        raise ValueError(f"{name} contains NaN or inf values; the feature map must be finite")
    if smallest < 0:
        raise ValueError(
            f"{name} has negative entries (smallest {smallest:.3g}); linear attention needs a non-negative feature "
            "map phi (the weights phi(q).phi(k) / sum_j phi(q).phi(k_j) must be >= 0), e.g. elu_feature_map"
        )


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\phi(x) = \mathrm{elu}(x) + 1`, positive everywhere (Katharopoulos et al., 2020)."""
    check_float_tensor(x, "x")
    return F.elu(x) + 1.0


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    feature_map: Callable[[torch.Tensor], torch.Tensor] = elu_feature_map,
    eps: float = 1e-6,
) -> torch.Tensor:
    r"""Linear (kernelised) attention; returns the output (batch, heads, L, v_dim).

    The softmax kernel :math:`\exp(q\cdot k)` is replaced by :math:`\phi(q)\cdot\phi(k)`, so the sum over keys
    can be done once and shared by every query:

    .. math:: \mathrm{out}_i = \frac{\phi(q_i)^\top \sum_j \phi(k_j) v_j^\top}{\phi(q_i)^\top \sum_j \phi(k_j)}

    With ``causal=True`` the sums run over j <= i (prefix sums). Cost O(L · d · d_v), not O(L · S · d).

    Args:
        q: (batch, heads, L, d); k: (batch, heads, S, d); v: (batch, heads, S, d_v). ``causal`` needs L == S.
        feature_map: elementwise non-negative map :math:`\phi`, default :func:`elu_feature_map`; a map whose
            output has a negative entry (or NaN/inf) is a ValueError, since the "weights" would not be a weighted
            average any more.
        eps: added to the denominator.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(t, name)
        check_rank(t, name, (4,), _LAYOUT)
    check_same_dtype_device({"q": q, "k": k, "v": v})
    causal = check_bool(causal, "causal")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"expected q (B, H, L, d), k (B, H, S, d), v (B, H, S, d_v); got q {shape_str(q.shape)}, "
            f"k {shape_str(k.shape)}, v {shape_str(v.shape)}"
        )
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal=True needs as many queries as keys, got L={q.shape[2]} and S={k.shape[2]}")
    if not callable(feature_map):
        raise TypeError(f"feature_map must be callable, got {type(feature_map).__name__}")
    eps = check_positive_float(eps, "eps")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_finite(t, name)
    if causal:
        B, H, L, d = q.shape
        itemsize = torch.empty((), dtype=q.dtype).element_size()
        check_fits(2 * B * H * L * d * v.shape[-1] * itemsize, f"the causal prefix sums (B, H, L, d, d_v) = "
                   f"{shape_str((B, H, L, d, v.shape[-1]))}", q.device, "q, v")  # fmt: skip
    phi_q, phi_k = feature_map(q), feature_map(k)  # (B, H, L, d), (B, H, S, d)
    for name, phi, t in (("feature_map(q)", phi_q, q), ("feature_map(k)", phi_k, k)):
        _check_feature(phi, t, name)
    if causal:
        kv = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # (B, H, L, d, d_v): sum over j <= i
        z = torch.cumsum(phi_k, dim=2)  # (B, H, L, d)
        numerator = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)  # (B, H, L, d_v)
        denominator = (phi_q * z).sum(-1, keepdim=True)
    else:
        kv = phi_k.transpose(-2, -1) @ v  # (B, H, d, d_v): shared by every query
        z = phi_k.sum(dim=2, keepdim=True)  # (B, H, 1, d)
        numerator = phi_q @ kv
        denominator = (phi_q * z).sum(-1, keepdim=True)
    return numerator / (denominator + eps)
