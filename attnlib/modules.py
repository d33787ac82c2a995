r"""Attention layers as thin ``nn.Module`` s over :mod:`attnlib.functional`.

Inputs are batch-first: (batch, seq, features), or (seq, features) for one unbatched sequence. Masks use
attnlib's convention (bool True = may attend, float added) and broadcast to the scores' (batch, heads, L, S);
torch's ``CausalBias`` (``causal_upper_left``/``causal_lower_right``) is read as its causal mask.
Every ``forward`` returns ``(output, weights)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import (
    check_bool,
    check_dropout,
    check_finite,
    check_float_tensor,
    check_positive_int,
    check_rank,
    shape_str,
)
from .functional import (
    attention_core,
    check_attention_output,
    merge_heads,
    prepare_mask,
    scaled_dot_product_attention,
    split_heads,
)


def _check_input(x: object, name: str, features: int, like: torch.Tensor, *, finite: bool = True) -> torch.Tensor:
    x = check_float_tensor(x, name)
    check_rank(x, name, (2, 3), f"(batch, seq, {features}) or (seq, {features})")
    if x.shape[-1] != features:
        raise ValueError(
            f"{name} has {x.shape[-1]} features (shape {shape_str(x.shape)}); this layer expects {features}"
        )
    if x.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's weights are {like.dtype}; convert one of them")
    if x.device != like.device:
        raise ValueError(f"{name} is on {x.device} but the layer's weights are on {like.device}")
    if x.shape[-2] == 0:
        raise ValueError(f"{name} is an empty sequence (shape {shape_str(x.shape)}); need at least one position")
    if finite:
        check_finite(x, name)
    return x


class SelfAttention(nn.Module):
    r"""Single-head self-attention with learned projections.

    .. math:: Q = X W_Q,\ K = X W_K,\ V = X W_V,\quad \mathrm{out} = \mathrm{softmax}(QK^\top/\sqrt{d_k} + M)\,V

    ``x`` is (batch, seq, d_model); output (batch, seq, d_v); weights (batch, seq, seq).
    """

    def __init__(self, d_model: int, d_k: int, d_v: int | None = None, *, bias: bool = False, **factory):
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.d_k = check_positive_int(d_k, "d_k")
        self.d_v = self.d_k if d_v is None else check_positive_int(d_v, "d_v")
        self.w_q = nn.Linear(d_model, self.d_k, bias=bias, **factory)
        self.w_k = nn.Linear(d_model, self.d_k, bias=bias, **factory)
        self.w_v = nn.Linear(d_model, self.d_v, bias=bias, **factory)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, *, is_causal: bool = False):
        _check_input(x, "x", self.d_model, self.w_q.weight)
        q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)
        return scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal)


class CrossAttention(nn.Module):
    r"""Single-head cross-attention: queries from ``x``, keys and values from ``context``.

    ``x`` is (batch, L, d_query) (e.g. the decoder), ``context`` is (batch, S, d_context) (e.g. the encoder's
    output); L, S and the two widths may all differ. Output (batch, L, d_v); weights (batch, L, S). A padding
    mask of the context, shape (batch, 1, S) or (batch, L, S), keeps queries off the padding.
    """

    def __init__(
        self, d_query: int, d_context: int, d_k: int, d_v: int | None = None, *, bias: bool = False, **factory
    ):
        super().__init__()
        self.d_query = check_positive_int(d_query, "d_query")
        self.d_context = check_positive_int(d_context, "d_context")
        self.d_k = check_positive_int(d_k, "d_k")
        self.d_v = self.d_k if d_v is None else check_positive_int(d_v, "d_v")
        self.w_q = nn.Linear(d_query, self.d_k, bias=bias, **factory)
        self.w_k = nn.Linear(d_context, self.d_k, bias=bias, **factory)
        self.w_v = nn.Linear(d_context, self.d_v, bias=bias, **factory)

    def forward(self, x: torch.Tensor, context: torch.Tensor, attn_mask: torch.Tensor | None = None):
        _check_input(x, "x", self.d_query, self.w_q.weight)
        _check_input(context, "context", self.d_context, self.w_k.weight)
        if x.dim() != context.dim() or (x.dim() == 3 and x.shape[0] != context.shape[0]):
            raise ValueError(
                f"x {shape_str(x.shape)} and context {shape_str(context.shape)} must both be batched with the same "
                "batch size, or both unbatched"
            )
        q, k, v = self.w_q(x), self.w_k(context), self.w_v(context)
        return scaled_dot_product_attention(q, k, v, attn_mask)


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention: project, split into heads, attend per head, merge, project out.

    .. math:: \mathrm{head}_h = \mathrm{Attention}(Q W_Q^{(h)}, K W_K^{(h)}, V W_V^{(h)}),\quad
              \mathrm{MHA} = [\mathrm{head}_1; \dots; \mathrm{head}_H]\, W_O

    Each head works in ``head_dim = embed_dim // num_heads`` dims and is scaled by :math:`1/\sqrt{\text{head\_dim}}`.
    Batch-first: query (batch, L, embed_dim), key (batch, S, kdim), value (batch, S, vdim); key and value default
    to query (self-attention). Returns output (batch, L, embed_dim) and per-head weights (batch, heads, L, S)
    (``None`` when ``need_weights=False``).

    Same math as ``torch.nn.MultiheadAttention`` without ``add_bias_kv``/``add_zero_attn``; use
    :meth:`from_torch` and :meth:`to_torch` to move weights between the two. Note the masks: attnlib's boolean
    masks are True = may attend, the torch module's are True = ignore (see :func:`attnlib.to_mha_mask`).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        **factory,
    ):
        super().__init__()
        self.embed_dim = check_positive_int(embed_dim, "embed_dim")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if embed_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} does not divide embed_dim={embed_dim}; each head needs an equal share "
                f"(try num_heads in {[h for h in range(1, embed_dim + 1) if embed_dim % h == 0][:8]})"
            )
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else check_positive_int(kdim, "kdim")
        self.vdim = embed_dim if vdim is None else check_positive_int(vdim, "vdim")
        self.dropout = check_dropout(dropout, "dropout")
        self.w_q = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.w_k = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.w_v = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.w_o = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        *,
        is_causal: bool = False,
        need_weights: bool = True,
    ):
        check_bool(need_weights, "need_weights")
        check_bool(is_causal, "is_causal")
        key = query if key is None else key
        value = key if value is None else value
        # each distinct tensor is checked once (self-attention: query is key is value, one finiteness pass)
        _check_input(query, "query", self.embed_dim, self.w_q.weight)
        _check_input(key, "key", self.kdim, self.w_k.weight, finite=key is not query)
        _check_input(value, "value", self.vdim, self.w_v.weight, finite=value is not key and value is not query)
        if not (query.dim() == key.dim() == value.dim()):
            raise ValueError(
                f"query {shape_str(query.shape)}, key {shape_str(key.shape)} and value {shape_str(value.shape)} "
                "must all be batched (batch, seq, features) or all unbatched (seq, features)"
            )
        if query.shape[:-2] != key.shape[:-2] or key.shape[:-1] != value.shape[:-1]:
            raise ValueError(
                f"batch sizes and key/value lengths must match, got query {shape_str(query.shape)}, "
                f"key {shape_str(key.shape)}, value {shape_str(value.shape)}"
            )
        heads_shape = (*query.shape[:-2], self.num_heads)
        q_shape = (*heads_shape, query.shape[-2], self.head_dim)
        k_shape = (*heads_shape, key.shape[-2], self.head_dim)
        mask = prepare_mask(
            attn_mask, is_causal, query.new_empty(()).expand(q_shape), query.new_empty(()).expand(k_shape)
        )
        out, weights = self._attend(query, key, value, mask)
        return out, (weights if need_weights else None)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None):
        """The module's math on inputs :meth:`forward` (or a caller that checked them) has validated: project,
        split into heads, :func:`attnlib.functional.attention_core`, merge, project out. One check after it."""
        q = split_heads(self.w_q(query), self.num_heads)  # (batch, heads, L, head_dim)
        k = split_heads(self.w_k(key), self.num_heads)  # (batch, heads, S, head_dim)
        v = split_heads(self.w_v(value), self.num_heads)
        p = self.dropout if self.training else 0.0
        out, weights = attention_core(q, k, v, mask, 1.0 / self.head_dim**0.5, p)
        check_attention_output(out, q, k)
        return self.w_o(merge_heads(out)), weights

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of ``mha``'s weights in an attnlib module (``batch_first`` does not matter for the weights)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("mha uses add_bias_kv or add_zero_attn, which attnlib's MultiHeadAttention does not model")
        weight = mha.out_proj.weight
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            dropout=mha.dropout,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            if mha.in_proj_weight is not None:
                w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
            else:
                w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for layer, w in zip((new.w_q, new.w_k, new.w_v), (w_q, w_k, w_v), strict=True):
                layer.weight.copy_(w)
            if mha.in_proj_bias is not None:
                for layer, b in zip((new.w_q, new.w_k, new.w_v), mha.in_proj_bias.chunk(3), strict=True):
                    layer.bias.copy_(b)
            new.w_o.weight.copy_(mha.out_proj.weight)
            if new.w_o.bias is not None:
                new.w_o.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def to_torch(self) -> nn.MultiheadAttention:
        """An equivalent ``torch.nn.MultiheadAttention`` (``batch_first=True``) holding a copy of these weights."""
        weight = self.w_q.weight
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=self.w_q.bias is not None,
            kdim=self.kdim,
            vdim=self.vdim,
            batch_first=True,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            if mha.in_proj_weight is not None:
                mha.in_proj_weight.copy_(torch.cat([self.w_q.weight, self.w_k.weight, self.w_v.weight]))
            else:
                mha.q_proj_weight.copy_(self.w_q.weight)
                mha.k_proj_weight.copy_(self.w_k.weight)
                mha.v_proj_weight.copy_(self.w_v.weight)
            if mha.in_proj_bias is not None:
                mha.in_proj_bias.copy_(torch.cat([self.w_q.bias, self.w_k.bias, self.w_v.bias]))
            mha.out_proj.weight.copy_(self.w_o.weight)
            if mha.out_proj.bias is not None:
                mha.out_proj.bias.copy_(self.w_o.bias)
        mha.train(self.training)
        return mha
