r"""The NumPy reference: attention written to be read, and the oracle the rest of attnlib is tested against.

Two versions of the same formula

.. math:: \mathrm{out}_i = \sum_j w_{ij} v_j,\qquad
          w_{ij} = \frac{\exp(s_{ij} - m_i)}{\sum_{j'} \exp(s_{ij'} - m_i)},\qquad
          s_{ij} = \frac{q_i \cdot k_j}{\sqrt{d_k}},\qquad m_i = \max_j s_{ij}

* :func:`attention_loops` walks through it token by token with Python loops, one line per symbol;
* :func:`attention` computes the same thing with array operations, over any leading batch/head dims.

Masks follow attnlib's convention: boolean True = may attend, float masks are added to the scores. A query
whose keys are all masked gets zero weights and a zero output.
"""

from __future__ import annotations

import math

import numpy as np

from ._checks import causal_bias_info

__all__ = ["softmax", "attention_loops", "attention"]


def _as_float_array(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float64)
        else:
            raise TypeError(f"{name} must be an array of numbers, got dtype {arr.dtype}")
    return arr


def softmax(x: object, axis: int = -1, temperature: float = 1.0) -> np.ndarray:
    """Stable softmax of ``x / temperature`` along ``axis``; an all ``-inf`` slice gives zeros, not NaN."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive, finite number, got {temperature}")
    z = _as_float_array(x, "x")
    if z.ndim == 0 or z.shape[axis] == 0:
        raise ValueError(f"x must have at least one entry along axis={axis}, got shape {z.shape}")
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore"):  # shift first: x / T alone overflows for tiny T; here only -inf can appear
        e = np.exp((z - m) / temperature)
    total = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def _mask_array(mask: object, score_shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` as an array that broadcasts to the scores' ``score_shape`` (..., L, S); torch's CausalBias too."""
    L, S = score_shape[-2:]
    alignment = causal_bias_info(mask, L, S, name="mask")
    if alignment is not None:
        return np.tril(np.ones((L, S), dtype=bool), k=0 if alignment == "top-left" else S - L)
    arr = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"mask must be boolean (True = may attend) or an additive float mask, got dtype {arr.dtype}")
    try:
        np.broadcast_shapes(arr.shape, score_shape)
        ok = arr.ndim <= len(score_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"mask has shape {arr.shape}, which does not broadcast to the scores' shape {score_shape} (..., L, S)"
        )
    return arr


def _check_scale(scale: object, E: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(E)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive, finite number, got {scale!r}")
    return float(scale)


def _check(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"q, k, v must be (..., L, E), (..., S, E), (..., S, Ev); got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature dim, got q {q.shape} and k {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length S, got k {k.shape} and v {v.shape}")


def attention_loops(q: object, k: object, v: object, mask: object = None, scale: float | None = None):
    """Single-sequence attention with explicit loops: q (L, E), k (S, E), v (S, Ev), mask (L, S).

    Returns ``(output (L, Ev), weights (L, S))``. Slow on purpose: every step of the formula is one line.
    """
    q, k, v = (_as_float_array(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    _check(q, k, v)
    if q.ndim != 2:
        raise ValueError(f"attention_loops takes one sequence: q must be (L, E), got {q.shape}")
    L, E = q.shape
    S, Ev = v.shape
    scale = _check_scale(scale, E)
    mask = None if mask is None else np.broadcast_to(_mask_array(mask, (L, S)), (L, S))
    weights = np.zeros((L, S))
    output = np.zeros((L, Ev))
    for i in range(L):  # one query at a time
        scores = []
        for j in range(S):  # compare it with every key
            s = sum(q[i, d] * k[j, d] for d in range(E)) * scale
            if mask is not None:
                if mask.dtype == bool:
                    s = s if mask[i, j] else -math.inf
                else:
                    s = s + mask[i, j]
            scores.append(s)
        m = max(scores)
        if m == -math.inf:  # every key is masked: this query attends to nothing
            continue
        exps = [math.exp(s - m) for s in scores]
        total = sum(exps)
        for j in range(S):
            weights[i, j] = exps[j] / total
            for d in range(Ev):  # weighted sum of the values
                output[i, d] += weights[i, j] * v[j, d]
    return output, weights


def attention(q: object, k: object, v: object, mask: object = None, scale: float | None = None):
    """Vectorised attention over any leading dims: q (..., L, E), k (..., S, E), v (..., S, Ev).

    ``mask`` broadcasts to (..., L, S). Returns ``(output (..., L, Ev), weights (..., L, S))``.
    """
    q, k, v = (_as_float_array(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    _check(q, k, v)
    scale = _check_scale(scale, q.shape[-1])
    raw = q @ np.swapaxes(k, -1, -2)
    mask = None if mask is None else _mask_array(mask, raw.shape)
    if mask is not None and mask.dtype == bool:
        raw = np.where(mask, raw, -np.inf)
    if scale > 1.0:  # multiplying enlarges: subtract each row's max first, so that nothing can overflow
        m = np.max(raw, axis=-1, keepdims=True)
        raw = raw - np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore"):  # after the shift only -inf (weight 0) can appear
        scores = raw * scale
    if mask is not None and mask.dtype != bool:
        scores = scores + mask
    weights = softmax(scores, axis=-1)
    return weights @ v, weights
