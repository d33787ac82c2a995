"""Hypothesis strategies shared by attnlib's tests.

Tensors are not drawn element by element (slow, and shrinks badly): a strategy draws the *shapes* and a *seed*,
and the values come from ``torch.randn`` with a generator seeded by it. Every case is built in float64; a test
casts it to the dtype it checks. Masks follow attnlib's convention (bool True = may attend, float added).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import settings
from hypothesis import strategies as st

import attnlib

# For the heavier properties (building torch modules per example): a third of the profile's max_examples.
fewer_examples = settings(max_examples=max(10, settings().max_examples // 3))

seeds = st.integers(min_value=0, max_value=2**31 - 1)

MASK_KINDS = ("none", "bool", "float", "causal-top-left", "causal-bottom-right", "padding", "combined")
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# Max |error| against a float64 oracle run on the same (already rounded) inputs. The fp16/bf16 bounds are a few
# times the errors measured on small random inputs (about 2e-3 and 1.5e-2; see the reference doc).
TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 2e-5, "rtol": 1e-5},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 6e-2, "rtol": 2e-2},
}


@dataclass(frozen=True)
class Shapes:
    batch: tuple[int, ...]  # leading dims, e.g. () or (B,) or (B, H)
    L: int
    S: int
    E: int
    Ev: int

    @property
    def scores(self) -> tuple[int, ...]:
        return (*self.batch, self.L, self.S)


@st.composite
def shapes(draw, max_batch_dims: int = 2, max_len: int = 5, max_dim: int = 6, min_batch_dims: int = 0) -> Shapes:
    """Small attention shapes; L and S are drawn independently, so L != S is common."""
    n = draw(st.integers(min_batch_dims, max(min_batch_dims, max_batch_dims)))
    batch = tuple(draw(st.integers(1, 3)) for _ in range(n))
    L, S = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    E, Ev = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    return Shapes(batch, L, S, E, Ev)


def randn(shape, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


@dataclass
class Case:
    """One attention problem in float64: q (..., L, E), k (..., S, E), v (..., S, Ev) and an optional mask."""

    shapes: Shapes
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    kind: str
    allowed: torch.Tensor = field(repr=False)  # bool (..., L, S): where the mask lets a query attend

    def cast(self, dtype: torch.dtype, device="cpu"):
        """(q, k, v, mask) in ``dtype`` on ``device``; a float mask is cast too, a bool mask kept."""
        mask = self.mask
        if mask is not None:
            mask = mask.to(device=device, dtype=dtype if mask.is_floating_point() else torch.bool)
        return tuple(t.to(device=device, dtype=dtype) for t in (self.q, self.k, self.v)) + (mask,)


def _mask_shape(draw, sh: Shapes) -> tuple[int, ...]:
    """A shape that broadcasts to the scores' shape: drop some leading dims, set some others to 1."""
    full = sh.scores
    drop = draw(st.integers(0, len(sh.batch)))
    kept = full[drop:]
    return tuple(1 if draw(st.booleans()) else d for d in kept[:-2]) + tuple(
        1 if (i == 0 and draw(st.booleans())) else d for i, d in enumerate(kept[-2:])
    )


def _padding(draw, sh: Shapes) -> torch.Tensor:
    """A padding mask from drawn lengths (0 allowed: that item attends to nothing), shaped to broadcast."""
    B = sh.batch[0]
    lengths = draw(st.lists(st.integers(0, sh.S), min_size=B, max_size=B))
    pad = attnlib.padding_mask(lengths, sh.S)  # (B, 1, 1, S)
    return pad.reshape((B,) + (1,) * (len(sh.batch) - 1) + (1, sh.S))


@st.composite
def cases(draw, kinds=MASK_KINDS, max_batch_dims: int = 2, max_len: int = 5, max_dim: int = 6) -> Case:
    kind = draw(st.sampled_from(kinds))
    needs_batch = kind in ("padding", "combined")  # a padding mask has one row per batch item
    sh = draw(shapes(max_batch_dims, max_len, max_dim, min_batch_dims=1 if needs_batch else 0))
    seed = draw(seeds)
    q = randn((*sh.batch, sh.L, sh.E), seed)
    k = randn((*sh.batch, sh.S, sh.E), seed + 1)
    v = randn((*sh.batch, sh.S, sh.Ev), seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    mask = None
    if kind == "bool":
        mask = torch.rand(_mask_shape(draw, sh), generator=g) < draw(st.sampled_from([0.5, 0.8, 1.0]))
    elif kind == "float":
        shape = _mask_shape(draw, sh)
        blocked = torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.3]))
        mask = torch.randn(shape, generator=g, dtype=torch.float64).masked_fill(blocked, float("-inf"))
    elif kind == "causal-top-left":
        mask = attnlib.causal_mask(sh.L, sh.S)
    elif kind == "causal-bottom-right":
        mask = attnlib.causal_mask(sh.L, sh.S, alignment="bottom-right")
    elif kind == "padding":
        mask = _padding(draw, sh)
    elif kind == "combined":
        causal = attnlib.causal_mask(sh.L, sh.S, alignment=draw(st.sampled_from(["top-left", "bottom-right"])))
        bias = torch.randn(sh.L, sh.S, generator=g, dtype=torch.float64)
        mask = attnlib.combine_masks(causal, _padding(draw, sh), bias if draw(st.booleans()) else None)
    if mask is None:
        allowed = torch.ones(sh.scores, dtype=torch.bool)
    elif mask.dtype == torch.bool:
        allowed = mask.expand(sh.scores)
    else:
        allowed = (mask != float("-inf")).expand(sh.scores)
    return Case(sh, q, k, v, mask, kind, allowed)


def masked_softmax_oracle(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Weights computed independently of attnlib: ``torch.softmax`` of the masked scores, NaN rows -> 0."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    w = torch.softmax(scores, dim=-1)
    return torch.where(torch.isnan(w), torch.zeros_like(w), w)
