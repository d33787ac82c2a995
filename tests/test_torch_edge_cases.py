"""Edge semantics a PyTorch user relies on (issue 10): torch's CausalBias, strict flags, extreme scales, gradients
through the KV cache, bf16 gradient accuracy, Hugging Face finfo.min masks, empty batches, clear messages and the
public logsumexp. PyTorch is the oracle throughout."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import attnlib
from attnlib import reference
from attnlib.efficient import chunked_attention
from attnlib.kvcache import KVCache, decode_step_by_step

sdpa = attnlib.scaled_dot_product_attention


def _qkv(B=2, H=3, L=5, S=7, E=4, Ev=6, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, L, E), (B, H, S, E), (B, H, S, Ev))
    return [torch.randn(s, generator=g, dtype=dtype).to(device).requires_grad_(requires_grad) for s in shapes]


def raises(exc, *fragments):
    return pytest.raises(exc, match=".*".join(re.escape(f) for f in fragments))


# ------------------------------------------------------------------------------------------ 1. CausalBias


@pytest.mark.parametrize("make, alignment", [(causal_upper_left, "top-left"), (causal_lower_right, "bottom-right")])
@pytest.mark.parametrize("L, S", [(3, 7), (5, 5), (1, 6)])
def test_causal_bias_is_read_as_its_mask(make, alignment, L, S, device):
    q, k, v = _qkv(L=L, S=S, device=device)
    bias = make(L, S)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # torch's own reading of it
    out, weights = sdpa(q, k, v, bias)
    torch.testing.assert_close(out, expected)
    assert torch.equal(weights > 0, attnlib.causal_mask(L, S, alignment=alignment, device=device).expand_as(weights))
    torch.testing.assert_close(chunked_attention(q, k, v, bias, block_q=2, block_k=3), expected)
    # with is_causal as well: attnlib's one rule, refused by every front-end (the CausalBias alone says it)
    for fn in (chunked_attention, sdpa):
        with pytest.raises(ValueError, match="is_causal=True and attn_mask"):
            fn(q, k, v, bias, is_causal=True)
    # the NumPy reference reads it too
    ref_out, _ = reference.attention(q.cpu().numpy(), k.cpu().numpy(), v.cpu().numpy(), bias)
    np.testing.assert_allclose(ref_out, expected.cpu().numpy(), atol=1e-12)


def test_causal_bias_in_the_modules_is_read_as_its_mask():
    torch.manual_seed(0)
    mha = attnlib.MultiHeadAttention(8, 2, dtype=torch.float64)
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    out, _ = mha(x, attn_mask=causal_lower_right(4, 4))
    torch.testing.assert_close(out, mha(x, is_causal=True)[0])
    ref, _ = mha.to_torch()(x, x, x, attn_mask=~attnlib.causal_mask(4), need_weights=False)
    torch.testing.assert_close(out, ref)
    sa = attnlib.SelfAttention(8, 4, dtype=torch.float64)
    torch.testing.assert_close(sa(x, causal_upper_left(4, 4))[0], sa(x, is_causal=True)[0])
    ca = attnlib.CrossAttention(8, 8, 4, dtype=torch.float64)
    ctx = torch.randn(2, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(
        ca(x, ctx, causal_lower_right(4, 6))[0], ca(x, ctx, attnlib.causal_mask(4, 6, alignment="bottom-right"))[0]
    )


def test_causal_bias_of_other_lengths_is_refused():
    q, k, v = _qkv(L=3, S=7)
    with raises(ValueError, "attn_mask is a CausalBias for seq_len_q=3, seq_len_kv=5", "L=3, S=7"):
        sdpa(q, k, v, causal_lower_right(3, 5))
    with raises(ValueError, "CausalBias for seq_len_q=4"):
        chunked_attention(q, k, v, causal_upper_left(4, 7))
    with raises(ValueError, "is_causal=True and attn_mask (a CausalBias)"):
        sdpa(q, k, v, causal_upper_left(3, 7), is_causal=True)


# ------------------------------------------------------------------------------------------ 2. strict bools


@pytest.mark.parametrize("bad", ["no", 1, None, torch.tensor(True)])
def test_is_causal_must_be_a_bool(bad):
    q, k, v = _qkv()
    with raises(TypeError, "is_causal must be True or False"):
        sdpa(q, k, v, is_causal=bad)
    with raises(TypeError, "is_causal must be True or False"):
        chunked_attention(q, k, v, is_causal=bad)
    x = torch.randn(2, 4, 8)
    with raises(TypeError, "is_causal must be True or False"):
        attnlib.SelfAttention(8, 4)(x, is_causal=bad)
    with raises(TypeError, "is_causal must be True or False"):
        attnlib.MultiHeadAttention(8, 2)(x, is_causal=bad)
    with raises(TypeError, "need_weights must be True or False"):
        attnlib.MultiHeadAttention(8, 2)(x, need_weights=bad)
    with raises(TypeError, "return_lse must be True or False"):
        sdpa(q, k, v, return_lse=bad)


# ------------------------------------------------------------------------------------------ 3. extreme scales


def test_issue_cases_of_overflowing_scale_and_temperature():
    torch.testing.assert_close(attnlib.softmax(torch.tensor([1.0, 2.0]), temperature=1e-40), torch.tensor([0.0, 1.0]))
    np.testing.assert_array_equal(reference.softmax([1.0, 2.0], temperature=1e-40), [0.0, 1.0])
    q, k, v = _qkv(dtype=torch.float32)
    for scale, fn in ((1e38, lambda *a, **kw: sdpa(*a, **kw)[0]), (3e38, chunked_attention)):
        got = fn(q, k, v, scale=scale)
        oracle = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)  # no overflow in fp64
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, oracle.float())
    ref_out, _ = reference.attention(q.numpy(), k.numpy(), v.numpy(), scale=1e38)
    np.testing.assert_allclose(ref_out, F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=1e38))


def test_raw_scores_that_overflow_are_refused_by_name():
    q, k, v = _qkv(dtype=torch.float32)
    with raises(ValueError, "q @ k^T overflows torch.float32"):
        sdpa(q * 1e20, k * 1e20, v)
    with raises(ValueError, "scale=1e+38 makes the scores overflow"):
        attnlib.attention_scores(q, k, scale=1e38)


magnitudes = st.floats(min_value=-40.0, max_value=38.4).map(lambda e: 10.0**e)  # log-uniform, 1e-40 .. 2.5e38


@given(
    scale=magnitudes,
    seed=st.integers(0, 2**16),
    masked=st.sampled_from(["none", "bool", "finfo.min"]),
)
@example(scale=1e38, seed=0, masked="none")  # the issue's cases
@example(scale=3e38, seed=0, masked="bool")
@example(scale=3e38, seed=1, masked="finfo.min")
@example(scale=1e-40, seed=2, masked="finfo.min")
def test_any_scale_gives_the_fp64_answer_never_nan(scale, seed, masked):
    """Integer-valued q and k make q k^T exact in fp32 and fp64 (ties stay ties), so fp64 torch is the oracle."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randint(-3, 4, (1, 2, n, 3), generator=g).float() for n in (4, 5))
    v = torch.randn(1, 2, 5, 2, generator=g)
    mask = None
    if masked == "bool":
        mask = torch.rand(4, 5, generator=g) > 0.4
        mask[0] = True
    elif masked == "finfo.min":  # every row keeps a key: a fully finfo.min row is uniform only by fp32 rounding
        keep = torch.rand(4, 5, generator=g) > 0.4
        keep[:, 0] = True
        mask = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
    # the fp64 oracle: exact integer q k^T, one rounding for the scale (torch's SDPA scales q and k by sqrt(scale)
    # each, which breaks exact ties at huge scales)
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.double()
    oracle = (torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v.double()).float()  # fully masked rows: 0
    for got in (sdpa(q, k, v, mask, scale=scale)[0], chunked_attention(q, k, v, mask, scale=scale, block_k=2)):
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, oracle, atol=1e-5, rtol=1e-5)


