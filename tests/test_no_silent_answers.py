"""Issue 20's defects, one test each: silent wrong answers, precision, raw or misnamed errors, sizes that cannot fit,
and the same tensor checked again and again. Every test here failed on the code before the fix.

Device mixes are checked with the ``meta`` device (a second device that every machine has): attnlib must name the
argument before torch's own kernels see the mix.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import attnlib
from attnlib import (
    MultiHeadAttention,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    causal_lm_loss,
    generate,
    grouped_query_attention,
    linear_attention,
    scaled_dot_product_attention,
    sinusoidal_positions,
    sliding_window_mask,
)
from attnlib.efficient import chunked_attention
from attnlib.flash import FlashAttention2, flash_attention, flash_attention_loops
from attnlib.positions import rope_angles
from attnlib.transformer import TinyDecoder, TransformerBlock

META = torch.device("meta")


def _qkv(*shape, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g).to(dtype).requires_grad_(grad) for _ in range(3))


# ----------------------------------------------------------------------------------------------------------------
# Silent wrong answers
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [flash_attention, flash_attention_loops], ids=["fast", "loops"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_at_scale_1e38_gives_the_limit_not_nan(fn, is_causal):
    """The limit of softmax(scale * s) as scale grows is attention on each row's largest score; sdpa and chunked
    give it, flash gave NaN."""
    q, k, v = _qkv(1, 2, 7, 4)
    want, _ = scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=1e38)
    got = fn(q, k, v, is_causal=is_causal, scale=1e38)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    oracle = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=is_causal, scale=1e38)
    torch.testing.assert_close(got, oracle.float())


def test_linear_attention_causal_must_be_a_bool():
    """causal="no" is truthy: it ran the causal prefix sums."""
    q, k, v = _qkv(1, 1, 4, 3)
    with pytest.raises(TypeError, match=r"causal must be True or False, got str 'no'"):
        linear_attention(q, k, v, causal="no")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, "float32"])
@pytest.mark.parametrize(
    "make",
    [
        lambda dtype: sinusoidal_positions(8, 4, dtype=dtype),
        lambda dtype: alibi_bias(4, 5, dtype=dtype),
        lambda dtype: alibi_slopes(4, dtype=dtype),
        lambda dtype: rope_angles(torch.arange(5), 4, dtype=dtype),
    ],
    ids=["sinusoidal_positions", "alibi_bias", "alibi_slopes", "rope_angles"],
)
def test_position_tables_refuse_a_dtype_that_is_not_floating(make, dtype):
    """An int dtype truncated the table (ALiBi's bias became all zeros); a string was torch's raw error."""
    with pytest.raises(TypeError, match="dtype must be"):
        make(dtype)


def test_apply_rope_refuses_bool_or_nan_positions_and_nan_inputs():
    x = torch.randn(1, 2, 5, 4)
    with pytest.raises(TypeError, match="positions must hold integer"):
        apply_rope(x, torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions contains NaN"):
        apply_rope(x, torch.tensor([0.0, 1.0, math.nan, 3.0, 4.0]))
    bad = x.clone()
    bad[0, 1, 2, 3] = math.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        apply_rope(bad)


def test_linear_attention_refuses_nan_inputs():
    q, k, v = _qkv(1, 1, 4, 3)
    for name in "qkv":
        args = dict(q=q, k=k, v=v)
        args[name] = args[name].clone().index_fill_(2, torch.tensor([1]), math.nan)
        with pytest.raises(ValueError, match=f"{name} contains NaN"):
            linear_attention(**args)


def test_linear_attention_refuses_a_feature_map_that_is_not_positive():
    """With phi = identity the denominator phi(q) . sum phi(k) can be 0 or negative: meaningless outputs."""
    q, k, v = _qkv(1, 1, 6, 3)
    with pytest.raises(ValueError, match=r"feature_map\(q\) has negative entries"):
        linear_attention(q, k, v, feature_map=lambda x: x)
    out = linear_attention(q, k, v, feature_map=lambda x: x.relu())  # non-negative: fine
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("shape", "match"), [((1, 2, 0, 5, 4, 3), "q is an empty"), ((1, 2, 5, 5, 0, 3), "E=0")])
def test_flash_refuses_what_sdpa_refuses(shape, match):
    B, H, L, S, E, Ev = shape
    q, k, v = torch.randn(B, H, L, E), torch.randn(B, H, S, E), torch.randn(B, H, S, Ev)
    for fn in (flash_attention, flash_attention_loops, lambda *a: FlashAttention2.apply(*a)):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v)


# ----------------------------------------------------------------------------------------------------------------
# Precision
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_low_precision_backward_uses_the_fp32_output(dtype):
    """The docstring promises fp32 accumulation: dq, dk, dv from bf16/fp16 inputs must be the fp32 computation's
    gradients rounded once. Values near 8 make D = rowsum(dO * O) large next to dP - D, so a backward that uses the
    output rounded to bf16 is 70x off (it was: 6e-2 where rounding alone gives 9e-4)."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 4, 128, 64, generator=g).to(dtype).requires_grad_() for _ in range(2))
    v = (8 + 0.1 * torch.randn(2, 4, 128, 64, generator=g)).to(dtype).requires_grad_()
    do = torch.randn(2, 4, 128, 64, generator=g).to(dtype)
    fp32 = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ideal = torch.autograd.grad(F.scaled_dot_product_attention(*fp32, is_causal=True), fp32, do.float())
    got = torch.autograd.grad(flash_attention(q, k, v, is_causal=True, block_q=32, block_k=32), (q, k, v), do)
    for name, a, i in zip("qkv", got, ideal, strict=True):
        err, rounding = float((a.float() - i).abs().max()), float((i.to(dtype).float() - i).abs().max())
        assert err <= 1.01 * rounding + 1e-5, f"d{name}: {err:.2e}, rounding the fp32 gradient gives {rounding:.2e}"


# ----------------------------------------------------------------------------------------------------------------
# Unclear or raw errors
# ----------------------------------------------------------------------------------------------------------------


def _decoder():
    torch.manual_seed(0)
    return TinyDecoder(vocab_size=11, d_model=8, num_heads=2, num_layers=1, max_len=16).eval()


def test_generate_at_a_tiny_temperature_is_greedy_and_nan_is_refused():
    model, prompt = _decoder(), torch.tensor([[1, 2, 3]])
    greedy = generate(model, prompt, 4)
    tiny = generate(model, prompt, 4, temperature=1e-40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiny, greedy)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        generate(model, prompt, 4, temperature=math.nan)


def test_gqa_zero_kv_heads_and_shape_errors_name_the_inputs_as_given():
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match="at least one head"):
        grouped_query_attention(q, torch.randn(1, 0, 5, 8), torch.randn(1, 0, 5, 8))
    k, v = torch.randn(1, 2, 5, 6), torch.randn(1, 2, 5, 8)  # head_dim 6 != 8: the message shows k as passed
    with pytest.raises(ValueError, match=re.escape("k (1, 2, 5, 6)")):
        grouped_query_attention(q, k, v)


