"""attnlib: the attention mechanism, small and tested.

Shapes are (batch, heads, seq, dim). Boolean masks are True where a query may attend; float masks are added to
the scores. Fully masked rows give zeros, never NaN. Nothing modifies its inputs.

* :mod:`attnlib.reference` — NumPy, loop-level and vectorised: the readable oracle.
* :mod:`attnlib.functional` — PyTorch functions with autograd, on CPU, CUDA or MPS.
* :mod:`attnlib.masks` — causal, padding and combined masks, and conversion to ``nn.MultiheadAttention``'s convention.
* :mod:`attnlib.modules` — ``SelfAttention``, ``CrossAttention`` and ``MultiHeadAttention``.
* :mod:`attnlib.efficient` — ``chunked_attention``: the FlashAttention algorithm, memory linear in L and S.
* :mod:`attnlib.kvcache` — ``KVCache`` and step-by-step decoding.
* :mod:`attnlib.positions` — sinusoidal tables, RoPE and ALiBi.
* :mod:`attnlib.variants` — grouped-query, sliding-window and linear attention.
* :mod:`attnlib.transformer` — the pre-norm block, a tiny decoder, its loss and generation with a KV cache.

torch's ``CausalBias`` masks are read as the causal masks they stand for. ``return_lse=True`` (on
``scaled_dot_product_attention`` and ``chunked_attention``) also returns the natural-log logsumexp of the masked,
scaled scores per query, (batch, heads, L), ``-inf`` for a query whose keys are all masked.
"""

from .device import available_devices, get_device
from .functional import attention_scores, merge_heads, scaled_dot_product_attention, softmax, split_heads
from .masks import causal_mask, combine_masks, from_mha_mask, padding_mask, to_additive, to_mha_mask
from .modules import CrossAttention, MultiHeadAttention, SelfAttention
from .positions import alibi_bias, alibi_slopes, apply_rope, sinusoidal_positions
from .transformer import TinyDecoder, TransformerBlock, causal_lm_loss, generate
from .variants import grouped_query_attention, linear_attention, repeat_kv, sliding_window_mask

__version__ = "0.1.0"

__all__ = [
    "available_devices",
    "get_device",
    "attention_scores",
    "merge_heads",
    "scaled_dot_product_attention",
    "softmax",
    "split_heads",
    "causal_mask",
    "combine_masks",
    "from_mha_mask",
    "padding_mask",
    "to_additive",
    "to_mha_mask",
    "CrossAttention",
    "MultiHeadAttention",
    "SelfAttention",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "sinusoidal_positions",
    "TinyDecoder",
    "TransformerBlock",
    "causal_lm_loss",
    "generate",
    "grouped_query_attention",
    "linear_attention",
    "repeat_kv",
    "sliding_window_mask",
]