@given(temperature=magnitudes, seed=st.integers(0, 2**16))
@example(temperature=1e-40, seed=0)
@example(temperature=3e38, seed=0)
def test_any_temperature_gives_the_fp64_answer_never_nan(temperature, seed):
    x = torch.randint(-5, 6, (3, 6), generator=torch.Generator().manual_seed(seed)).float()
    oracle = torch.softmax(x.double() / temperature, dim=-1).float()
    got = attnlib.softmax(x, temperature=temperature)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, oracle, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(reference.softmax(x.numpy(), temperature=temperature), oracle.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------ 4. KV cache grads


@pytest.mark.parametrize("step", [1, 3])
def test_kv_cache_decoding_is_differentiable(step):
    torch.manual_seed(0)
    mha = attnlib.MultiHeadAttention(12, 3, dtype=torch.float64).eval()
    x = torch.randn(2, 7, 12, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 7, 12, dtype=torch.float64)
    params = [x, *mha.parameters()]
    expected = torch.autograd.grad(mha(x, is_causal=True)[0], params, grad)
    got = torch.autograd.grad(decode_step_by_step(mha, x, step=step), params, grad)
    for g_got, g_exp in zip(got, expected, strict=True):
        torch.testing.assert_close(g_got, g_exp, atol=1e-12, rtol=1e-12)
    with torch.no_grad():  # the fast, in-place cache still gives the same output
        torch.testing.assert_close(decode_step_by_step(mha, x, step=step), mha(x, is_causal=True)[0])


def test_kv_cache_step_gradients_equal_full_causal_attention():
    q, k, v = _qkv(L=6, S=6, requires_grad=True)
    cache = KVCache(capacity=1)
    outs = [cache.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])[0] for t in range(6)]
    got = torch.autograd.grad(torch.cat(outs, dim=2).square().sum(), (q, k, v))
    expected = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True).square().sum(), (q, k, v))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ 5. bf16 gradients


