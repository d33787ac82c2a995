"""One test per bad input: the exception type, and a message naming the argument and what was seen."""

from __future__ import annotations

import math
import re

import pytest
import torch

import attnlib
from attnlib import device as device_mod

sdpa = attnlib.scaled_dot_product_attention


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.ones(shape, dtype=dtype, device=device)


def raises(exc, *fragments):
    """pytest.raises for ``exc`` whose message contains every fragment, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(f) for f in fragments))


# ----------------------------------------------------------------------------------------------- shapes


def test_q_and_k_feature_dims_differ():
    with raises(ValueError, "same feature dim", "q (2, 3, 4) (E=4)", "k (2, 5, 6) (E=6)"):
        sdpa(t(2, 3, 4), t(2, 5, 6), t(2, 5, 6))


def test_key_and_value_lengths_differ():
    with raises(ValueError, "v must be", "length S as k", "k (2, 5, 4)", "v (2, 6, 3)"):
        sdpa(t(2, 3, 4), t(2, 5, 4), t(2, 6, 3))


def test_q_and_k_batch_dims_differ():
    with raises(ValueError, "leading (batch, heads) dims", "q (2, 3, 4)", "k (3, 5, 4)"):
        sdpa(t(2, 3, 4), t(3, 5, 4), t(3, 5, 4))


def test_mask_of_the_wrong_shape():
    with raises(ValueError, "attn_mask has shape (3, 4)", "broadcasts to the scores' shape (2, 3, 5)"):
        sdpa(t(2, 3, 4), t(2, 5, 4), t(2, 5, 2), t(3, 4, dtype=torch.bool))


def test_mask_with_too_many_dims():
    with raises(ValueError, "attn_mask has shape (1, 1, 3, 5) with too many dims", "(2, 3, 5)"):
        sdpa(t(2, 3, 4), t(2, 5, 4), t(2, 5, 2), t(1, 1, 3, 5, dtype=torch.bool))


def test_one_dim_mask():
    with raises(ValueError, "attn_mask must have at least 2 dims (L, S)", "got shape (5)", "padding_mask"):
        sdpa(t(2, 3, 4), t(2, 5, 4), t(2, 5, 2), t(5, dtype=torch.bool))


def test_one_dim_query():
    with raises(ValueError, "q must have at least 2 dims (..., L, E)", "got shape (4)"):
        sdpa(t(4), t(5, 4), t(5, 2))


def test_four_dim_input_to_a_module():
    with raises(ValueError, "x must have 2 or 3 dims", "(batch, seq, 4)", "got shape (1, 2, 3, 4)"):
        attnlib.SelfAttention(4, 2)(t(1, 2, 3, 4))
    with raises(ValueError, "query must have 2 or 3 dims", "got shape (1, 2, 3, 4)"):
        attnlib.MultiHeadAttention(4, 2)(t(1, 2, 3, 4))


def test_mha_input_with_the_wrong_feature_count():
    mha = attnlib.MultiHeadAttention(4, 2, kdim=3)
    with raises(ValueError, "query has 5 features", "(2, 3, 5)", "expects 4"):
        mha(t(2, 3, 5), t(2, 2, 3))
    with raises(ValueError, "key has 4 features", "(2, 2, 4)", "expects 3"):
        mha(t(2, 3, 4), t(2, 2, 4), t(2, 2, 4))


def test_mha_batched_and_unbatched_mixed():
    with raises(ValueError, "query (3, 4), key (1, 3, 4)", "must all be batched"):
        attnlib.MultiHeadAttention(4, 2)(t(3, 4), t(1, 3, 4))


def test_cross_attention_batch_sizes_differ():
    with raises(ValueError, "x (2, 3, 4) and context (3, 5, 6)", "same batch size"):
        attnlib.CrossAttention(4, 6, 2)(t(2, 3, 4), t(3, 5, 6))


@pytest.mark.parametrize("embed_dim, num_heads", [(8, 3), (5, 2)])
def test_heads_that_do_not_divide_embed_dim(embed_dim, num_heads):
    with raises(ValueError, f"num_heads={num_heads} does not divide embed_dim={embed_dim}"):
        attnlib.MultiHeadAttention(embed_dim, num_heads)
    with raises(
        ValueError, f"num_heads={num_heads} does not divide the embedding dim {embed_dim}", f"(2, 4, {embed_dim})"
    ):
        attnlib.split_heads(t(2, 4, embed_dim), num_heads)


def test_non_positive_num_heads():
    with raises(ValueError, "num_heads must be a positive int, got 0"):
        attnlib.split_heads(t(2, 4, 4), 0)
    with raises(TypeError, "num_heads must be an int, got float"):
        attnlib.MultiHeadAttention(4, 2.0)


# ----------------------------------------------------------------------------------------------- dtypes and devices


def test_mask_of_dtype_long():
    with raises(TypeError, "attn_mask must be torch.bool", "got torch.int64", "use .bool()"):
        sdpa(t(3, 4), t(5, 4), t(5, 2), t(3, 5, dtype=torch.long))


def test_float64_mask_with_float32_query():
    with raises(TypeError, "attn_mask must be torch.bool", "query's dtype torch.float32", "got torch.float64"):
        sdpa(t(3, 4), t(5, 4), t(5, 2), t(3, 5, dtype=torch.float64))


def test_mixed_dtypes_of_q_and_k():
    with raises(TypeError, "k has dtype torch.float64 but q has dtype torch.float32"):
        sdpa(t(3, 4), t(5, 4, dtype=torch.float64), t(5, 2))
    with raises(TypeError, "v has dtype torch.float16 but q has dtype torch.float32"):
        sdpa(t(3, 4), t(5, 4), t(5, 2, dtype=torch.float16))


def test_integer_query():
    with raises(TypeError, "q must have a floating-point dtype", "got torch.int64"):
        sdpa(t(3, 4, dtype=torch.long), t(5, 4), t(5, 2))
    with raises(TypeError, "q must be a torch.Tensor, got list"):
        sdpa([[1.0]], t(1, 1), t(1, 1))


def test_module_input_of_another_dtype():
    with raises(TypeError, "x has dtype torch.float64 but the layer's weights are torch.float32"):
        attnlib.SelfAttention(4, 2)(t(2, 3, 4, dtype=torch.float64))


def test_mixed_devices_via_the_meta_device():
    """The device check runs before any data is read, so the meta device shows its message without a GPU."""
    with raises(ValueError, "k is on device meta but q is on cpu"):
        sdpa(t(3, 4), t(5, 4, device="meta"), t(5, 2))
    with raises(ValueError, "v is on device meta but q is on cpu"):
        sdpa(t(3, 4), t(5, 4), t(5, 2, device="meta"))
    with raises(ValueError, "attn_mask is on device meta but the query is on cpu"):
        sdpa(t(3, 4), t(5, 4), t(5, 2), t(3, 5, dtype=torch.bool, device="meta"))
    with raises(ValueError, "x is on meta but the layer's weights are on cpu"):
        attnlib.SelfAttention(4, 2)(t(2, 3, 4, device="meta"))


def _second_device():
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else None


@pytest.mark.skipif(_second_device() is None, reason="needs a second real device (CUDA or MPS); none here")
def test_mixed_real_devices():
    other = torch.device(_second_device())
    with raises(ValueError, f"k is on device {t(1, device=other).device} but q is on cpu"):
        sdpa(t(3, 4), t(5, 4, device=other), t(5, 2))


# ----------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("temperature", [0, -1, math.nan, math.inf])
def test_non_positive_or_non_finite_temperature(temperature):
    with raises(ValueError, "temperature must be a positive, finite number", f"got {temperature}"):
        attnlib.softmax(t(3), temperature=temperature)


def test_temperature_of_the_wrong_type():
    with raises(TypeError, "temperature must be a number, got str"):
        attnlib.softmax(t(3), temperature="1")


@pytest.mark.parametrize(
    "shapes, fragment",
    [
        (((0, 4), (5, 4), (5, 2)), "q is an empty sequence (L=0, shape (0, 4))"),
        (((3, 4), (0, 4), (0, 2)), "k is an empty sequence (S=0, shape (0, 4))"),
        (((3, 0), (5, 0), (5, 2)), "feature dim E=0 (q (3, 0))"),
    ],
    ids=["L=0", "S=0", "E=0"],
)
def test_empty_sequences(shapes, fragment):
    with raises(ValueError, fragment):
        sdpa(*(t(*s) for s in shapes))


def test_padding_mask_with_no_lengths():
    with raises(ValueError, "lengths is empty"):
        attnlib.padding_mask([])
    with raises(ValueError, "every length is 0 and S was not given"):
        attnlib.padding_mask([0, 0])


def test_padding_mask_bad_lengths():
    with raises(ValueError, "lengths [2, 5] exceed the key length S=4"):
        attnlib.padding_mask([2, 5], 4)
    with raises(ValueError, "lengths must be >= 0, got [2, -1]"):
        attnlib.padding_mask([2, -1])
    with raises(TypeError, "lengths must be a 1-D integer tensor", "torch.float32"):
        attnlib.padding_mask(torch.tensor([1.0, 2.0]))


def test_causal_mask_bad_arguments():
    with raises(ValueError, "alignment must be 'top-left' or 'bottom-right', got 'bottom-left'"):
        attnlib.causal_mask(3, alignment="bottom-left")
    with raises(ValueError, "L must be a positive int, got 0"):
        attnlib.causal_mask(0)


def test_is_causal_together_with_attn_mask():
    with raises(ValueError, "is_causal=True and attn_mask were both given", "combine_masks"):
        sdpa(t(3, 4), t(3, 4), t(3, 2), t(3, 3, dtype=torch.bool), is_causal=True)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan])
def test_dropout_out_of_range(p):
    with raises(ValueError, "dropout_p must be in [0, 1)", f"got {p}"):
        sdpa(t(3, 4), t(3, 4), t(3, 2), dropout_p=p)
    with raises(ValueError, "dropout must be in [0, 1)", f"got {p}"):
        attnlib.MultiHeadAttention(4, 2, dropout=p)


@pytest.mark.parametrize("name", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_in_inputs(name, bad):
    tensors = {"q": t(3, 4), "k": t(5, 4), "v": t(5, 2)}
    tensors[name] = tensors[name].clone()
    tensors[name][0, 1] = bad
    with raises(ValueError, f"{name} contains NaN or inf values"):
        sdpa(**tensors)


def test_nan_in_mask_or_softmax_input():
    with raises(ValueError, "attn_mask contains NaN or +inf"):
        sdpa(t(3, 4), t(5, 4), t(5, 2), torch.full((3, 5), math.nan))
    with raises(ValueError, "x contains NaN or +inf"):
        attnlib.softmax(torch.tensor([0.0, math.nan]))


def test_softmax_bad_dim():
    with raises(ValueError, "dim=2 is out of range for x of shape (3, 4)"):
        attnlib.softmax(t(3, 4), dim=2)


# ----------------------------------------------------------------------------------------------- device selection


@pytest.mark.parametrize("bad", ["gpu0", "cuda:x", "not a device"])
def test_get_device_with_a_bad_environment_variable(monkeypatch, bad):
    monkeypatch.setenv(device_mod.ENV_VAR, bad)
    with raises(ValueError, f"$ATTNLIB_DEVICE={bad!r} is not a device name", "cpu"):
        attnlib.get_device()


def test_get_device_with_an_unavailable_device(monkeypatch):
    missing = next((d for d in ("cuda", "mps") if d not in attnlib.available_devices()), None)
    if missing is None:
        pytest.skip("CUDA and MPS are both available here")
    monkeypatch.setenv(device_mod.ENV_VAR, missing)
    with raises(ValueError, f"$ATTNLIB_DEVICE={missing!r} asks for {missing}, which is not available here"):
        attnlib.get_device()
    monkeypatch.delenv(device_mod.ENV_VAR)
    with raises(ValueError, f"prefer={missing!r} asks for {missing}"):
        attnlib.get_device(prefer=missing)
