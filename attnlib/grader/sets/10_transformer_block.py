"""Set 10 (lesson 10, the Transformer block): the 2017 post-norm decoder block (masked self-attention,
cross-attention over an encoder's memory, feed-forward), the causal LM loss, one decoding step with a KV cache.

References: the decoder block built from :class:`attnlib.MultiHeadAttention` (equal to
``nn.TransformerDecoderLayer(norm_first=False)``, tests check), :func:`attnlib.transformer.causal_lm_loss` and
:class:`attnlib.kvcache.KVCache`, in float64. Each mistake is what a classic wrong implementation returns for the
same inputs, with the hint that names it.
"""

from __future__ import annotations

import math

import numpy as np

from ..common import Case, Exercise, f32, fingerprint_raises

SET = "10_transformer_block"
TITLE = "Lesson 10: a post-norm decoder block, the causal LM loss, a decoding step with a KV cache"

SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
MHA = ("torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward")
ENCODER = ("torch.nn.TransformerEncoderLayer", "torch.nn.TransformerEncoder", "torch.nn.Transformer")
DECODER = ("torch.nn.TransformerDecoderLayer", "torch.nn.TransformerDecoder")
ATTNLIB = ("attnlib",)
CROSS_ENTROPY = ("torch.nn.functional.cross_entropy", "torch.nn.CrossEntropyLoss", "torch.nn.functional.nll_loss")


def _t(a):
    import torch

    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ---------------------------------------------------------------------------------------------- 10.1 decoder block

# (name, batch, L, S, d_model, heads, d_ff, memory lengths or None): L != S everywhere, batch != heads
_BLOCK_SPECS = (
    ("batch 2, L=5, memory S=7, d_model=8, 4 heads, d_ff=16", 2, 5, 7, 8, 4, 16, None),
    ("batch 1, L=4, memory S=6 (4 real), d_model=12, 3 heads, d_ff=24", 1, 4, 6, 12, 3, 24, (4,)),
    ("batch 3, L=6, memory S=4 (4, 2, 3 real), d_model=16, 2 heads, d_ff=32", 3, 6, 4, 16, 2, 32, (4, 2, 3)),
    ("batch 2, L=3, memory S=5, d_model=12, 3 heads, d_ff=20", 2, 3, 5, 12, 3, 20, None),
)
_NORMS = ("ln1", "ln2", "ln3")
_ATTENTIONS = ("self_attn", "cross_attn")


def _linear(rng, n_out, n_in):
    bound = 1.0 / math.sqrt(n_in)
    return rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32), rng.uniform(-bound, bound, n_out).astype(
        np.float32
    )


def block_cases(rng):
    cases = []
    for name, B, L, S, d, H, d_ff, lengths in _BLOCK_SPECS:
        weights = {}
        for attn in _ATTENTIONS:
            for proj in ("w_q", "w_k", "w_v", "w_o"):
                w, b = _linear(rng, d, d)
                weights[f"{attn}.{proj}.weight"], weights[f"{attn}.{proj}.bias"] = w, b
        for ln in _NORMS:  # LayerNorms away from (1, 0), so a missing, reused or misplaced one shows
            weights[f"{ln}.weight"] = (1.0 + 0.3 * rng.standard_normal(d)).astype(np.float32)
            weights[f"{ln}.bias"] = (0.3 * rng.standard_normal(d)).astype(np.float32)
        weights["mlp.0.weight"], weights["mlp.0.bias"] = _linear(rng, d_ff, d)
        weights["mlp.2.weight"], weights["mlp.2.bias"] = _linear(rng, d, d_ff)
        x = f32(B, L, d, rng=rng, scale=2.0)
        memory = f32(B, S, d, rng=rng, scale=2.0)
        args = (x, memory)
        if lengths is not None:
            args += ((np.arange(S)[None, :] < np.array(lengths)[:, None])[:, None, None, :],)
        cases.append(Case(name, args, init=(d, H, d_ff), weights=weights, grad_output=f32(B, L, d, rng=rng)))
    return cases