def test_transformer_block_names_x_for_a_dtype_or_device_mix():
    block = TransformerBlock(8, 2)
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the block's weights are torch.float32"):
        block(torch.randn(1, 3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="x is on meta"):
        block(torch.randn(1, 3, 8, device=META))


def test_tiny_decoder_names_tokens():
    model = _decoder()
    with pytest.raises(ValueError, match="tokens has no positions"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("tokens[0, 2] = 11")):
        model(torch.tensor([[1, 2, 11]]))
    with pytest.raises(ValueError, match="tokens are on meta"):
        model(torch.zeros(1, 3, dtype=torch.long, device=META))


def test_causal_lm_loss_refuses_a_target_outside_the_vocabulary():
    logits = torch.randn(1, 4, 5)
    with pytest.raises(ValueError, match=re.escape(r"tokens[:, 1:] (the targets)[0, 1] = 7")):
        causal_lm_loss(logits, torch.tensor([[0, 1, 7, 2]]))
    causal_lm_loss(logits, torch.tensor([[0, 1, -100, 2]]))  # ignore_index is not an id: fine


def test_linear_attention_names_dtype_and_device_mixes():
    q, k, v = _qkv(1, 1, 4, 3)
    with pytest.raises(TypeError, match="k has dtype torch.float64"):
        linear_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="v is on device meta"):
        linear_attention(q, k, v.to(META))


def test_apply_rope_names_a_device_mix():
    with pytest.raises(ValueError, match="positions is on device meta"):
        apply_rope(torch.randn(1, 1, 5, 4), torch.arange(5, device=META))


def test_a_second_backward_through_flash_says_why():
    q, k, v = _qkv(1, 1, 6, 4, grad=True)
    for fn in (flash_attention, chunked_attention, lambda q, k, v: FlashAttention2.apply(q, k, v)):
        out = fn(q, k, v)
        (g,) = torch.autograd.grad(out.sum(), q, create_graph=False, retain_graph=True)
        with pytest.raises(RuntimeError, match="hand-written backward"):
            torch.autograd.grad(out.sum(), q, create_graph=True)
        out = fn(q, k, v)
        out.sum().backward()
        with pytest.raises(RuntimeError, match="retain_graph=True"):
            out.sum().backward()


# ----------------------------------------------------------------------------------------------------------------
# Sizes that cannot fit: refused by attnlib, with the figure, before anything is allocated
# ----------------------------------------------------------------------------------------------------------------

