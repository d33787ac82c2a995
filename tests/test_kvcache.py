"""KVCache and step-by-step decoding against full causal attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlib import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from attnlib.kvcache import KVCache, decode_step_by_step


def _qkv(T=11, B=2, H=3, D=4, Dv=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for d in (D, D, Dv))


def _decode(q, k, v, step):
    cache = KVCache(capacity=2)  # small, so that it has to grow several times
    outs = []
    for t0 in range(0, q.shape[2], step):
        window = slice(t0, t0 + step)
        out, weights = cache.step(q[:, :, window], k[:, :, window], v[:, :, window])
        assert weights.shape[-1] == len(cache) == min(t0 + step, q.shape[2])
        outs.append(out)
    return torch.cat(outs, dim=2), cache


@pytest.mark.parametrize("step", [1, 2, 3, 11, 20])
def test_cache_equals_full_causal_attention(step):
    q, k, v = _qkv()
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    got, cache = _decode(q, k, v, step)
    torch.testing.assert_close(got, full, atol=1e-12, rtol=1e-12)
    assert torch.equal(cache.keys, k) and torch.equal(cache.values, v)


def test_top_left_alignment_would_be_wrong():
    """The one new query of a decoding step must see every cached key; top-left would show it only key 0."""
    q, k, v = _qkv(T=6)
    cache = KVCache()
    cache.append(k, v)
    newest = q[:, :, -1:]
    out, weights = cache.attend(newest)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, :, -1:]
    torch.testing.assert_close(out, expected)
    assert (weights > 0).all()  # the last token attends to all 6 positions
    top_left, tl_weights = scaled_dot_product_attention(newest, k, v, causal_mask(1, 6, alignment="top-left"))
    assert torch.equal(tl_weights[..., 1:], torch.zeros_like(tl_weights[..., 1:]))  # sees only key 0
    assert not torch.allclose(top_left, expected)
    # several new queries at once: the same story with a (3, 6) mask
    out3, _ = cache.attend(q[:, :, -3:])
    torch.testing.assert_close(out3, F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, :, -3:])
    wrong3, _ = scaled_dot_product_attention(q[:, :, -3:], k, v, is_causal=True)  # top-left
    assert not torch.allclose(wrong3, out3)


@pytest.mark.parametrize("step", [1, 4])
def test_decode_step_by_step_equals_module_on_full_sequence(step):
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3, dtype=torch.float64).eval()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    full, _ = mha(x, is_causal=True)
    torch.testing.assert_close(decode_step_by_step(mha, x, step=step), full, atol=1e-12, rtol=1e-12)
    # and the same as torch's own module with its (True = ignore) causal mask
    ref, _ = mha.to_torch()(x, x, x, attn_mask=~causal_mask(9), need_weights=False)
    torch.testing.assert_close(decode_step_by_step(mha, x, step=step), ref, atol=1e-12, rtol=1e-12)


def test_views_and_inputs_are_not_modified_by_later_appends():
    k, _, v = _qkv(T=8)
    k_before, v_before = k.clone(), v.clone()
    cache = KVCache(capacity=1)
    cache.append(k[:, :, :3], v[:, :, :3])
    early_keys = cache.keys
    snapshot = early_keys.clone()
    cache.append(k[:, :, 3:], v[:, :, 3:])  # grows: new storage
    assert torch.equal(early_keys, snapshot)
    assert torch.equal(k, k_before) and torch.equal(v, v_before)
    assert len(cache) == 8
    cache.reset()
    assert len(cache) == 0


def test_bad_use_is_rejected():
    k, q, v = _qkv(T=4)
    cache = KVCache()
    with pytest.raises(ValueError, match="empty"):
        cache.attend(q)
    with pytest.raises(ValueError, match="4 dims"):
        cache.append(k[0], v[0])
    cache.append(k, v)
    with pytest.raises(ValueError, match="do not match"):
        cache.append(k[:1], v[:1])
    with pytest.raises(ValueError, match="append their keys"):
        cache.attend(torch.cat([q, q], dim=2))
    with pytest.raises(TypeError, match="dtype"):
        cache.append(k.float(), v.float())
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        decode_step_by_step(torch.nn.Linear(2, 2), torch.randn(1, 2, 2))
