"""Input validation shared by every public function.

Each check raises ``TypeError`` (wrong kind of thing: dtype, Python type) or ``ValueError`` (right kind, wrong
value: shape, length, sign) with a message that names the argument and says what was seen and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def shape_str(shape: Sequence[int]) -> str:
    """Format a shape as ``(2, 3, 4)`` for error messages."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float_tensor(x: object, name: str) -> torch.Tensor:
    x = check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    return x


def check_min_rank(x: torch.Tensor, name: str, rank: int, layout: str) -> None:
    if x.dim() < rank:
        raise ValueError(f"{name} must have at least {rank} dims {layout}, got shape {shape_str(x.shape)}")


def check_rank(x: torch.Tensor, name: str, ranks: Sequence[int], layout: str) -> None:
    if x.dim() not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have {expected} dims {layout}, got shape {shape_str(x.shape)}")


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number, got {value}")
    return float(value)


def check_dropout(p: object, name: str = "dropout_p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(p).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return float(p)


def check_same_dtype_device(tensors: dict[str, torch.Tensor]) -> None:
    """All named tensors share the first one's dtype and device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}; convert them to one dtype first"
            )
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on device {t.device} but {first_name} is on {first.device}; move them to one device first"
            )


def check_mask(mask: object, target_shape: Sequence[int], like: torch.Tensor, name: str = "attn_mask") -> torch.Tensor:
    """Validate an attention mask against the score shape ``(..., L, S)`` it must broadcast to.

    Boolean masks (True = may attend) and floating masks of ``like``'s dtype (added to the scores) are accepted.
    """
    mask = check_tensor(mask, name)
    if mask.dtype != torch.bool and mask.dtype != like.dtype:
        hint = (
            " (a 0/1 integer mask is ambiguous: use .bool(), True = may attend)" if not mask.is_floating_point() else ""
        )
        raise TypeError(
            f"{name} must be torch.bool (True = may attend) or an additive float mask of the query's dtype "
            f"{like.dtype}, got {mask.dtype}{hint}"
        )
    if mask.device != like.device:
        raise ValueError(f"{name} is on device {mask.device} but the query is on {like.device}")
    target = tuple(int(s) for s in target_shape)
    expected = f"a shape that broadcasts to the scores' shape {shape_str(target)} (batch..., L, S)"
    if mask.dim() < 2:
        raise ValueError(
            f"{name} must have at least 2 dims (L, S); got shape {shape_str(mask.shape)}. For one row of keys use "
            f"shape (1, S), or build a padding mask with attnlib.padding_mask; expected {expected}"
        )
    if mask.dim() > len(target):
        raise ValueError(f"{name} has shape {shape_str(mask.shape)} with too many dims; expected {expected}")
    for m, t in zip(reversed(mask.shape), reversed(target), strict=False):
        if m != 1 and m != t:
            raise ValueError(f"{name} has shape {shape_str(mask.shape)}; expected {expected}")
    if mask.is_floating_point() and (torch.isnan(mask).any() or torch.isposinf(mask).any()):
        raise ValueError(f"{name} contains NaN or +inf; an additive mask holds 0 (keep) or -inf (block)")
    return mask