def _grad_errors(fn, q, k, v, grad, exact):
    """Relative (Frobenius) error of fn's bf16 gradients of q, k, v against the fp64 ones."""
    qb, kb, vb = (t.detach().to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    grads = torch.autograd.grad(fn(qb, kb, vb), (qb, kb, vb), grad.to(torch.bfloat16))
    return [float((g.double() - e).norm() / e.norm()) for g, e in zip(grads, exact, strict=True)]


@pytest.mark.parametrize("sharpness", [1.0, 8.0, 30.0])
@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_bf16_gradients_are_as_accurate_as_torch(sharpness, offset):
    """bf16 gradients within a small factor of the best a bf16 result can be (the fp64 gradient rounded to bf16)
    and of torch's SDPA. Sharp softmax and values with a common offset (un-normalised features) expose weights
    or dP = dO v^T rounded to bf16 before they are used: the gradients of q and k come from dP - dO.O, a
    difference of nearly equal numbers."""
    g = torch.Generator().manual_seed(3)
    B, H, L, S, E = 2, 2, 16, 16, 16
    q, k, v = (torch.randn(B, H, n, E, generator=g, dtype=torch.float64) for n in (L, S, S))
    q, v = q * sharpness / math.sqrt(E), v + offset
    # bf16-representable inputs, so that the fp64 oracle sees exactly what the bf16 implementations see
    q, k, v = (t.to(torch.bfloat16).double().requires_grad_() for t in (q, k, v))
    grad = torch.randn(B, H, L, E, generator=g, dtype=torch.float64).to(torch.bfloat16).double()
    exact = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad)
    best = [float((e.to(torch.bfloat16).double() - e).norm() / e.norm()) for e in exact]
    theirs = _grad_errors(F.scaled_dot_product_attention, q, k, v, grad, exact)
    ours = _grad_errors(lambda *a: sdpa(*a)[0], q, k, v, grad, exact)
    chunked = _grad_errors(lambda *a: chunked_attention(*a, block_q=8, block_k=8), q, k, v, grad, exact)
    for name, errors in (("sdpa", ours), ("chunked", chunked)):
        for e, b, t in zip(errors, best, theirs, strict=True):
            assert e <= 2 * t + 1e-3, (name, errors, theirs)
            assert e <= 4 * b, (name, errors, best)


