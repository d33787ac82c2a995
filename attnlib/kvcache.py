"""A key/value cache for incremental (token-by-token) decoding.

A causal decoder that has already processed tokens 0..t-1 need not recompute their keys and values when token t
arrives: it appends token t's key and value to a cache and lets token t's query attend to everything cached.
The mask that does this is the causal mask aligned to the **bottom-right** corner: with T cached keys and n new
queries, new query i (position T - n + i) sees keys j <= i + T - n. The top-left alignment that SDPA's
``is_causal=True`` uses would let the single new query of a decoding step see only key 0, a silent bug.

:class:`KVCache` holds the keys and values, shapes (batch, heads, t, head_dim); :func:`decode_step_by_step`
runs a :class:`~attnlib.modules.MultiHeadAttention` over a sequence a few tokens at a time with a cache, giving
the same output as the module on the whole sequence with a causal mask.
"""

from __future__ import annotations

import torch

from ._checks import (
    check_fits,
    check_float_tensor,
    check_positive_int,
    check_rank,
    check_same_dtype_device,
    shape_str,
)
from .functional import merge_heads, scaled_dot_product_attention, split_heads
from .masks import causal_mask
from .modules import MultiHeadAttention

__all__ = ["KVCache", "decode_step_by_step"]

_LAYOUT = "(batch, heads, t, head_dim)"


class KVCache:
    """Keys and values of every token seen so far, shapes (batch, heads, length, head_dim) and (..., v_dim).

    Under ``torch.no_grad()`` / ``torch.inference_mode()`` (fast decoding) storage grows by doubling and new
    positions are written into it in place, so appending T tokens one at a time copies O(T) elements in total
    rather than the O(T^2) of ``torch.cat`` at every step. With autograd enabled every append is a
    ``torch.cat`` instead: nothing saved for the backward pass is ever overwritten, so gradients flow through
    decoding to the appended keys and values (and to what produced them). Appended tensors are copied, never
    modified; :attr:`keys` and :attr:`values` are views of what is cached so far.

    Example::

        cache = KVCache()
        for t in range(T):
            cache.append(k[:, :, t : t + 1], v[:, :, t : t + 1])
            out_t, weights_t = cache.attend(q[:, :, t : t + 1])
    """

    def __init__(self, capacity: int = 16):
        self._capacity = check_positive_int(capacity, "capacity")
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._length = 0

    def __len__(self) -> int:
        """The number of cached positions."""
        return self._length

    @property
    def keys(self) -> torch.Tensor:
        """Cached keys (batch, heads, length, head_dim)."""
        self._require_data()
        return self._k[:, :, : self._length]

    @property
    def values(self) -> torch.Tensor:
        """Cached values (batch, heads, length, v_dim)."""
        self._require_data()
        return self._v[:, :, : self._length]

    def _require_data(self) -> None:
        if self._k is None:
            raise ValueError("the cache is empty: append keys and values first")

    def reset(self) -> None:
        """Forget everything (start a new sequence)."""
        self._k = self._v = None
        self._length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add the keys (batch, heads, t, head_dim) and values (batch, heads, t, v_dim) of t new positions."""
        check_float_tensor(k, "k")
        check_float_tensor(v, "v")
        check_rank(k, "k", (4,), _LAYOUT)
        check_rank(v, "v", (4,), "(batch, heads, t, v_dim)")
        check_same_dtype_device({"k": k, "v": v})
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"k {shape_str(k.shape)} and v {shape_str(v.shape)} must agree in batch, heads and t")
        if k.shape[2] == 0:
            raise ValueError(f"k has t=0 new positions (shape {shape_str(k.shape)}); append at least one")
        if self._k is not None:
            expected_k = (self._k.shape[0], self._k.shape[1], self._k.shape[3])
            expected_v = (self._v.shape[0], self._v.shape[1], self._v.shape[3])
            if (k.shape[0], k.shape[1], k.shape[3]) != expected_k or (v.shape[0], v.shape[1], v.shape[3]) != expected_v:
                raise ValueError(
                    f"new k {shape_str(k.shape)} / v {shape_str(v.shape)} do not match the cached keys "
                    f"{shape_str(self.keys.shape)} / values {shape_str(self.values.shape)} in batch, heads or dim"
                )
            check_same_dtype_device({"cached keys": self._k, "k": k})
        t = k.shape[2]
        needed = self._length + t
        if torch.is_grad_enabled():  # out of place: earlier keys/values may be saved for backward
            if self._k is None:
                self._k, self._v = k.clone(), v.clone()
            else:
                self._k = torch.cat([self.keys, k], dim=2)
                self._v = torch.cat([self.values, v], dim=2)
            self._length = needed
            return
        if self._k is None or needed > self._k.shape[2]:
            self._grow(k, v, needed)
        self._k[:, :, self._length : needed] = k
        self._v[:, :, self._length : needed] = v
        self._length = needed

    def _grow(self, k: torch.Tensor, v: torch.Tensor, needed: int) -> None:
        capacity = self._capacity if self._k is None else self._k.shape[2]
        while capacity < needed:
            capacity *= 2
        per_position = k[:, :, :1].numel() * k.element_size() + v[:, :, :1].numel() * v.element_size()
        check_fits(capacity * per_position, f"a cache of {capacity} positions", k.device, "k, v")
        new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
        new_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
        if self._k is not None:  # views handed out earlier keep pointing at the old storage, unchanged
            new_k[:, :, : self._length] = self._k[:, :, : self._length]
            new_v[:, :, : self._length] = self._v[:, :, : self._length]
        self._k, self._v = new_k, new_v

    def attend(self, q: torch.Tensor, *, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of the n newest positions' queries q (batch, heads, n, head_dim) over every cached key.

        The queries must belong to the last n cached positions (append their keys and values first). The causal
        mask is aligned bottom-right: query i sees keys j <= i + length - n. Returns ``(output, weights)`` as
        :func:`attnlib.scaled_dot_product_attention` does: (batch, heads, n, v_dim) and (batch, heads, n, length).
        """
        self._require_data()
        check_float_tensor(q, "q")
        check_rank(q, "q", (4,), _LAYOUT)
        n = q.shape[2]
        if n > self._length:
            raise ValueError(
                f"q has {n} new positions but the cache holds only {self._length}; append their keys and values "
                "before attending"
            )
        mask = None if n == 1 else causal_mask(n, self._length, alignment="bottom-right", device=q.device)
        return scaled_dot_product_attention(q, self.keys, self.values, mask, scale=scale)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None):
        """Append ``k`` and ``v`` of the new positions, then :meth:`attend` with their queries ``q``."""
        self.append(k, v)
        return self.attend(q, scale=scale)


