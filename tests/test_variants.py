"""attnlib.variants against PyTorch: GQA vs SDPA(enable_gqa=True), sliding windows vs FlexAttention's mask_mod,
linear attention vs an explicit (L, S) kernel matrix."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import attnlib

seeds = st.integers(0, 2**31 - 1)


@given(seeds, st.sampled_from([(8, 8), (8, 4), (8, 2), (8, 1), (6, 3)]), st.integers(1, 7), st.integers(1, 7))
def test_gqa_matches_sdpa_enable_gqa(seed, heads, L, S):
    hq, hkv = heads
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, L, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, hkv, S, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, hkv, S, 5, generator=g, dtype=torch.float64)
    copies = [t.clone() for t in (q, k, v)]
    out, w = attnlib.grouped_query_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    assert w.shape == (2, hq, L, S)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies, strict=True))


def test_gqa_with_a_causal_mask_matches_sdpa():
    q, k, v = torch.randn(2, 8, 6, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    ours, _ = attnlib.grouped_query_attention(q, k, v, attnlib.causal_mask(6))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))


def test_repeat_kv_puts_copies_next_to_each_other():
    x = torch.arange(2.0).reshape(1, 2, 1, 1)
    assert attnlib.repeat_kv(x, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]


def test_repeat_kv_tiled_instead_of_interleaved_is_caught():
    """The mistake of ``k.repeat(1, n_rep, 1, 1)``: query head 1 then reads kv head 1, not kv head 0."""
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    wrong = F.scaled_dot_product_attention(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1))
    assert (wrong - attnlib.grouped_query_attention(q, k, v)[0]).abs().max() > 1e-2


def test_gqa_validates_head_counts():
    with pytest.raises(ValueError, match="multiple"):
        attnlib.grouped_query_attention(torch.randn(1, 6, 2, 4), torch.randn(1, 4, 2, 4), torch.randn(1, 4, 2, 4))
    with pytest.raises(ValueError, match="same number of heads"):
        attnlib.grouped_query_attention(torch.randn(1, 4, 2, 4), torch.randn(1, 2, 2, 4), torch.randn(1, 1, 2, 4))
    with pytest.raises(ValueError, match="q must have 4 dims"):
        attnlib.grouped_query_attention(torch.randn(4, 2, 4), torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4))


@given(st.integers(1, 12), st.integers(1, 12))
def test_sliding_window_is_the_band_of_the_causal_mask(L, window):
    mask = attnlib.sliding_window_mask(L, window=window)
    i, j = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    assert torch.equal(mask, (j <= i) & (j > i - window))
    assert (mask.sum(-1) == torch.clamp(torch.arange(L) + 1, max=window)).all()
    if window >= L:
        assert torch.equal(mask, attnlib.causal_mask(L))


def test_sliding_window_bottom_right_for_decoding():
    mask = attnlib.sliding_window_mask(1, 6, window=3, alignment="bottom-right")
    assert mask.tolist() == [[False, False, False, True, True, True]]
    with pytest.raises(ValueError, match="window"):
        attnlib.sliding_window_mask(4, window=0)
    with pytest.raises(ValueError, match="alignment"):
        attnlib.sliding_window_mask(4, window=2, alignment="left")


def _flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return create_block_mask, flex_attention


def test_sliding_window_mask_matches_flex_attention_mask_mod():
    create_block_mask, flex_attention = _flex()
    L, window = 64, 8
    q, k, v = torch.randn(3, 1, 2, L, 16).unbind(0)

    def local(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "flex_attention called without torch.compile()"
        block = create_block_mask(local, None, None, L, L, device="cpu")
        flex = flex_attention(q, k, v, block_mask=block)
    ours, _ = attnlib.scaled_dot_product_attention(q, k, v, attnlib.sliding_window_mask(L, window=window))
    torch.testing.assert_close(flex, ours, atol=1e-5, rtol=1e-5)


def test_alibi_as_a_flex_score_mod_matches_the_bias_mask():
    _, flex_attention = _flex()
    H, L = 4, 32
    q, k, v = torch.randn(3, 1, H, L, 8).unbind(0)
    slopes = attnlib.alibi_slopes(H)

    def alibi(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx - kv_idx).abs()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flex = flex_attention(q, k, v, score_mod=alibi)
    ours, _ = attnlib.scaled_dot_product_attention(q, k, v, attnlib.alibi_bias(H, L))
    torch.testing.assert_close(flex, ours, atol=1e-5, rtol=1e-5)


def _linear_by_kernel_matrix(q, k, v, causal):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    kernel = phi_q @ phi_k.transpose(-2, -1)  # (B, H, L, S): the explicit, quadratic form
    if causal:
        kernel = kernel * torch.ones(q.shape[2], k.shape[2]).tril()
    return (kernel @ v) / (kernel.sum(-1, keepdim=True) + 1e-6)


@given(seeds, st.integers(1, 9), st.booleans())
def test_linear_attention_equals_its_quadratic_form(seed, L, causal):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2, 3, L, 4, generator=g, dtype=torch.float64).unbind(0)
    v = torch.randn(2, 3, L, 5, generator=g, dtype=torch.float64)
    copies = [t.clone() for t in (q, k, v)]
    out = attnlib.linear_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, _linear_by_kernel_matrix(q, k, v, causal), atol=1e-9, rtol=1e-9)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies, strict=True))


def test_linear_attention_with_an_exponential_feature_map_is_not_softmax_attention():
    """Even with a positive map, phi(q).phi(k) is not exp(q.k): the outputs differ measurably."""
    q, k, v = torch.randn(3, 1, 1, 16, 8).unbind(0)
    soft = F.scaled_dot_product_attention(q, k, v)
    lin = attnlib.linear_attention(q, k, v)
    assert (lin - soft).abs().max() > 1e-2


def test_linear_attention_validates():
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="causal"):
        attnlib.linear_attention(q, torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4), causal=True)
    with pytest.raises(TypeError, match="feature_map"):
        attnlib.linear_attention(q, q, q, feature_map=3)
    with pytest.raises(ValueError, match="expected q"):
        attnlib.linear_attention(q, torch.randn(1, 1, 4, 3), q)


def test_new_functions_agree_on_every_device(device):
    """positions, variants and the block give the CPU's answer on CUDA/MPS too (skipped where absent)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    on = [t.to(device) for t in (q, k, v)]
    torch.testing.assert_close(
        attnlib.grouped_query_attention(*on)[0].cpu(), attnlib.grouped_query_attention(q, k, v)[0]
    )
    torch.testing.assert_close(attnlib.apply_rope(on[0]).cpu(), attnlib.apply_rope(q), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attnlib.linear_attention(on[1], on[1], on[2]).cpu(), attnlib.linear_attention(k, k, v))
    assert torch.equal(
        attnlib.sliding_window_mask(6, window=2, device=device).cpu(), attnlib.sliding_window_mask(6, window=2)
    )
    torch.testing.assert_close(attnlib.alibi_bias(4, 6, device=device).cpu(), attnlib.alibi_bias(4, 6))
    block = attnlib.TransformerBlock(8, 2).eval()
    x = torch.randn(2, 5, 8)
    expected, _ = block(x, is_causal=True)
    got, _ = block.to(device)(x.to(device), is_causal=True)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)
