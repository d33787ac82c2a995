"""attnlib.functional: softmax, scores, scale, masks, heads, dropout and never touching the inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import TOL, cases, masked_softmax_oracle, randn, seeds

import attnlib
from attnlib import functional as fn

# ----------------------------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_softmax_is_stable_for_huge_logits(dtype):
    x = torch.tensor([1e4, 0.0, -1e4], dtype=dtype)
    w = attnlib.softmax(x)
    assert w.dtype == dtype
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 0.0], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_naive_softmax_overflows_where_attnlib_does_not(dtype):
    """The check above can fail: exp(1e4) overflows to inf in fp32 and fp16, and inf / inf is NaN."""
    x = torch.tensor([1e4, 0.0, -1e4], dtype=dtype)
    naive = torch.exp(x) / torch.exp(x).sum()
    assert torch.isinf(torch.exp(x)[0]) and torch.isnan(naive[0])
    assert torch.isfinite(attnlib.softmax(x)).all()


def test_softmax_low_temperature_on_fp16_does_not_overflow():
    # 1e4 / 0.1 = 1e5 is above fp16's max (65504): the division has to happen after upcasting.
    x = torch.tensor([1e4, 0.0], dtype=torch.float16)
    torch.testing.assert_close(attnlib.softmax(x, temperature=0.1), torch.tensor([1.0, 0.0], dtype=torch.float16))


@given(seeds, st.integers(1, 4), st.integers(1, 7), st.sampled_from([0.3, 1.0, 2.5]))
def test_softmax_equals_torch_softmax(seed, rows, cols, temperature):
    x = randn((rows, cols), seed) * 5
    torch.testing.assert_close(attnlib.softmax(x, temperature=temperature), torch.softmax(x / temperature, dim=-1))
    torch.testing.assert_close(attnlib.softmax(x, dim=0), torch.softmax(x, dim=0))


def _entropy(w):
    return -(w * w.clamp_min(1e-300).log()).sum(-1)


def test_temperature_sharpens_and_flattens():
    x = torch.tensor([2.0, 1.0, 0.5, -1.0], dtype=torch.float64)
    temps = [0.05, 0.5, 1.0, 2.0, 20.0]
    entropies = [_entropy(attnlib.softmax(x, temperature=t)).item() for t in temps]
    assert entropies == sorted(entropies)  # higher temperature, flatter distribution
    torch.testing.assert_close(attnlib.softmax(x, temperature=0.05), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    flat = attnlib.softmax(x, temperature=1e6)
    torch.testing.assert_close(flat, torch.full((4,), 0.25, dtype=torch.float64), atol=1e-5, rtol=0)
    # the argmax never changes
    assert all(attnlib.softmax(x, temperature=t).argmax() == 0 for t in temps)


def test_softmax_of_all_minus_inf_row_is_zeros_with_finite_grad():
    x = torch.tensor([[0.0, float("-inf")], [float("-inf"), float("-inf")]], requires_grad=True)
    w = attnlib.softmax(x)
    torch.testing.assert_close(w.detach(), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.isnan(torch.softmax(x.detach(), -1)[1]).all()  # what plain softmax gives
    w.sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------------------- scores and scale


def test_default_scale_is_one_over_sqrt_head_dim():
    q, k = randn((2, 3, 5, 8), 0), randn((2, 3, 4, 8), 1)
    raw = q @ k.transpose(-2, -1)
    torch.testing.assert_close(attnlib.attention_scores(q, k), raw / math.sqrt(8))
    torch.testing.assert_close(attnlib.attention_scores(q, k, scale=0.5), raw * 0.5)
    # a mistaken 1/sqrt(L) or no scaling is caught by the same comparison
    for wrong in (raw / math.sqrt(5), raw):
        assert not torch.allclose(attnlib.attention_scores(q, k), wrong)


@given(cases(kinds=("none",)), st.sampled_from([None, 0.1, 2.0]))
def test_scale_matches_torch_sdpa(case, scale):
    out, _ = attnlib.scaled_dot_product_attention(case.q, case.k, case.v, scale=scale)
    expected = F.scaled_dot_product_attention(case.q, case.k, case.v, scale=scale)
    torch.testing.assert_close(out, expected, **TOL[torch.float64])


# ----------------------------------------------------------------------------------------------- masks


@given(cases(kinds=("float",)))
def test_float_mask_is_added_to_the_scaled_scores(case):
    _, w = attnlib.scaled_dot_product_attention(case.q, case.k, case.v, case.mask)
    scores = attnlib.attention_scores(case.q, case.k) + case.mask
    torch.testing.assert_close(w, masked_softmax_oracle(scores, None), **TOL[torch.float64])


def test_float_mask_is_not_multiplied_or_subtracted():
    q = k = torch.eye(2, dtype=torch.float64)
    v = torch.eye(2, dtype=torch.float64)
    bias = torch.tensor([[0.0, 3.0], [0.0, 0.0]], dtype=torch.float64)
    _, w = attnlib.scaled_dot_product_attention(q, k, v, bias)
    s = 1 / math.sqrt(2)
    expected_row0 = torch.softmax(torch.tensor([s, 3.0], dtype=torch.float64), -1)
    torch.testing.assert_close(w[0], expected_row0)


def test_bool_mask_true_means_may_attend():
    q = k = v = torch.eye(3, dtype=torch.float64)
    allowed = torch.tensor([[True, False, False], [True, True, False], [False, False, True]])
    _, w = attnlib.scaled_dot_product_attention(q, k, v, allowed)
    assert (w[~allowed] == 0).all() and (w[allowed] > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_fully_masked_rows_give_zeros_like_torch(dtype):
    q, k, v = (randn((1, 3, 4), s, dtype) for s in range(3))
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])
    for m in (mask, attnlib.to_additive(mask, dtype)):
        out, w = attnlib.scaled_dot_product_attention(q, k, v, m)
        assert (out[:, 1] == 0).all() and (w[:, 1] == 0).all()
        assert torch.isfinite(out).all() and torch.isfinite(w).all()
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m), **TOL[dtype])


def test_fp16_scores_do_not_overflow():
    # q . k = 4 * 150^2 = 90000 is above fp16's max (65504): the scores must be formed in fp32, as torch's
    # kernels do, or they become inf and the output NaN.
    q = torch.full((1, 3, 4), 150.0, dtype=torch.float16)
    v = randn((1, 3, 2), 0, torch.float16)
    assert torch.isinf(q @ q.transpose(-2, -1)).all()
    out, w = attnlib.scaled_dot_product_attention(q, q, v)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, v), **TOL[torch.float16])


def test_is_causal_is_top_left_like_sdpa():
    q, k, v = randn((2, 2, 3, 4), 0), randn((2, 2, 5, 4), 1), randn((2, 2, 5, 3), 2)
    out, w = attnlib.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert (w[..., 0, 1:] == 0).all()  # query 0 sees key 0 only, even though S > L


# ----------------------------------------------------------------------------------------------- inputs untouched


def _snapshot(*tensors):
    return [(t.clone(), t._version, t.data_ptr()) for t in tensors]


def _assert_unchanged(tensors, snapshot):
    for t, (copy, version, ptr) in zip(tensors, snapshot, strict=True):
        assert t._version == version
        assert t.data_ptr() == ptr
        torch.testing.assert_close(t, copy, rtol=0, atol=0, equal_nan=True)


@given(cases(kinds=("bool", "float", "padding", "combined")), st.booleans())
def test_inputs_are_never_modified(case, grad):
    q, k, v = (t.clone().requires_grad_(grad) for t in (case.q, case.k, case.v))
    mask = case.mask.clone()
    tensors = (q, k, v, mask)
    snap = _snapshot(*tensors)
    out, w = attnlib.scaled_dot_product_attention(q, k, v, mask, dropout_p=0.3)
    if grad:
        (out.sum() + w.sum()).backward()
    attnlib.attention_scores(q, k)
    attnlib.softmax(q)
    attnlib.split_heads(q, 1)
    attnlib.combine_masks(mask, mask)
    _assert_unchanged(tensors, snap)


def test_snapshot_check_catches_in_place_edits():
    """The check above can fail: an in-place masked_fill_ bumps the version counter and changes the values."""
    scores = torch.zeros(2, 2)
    snap = _snapshot(scores)
    scores.masked_fill_(torch.eye(2, dtype=torch.bool), float("-inf"))
    with pytest.raises(AssertionError):
        _assert_unchanged((scores,), snap)


def test_modules_do_not_modify_inputs():
    torch.manual_seed(0)
    mha = attnlib.MultiHeadAttention(4, 2)
    x = torch.randn(2, 3, 4)
    mask = attnlib.causal_mask(3)
    snap = _snapshot(x, mask)
    mha(x, attn_mask=mask)[0].sum().backward()
    attnlib.SelfAttention(4, 2)(x, mask)
    attnlib.CrossAttention(4, 4, 2)(x, x, mask)
    _assert_unchanged((x, mask), snap)


# ----------------------------------------------------------------------------------------------- heads


@given(seeds, st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_split_and_merge_heads_are_inverses(seed, B, L, H, d):
    x = randn((B, L, H * d), seed)
    heads = attnlib.split_heads(x, H)
    assert heads.shape == (B, H, L, d)
    manual = x.view(B, L, H, d).transpose(1, 2)
    torch.testing.assert_close(heads, manual, rtol=0, atol=0)
    torch.testing.assert_close(attnlib.merge_heads(heads), x, rtol=0, atol=0)
    torch.testing.assert_close(attnlib.merge_heads(manual), manual.transpose(1, 2).reshape(B, L, H * d), rtol=0, atol=0)
    # head h of token t holds features h*d .. (h+1)*d - 1 of token t
    for h in range(H):
        torch.testing.assert_close(heads[:, h], x[..., h * d : (h + 1) * d], rtol=0, atol=0)


def test_split_heads_without_transpose_is_wrong():
    B, L, H, d = 1, 3, 2, 2
    x = torch.arange(B * L * H * d, dtype=torch.float64).reshape(B, L, H * d)
    wrong = x.view(B, H, L, d)  # same shape, but mixes tokens inside one "head"
    assert wrong.shape == attnlib.split_heads(x, H).shape
    assert not torch.equal(wrong, attnlib.split_heads(x, H))
    # and attention over the wrong heads gives a different answer
    right_out, _ = attnlib.scaled_dot_product_attention(*(attnlib.split_heads(x, H),) * 3)
    wrong_out, _ = attnlib.scaled_dot_product_attention(wrong, wrong, wrong)
    assert not torch.allclose(attnlib.merge_heads(right_out), wrong_out.reshape(B, L, H * d))


def test_split_heads_unbatched():
    x = randn((3, 6), 0)
    assert attnlib.split_heads(x, 3).shape == (3, 3, 2)
    torch.testing.assert_close(attnlib.merge_heads(attnlib.split_heads(x, 3)), x)


# ----------------------------------------------------------------------------------------------- dropout


def test_dropout_returns_the_weights_it_used():
    q, k, v = randn((2, 2, 4, 3), 0), randn((2, 2, 5, 3), 1), randn((2, 2, 5, 2), 2)
    g = torch.Generator().manual_seed(7)
    out, w = attnlib.scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=g)
    torch.testing.assert_close(out, w @ v)
    _, clean = attnlib.scaled_dot_product_attention(q, k, v)
    kept = w != 0
    assert 0 < kept.sum() < kept.numel()
    torch.testing.assert_close(w[kept], clean[kept] / 0.5)  # inverted dropout scaling 1/(1-p)
    # same generator seed, same mask
    again, _ = attnlib.scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again, out)


def test_no_dropout_is_deterministic_and_exact():
    q, k, v = (randn((2, 3, 3), s) for s in range(3))
    a = attnlib.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    b = attnlib.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_functional_module_exports():
    assert set(fn.__all__) <= set(attnlib.__all__)