def reference_block(case):
    """The 2017 post-norm decoder layer in float64, with the case's weights: attnlib's multi-head attention for
    the two attentions, torch's LayerNorm, Linear and ReLU (tests check it equals ``nn.TransformerDecoderLayer``)."""
    import torch
    from torch import nn

    from ...modules import MultiHeadAttention

    d, H, d_ff = case.init
    block = nn.Module()
    for attn in _ATTENTIONS:
        setattr(block, attn, MultiHeadAttention(d, H))
    for ln in _NORMS:
        setattr(block, ln, nn.LayerNorm(d))
    block.mlp = nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(), nn.Linear(d_ff, d))
    block = block.double()
    with torch.no_grad():
        for name, value in case.weights.items():
            block.get_parameter(name).copy_(_t(value))
    return block


def _run_block(block, x, memory, memory_mask, kind="ok"):
    """The block's outputs under one classic mistake (``kind``), from the same weights."""
    import torch

    L = x.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    if kind == "no-causal":
        causal = None
    elif kind == "triu":
        causal = torch.ones(L, L, dtype=torch.bool).triu()
    if kind == "no-memory-mask":
        memory_mask = None

    def self_attn(h):
        return block.self_attn(h, attn_mask=causal)

    def cross_attn(h):
        source = h if kind == "keys-from-x" else memory
        return block.cross_attn(h, source, attn_mask=memory_mask)

    ln1, ln2, ln3 = (block.ln1, block.ln1, block.ln1) if kind == "one-norm" else (block.ln1, block.ln2, block.ln3)
    if kind == "pre-norm":
        a, w_self = self_attn(ln1(x))
        x = x + a
        c, w_cross = cross_attn(ln2(x))
        x = x + c
        return {"out": x + block.mlp(ln3(x)), "self_weights": w_self, "cross_weights": w_cross}
    if kind == "norm-before-residual":
        a, w_self = self_attn(x)
        x = x + ln1(a)
        c, w_cross = cross_attn(x)
        x = x + ln2(c)
        return {"out": x + ln3(block.mlp(x)), "self_weights": w_self, "cross_weights": w_cross}
    if kind == "no-residual":
        a, w_self = self_attn(x)
        x = ln1(a)
        c, w_cross = cross_attn(x)
        x = ln2(c)
        return {"out": ln3(block.mlp(x)), "self_weights": w_self, "cross_weights": w_cross}
    if kind == "cross-first":
        c, w_cross = cross_attn(x)
        x = ln1(x + c)
        a, w_self = self_attn(x)
        x = ln2(x + a)
        return {"out": ln3(x + block.mlp(x)), "self_weights": w_self, "cross_weights": w_cross}
    a, w_self = self_attn(x)
    x = ln1(x + a)
    c, w_cross = cross_attn(x)
    x = ln2(x + c)
    return {"out": ln3(x + block.mlp(x)), "self_weights": w_self, "cross_weights": w_cross}


def _block_inputs(case):
    import torch

    x, memory = _t(case.args[0]), _t(case.args[1])
    memory_mask = torch.from_numpy(case.args[2]) if len(case.args) > 2 else None
    return x, memory, memory_mask


def block_expect(case):
    block = reference_block(case)
    x, memory, memory_mask = _block_inputs(case)
    x.requires_grad_()
    memory.requires_grad_()
    outputs = _run_block(block, x, memory, memory_mask)
    (outputs["out"] * _t(case.grad_output)).sum().backward()
    result = {name: value.detach().numpy() for name, value in outputs.items()}
    result["grad:arg0"], result["grad:arg1"] = x.grad.numpy(), memory.grad.numpy()
    for name in case.weights:
        result[f"grad:{name}"] = block.get_parameter(name).grad.numpy()
    return result


_BLOCK_HINTS = {
    "pre-norm": "that is the pre-norm layout, x + sublayer(LN(x)); this block is the 2017 post-norm one: each "
    "sub-layer reads x itself and the LayerNorm comes after the residual addition, x = LN(x + sublayer(x))",
    "norm-before-residual": "the LayerNorm is applied to the sub-layer's output and the residual added after it; "
    "post-norm normalises the sum: x = LN(x + sublayer(x))",
    "no-residual": "the residual connections are missing: each sub-layer's output is added to its input x before "
    "the LayerNorm",
    "no-causal": "the self-attention is not causal: a position sees the positions after it; this block builds a "
    "lower-triangular (L, L) mask (True = may attend) for its self-attention",
    "triu": "the causal mask is upper-triangular, so each position sees only itself and LATER positions; True must "
    "mark the earlier positions and the position itself",
    "keys-from-x": "the cross-attention's keys and values come from x: that is a second self-attention. In "
    "cross-attention the queries come from x and the keys and values from memory",
    "cross-first": "the cross-attention comes before the masked self-attention; this block attends to its own "
    "prefix first (ln1), then to the memory (ln2), then runs the feed-forward (ln3)",
    "one-norm": "ln1 is used for every sub-layer; each has its own LayerNorm: ln1, ln2, ln3 in that order",
    "no-memory-mask": "the memory's padding mask is not applied: the cross-attention puts weight on padding "
    "slots of memory; pass memory_mask to the cross-attention (and only to it)",
}


