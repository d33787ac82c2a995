"""Set 10 (lesson 10, the Transformer block): the pre-norm block's forward, the causal LM loss, one decoding step
with a KV cache.

References: :class:`attnlib.transformer.TransformerBlock`, :func:`attnlib.transformer.causal_lm_loss` and
:class:`attnlib.kvcache.KVCache`, in float64. Each mistake is what a classic wrong implementation returns for the
same inputs, with the hint that names it.
"""

from __future__ import annotations

import math

import numpy as np

from ..common import Case, Exercise, f32

SET = "10_transformer_block"
TITLE = "Lesson 10: the pre-norm block, the causal LM loss, a decoding step with a KV cache"

SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
MHA = ("torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward")
ENCODER = ("torch.nn.TransformerEncoderLayer", "torch.nn.TransformerEncoder", "torch.nn.Transformer")
ATTNLIB = ("attnlib",)
CROSS_ENTROPY = ("torch.nn.functional.cross_entropy", "torch.nn.CrossEntropyLoss", "torch.nn.functional.nll_loss")


def _t(a):
    import torch

    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ---------------------------------------------------------------------------------------------- 10.1 block

_BLOCK_SPECS = (
    ("batch 2, L=5, d_model=8, 2 heads, d_ff=16, causal mask", 2, 5, 8, 2, 16, True),
    ("batch 1, L=4, d_model=12, 3 heads, d_ff=24, no mask", 1, 4, 12, 3, 24, False),
    ("batch 3, L=6, d_model=16, 4 heads, d_ff=32, causal mask", 3, 6, 16, 4, 32, True),
)


def _linear(rng, n_out, n_in):
    bound = 1.0 / math.sqrt(n_in)
    return rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32), rng.uniform(-bound, bound, n_out).astype(
        np.float32
    )


def block_cases(rng):
    cases = []
    for name, B, L, d, H, d_ff, causal in _BLOCK_SPECS:
        weights = {}
        for ln in ("ln1", "ln2"):  # LayerNorms away from (1, 0), so a missing or swapped one shows
            weights[f"{ln}.weight"] = (1.0 + 0.3 * rng.standard_normal(d)).astype(np.float32)
            weights[f"{ln}.bias"] = (0.3 * rng.standard_normal(d)).astype(np.float32)
        for proj in ("w_q", "w_k", "w_v", "w_o"):
            w, b = _linear(rng, d, d)
            weights[f"attn.{proj}.weight"], weights[f"attn.{proj}.bias"] = w, b
        weights["mlp.0.weight"], weights["mlp.0.bias"] = _linear(rng, d_ff, d)
        weights["mlp.2.weight"], weights["mlp.2.bias"] = _linear(rng, d, d_ff)
        x = f32(B, L, d, rng=rng, scale=2.0)
        args = (x, np.tril(np.ones((L, L), dtype=bool))) if causal else (x,)
        cases.append(Case(name, args, init=(d, H, d_ff), weights=weights, grad_output=f32(B, L, d, rng=rng)))
    return cases


def _reference_block(case):
    import torch

    from ...transformer import TransformerBlock

    d, H, d_ff = case.init
    block = TransformerBlock(d, H, d_ff, activation="gelu").double()
    with torch.no_grad():
        for name, value in case.weights.items():
            obj = block
            for part in name.split("."):
                obj = getattr(obj, part)
            obj.copy_(_t(value))
    return block


def block_expect(case):
    import torch

    block = _reference_block(case)
    x = _t(case.args[0]).requires_grad_()
    mask = torch.from_numpy(case.args[1]) if len(case.args) > 1 else None
    out, weights = block(x, mask)
    (out * _t(case.grad_output)).sum().backward()
    result = {"out": out.detach().numpy(), "weights": weights.detach().numpy(), "grad:arg0": x.grad.numpy()}
    for name in case.weights:
        obj = block
        for part in name.split("."):
            obj = getattr(obj, part)
        result[f"grad:{name}"] = obj.grad.numpy()
    return result


def _variant(case, kind):
    """The block's output under one classic mistake, from the same weights (float64)."""
    import torch
    import torch.nn.functional as F

    block = _reference_block(case)
    x = _t(case.args[0])
    mask = torch.from_numpy(case.args[1]) if len(case.args) > 1 else None

    def attn(h):
        return block.attn(h, attn_mask=mask)[0]

    def mlp(h, act=F.gelu):
        return block.mlp[2](act(block.mlp[0](h)))

    with torch.no_grad():
        if kind == "post-norm":
            h = block.ln1(x + attn(x))
            out = block.ln2(h + mlp(h))
        elif kind == "no-residual":
            h = attn(block.ln1(x))
            out = mlp(block.ln2(h))
        elif kind == "no-mlp-residual":
            h = x + attn(block.ln1(x))
            out = mlp(block.ln2(h))
        elif kind == "parallel":
            out = x + attn(block.ln1(x)) + mlp(block.ln2(x))
        elif kind == "one-norm":
            h = x + attn(block.ln1(x))
            out = h + mlp(block.ln1(h))
        elif kind == "relu":
            h = x + attn(block.ln1(x))
            out = h + mlp(block.ln2(h), F.relu)
        elif kind == "tanh-gelu":
            h = x + attn(block.ln1(x))
            out = h + mlp(block.ln2(h), lambda t: F.gelu(t, approximate="tanh"))
        elif kind == "norm-after-sublayer":
            h = x + block.ln1(attn(x))
            out = h + block.ln2(mlp(h))
        else:
            raise ValueError(kind)
    return {"out": out.numpy()}


def block_mistakes(case):
    hints = {
        "post-norm": "that is the post-norm block, LN(x + sublayer(x)); pre-norm normalises the input of each "
        "sub-layer and adds the raw sub-layer output back: x + sublayer(LN(x))",
        "norm-after-sublayer": "the LayerNorm is applied to the sub-layer's output; it belongs on its input: "
        "x + sublayer(LN(x))",
        "no-residual": "the residual connections are missing: add each sub-layer's output to x",
        "no-mlp-residual": "the MLP's output replaces x instead of being added to it: x = x + mlp(ln2(x))",
        "parallel": "attention and MLP both read the block's input (a 'parallel' block); in this block the MLP "
        "reads x after the attention residual",
        "one-norm": "ln1 is used twice; the MLP has its own LayerNorm, ln2",
        "relu": "the MLP uses ReLU; this block's MLP uses GELU (nn.GELU(), the exact form)",
        "tanh-gelu": "the MLP uses the tanh approximation of GELU; use the exact nn.GELU()",
    }
    return [(hint, _variant(case, kind)) for kind, hint in hints.items()]


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
        entry="TransformerBlock",
        title="The pre-norm Transformer block's forward",
        points=6,
        difficulty="medium",
        minutes=25,
        kind="module",
        returns=("out", "weights"),
        forbidden=(*SDPA, *MHA, *ENCODER, *ATTNLIB),
        cases=block_cases,
        expect=block_expect,
        mistakes=block_mistakes,
        distribution="weights",
        arg_names=("x", "attn_mask"),
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