# ------------------------------------------------------------------------------------------ 6. finfo.min masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_finfo_min_masked_rows_in_chunked_attention_match_sdpa(dtype, device):
    """Hugging Face masks with finfo.min: a fully masked row is the mean of v in SDPA, and must be in chunked."""
    q, k, v = _qkv(L=6, S=9, dtype=dtype, device=device)
    lowest = torch.finfo(dtype).min
    mask = torch.zeros(6, 9, dtype=dtype, device=device)
    mask[:, 5:] = lowest  # padding keys
    mask[2] = lowest  # a query that sees nothing
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = chunked_attention(q, k, v, mask, block_q=4, block_k=4)
    tol = 2e-3 if dtype == torch.float16 else None
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    if dtype != torch.float16:  # fp16's finfo.min (-65504) is small next to fp32 scores: no rounding to uniform
        torch.testing.assert_close(got[:, :, 2], v.mean(dim=-2))


def test_finfo_min_masked_rows_have_sdpa_gradients():
    q, k, v = _qkv(L=5, S=6, requires_grad=True)
    mask = torch.zeros(5, 6, dtype=torch.float64)
    mask[1] = torch.finfo(torch.float64).min
    mask[:, 4:] = torch.finfo(torch.float64).min
    got = torch.autograd.grad(chunked_attention(q, k, v, mask, block_k=4).sum(), (q, k, v))
    expected = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum(), (q, k, v))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ 7. empty batch


def test_chunked_attention_with_batch_zero_keeps_the_graph():
    q, k, v = _qkv(B=0, requires_grad=True)
    expected = F.scaled_dot_product_attention(q, k, v)
    out = chunked_attention(q, k, v)
    assert expected.requires_grad and out.requires_grad
    assert out.shape == expected.shape
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    mask = torch.zeros(0, 1, 5, 7, dtype=torch.float64, requires_grad=True)
    chunked_attention(q, k, v, mask).sum().backward()
    assert mask.grad.shape == mask.shape


# ------------------------------------------------------------------------------------------ 8. messages


def test_generator_must_be_a_torch_generator():
    q, k, v = _qkv()
    with raises(TypeError, "generator must be a torch.Generator or None, got int 42", "manual_seed"):
        sdpa(q, k, v, dropout_p=0.5, generator=42)


def test_reference_attention_names_a_misshapen_mask():
    q, k, v = (a.numpy() for a in _qkv(L=3, S=5))
    with raises(ValueError, "mask has shape (2, 2)", "scores' shape (2, 3, 3, 5)"):
        reference.attention(q, k, v, np.ones((2, 2), dtype=bool))
    with raises(ValueError, "mask has shape (4, 5)"):
        reference.attention_loops(q[0, 0], k[0, 0], v[0, 0], np.ones((4, 5), dtype=bool))


def test_decode_step_by_step_names_a_dtype_mismatch():
    mha = attnlib.MultiHeadAttention(8, 2)
    with raises(TypeError, "x has dtype torch.float64 but mha's weights are torch.float32"):
        decode_step_by_step(mha, torch.randn(1, 3, 8, dtype=torch.float64))