def block_mistakes(case):
    import torch

    block = reference_block(case)
    x, memory, memory_mask = _block_inputs(case)
    found = []
    with torch.no_grad():
        for kind, hint in _BLOCK_HINTS.items():
            if kind == "no-memory-mask" and memory_mask is None:
                continue
            if kind == "keys-from-x" and memory_mask is not None:
                continue  # the padding mask (batch, 1, 1, S) does not fit (L, L) scores: see block_raises
            found.append((hint, {k: v.numpy() for k, v in _run_block(block, x, memory, memory_mask, kind).items()}))
    return found


def block_raises(case):
    if len(case.args) < 3:
        return []
    B, L = case.args[0].shape[:2]
    S = case.args[1].shape[1]
    H = case.init[1]

    def keys_from_x(t):
        scores = t.zeros(B, H, L, L)
        return scores.masked_fill(~t.ones(B, 1, 1, S, dtype=t.bool), float("-inf"))

    return fingerprint_raises([(_BLOCK_HINTS["keys-from-x"], keys_from_x)])


# ---------------------------------------------------------------------------------------------- 10.2 loss


def loss_cases(rng):
    cases = []
    for B, T, V, scale in ((2, 5, 7, 1.0), (1, 8, 4, 3.0), (3, 2, 11, 1.0), (2, 6, 13, 10.0)):
        logits = f32(B, T, V, rng=rng, scale=scale)
        tokens = rng.integers(0, V, (B, T)).astype(np.int64)
        cases.append(Case(f"logits ({B}, {T}, {V}), scale {scale:g}", (logits, tokens)))
    return cases


