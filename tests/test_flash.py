"""attnlib.flash: FlashAttention-2 in PyTorch, against SDPA (outputs, logsumexp, gradients) and fp64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from attnlib import scaled_dot_product_attention
from attnlib.flash import (
    FlashAttention2,
    flash_attention,
    flash_attention_loops,
    flash_backward_loops,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def _mask(L, S, is_causal, alignment, device="cpu"):
    if not is_causal:
        return None
    diagonal = 0 if alignment == "top-left" else S - L
    return torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal)


def _reference(q, k, v, is_causal=False, alignment="top-left", scale=None):
    """SDPA's output (fp64) and torch.logsumexp of the masked, scaled scores."""
    L, S = q.shape[-2], k.shape[-2]
    mask = _mask(L, S, is_causal, alignment, q.device)
    q64, k64, v64 = (t.detach().double() for t in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask, scale=scale)
    s = scale * q64 @ k64.transpose(-2, -1)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    return out, torch.logsumexp(s, dim=-1)


def _inputs(B, H, L, S, E, Ev, dtype=torch.float32, device="cpu", seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=g, dtype=torch.float64) for n, d in ((L, E), (S, E), (S, Ev)))
    return tuple(t.to(device=device, dtype=dtype).requires_grad_(grad) for t in (q, k, v))


CASES = [  # (L, S, is_causal, alignment)
    (48, 48, False, "top-left"),
    (37, 61, False, "top-left"),
    (48, 48, True, "top-left"),
    (37, 61, True, "top-left"),
    (61, 37, True, "top-left"),
    (37, 61, True, "bottom-right"),
    (61, 37, True, "bottom-right"),  # the first 24 rows see no key at all
]


@pytest.mark.parametrize(("L", "S", "is_causal", "alignment"), CASES)
@pytest.mark.parametrize("impl", ["flash", "loops"])
def test_output_and_logsumexp_match_sdpa(impl, L, S, is_causal, alignment):
    q, k, v = _inputs(2, 3, L, S, 16, 24)
    fn = flash_attention if impl == "flash" else flash_attention_loops
    out, lse = fn(q, k, v, is_causal=is_causal, causal_alignment=alignment, block_q=16, block_k=8, return_lse=True)
    ref_out, ref_lse = _reference(q, k, v, is_causal, alignment)
    assert out.shape == (2, 3, L, 24) and lse.shape == (2, 3, L) and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, **TOL[torch.float32])
    torch.testing.assert_close(lse.double(), ref_lse, **TOL[torch.float32])  # -inf where no key is visible


@pytest.mark.parametrize(("L", "S", "is_causal", "alignment"), CASES)
def test_gradients_match_sdpa(L, S, is_causal, alignment):
    q, k, v = _inputs(2, 2, L, S, 16, 8, grad=True)
    out = flash_attention(q, k, v, is_causal=is_causal, causal_alignment=alignment, block_q=16, block_k=16)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    mask = _mask(L, S, is_causal, alignment)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=5e-5, rtol=5e-5, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize(("L", "S", "is_causal", "alignment"), CASES)