@pytest.mark.parametrize("argument", ["query", "key", "value"])
def test_nan_in_a_module_input_names_that_input(argument):
    mha = attnlib.MultiHeadAttention(8, 2)
    inputs = {name: torch.randn(2, 4, 8) for name in ("query", "key", "value")}
    inputs[argument][1, 2, 3] = float("nan")
    with raises(ValueError, f"{argument} contains NaN or inf values (shape (2, 4, 8))"):
        mha(**inputs)
    if argument == "query":
        with raises(ValueError, "x contains NaN"):
            attnlib.SelfAttention(8, 4)(inputs["query"])


def test_bad_device_names_the_argument():
    with raises(ValueError, "device='bogus' is not a device name"):
        attnlib.causal_mask(3, device="bogus")
    with raises(ValueError, "device='bogus' is not a device name"):
        attnlib.padding_mask([1, 2], device="bogus")
    with raises(TypeError, "device must be a torch.device"):
        attnlib.causal_mask(3, device=3.5)


def test_softmax_dim_must_be_an_int():
    with raises(TypeError, "dim must be an int, got float 1.5"):
        attnlib.softmax(torch.randn(3), dim=1.5)


def test_padding_mask_accepts_numpy_integers():
    expected = attnlib.padding_mask([3, 5])
    assert torch.equal(attnlib.padding_mask(np.array([3, 5])), expected)
    assert torch.equal(attnlib.padding_mask([np.int64(3), np.int32(5)]), expected)
    with raises(TypeError, "lengths must be a 1-D integer array", "float64"):
        attnlib.padding_mask(np.array([3.0, 5.0]))
    with raises(TypeError, "lengths[1] must be an int, got float 5.0"):
        attnlib.padding_mask([3, 5.0])


def test_hidden_of_checks_the_index():
    from attnlib.minilm import MiniLMOutput

    out = MiniLMOutput(
        tokens=[["a", "b"], ["c"]],
        lengths=torch.tensor([2, 1]),
        hidden_states=(torch.zeros(2, 2, 4),),
        attentions=(torch.zeros(2, 1, 2, 2),),
        sentence_embedding=torch.zeros(2, 4),
    )
    assert out.hidden_of(-1).shape == (1, 1, 4)
    with raises(ValueError, "item must be an int index into the 2 items", "got 99"):
        out.hidden_of(99)
    with raises(ValueError, "item must be an int index into the 2 items", "got 99"):
        out.attention_of(99)


# ------------------------------------------------------------------------------------------ 9. logsumexp


def _masked_scores(q, k, mask, scale):
    scores = q @ k.transpose(-2, -1) * scale
    if mask is None:
        return scores
    return scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask


@pytest.mark.parametrize("kind", ["none", "bool", "additive", "causal-top-left", "causal-bottom-right"])
def test_lse_is_the_natural_logsumexp_of_the_masked_scaled_scores(kind, device):
    q, k, v = _qkv(L=6, S=9, device=device)
    scale, mask, causal = 0.7, None, {}
    if kind == "bool":
        mask = torch.rand(2, 1, 6, 9, generator=torch.Generator().manual_seed(2)).to(device) > 0.5
        mask[0, 0, 3] = False  # a fully masked row: lse = -inf
    elif kind == "additive":
        mask = torch.randn(6, 9, dtype=torch.float64).to(device)
    elif kind.startswith("causal"):
        alignment = kind.removeprefix("causal-")
        mask = attnlib.causal_mask(6, 9, alignment=alignment, device=device)
        causal = {"is_causal": True, "causal_alignment": alignment}
    expected = torch.logsumexp(_masked_scores(q, k, mask, scale), dim=-1)  # -inf on fully masked rows
    out, _, lse = sdpa(q, k, v, mask, scale=scale, return_lse=True)
    assert lse.shape == (2, 3, 6) and lse.dtype == torch.float64
    torch.testing.assert_close(lse, expected)
    assert torch.equal(out, sdpa(q, k, v, mask, scale=scale)[0])
    chunked_mask = None if causal else mask
    out_c, lse_c = chunked_attention(
        q, k, v, chunked_mask, scale=scale, block_q=4, block_k=4, return_lse=True, **causal
    )
    torch.testing.assert_close(lse_c, expected)
    torch.testing.assert_close(out_c, out)
    if kind == "bool":
        assert lse[0, :, 3].eq(-math.inf).all() and lse_c[0, :, 3].eq(-math.inf).all()


