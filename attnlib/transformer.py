r"""The pre-norm Transformer block, a tiny decoder-only language model, its loss, and generation with a KV cache.

.. math:: x \leftarrow x + \mathrm{MHSA}(\mathrm{LN}_1(x)),\qquad x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x))

* :class:`TransformerBlock` — one pre-norm block; equals ``nn.TransformerEncoderLayer(norm_first=True,
  batch_first=True)`` in eval mode (:meth:`TransformerBlock.from_torch` copies its weights).
* :class:`TinyDecoder` — token + learned position embeddings, a stack of blocks under a causal mask, a final
  LayerNorm and a linear read-out to next-token logits.
* :func:`causal_lm_loss` — mean cross-entropy of predicting token t + 1 from positions 0..t.
* :func:`generate` — greedy or sampled continuation, with one :class:`attnlib.kvcache.KVCache` per block
  (``use_cache=False`` recomputes the whole prefix at every step and gives the same tokens).

Inputs are batch-first: x (batch, seq, d_model), tokens (batch, seq) int64; attention weights (batch, heads,
L, S). Boolean masks are True = may attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_bool,
    check_finite,
    check_float_tensor,
    check_positive_int,
    check_rank,
    check_tensor,
    shape_str,
)
from .functional import merge_heads, prepare_mask, softmax, split_heads
from .kvcache import KVCache
from .masks import causal_mask
from .modules import MultiHeadAttention

__all__ = ["TransformerBlock", "TinyDecoder", "causal_lm_loss", "generate"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class TransformerBlock(nn.Module):
    r"""A pre-norm Transformer block: multi-head self-attention and an MLP, each behind a LayerNorm and a residual.

    ``x`` (batch, seq, d_model) -> (batch, seq, d_model). ``forward`` returns ``(output, weights)`` with the
    attention weights (batch, heads, L, S). No dropout. ``d_ff`` defaults to ``4 * d_model``.

    With ``cache`` (a :class:`~attnlib.kvcache.KVCache`), ``x`` holds only the **new** positions: their keys and
    values are appended to the cache and their queries attend to everything cached (causal, bottom-right).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int | None = None,
        *,
        activation: str = "gelu",
        bias: bool = True,
        eps: float = 1e-5,
        **factory,
    ):
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.d_ff = 4 * d_model if d_ff is None else check_positive_int(d_ff, "d_ff")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.ln1 = nn.LayerNorm(d_model, eps=eps, bias=bias, **factory)
        self.attn = MultiHeadAttention(d_model, num_heads, bias=bias, **factory)
        self.ln2 = nn.LayerNorm(d_model, eps=eps, bias=bias, **factory)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, self.d_ff, bias=bias, **factory),
            _ACTIVATIONS[activation](),
            nn.Linear(self.d_ff, d_model, bias=bias, **factory),
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        *,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_float_tensor(x, "x")
        check_rank(x, "x", (3,), f"(batch, seq, {self.d_model})")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x has {x.shape[-1]} features (shape {shape_str(x.shape)}); the block expects {self.d_model}"
            )
        weight = self.attn.w_q.weight
        if x.dtype != weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the block's weights are {weight.dtype}; convert one of them")
        if x.device != weight.device:
            raise ValueError(f"x is on {x.device} but the block's weights are on {weight.device}; move one of them")
        if x.shape[1] == 0:
            raise ValueError(f"x is an empty sequence (shape {shape_str(x.shape)}); need at least one position")
        check_finite(x, "x")
        check_bool(is_causal, "is_causal")
        mask = None
        if cache is None:
            heads = (x.shape[0], self.attn.num_heads, x.shape[1], self.attn.head_dim)
            like = x.new_empty(()).expand(heads)
            mask = prepare_mask(attn_mask, is_causal, like, like)
        else:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be an attnlib.kvcache.KVCache, got {type(cache).__name__}")
            if attn_mask is not None or is_causal:
                raise ValueError("with a cache the mask is implied (causal, bottom-right); pass no attn_mask/is_causal")
        return self._forward(x, mask, cache)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None):
        """The block's math on an input :meth:`forward` (or :class:`TinyDecoder`) has checked."""
        h = self.ln1(x)
        if cache is None:
            a, weights = self.attn._attend(h, h, h, mask)
        else:
            heads = self.attn.num_heads
            q, k, v = (split_heads(w(h), heads) for w in (self.attn.w_q, self.attn.w_k, self.attn.w_v))
            out, weights = cache.step(q, k, v)
            a = self.attn.w_o(merge_heads(out))
        x = x + a
        return x + self.mlp(self.ln2(x)), weights

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> TransformerBlock:
        """A copy of a ``nn.TransformerEncoderLayer(norm_first=True)``'s weights (relu or gelu activation)."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"layer must be a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        if not layer.norm_first:
            raise ValueError("layer is post-norm (norm_first=False); TransformerBlock is pre-norm")
        kinds = {1: "relu", 2: "gelu"}
        kind = kinds.get(getattr(layer, "activation_relu_or_gelu", 0))
        if kind is None:
            raise ValueError("layer's activation is neither relu nor gelu")
        weight = layer.linear1.weight
        block = cls(
            layer.linear1.in_features,
            layer.self_attn.num_heads,
            layer.linear1.out_features,
            activation=kind,
            bias=layer.linear1.bias is not None,
            eps=layer.norm1.eps,
            device=weight.device,
            dtype=weight.dtype,
        )
        block.attn = MultiHeadAttention.from_torch(layer.self_attn)
        with torch.no_grad():
            for ours, theirs in ((block.ln1, layer.norm1), (block.ln2, layer.norm2)):
                ours.weight.copy_(theirs.weight)
                if ours.bias is not None:
                    ours.bias.copy_(theirs.bias)
            for ours, theirs in ((block.mlp[0], layer.linear1), (block.mlp[2], layer.linear2)):
                ours.weight.copy_(theirs.weight)
                if ours.bias is not None:
                    ours.bias.copy_(theirs.bias)
        return block.train(layer.training)


class TinyDecoder(nn.Module):
    """A decoder-only language model: embeddings, ``num_layers`` causal :class:`TransformerBlock` s, read-out.

    ``tokens`` (batch, T) int64 -> logits (batch, T, vocab_size), where logits[:, t] predicts token t + 1.
    Positions are learned embeddings for ``0 .. max_len - 1``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_heads: int,
        num_layers: int,
        max_len: int,
        d_ff: int | None = None,
        **factory,
    ):
        super().__init__()
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.max_len = check_positive_int(max_len, "max_len")
        check_positive_int(num_layers, "num_layers")
        self.token = nn.Embedding(vocab_size, d_model, **factory)
        self.position = nn.Embedding(max_len, d_model, **factory)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, num_heads, d_ff, **factory) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model, **factory)
        self.head = nn.Linear(d_model, vocab_size, bias=False, **factory)

    def new_caches(self) -> list[KVCache]:
        """One empty KV cache per block, for :meth:`forward` with ``caches``."""
        return [KVCache(capacity=self.max_len) for _ in self.blocks]

    def forward(self, tokens: torch.Tensor, *, caches: list[KVCache] | None = None, need_weights: bool = False):
        """Logits (batch, T, vocab_size); with ``need_weights`` also the list of each block's weights.

        With ``caches`` (from :meth:`new_caches`), ``tokens`` are the next T positions after those cached.
        """
        check_tensor(tokens, "tokens")
        if tokens.dtype != torch.long:
            raise TypeError(f"tokens must be int64 token ids, got {tokens.dtype}")
        check_rank(tokens, "tokens", (2,), "(batch, T)")
        if tokens.shape[1] == 0:
            raise ValueError(f"tokens has no positions (shape {shape_str(tokens.shape)}); need T >= 1")
        if tokens.device != self.token.weight.device:
            raise ValueError(
                f"tokens are on {tokens.device} but the model's weights are on {self.token.weight.device}; "
                "move one of them"
            )
        _check_ids(tokens, self.vocab_size, "tokens")
        start = 0
        if caches is not None:
            if len(caches) != len(self.blocks) or not all(isinstance(c, KVCache) for c in caches):
                raise ValueError(f"caches must be a list of {len(self.blocks)} KVCache objects (see new_caches())")
            start = len(caches[0])
        T = tokens.shape[1]
        if start + T > self.max_len:
            raise ValueError(f"positions {start}..{start + T - 1} exceed the model's max_len={self.max_len}")
        positions = torch.arange(start, start + T, device=tokens.device)
        x = self.token(tokens) + self.position(positions)
        all_weights = []
        mask = None if caches is not None else causal_mask(T, T, device=tokens.device)
        for i, block in enumerate(self.blocks):  # the ids are checked; the blocks trust what the embeddings give
            x, w = block._forward(x, mask, None if caches is None else caches[i])
            all_weights.append(w)
        logits = self.head(self.ln_f(x))
        return (logits, all_weights) if need_weights else logits