HUGE = 10**7  # an (L, S) = (1e7, 1e7) bool mask is 100 TB


@pytest.mark.parametrize(
    "call",
    [
        lambda: attnlib.causal_mask(HUGE),
        lambda: sliding_window_mask(HUGE, window=4),
        lambda: attnlib.padding_mask([1] * HUGE, HUGE),
        lambda: alibi_bias(8, HUGE),
        lambda: sinusoidal_positions(HUGE * 100, 1024),
    ],
    ids=["causal_mask", "sliding_window_mask", "padding_mask", "alibi_bias", "sinusoidal_positions"],
)
def test_tables_that_cannot_fit_are_refused_with_the_figure(call):
    with pytest.raises(ValueError, match=r"would need about [\d.,]+ [TGP]iB, but only .* is free"):
        call()


def test_attention_scores_that_cannot_fit_are_refused_before_the_matmul():
    q = torch.zeros(1, 1, 1, 8).expand(1, 1, HUGE, 8)  # a view: no memory of its own
    for fn in (scaled_dot_product_attention, attnlib.attention_scores):
        with pytest.raises(ValueError, match=r"q, k: the .* scores would need about [\d.,]+ [TGP]iB"):
            fn(q, q, q) if fn is scaled_dot_product_attention else fn(q, q)


def test_sliding_window_mask_is_built_as_bool():
    """It built an int64 L x S matrix (8x the bool mask it returns) on the way; the result is unchanged."""
    allocated = []

    class Watch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dim() == 2:
                allocated.append(out.dtype)
            return out

    with Watch():
        mask = sliding_window_mask(6, 9, window=3, alignment="bottom-right")
    assert set(allocated) == {torch.bool}, allocated
    i, j = torch.arange(6)[:, None] + 3, torch.arange(9)[None, :]
    assert torch.equal(mask, (i - j >= 0) & (i - j < 3))
    for L, S, w, a in ((5, 5, 1, "top-left"), (7, 4, 2, "bottom-right"), (3, 8, 10, "top-left")):
        i, j = torch.arange(L)[:, None] + (S - L if a == "bottom-right" else 0), torch.arange(S)[None, :]
        assert torch.equal(sliding_window_mask(L, S, window=w, alignment=a), (i - j >= 0) & (i - j < w))


# ----------------------------------------------------------------------------------------------------------------
# The same tensor checked again and again
# ----------------------------------------------------------------------------------------------------------------


def _count_host_syncs(fn) -> int:
    """How many times ``fn`` reads a tensor's value back into Python (bool, float, item): each full-tensor check
    such as ``isfinite(x).all()`` is one, and each is a host sync on a GPU."""
    count = 0
    syncs = {torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.item, torch.Tensor.tolist}

    class Watch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            nonlocal count
            count += func in syncs
            return func(*args, **(kwargs or {}))

    with Watch():
        fn()
    return count


def test_multi_head_attention_checks_its_input_once():
    """One forward ran seven full-tensor isfinite checks (inputs, each projection, the raw scores)."""
    mha, x = MultiHeadAttention(16, 4), torch.randn(2, 5, 16)
    assert _count_host_syncs(lambda: mha(x)) <= 2  # the input once, the output once
    ctx = torch.randn(2, 7, 16)
    assert _count_host_syncs(lambda: mha(x, ctx)) <= 3  # query, key(=value), output


# ----------------------------------------------------------------------------------------------------------------
# Three front-ends, one core
# ----------------------------------------------------------------------------------------------------------------


def test_chunked_flash_and_triton_run_one_blocked_core(monkeypatch):
    """One key_end, one validator, one SCORES_PER_OP: break the core's key_end and both PyTorch front-ends break;
    no front-end keeps a copy of the plan, the pool or the work size."""
    import attnlib.blocked as blocked
    import attnlib.efficient as efficient
    import attnlib.flash as flash
    import attnlib.flash_triton as flash_triton

    for module in (efficient, flash, flash_triton):
        for copied in ("SCORES_PER_OP", "MIN_SCORES_PER_THREAD", "_pool", "_POOLS", "_Plan", "_key_end", "_validate"):
            assert not hasattr(module, copied), f"{module.__name__}.{copied}"
    assert flash_triton.check_blocked_call is blocked.check_blocked_call
    q, k, v = _qkv(1, 2, 12, 4, dtype=torch.float64)
    want, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    for fn in (chunked_attention, flash_attention):
        torch.testing.assert_close(fn(q, k, v, is_causal=True, block_q=4, block_k=4), want)
    monkeypatch.setattr(
        blocked, "key_end", lambda offset, i1, S: S if offset is None else max(0, min(S, i1 - 1 + offset))
    )
    for fn in (chunked_attention, flash_attention):
        assert not torch.allclose(fn(q, k, v, is_causal=True, block_q=4, block_k=4), want)