def test_lse_gradients_equal_torch_logsumexp():
    q, k, v = _qkv(L=5, S=8, requires_grad=True)
    mask = torch.ones(5, 8, dtype=torch.bool)
    mask[2] = False  # fully masked: contributes a finite (zero) gradient
    mask[:, 6:] = False
    visible = mask.any(-1)
    g_out = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    g_lse = torch.randn(2, 3, 5, dtype=torch.float64)

    def loss(out, lse):
        return (out * g_out).sum() + (lse[..., visible] * g_lse[..., visible]).sum()

    out_ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    lse_ref = torch.logsumexp(_masked_scores(q, k, mask, 1 / math.sqrt(4)), dim=-1)
    expected = torch.autograd.grad(loss(out_ref, lse_ref), (q, k, v))
    out, _, lse = sdpa(q, k, v, mask, return_lse=True)
    out_c, lse_c = chunked_attention(q, k, v, mask, block_q=2, block_k=3, return_lse=True)
    for got in (torch.autograd.grad(loss(out, lse), (q, k, v)), torch.autograd.grad(loss(out_c, lse_c), (q, k, v))):
        for a, b in zip(got, expected, strict=True):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b)


def test_lse_of_half_inputs_is_float32():
    q, k, v = _qkv(dtype=torch.bfloat16)
    expected = torch.logsumexp(q.float() @ k.float().transpose(-2, -1) / 2, dim=-1)
    _, _, lse = sdpa(q, k, v, return_lse=True)
    _, lse_c = chunked_attention(q, k, v, return_lse=True)
    for got in (lse, lse_c):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected)


def test_causal_bias_in_the_mask_helpers_is_read_as_its_mask():
    lower = attnlib.causal_mask(3, 5, alignment="bottom-right")
    pad = attnlib.padding_mask([5, 4])
    assert torch.equal(attnlib.combine_masks(causal_lower_right(3, 5), pad), lower & pad)
    assert torch.equal(attnlib.to_additive(causal_upper_left(3, 5)), attnlib.to_additive(attnlib.causal_mask(3, 5)))
    assert torch.equal(attnlib.to_mha_mask(causal_lower_right(3, 5)), ~lower)


@given(exponent=st.integers(0, 100), seed=st.integers(0, 2**16))
@example(exponent=63, seed=0)  # q @ k^T overflows float32
@example(exponent=100, seed=0)
def test_extreme_inputs_give_the_answer_or_a_named_error(exponent, seed):
    """Huge q and k: the fp64 answer, or (SDPA, when q @ k^T itself overflows float32) a ValueError; never NaN.

    q and k are small integers times 2**exponent, so q k^T is exact in float32 until it overflows; what is left
    is float32's rounding of the scaled scores, about 1e-7 of their size."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randint(-3, 4, (1, 2, n, 3), generator=g).float() * 2.0**exponent for n in (4, 5))
    v = torch.randn(1, 2, 5, 2, generator=g)
    raw = q.double() @ k.double().transpose(-2, -1)
    scores = raw / math.sqrt(3)
    oracle = (torch.softmax(scores, dim=-1) @ v.double()).float()
    tol = 1e-5 + 1e-6 * float(scores.abs().max())
    torch.testing.assert_close(chunked_attention(q, k, v, block_k=2), oracle, atol=tol, rtol=1e-5)
    try:
        got = sdpa(q, k, v)[0]
    except ValueError as e:
        assert "q @ k^T overflows torch.float32" in str(e)
        assert raw.abs().max() > torch.finfo(torch.float32).max
    else:
        torch.testing.assert_close(got, oracle, atol=tol, rtol=1e-5)