def test_loop_backward_matches_autograd_of_the_fast_path(L, S, is_causal, alignment):
    q, k, v = _inputs(1, 2, L, S, 8, 8, dtype=torch.float64, grad=True)
    kw = dict(is_causal=is_causal, causal_alignment=alignment, block_q=16, block_k=8)
    out, lse = flash_attention(q, k, v, return_lse=True, **kw)
    dout = torch.randn_like(out)
    want = torch.autograd.grad(out, (q, k, v), dout)
    got = flash_backward_loops(q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), dout, **kw)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_is_accumulated_in_fp32(dtype):
    q, k, v = _inputs(2, 2, 70, 90, 32, 32, dtype=dtype, grad=True)
    out, lse = flash_attention(q, k, v, is_causal=True, block_q=32, block_k=32, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref_out, ref_lse = _reference(q, k, v, True)
    torch.testing.assert_close(out.double(), ref_out, **TOL[dtype])
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-2, rtol=1e-2)
    out.sum().backward()
    assert all(t.grad.dtype == dtype and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize(("is_causal", "alignment"), [(False, "top-left"), (True, "top-left"), (True, "bottom-right")])
def test_gradcheck_fp64_including_the_logsumexp(is_causal, alignment):
    q, k, v = _inputs(1, 2, 7, 5, 4, 3, dtype=torch.float64, grad=True)

    def f(q, k, v):
        out, lse = flash_attention(
            q, k, v, is_causal=is_causal, causal_alignment=alignment, block_q=3, block_k=2, return_lse=True
        )
        return out, lse.masked_fill(lse == -math.inf, 0.0)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_cs336_adapter_case():
    """CS336 assignment 2's shape and check: (batch, n_queries, d) = (4, 128, 64), tolerance 1e-2, with the
    logsumexp found as the one (batch, n_queries) tensor in the saved tensors."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(4, 128, 64, generator=g, requires_grad=i < 3) for i in range(4))
    for is_causal in (False, True):
        o = FlashAttention2.apply(q, k, v, is_causal)
        lses = [t for t in o.grad_fn.saved_tensors if t.shape == (4, 128)]
        assert len(lses) == 1
        s = q @ k.transpose(-2, -1) / math.sqrt(64)
        if is_causal:
            keep = torch.arange(128)[:, None] >= torch.arange(128)[None, :]
            s = torch.where(keep, s, -1e6)
        p = torch.softmax(s, dim=-1)
        torch.testing.assert_close(o, p @ v, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(lses[0], torch.logsumexp(s, dim=-1), rtol=1e-2, atol=1e-2)
        got = torch.autograd.grad(o, (q, k, v), do)
        want = torch.autograd.grad(p @ v, (q, k, v), do)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@given(
    L=st.integers(1, 40),
    S=st.integers(1, 40),
    E=st.integers(1, 12),
    block_q=st.integers(1, 48),
    block_k=st.integers(1, 48),
    is_causal=st.booleans(),
    alignment=st.sampled_from(["top-left", "bottom-right"]),
)
def test_any_shape_and_block_sizes_match_sdpa(L, S, E, block_q, block_k, is_causal, alignment):
    q, k, v = _inputs(2, 1, L, S, E, 3, dtype=torch.float64, grad=True)
    kw = dict(is_causal=is_causal, causal_alignment=alignment, block_q=block_q, block_k=block_k)
    out, lse = flash_attention(q, k, v, return_lse=True, **kw)
    ref_out, ref_lse = _reference(q, k, v, is_causal, alignment)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    torch.testing.assert_close(lse, ref_lse, **TOL[torch.float64])
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(L, S, is_causal, alignment))
    want = torch.autograd.grad(ref, (q, k, v), dout)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-9)


def test_rows_with_no_visible_key_give_zero_with_finite_gradients_like_sdpa():
    q, k, v = _inputs(1, 1, 6, 2, 4, 4, grad=True)  # bottom-right, L > S: rows 0..3 see nothing
    out, lse = flash_attention(q, k, v, is_causal=True, causal_alignment="bottom-right", return_lse=True)
    assert (out[..., :4, :] == 0).all() and (lse[..., :4] == -math.inf).all() and torch.isfinite(lse[..., 4:]).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[..., :4, :] == 0).all()
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(6, 2, True, "bottom-right"))
    torch.testing.assert_close(out, sdpa)


def test_empty_sequences_are_refused_as_in_sdpa():
    """L = 0, S = 0 or E = 0 is a ValueError naming the tensor, as in attnlib.scaled_dot_product_attention (on main
    flash_attention returned an empty or all-zero output); an empty batch is fine."""
    for shape, match in (((2, 1, 5, 0, 4, 3), "k is an empty sequence"), ((2, 1, 0, 5, 4, 3), "q is an empty"),
                         ((2, 1, 5, 5, 0, 3), "feature dim E=0")):  # fmt: skip
        q, k, v = _inputs(*shape)
        for fn in (flash_attention, flash_attention_loops, scaled_dot_product_attention):
            with pytest.raises(ValueError, match=match):
                fn(q, k, v)
    q, k, v = _inputs(0, 1, 5, 6, 4, 3)
    out, lse = flash_attention(q, k, v, return_lse=True)
    assert out.shape == (0, 1, 5, 3) and lse.shape == (0, 1, 5)


def test_inputs_are_not_modified_and_scale_is_used():
    q, k, v = _inputs(1, 2, 20, 30, 8, 8)
    before = [t.clone() for t in (q, k, v)]
    out = flash_attention(q, k, v, scale=0.3, block_q=7, block_k=9)
    for t, b in zip((q, k, v), before, strict=True):
        assert torch.equal(t, b)
    torch.testing.assert_close(out.double(), _reference(q, k, v, scale=0.3)[0], **TOL[torch.float32])


def test_the_D_term_is_what_makes_the_gradient_right():
    """The mistake the gradient tests guard against: dS = P * dP (forgetting D = rowsum(dO * O)) is far off."""
    q, k, v = _inputs(1, 1, 16, 16, 8, 8, dtype=torch.float64, grad=True)
    out = F.scaled_dot_product_attention(q, k, v)
    dout = torch.randn_like(out)
    dq_want = torch.autograd.grad(out, q, dout)[0]
    p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    dp = dout @ v.transpose(-2, -1)
    dq_without_D = (p * dp) @ k / math.sqrt(8)
    dq_with_D = (p * (dp - (dout * out).sum(-1, keepdim=True))) @ k / math.sqrt(8)
    torch.testing.assert_close(dq_with_D, dq_want)
    assert (dq_without_D - dq_want).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(q=[1.0]), TypeError, "q must be a torch.Tensor"),
        (dict(k=torch.ones(1, 2, 5, 8, dtype=torch.int64)), TypeError, "k must have a floating-point"),
        (dict(v=torch.ones(1, 2, 5, 8, dtype=torch.float64)), TypeError, "v has dtype"),
        (dict(k=torch.ones(1, 2, 5, 7)), ValueError, "same feature dim E"),
        (dict(v=torch.ones(1, 2, 6, 8)), ValueError, "v must be"),
        (dict(q=torch.full((1, 2, 4, 8), math.nan)), ValueError, "q contains NaN"),
        (dict(is_causal=1), TypeError, "is_causal"),
        (dict(causal_alignment="bottom"), ValueError, "causal_alignment"),
        (dict(block_q=0), ValueError, "block_q"),
        (dict(block_k=2.0), TypeError, "block_k"),
        (dict(scale=-1.0), ValueError, "scale"),
        (dict(return_lse="yes"), TypeError, "return_lse"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    args = dict(q=torch.ones(1, 2, 4, 8), k=torch.ones(1, 2, 5, 8), v=torch.ones(1, 2, 5, 8))
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    for fn in (flash_attention, flash_attention_loops):
        if fn is flash_attention_loops and "return_lse" in args:
            continue
        with pytest.raises(error, match=match):
            fn(q, k, v, **args)


def test_device(device):
    if device.type == "mps":
        pytest.skip("checked on CUDA and the CPU")
    q, k, v = _inputs(2, 2, 100, 80, 32, 32, device=device, grad=True)
    out, lse = flash_attention(q, k, v, is_causal=True, block_q=32, block_k=64, return_lse=True)
    ref_out, ref_lse = _reference(q, k, v, True)
    torch.testing.assert_close(out.double(), ref_out, **TOL[torch.float32])
    torch.testing.assert_close(lse.double(), ref_lse, **TOL[torch.float32])
    out.sum().backward()
    assert q.grad.device == device and torch.isfinite(q.grad).all()


def test_many_rows_run_on_worker_threads_and_agree():
    """Enough work that the CPU path splits the rows over worker threads (when torch has several)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v = _inputs(2, 4, 512, 512, 16, 16, grad=True)
        out = flash_attention(q, k, v, block_q=64, block_k=128)
        torch.testing.assert_close(out.double(), _reference(q, k, v)[0], **TOL[torch.float32])
        dout = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), dout)
        want = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), dout)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    finally:
        torch.set_num_threads(before)