def decode_step_by_step(mha: MultiHeadAttention, x: torch.Tensor, *, step: int = 1) -> torch.Tensor:
    """Causal self-attention of ``mha`` over x (batch, T, embed_dim), fed ``step`` tokens at a time with a KV cache.

    Each step projects only the new tokens, appends their keys and values to a :class:`KVCache` and attends from
    their queries to everything cached. The result (batch, T, embed_dim) equals
    ``mha(x, is_causal=True)[0]`` in eval mode (no dropout is applied here), and is differentiable like it
    (run it under ``torch.no_grad()`` for the fast, in-place cache).
    """
    if not isinstance(mha, MultiHeadAttention):
        raise TypeError(f"mha must be an attnlib.MultiHeadAttention, got {type(mha).__name__}")
    if mha.kdim != mha.embed_dim or mha.vdim != mha.embed_dim:
        raise ValueError("decode_step_by_step needs self-attention (kdim == vdim == embed_dim)")
    check_float_tensor(x, "x")
    check_rank(x, "x", (3,), f"(batch, T, {mha.embed_dim})")
    if x.shape[-1] != mha.embed_dim:
        raise ValueError(f"x has {x.shape[-1]} features (shape {shape_str(x.shape)}); mha expects {mha.embed_dim}")
    weight = mha.w_q.weight
    if x.dtype != weight.dtype:
        raise TypeError(f"x has dtype {x.dtype} but mha's weights are {weight.dtype}; convert one of them")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but mha's weights are on {weight.device}; move one of them")
    step = check_positive_int(step, "step")
    cache = KVCache(capacity=max(step, 16))
    outputs = []
    for t0 in range(0, x.shape[1], step):
        new = x[:, t0 : t0 + step]
        q, k, v = (split_heads(w(new), mha.num_heads) for w in (mha.w_q, mha.w_k, mha.w_v))
        out, _ = cache.step(q, k, v)
        outputs.append(mha.w_o(merge_heads(out)))
    return torch.cat(outputs, dim=1)
