"""attnlib.masks against torch's own masks and conventions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import fewer_examples, randn, seeds
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import attnlib

lengths_st = st.integers(1, 6)
# torch warns that its lower-right bias "will produce NaNs" when L > S; in torch 2.13 those fully masked rows are
# zeros (safe softmax), which is what these tests compare against, so the warning is noise here.
lower_right_warning = pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs:UserWarning")


# ----------------------------------------------------------------------------------------------- causal


@given(lengths_st, lengths_st)
def test_causal_top_left_equals_torch(L, S):
    mask = attnlib.causal_mask(L, S)
    assert mask.dtype == torch.bool and mask.shape == (L, S)
    torch.testing.assert_close(mask, torch.ones(L, S, dtype=torch.bool).tril())
    torch.testing.assert_close(mask, causal_upper_left(L, S)._materialize())


@lower_right_warning
@given(lengths_st, lengths_st)
def test_causal_bottom_right_equals_torch(L, S):
    mask = attnlib.causal_mask(L, S, alignment="bottom-right")
    torch.testing.assert_close(mask, torch.ones(L, S, dtype=torch.bool).tril(diagonal=S - L))
    torch.testing.assert_close(mask, causal_lower_right(L, S)._materialize())


@lower_right_warning
@fewer_examples
@given(lengths_st, lengths_st, seeds)
def test_causal_masks_in_attention_equal_torch(L, S, seed):
    q, k, v = randn((2, 1, L, 4), seed), randn((2, 1, S, 4), seed + 1), randn((2, 1, S, 3), seed + 2)
    top_left, _ = attnlib.scaled_dot_product_attention(q, k, v, attnlib.causal_mask(L, S))
    torch.testing.assert_close(top_left, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    bottom_right, _ = attnlib.scaled_dot_product_attention(q, k, v, attnlib.causal_mask(L, S, alignment="bottom-right"))
    torch.testing.assert_close(
        bottom_right, F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(L, S))
    )


def test_causal_diagonal_is_included():
    mask = attnlib.causal_mask(4)
    assert mask.diagonal().all()  # a token attends to itself
    assert not mask.triu(1).any()  # and to nothing after it
    assert mask.sum() == 4 * 5 // 2


@pytest.mark.parametrize("diagonal", [-1, 1])
def test_off_by_one_causal_mask_is_caught(diagonal):
    """The comparison used above fails on a mask whose diagonal is shifted by one either way."""
    for L, S in [(4, 4), (2, 5), (5, 2)]:
        wrong = torch.ones(L, S, dtype=torch.bool).tril(diagonal=diagonal)
        assert not torch.equal(wrong, attnlib.causal_mask(L, S))
        wrong_br = torch.ones(L, S, dtype=torch.bool).tril(diagonal=S - L + diagonal)
        assert not torch.equal(wrong_br, attnlib.causal_mask(L, S, alignment="bottom-right"))
    q, k, v = randn((4, 3), 0), randn((4, 3), 1), randn((4, 2), 2)
    off = attnlib.scaled_dot_product_attention(q, k, v, torch.ones(4, 4, dtype=torch.bool).tril(diagonal))[0]
    assert not torch.allclose(off, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_alignments_agree_when_square_and_differ_otherwise():
    assert torch.equal(attnlib.causal_mask(3, 3), attnlib.causal_mask(3, 3, alignment="bottom-right"))
    # one new query with a KV cache of 4: top-left lets it see key 0 only, bottom-right sees every key
    assert attnlib.causal_mask(1, 4).tolist() == [[True, False, False, False]]
    assert attnlib.causal_mask(1, 4, alignment="bottom-right").tolist() == [[True, True, True, True]]
    # L > S bottom-right: the first L - S rows see nothing
    assert not attnlib.causal_mask(4, 2, alignment="bottom-right")[:2].any()


# ----------------------------------------------------------------------------------------------- padding


@given(st.lists(st.integers(0, 5), min_size=1, max_size=4), st.integers(0, 2))
def test_padding_mask_from_lengths(lengths, extra):
    S = max(max(lengths), 1) + extra
    mask = attnlib.padding_mask(lengths, S)
    assert mask.shape == (len(lengths), 1, 1, S) and mask.dtype == torch.bool
    for b, n in enumerate(lengths):
        assert mask[b, 0, 0].tolist() == [j < n for j in range(S)]
    torch.testing.assert_close(attnlib.padding_mask(torch.tensor(lengths), S), mask)


def test_padding_mask_default_S_is_max_length():
    assert attnlib.padding_mask([2, 3]).shape == (2, 1, 1, 3)


def test_zero_length_item_gets_zero_output_not_a_uniform_average():
    q, k, v = randn((2, 1, 3, 4), 0), randn((2, 1, 3, 4), 1), randn((2, 1, 3, 2), 2)
    out, w = attnlib.scaled_dot_product_attention(q, k, v, attnlib.padding_mask([2, 0], 3))
    assert (out[1] == 0).all() and (w[1] == 0).all()
    assert (w[0, ..., 2] == 0).all()
    torch.testing.assert_close(w[0].sum(-1), torch.ones(1, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- combine


def test_combine_bool_masks_is_and():
    causal = attnlib.causal_mask(3)
    pad = attnlib.padding_mask([2, 3], 3)
    combined = attnlib.combine_masks(causal, None, pad)
    assert combined.shape == (2, 1, 3, 3) and combined.dtype == torch.bool
    torch.testing.assert_close(combined, causal & pad)
    assert attnlib.combine_masks(None, None) is None
    assert attnlib.combine_masks(causal) is causal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_combine_bool_and_float_masks(dtype):
    causal = attnlib.causal_mask(3)
    bias = torch.tensor([[0.5, 1.0, 2.0]], dtype=dtype)
    combined = attnlib.combine_masks(causal, bias)
    assert combined.dtype == dtype and combined.shape == (3, 3)
    expected = torch.where(causal, bias.expand(3, 3), torch.tensor(float("-inf"), dtype=dtype))
    torch.testing.assert_close(combined, expected)
    # in attention, the combination means the same as applying both
    q, k, v = randn((3, 2), 0, dtype), randn((3, 2), 1, dtype), randn((3, 2), 2, dtype)
    out, _ = attnlib.scaled_dot_product_attention(q, k, v, combined)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=expected))


def test_combine_rejects_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"\(2, 3\), \(4, 5\).*do not broadcast"):
        attnlib.combine_masks(torch.ones(2, 3, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"masks\[1\] must be torch.bool or a float mask, got torch.int64"):
        attnlib.combine_masks(torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.long))


def test_to_additive():
    mask = torch.tensor([[True, False]])
    add = attnlib.to_additive(mask, torch.float64)
    assert add.tolist() == [[0.0, float("-inf")]] and add.dtype == torch.float64
    with pytest.raises(TypeError, match="mask must be torch.bool.*torch.float32"):
        attnlib.to_additive(torch.zeros(2))


# ----------------------------------------------------------------------------------------------- MHA conventions


@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_to_and_from_mha_mask_round_trip(bits):
    mask = torch.tensor(bits)
    assert torch.equal(attnlib.from_mha_mask(attnlib.to_mha_mask(mask)), mask)
    assert torch.equal(attnlib.to_mha_mask(mask), ~mask)  # MHA: True = ignore
    bias = torch.tensor([0.0 if b else float("-inf") for b in bits])
    assert attnlib.to_mha_mask(bias) is bias and attnlib.from_mha_mask(bias) is bias  # float: same meaning


@fewer_examples
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), seeds)
def test_converted_masks_mean_the_same_in_torch_mha(lengths, seed):
    """A padding mask and a causal mask converted with to_mha_mask give torch MHA the same result as attnlib."""
    torch.manual_seed(seed)
    B, L, E = len(lengths), 4, 4
    mha = torch.nn.MultiheadAttention(E, 2, batch_first=True, dtype=torch.float64).eval()
    ours = attnlib.MultiHeadAttention.from_torch(mha)
    x = randn((B, L, E), seed)
    pad = attnlib.padding_mask(lengths, L)  # (B, 1, 1, L), True = real token
    causal = attnlib.causal_mask(L)
    expected, expected_w = mha(
        x, x, x, key_padding_mask=attnlib.to_mha_mask(pad).reshape(B, L), attn_mask=attnlib.to_mha_mask(causal)
    )
    out, w = ours(x, attn_mask=attnlib.combine_masks(causal, pad))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w.mean(1), expected_w)
    # the unconverted mask means the opposite to torch (it blocks the past) and gives a different answer
    wrong, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    assert not torch.allclose(wrong, expected)
    # and from_mha_mask brings torch's masks back
    assert torch.equal(attnlib.from_mha_mask(attnlib.to_mha_mask(pad).reshape(B, L)), pad.reshape(B, L))
