"""SelfAttention, CrossAttention and MultiHeadAttention: the math they name, shapes, scale and dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import fewer_examples, seeds

import attnlib
from attnlib import functional as fn

f64 = {"dtype": torch.float64}


@fewer_examples
@given(seeds, st.integers(1, 3), st.integers(1, 5), st.sampled_from([None, 2]), st.booleans(), st.booleans())
def test_self_attention_is_project_then_sdpa(seed, B, L, d_v, bias, causal):
    torch.manual_seed(seed)
    layer = attnlib.SelfAttention(4, 3, d_v, bias=bias, **f64)
    x = torch.randn(B, L, 4, **f64)
    out, w = layer(x, is_causal=causal)
    q = x @ layer.w_q.weight.T + (layer.w_q.bias if bias else 0)
    k = x @ layer.w_k.weight.T + (layer.w_k.bias if bias else 0)
    v = x @ layer.w_v.weight.T + (layer.w_v.bias if bias else 0)
    assert out.shape == (B, L, d_v or 3) and w.shape == (B, L, L)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    torch.testing.assert_close(w.sum(-1), torch.ones(B, L, **f64))


def test_self_attention_unbatched_and_masked():
    torch.manual_seed(0)
    layer = attnlib.SelfAttention(4, 2, **f64)
    x = torch.randn(3, 4, **f64)
    mask = attnlib.causal_mask(3)
    out, w = layer(x, mask)
    batched, bw = layer(x[None], mask)
    torch.testing.assert_close(out, batched[0])
    torch.testing.assert_close(w, bw[0])
    assert (w[0, 1:] == 0).all()


@fewer_examples
@given(seeds, st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.data())
def test_cross_attention_queries_from_x_keys_from_context(seed, B, L, S, data):
    torch.manual_seed(seed)
    layer = attnlib.CrossAttention(3, 5, 4, 2, **f64)
    x, context = torch.randn(B, L, 3, **f64), torch.randn(B, S, 5, **f64)
    lengths = data.draw(st.lists(st.integers(1, S), min_size=B, max_size=B))
    pad = attnlib.padding_mask(lengths, S).reshape(B, 1, S)
    out, w = layer(x, context, pad)
    assert out.shape == (B, L, 2) and w.shape == (B, L, S)
    q, k, v = layer.w_q(x), layer.w_k(context), layer.w_v(context)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=pad))
    assert (w[~pad.expand(B, L, S)] == 0).all()  # queries stay off the padding


# ----------------------------------------------------------------------------------------------- multi-head


def _mha_by_hand(layer: attnlib.MultiHeadAttention, x: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-head attention with an explicit scale, written without split_heads (slices of the projections)."""
    q, k, v = layer.w_q(x), layer.w_k(x), layer.w_v(x)
    d = layer.head_dim
    heads = []
    for h in range(layer.num_heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(-2, -1) * scale, dim=-1)
        heads.append(w @ v[..., sl])
    return layer.w_o(torch.cat(heads, dim=-1))


def test_mha_scale_is_per_head_dim_not_embed_dim():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(8, 4, batch_first=True, **f64).eval()
    ours = attnlib.MultiHeadAttention.from_torch(theirs)
    x = torch.randn(2, 5, 8, **f64) * 3
    expected, _ = theirs(x, x, x)
    out, _ = ours(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(_mha_by_hand(ours, x, 1 / math.sqrt(ours.head_dim)), expected)
    # the sqrt(d_model) variant fails the same comparison
    with pytest.raises(AssertionError):
        torch.testing.assert_close(_mha_by_hand(ours, x, 1 / math.sqrt(ours.embed_dim)), expected)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_shapes_and_need_weights(need_weights):
    layer = attnlib.MultiHeadAttention(6, 3, kdim=4, vdim=2)
    out, w = layer(torch.randn(2, 5, 6), torch.randn(2, 7, 4), torch.randn(2, 7, 2), need_weights=need_weights)
    assert out.shape == (2, 5, 6)
    if need_weights:
        assert w.shape == (2, 3, 5, 7)
    else:
        assert w is None


def test_mha_heads_are_independent():
    """Changing the value features of head 1 changes only head 1's slice of the merged output (before w_o)."""
    torch.manual_seed(0)
    layer = attnlib.MultiHeadAttention(4, 2, bias=False, **f64)
    x = torch.randn(1, 3, 4, **f64)
    q, k, v = (fn.split_heads(lin(x), 2) for lin in (layer.w_q, layer.w_k, layer.w_v))
    out, _ = attnlib.scaled_dot_product_attention(q, k, v)
    v2 = v.clone()
    v2[:, 1] += 1.0
    out2, _ = attnlib.scaled_dot_product_attention(q, k, v2)
    merged, merged2 = fn.merge_heads(out), fn.merge_heads(out2)
    torch.testing.assert_close(merged[..., :2], merged2[..., :2])
    torch.testing.assert_close(merged2[..., 2:] - merged[..., 2:], torch.ones(1, 3, 2, **f64))


def test_mha_dropout_only_in_training_mode():
    torch.manual_seed(0)
    layer = attnlib.MultiHeadAttention(4, 2, dropout=0.5)
    x = torch.randn(2, 6, 4)
    layer.eval()
    a, wa = layer(x)
    b, _ = layer(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(wa.sum(-1), torch.ones(2, 2, 6))
    layer.train()
    _, wt = layer(x)
    assert (wt == 0).any()  # some weights dropped
    assert ((wt == 0) | torch.isclose(wt, wa * 2)).all()  # the rest scaled by 1/(1-p)


def test_modules_backpropagate_to_every_parameter():
    torch.manual_seed(0)
    layers = [
        (attnlib.SelfAttention(4, 3, bias=True), (torch.randn(2, 3, 4),)),
        (attnlib.CrossAttention(4, 5, 3, bias=True), (torch.randn(2, 3, 4), torch.randn(2, 2, 5))),
        (attnlib.MultiHeadAttention(4, 2, kdim=5, vdim=5), (torch.randn(2, 3, 4), torch.randn(2, 2, 5))),
    ]
    for layer, inputs in layers:
        out, _ = layer(*inputs)
        out.square().sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{type(layer).__name__}.{name} got no gradient"


def test_from_torch_rejects_unsupported_modules():
    with pytest.raises(TypeError, match="mha must be a torch.nn.MultiheadAttention, got Linear"):
        attnlib.MultiHeadAttention.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn"):
        attnlib.MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(4, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn"):
        attnlib.MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(4, 2, add_zero_attn=True))


def test_from_torch_keeps_mode_dtype_and_dropout():
    theirs = torch.nn.MultiheadAttention(4, 2, dropout=0.25, **f64)
    ours = attnlib.MultiHeadAttention.from_torch(theirs)
    assert ours.training and ours.dropout == 0.25 and ours.w_q.weight.dtype == torch.float64
    assert not attnlib.MultiHeadAttention.from_torch(theirs.eval()).training
