"""Mask builders.

attnlib's convention is the one ``torch.nn.functional.scaled_dot_product_attention`` uses:

* a **boolean** mask is True where a query **may attend** to a key, False where it is blocked;
* a **float** mask is **added** to the scaled scores (0 keeps a score, ``-inf`` blocks it).

Masks have shape (L, S) or any shape that broadcasts to the scores' (batch, heads, L, S), where L is the
number of queries and S the number of keys. ``torch.nn.MultiheadAttention`` uses the opposite boolean
convention (True = ignore); :func:`to_mha_mask` and :func:`from_mha_mask` convert between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ._checks import (
    causal_bias_info,
    check_device,
    check_fits,
    check_index,
    check_positive_int,
    check_tensor,
    shape_str,
)

Alignment = Literal["top-left", "bottom-right"]


def causal_mask(
    L: int,
    S: int | None = None,
    *,
    alignment: Alignment = "top-left",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean causal (look-ahead) mask of shape (L, S); True = may attend.

    ``alignment`` says which corner the diagonal starts from when L != S:

    * ``"top-left"`` (what ``is_causal=True`` means in SDPA): query i sees keys j <= i.
    * ``"bottom-right"`` (what decoding with a KV cache needs): the last query sees every key;
      query i sees keys j <= i + (S - L). When L > S the first L - S rows see nothing.

    With L == S both alignments give the same lower-triangular mask.
    """
    L = check_positive_int(L, "L")
    S = L if S is None else check_positive_int(S, "S")
    device = check_device(device)
    if alignment not in ("top-left", "bottom-right"):
        raise ValueError(f"alignment must be 'top-left' or 'bottom-right', got {alignment!r}")
    diagonal = 0 if alignment == "top-left" else S - L
    check_fits(L * S, f"an ({L}, {S}) boolean mask", device, "L, S")
    return torch.ones(L, S, dtype=torch.bool, device=device).tril_(diagonal=diagonal)


def padding_mask(
    lengths: torch.Tensor | Sequence[int],
    S: int | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean key-padding mask of shape (batch, 1, 1, S) from each sequence's true length; True = real token.

    Item b may attend to keys ``0 .. lengths[b] - 1``; the rest are padding. A length of 0 masks every key, so
    that item's output rows are zeros (never a uniform average of padding). ``S`` defaults to ``max(lengths)``.
    ``lengths`` may be a 1-D integer tensor, a 1-D integer NumPy array or a sequence of (Python or NumPy) ints.
    The result broadcasts over heads and queries.
    """
    device = check_device(device)
    if isinstance(lengths, np.ndarray):
        if not np.issubdtype(lengths.dtype, np.integer) or lengths.ndim != 1:
            raise TypeError(
                f"lengths must be a 1-D integer array or a list of ints, got a {lengths.dtype} array of shape "
                f"{shape_str(lengths.shape)}"
            )
        lengths = lengths.tolist()
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.dim() != 1:
            raise TypeError(
                f"lengths must be a 1-D integer tensor or a list of ints, got a {lengths.dtype} tensor of shape "
                f"{shape_str(lengths.shape)}"
            )
        values = [int(v) for v in lengths.tolist()]
        device = lengths.device if device is None else device
    else:
        values = list(lengths)
        for i, v in enumerate(values):
            check_index(v, f"lengths[{i}]")
        values = [int(v) for v in values]
    if not values:
        raise ValueError("lengths is empty: need one length per batch item")
    if min(values) < 0:
        raise ValueError(f"lengths must be >= 0, got {values}")
    if S is None:
        S = max(values)
        if S == 0:
            raise ValueError("every length is 0 and S was not given: cannot build a mask with no keys")
    S = check_positive_int(S, "S")
    if max(values) > S:
        raise ValueError(f"lengths {values} exceed the key length S={S}")
    check_fits(len(values) * S, f"a ({len(values)}, 1, 1, {S}) boolean mask", device, "lengths, S")
    positions = torch.arange(S, device=device)
    lens = torch.tensor(values, device=device)
    return (positions[None, :] < lens[:, None])[:, None, None, :]


def _materialize(mask: object, name: str) -> object:
    """A torch ``CausalBias`` as the boolean (L, S) mask it stands for (its own lengths); anything else as it is."""
    L, S = getattr(mask, "seq_len_q", None), getattr(mask, "seq_len_kv", None)
    alignment = causal_bias_info(mask, L, S, name) if isinstance(L, int) and isinstance(S, int) else None
    if alignment is None:
        return mask
    return causal_mask(L, S, alignment=alignment, device=mask.device)


def to_additive(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean mask (True = may attend) -> float mask with 0 where allowed and -inf where blocked.

    A torch ``CausalBias`` is read as the causal mask it stands for.
    """
    mask = _materialize(mask, "mask")
    check_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be torch.bool to convert to an additive mask, got {mask.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, float("-inf"))


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Combine masks so a key is allowed only where every mask allows it.

    Boolean masks are ANDed. If any mask is a float (additive) mask, boolean ones are first turned into 0/-inf
    masks of that dtype and everything is added. ``None`` entries are skipped; all ``None`` gives ``None``.
    Shapes broadcast, e.g. a causal (L, S) mask with a padding (B, 1, 1, S) mask gives (B, 1, L, S).
    A torch ``CausalBias`` (``causal_upper_left``/``causal_lower_right``) is read as the causal mask it stands for.
    """
    present = [_materialize(m, f"masks[{i}]") for i, m in enumerate(m for m in masks if m is not None)]
    for i, m in enumerate(present):
        check_tensor(m, f"masks[{i}]")
        if m.dtype != torch.bool and not m.is_floating_point():
            raise TypeError(f"masks[{i}] must be torch.bool or a float mask, got {m.dtype}")
    if not present:
        return None
    try:
        torch.broadcast_shapes(*(m.shape for m in present))
    except RuntimeError:
        shapes = ", ".join(shape_str(m.shape) for m in present)
        raise ValueError(f"masks have shapes {shapes}, which do not broadcast together") from None
    float_dtypes = {m.dtype for m in present if m.is_floating_point()}
    if not float_dtypes:
        out = present[0]
        for m in present[1:]:
            out = out & m
        return out
    if len(float_dtypes) > 1:
        raise TypeError(f"float masks have different dtypes {sorted(map(str, float_dtypes))}; use one dtype")
    (dtype,) = float_dtypes
    out = None
    for m in present:
        term = to_additive(m, dtype) if m.dtype == torch.bool else m
        out = term if out is None else out + term
    return out


def to_mha_mask(mask: torch.Tensor) -> torch.Tensor:
    """attnlib/SDPA boolean mask (True = may attend) -> ``nn.MultiheadAttention``'s (True = ignore).

    Works for ``attn_mask`` and, after reshaping a (B, 1, 1, S) padding mask to (B, S), for
    ``key_padding_mask``. Float masks mean the same in both APIs and are returned unchanged. A torch
    ``CausalBias`` is read as the causal mask it stands for.
    """
    mask = _materialize(mask, "mask")
    check_tensor(mask, "mask")
    return ~mask if mask.dtype == torch.bool else mask


def from_mha_mask(mask: torch.Tensor) -> torch.Tensor:
    """``nn.MultiheadAttention`` boolean mask (True = ignore) -> attnlib/SDPA's (True = may attend)."""
    check_tensor(mask, "mask")
    return ~mask if mask.dtype == torch.bool else mask