def _check_ids(tokens: torch.Tensor, vocab_size: int, name: str, ignore_index: int | None = None) -> None:
    """Every id in 0 .. vocab_size - 1 (or ``ignore_index``); the message shows the first id that is not, and where."""
    valid = (tokens >= 0) & (tokens < vocab_size)
    if ignore_index is not None:
        valid |= tokens == ignore_index
    if not valid.all():
        where = tuple(int(i) for i in (~valid).nonzero()[0])
        raise ValueError(
            f"{name} must be ids in 0 .. {vocab_size - 1}"
            + ("" if ignore_index is None else f" (or ignore_index={ignore_index})")
            + f"; {name}[{', '.join(map(str, where))}] = {int(tokens[where])}"
        )


def causal_lm_loss(logits: torch.Tensor, tokens: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    r"""Mean next-token cross-entropy: logits[:, t] (batch, T, vocab) is scored against tokens[:, t + 1].

    .. math:: \mathcal{L} = -\frac{1}{B(T-1)} \sum_{b}\sum_{t=0}^{T-2} \log \mathrm{softmax}(z_{b,t})_{x_{b,t+1}}

    Targets equal to ``ignore_index`` are left out of the mean. The last position has no target.
    """
    check_float_tensor(logits, "logits")
    check_tensor(tokens, "tokens")
    check_rank(logits, "logits", (3,), "(batch, T, vocab)")
    if tokens.dtype != torch.long:
        raise TypeError(f"tokens must be int64 token ids, got {tokens.dtype}")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens {shape_str(tokens.shape)} must be (batch, T) of logits {shape_str(logits.shape)}")
    if tokens.shape[1] < 2:
        raise ValueError(f"need at least 2 positions to predict a next token, got T={tokens.shape[1]}")
    if tokens.device != logits.device:
        raise ValueError(f"tokens are on {tokens.device} but logits on {logits.device}; move one of them")
    _check_ids(tokens[:, 1:], logits.shape[-1], "tokens[:, 1:] (the targets)", ignore_index)
    predictions = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = tokens[:, 1:].reshape(-1)
    return F.cross_entropy(predictions, targets, ignore_index=ignore_index)


@torch.no_grad()
def generate(
    model: TinyDecoder,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    use_cache: bool = True,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue ``prompt`` (batch, T) by ``max_new_tokens`` tokens; returns (batch, T + max_new_tokens).

    ``temperature=0`` is greedy (argmax); otherwise tokens are sampled from softmax(logits / temperature) with
    ``generator`` (computed by :func:`attnlib.softmax`, so a tiny temperature such as 1e-40 gives the greedy limit,
    not NaN; a NaN or negative temperature is a ValueError). With ``use_cache`` the prompt is run once and each
    new token costs one position per block; without, the whole sequence is recomputed at every step. Both give
    the same tokens.
    """
    if not isinstance(model, TinyDecoder):
        raise TypeError(f"model must be an attnlib.transformer.TinyDecoder, got {type(model).__name__}")
    check_tensor(prompt, "prompt")
    check_rank(prompt, "prompt", (2,), "(batch, T)")
    if prompt.shape[1] == 0:
        raise ValueError("prompt must hold at least one token per sequence")
    max_new_tokens = check_positive_int(max_new_tokens, "max_new_tokens")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number >= 0, got {type(temperature).__name__} {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if prompt.shape[1] + max_new_tokens > model.max_len:
        raise ValueError(
            f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} exceeds max_len={model.max_len}"
        )

    def pick(last_logits: torch.Tensor) -> torch.Tensor:
        if temperature == 0:
            return last_logits.argmax(-1, keepdim=True)
        # attnlib's softmax subtracts the max before dividing: a tiny temperature gives the greedy limit (one-hot)
        # instead of inf / inf = NaN, which torch.multinomial would refuse
        probs = softmax(last_logits.float(), dim=-1, temperature=float(temperature))
        return torch.multinomial(probs, 1, generator=generator)

    tokens = prompt
    caches = model.new_caches() if use_cache else None
    new = prompt
    for _ in range(max_new_tokens):
        logits = model(new, caches=caches) if use_cache else model(tokens)
        nxt = pick(logits[:, -1])
        tokens = torch.cat([tokens, nxt], dim=1)
        new = nxt
    return tokens
