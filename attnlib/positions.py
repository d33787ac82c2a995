r"""Where positions come from: sinusoidal tables, rotary embeddings (RoPE) and ALiBi biases.

Attention by itself treats its keys as a set: permute the tokens and the outputs permute the same way. A model
that must know order gets it from one of these:

* :func:`sinusoidal_positions` — the fixed table of "Attention is all you need", **added** to the embeddings;
* :func:`apply_rope` — rotary position embedding: rotate each query and key by an angle proportional to its
  position, so that a query–key dot product depends only on their **offset**;
* :func:`alibi_slopes` / :func:`alibi_bias` — ALiBi: no embedding at all, a per-head penalty
  ``-slope * |i - j|`` **added** to the scores (an additive float mask in attnlib's convention).

Shapes follow attnlib: (batch, heads, seq, head_dim). Nothing modifies its inputs.
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    check_finite,
    check_fits,
    check_float_dtype,
    check_float_tensor,
    check_min_rank,
    check_positive_float,
    check_positive_int,
    check_same_device,
    shape_str,
)

__all__ = ["sinusoidal_positions", "rope_angles", "rotate_half", "apply_rope", "alibi_slopes", "alibi_bias"]


def _check_even(dim: int, name: str) -> int:
    dim = check_positive_int(dim, name)
    if dim % 2:
        raise ValueError(f"{name} must be even (positions are encoded in pairs of features), got {dim}")
    return dim


def sinusoidal_positions(
    seq_len: int,
    dim: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The sinusoidal position table, shape (seq_len, dim), to be added to (batch, seq, dim) embeddings.

    .. math:: PE[p, 2i] = \sin(p\,\omega_i),\quad PE[p, 2i+1] = \cos(p\,\omega_i),\quad
              \omega_i = \mathrm{base}^{-2i/\mathrm{dim}}

    Pair ``i`` turns at frequency :math:`\omega_i`: pair 0 once per :math:`2\pi` positions, the last pair
    slowest. ``dim`` must be even.
    """
    seq_len = check_positive_int(seq_len, "seq_len")
    dim = _check_even(dim, "dim")
    base = check_positive_float(base, "base")
    dtype = check_float_dtype(dtype)
    check_fits(seq_len * dim * 8 * 3, f"a ({seq_len}, {dim}) table (built in float64)", device, "seq_len, dim")
    position = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None]  # (seq_len, 1)
    omega = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)  # (dim / 2,)
    angle = position * omega  # (seq_len, dim / 2)
    table = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)  # interleave: sin, cos, sin, cos, ...
    return table.to(dtype)