def _ce(logits, targets):
    """Mean -log softmax(logits)[target] over all positions, float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def loss_expect(case):
    import torch

    from ...transformer import causal_lm_loss

    logits, tokens = case.args
    return {"out": causal_lm_loss(_t(logits), torch.from_numpy(tokens)).numpy()}


def loss_mistakes(case):
    logits, tokens = case.args
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    found = [
        (
            "no shift: logits[:, t] are scored against tokens[:, t], the token the model already sees; they predict "
            "tokens[:, t + 1], so pair logits[:, :-1] with tokens[:, 1:]",
            np.mean(_ce(z, tokens)),
        ),
        (
            "shifted the wrong way: logits[:, 1:] against tokens[:, :-1] asks each position for the token before it",
            np.mean(_ce(z[:, 1:], tokens[:, :-1])),
        ),
        (
            "the losses are summed; the causal LM loss is their mean over the batch and the T - 1 positions",
            np.sum(_ce(z[:, :-1], tokens[:, 1:])),
        ),
        (
            "the loss is minus the probability; cross-entropy is minus the LOG-probability of the next token",
            -np.mean(np.take_along_axis(p[:, :-1], tokens[:, 1:, None], axis=-1)),
        ),
    ]
    if z.shape[0] > 1:
        zb = z[:, :-1] - z[:, :-1].max(0, keepdims=True)
        logp_b = zb - np.log(np.exp(zb).sum(0, keepdims=True))
        wrong = -np.mean(np.take_along_axis(logp_b, tokens[:, 1:, None], axis=-1))
        found.append(("the log-softmax is taken over the batch (dim=0); it runs over the vocabulary (dim=-1)", wrong))
    return [(hint, {"out": np.asarray(value, dtype=np.float64)}) for hint, value in found]


# ---------------------------------------------------------------------------------------------- 10.3 decode step


def step_cases(rng):
    cases = []
    for B, H, t, D, Dv in ((1, 1, 3, 4, 4), (2, 2, 5, 8, 8), (1, 4, 1, 8, 6), (2, 2, 0, 4, 4), (1, 2, 9, 16, 16)):
        q, k, v = f32(B, H, 1, D, rng=rng), f32(B, H, 1, D, rng=rng), f32(B, H, 1, Dv, rng=rng)
        k_cache, v_cache = f32(B, H, t, D, rng=rng), f32(B, H, t, Dv, rng=rng)
        label = "an empty cache (the first token)" if t == 0 else f"{t} cached tokens"
        cases.append(Case(f"batch {B}, {H} heads, {label}, d={D}, d_v={Dv}", (q, k, v, k_cache, v_cache)))
    return cases


def step_expect(case):
    from ...kvcache import KVCache

    q, k, v, k_cache, v_cache = (_t(a) for a in case.args)
    cache = KVCache()
    if k_cache.shape[2]:
        cache.append(k_cache, v_cache)
    out, _ = cache.step(q, k, v)
    return {"out": out.numpy(), "keys": cache.keys.numpy().copy(), "values": cache.values.numpy().copy()}


def _np_attend(q, k, v, scale):
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    s = s - s.max(-1, keepdims=True)
    w = np.exp(s)
    w /= w.sum(-1, keepdims=True)
    return w @ v


def step_mistakes(case):
    q, k, v, k_cache, v_cache = (np.asarray(a, np.float64) for a in case.args)
    keys = np.concatenate([k_cache, k], axis=2)
    values = np.concatenate([v_cache, v], axis=2)
    scale = 1.0 / math.sqrt(q.shape[-1])
    right = _np_attend(q, keys, values, scale)
    found = [
        (
            "the new key and value were put in front of the cache; append them at the end (position t), so the "
            "cache stays in token order",
            {
                "out": right,
                "keys": np.concatenate([k, k_cache], axis=2),
                "values": np.concatenate([v, v_cache], axis=2),
            },
        ),
        (
            "the keys and the values are concatenated in different orders, so key t no longer belongs to value t: "
            "append both at the end of the cache, torch.cat([k_cache, k], dim=2) and torch.cat([v_cache, v], dim=2)",
            {
                "out": _np_attend(q, np.concatenate([k, k_cache], axis=2), values, scale),
                "keys": np.concatenate([k, k_cache], axis=2),
                "values": values,
            },
        ),
        (
            "the scores are not scaled: divide q @ K^T by sqrt(d)",
            {"out": _np_attend(q, keys, values, 1.0), "keys": keys, "values": values},
        ),
        (
            "the new query sees only key 0: that is SDPA's is_causal=True, aligned top-left. In a decoding step the "
            "one new query may attend to every cached key, itself included: use no mask",
            {"out": values[:, :, :1], "keys": keys, "values": values},
        ),
    ]
    if k_cache.shape[2]:
        found.insert(
            0,
            (
                "the new token does not attend to itself: append its key and value to the cache BEFORE attending",
                {"out": _np_attend(q, k_cache, v_cache, scale), "keys": keys, "values": values},
            ),
        )
    return found


EXERCISES = [
    Exercise(
        key="10.1",
        set=SET,
        entry="DecoderBlock",
        title="The 2017 post-norm decoder block: masked self-attention, cross-attention, feed-forward",
        points=6,
        difficulty="hard",
        minutes=30,
        kind="module",
        returns=("out", "self_weights", "cross_weights"),
        forbidden=(*SDPA, *MHA, *ENCODER, *DECODER, *ATTNLIB),
        cases=block_cases,
        expect=block_expect,
        mistakes=block_mistakes,
        raises=block_raises,
        distribution="self_weights",
        arg_names=("x", "memory", "memory_mask"),
    ),
    Exercise(
        key="10.2",
        set=SET,
        entry="causal_lm_loss",
        title="The causal language-modelling loss",
        points=3,
        difficulty="easy",
        minutes=15,
        kind="function",
        returns=("out",),
        forbidden=(*CROSS_ENTROPY, *ATTNLIB),
        cases=loss_cases,
        expect=loss_expect,
        mistakes=loss_mistakes,
        distribution=None,
        arg_names=("logits", "tokens"),
    ),
    Exercise(
        key="10.3",
        set=SET,
        entry="kv_cache_step",
        title="One decoding step with a KV cache",
        points=4,
        difficulty="medium",
        minutes=20,
        kind="function",
        returns=("out", "keys", "values"),
        forbidden=(*SDPA, *ATTNLIB),
        cases=step_cases,
        expect=step_expect,
        mistakes=step_mistakes,
        distribution=None,
        arg_names=("q", "k", "v", "k_cache", "v_cache"),
    ),
]