def rope_angles(
    positions: torch.Tensor, dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(cos, sin)`` of the rotary angles :math:`p\,\theta_i`, each of shape (seq, dim).

    :math:`\theta_i = \mathrm{base}^{-2i/\mathrm{dim}}` for ``i = 0 .. dim/2 - 1``, repeated for the two halves
    of the features (feature ``i`` is paired with feature ``i + dim/2``, the "rotate-half" layout).
    ``positions`` is a 1-D integer (or float) tensor of the tokens' positions.
    """
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a 1-D torch.Tensor of token positions, got {type(positions).__name__}")
    if positions.dim() != 1:
        raise ValueError(f"positions must be 1-D (seq,), got shape {shape_str(positions.shape)}")
    _check_positions(positions)
    dim = _check_even(dim, "dim")
    base = check_positive_float(base, "base")
    dtype = check_float_dtype(dtype)
    theta = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)  # (dim / 2,)
    angle = positions.to(torch.float64)[:, None] * theta  # (seq, dim / 2)
    angle = torch.cat([angle, angle], dim=-1)  # (seq, dim): the same angle for feature i and i + dim/2
    return angle.cos().to(dtype), angle.sin().to(dtype)


def _check_positions(positions: torch.Tensor) -> None:
    """Token positions: integers or finite floats (a bool tensor is a mask, not positions)."""
    if positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(
            f"positions must hold integer (or float) token positions, got dtype {positions.dtype}; "
            "e.g. torch.arange(seq)"
        )
    if positions.is_floating_point():
        check_finite(positions, "positions")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim split in two halves: a 90° turn of every pair (x1[i], x2[i])."""
    check_float_tensor(x, "x")
    check_min_rank(x, "x", 1, "(..., dim)")
    if x.shape[-1] % 2:
        raise ValueError(f"x's last dim must be even to split it in two halves, got shape {shape_str(x.shape)}")
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor | None = None, *, base: float = 10000.0) -> torch.Tensor:
    r"""Rotary position embedding of queries or keys x (batch, heads, seq, head_dim); returns a new tensor.

    Feature pair (i, i + head_dim/2) of the token at position p is rotated by the angle :math:`p\,\theta_i`:

    .. math:: \mathrm{RoPE}(x, p) = x \odot \cos(p\theta) + \mathrm{rotate\_half}(x) \odot \sin(p\theta)

    Apply it to q and k (never to v), after the projections and before the scores. Then
    :math:`\mathrm{RoPE}(q, m) \cdot \mathrm{RoPE}(k, n)` depends on m and n only through m - n.

    ``positions`` (seq,) gives each token's position, default ``0 .. seq-1``; pass ``arange(t, t + n)`` for n new
    tokens decoded after t cached ones. Any leading dims are allowed as long as the last two are (seq, head_dim).
    """
    check_float_tensor(x, "x")
    check_min_rank(x, "x", 2, "(batch, heads, seq, head_dim)")
    check_finite(x, "x")
    seq, dim = x.shape[-2], x.shape[-1]
    if dim % 2:
        raise ValueError(f"x's head_dim must be even for RoPE (features are rotated in pairs), got {x.shape}")
    if positions is None:
        positions = torch.arange(seq, device=x.device)
    elif not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor of shape ({seq},), got {type(positions).__name__}")
    elif positions.shape != (seq,):
        raise ValueError(f"positions must have shape ({seq},) to match x {shape_str(x.shape)}, got {positions.shape}")
    else:
        check_same_device({"x": x, "positions": positions})
    cos, sin = rope_angles(positions, dim, base=base, dtype=x.dtype)
    return x * cos + rotate_half(x) * sin


def alibi_slopes(num_heads: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    r"""ALiBi's per-head slopes, shape (num_heads,).

    For a power of two H the slopes are the geometric sequence :math:`2^{-8h/H}`, h = 1..H (for 8 heads:
    1/2, 1/4, ..., 1/256). For other H, the ALiBi paper's rule: the slopes of the next-lower power of two,
    then every other slope of twice that many.
    """
    num_heads = check_positive_int(num_heads, "num_heads")
    dtype = check_float_dtype(dtype)

    def powers(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    lower = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = powers(lower)
    if lower < num_heads:
        slopes += powers(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=dtype, device=device)


def alibi_bias(
    num_heads: int,
    L: int,
    S: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""ALiBi's additive score bias, shape (num_heads, L, S): ``bias[h, i, j] = -slope_h * |pos_i - j|``.

    Add it to the scaled scores (pass it as a float ``attn_mask``, which broadcasts to (batch, heads, L, S)), and
    combine it with a causal mask for a decoder. Query i sits at position ``pos_i = i + S - L`` (aligned
    bottom-right, as for decoding with a KV cache; with L == S simply i). On the causal part j <= pos_i this is
    the paper's ``-slope * (pos_i - j)``.
    """
    L = check_positive_int(L, "L")
    S = L if S is None else check_positive_int(S, "S")
    dtype = check_float_dtype(dtype)
    num_heads = check_positive_int(num_heads, "num_heads")
    check_fits(num_heads * L * S * 8 * 2, f"a ({num_heads}, {L}, {S}) bias (built in float64)", device, "L, S")
    slopes = alibi_slopes(num_heads, dtype=torch.float64, device=device)
    pos_q = torch.arange(L, dtype=torch.float64, device=device)[:, None] + (S - L)
    pos_k = torch.arange(S, dtype=torch.float64, device=device)[None, :]
    return (-slopes[:, None, None] * (pos_q - pos_k).abs() + 0.0).to(dtype)  # + 0.0: no negative zeros
