"""The parity ladder: NumPy reference <-> attnlib <-> torch SDPA <-> torch.nn.MultiheadAttention.

Each rung is checked on random shapes (L != S, batch and head dims) and every mask kind: boolean, additive float,
causal in both alignments, padding from lengths (zero lengths included, i.e. fully masked rows) and combinations.
Low-precision runs are compared with a float64 oracle computed on the *same rounded inputs*, so the tolerance
measures the arithmetic, not the rounding of the inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import FLOAT_DTYPES, TOL, cases, fewer_examples, masked_softmax_oracle, seeds

import attnlib
from attnlib import reference

# ----------------------------------------------------------------------------------------------- functional rungs


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@given(case=cases())
def test_ladder_reference_attnlib_sdpa(dtype, case):
    q, k, v, mask = case.cast(dtype)
    # float64 oracle on the rounded inputs
    q64, k64, v64 = (t.double() for t in (q, k, v))
    mask64 = None if mask is None else (mask if mask.dtype == torch.bool else mask.double())
    np_mask = None if mask64 is None else mask64.numpy()
    ref_out, ref_w = reference.attention(q64.numpy(), k64.numpy(), v64.numpy(), np_mask)
    if not case.shapes.batch:  # rung 0: the loop version, for one sequence
        loop_out, loop_w = reference.attention_loops(q64.numpy(), k64.numpy(), v64.numpy(), np_mask)
        np.testing.assert_allclose(loop_out, ref_out, atol=1e-12)
        np.testing.assert_allclose(loop_w, ref_w, atol=1e-12)
    ref_out, ref_w = torch.from_numpy(ref_out), torch.from_numpy(ref_w)

    out, w = attnlib.scaled_dot_product_attention(q, k, v, mask)
    assert out.dtype == dtype and w.dtype == dtype
    assert out.shape == (*case.shapes.batch, case.shapes.L, case.shapes.Ev)
    assert w.shape == case.shapes.scores
    torch.testing.assert_close(out.double(), ref_out, **TOL[dtype])
    torch.testing.assert_close(w.double(), ref_w, **TOL[dtype])

    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(expected.double(), ref_out, **TOL[dtype])
    torch.testing.assert_close(out, expected, **TOL[dtype])

    # weights against a softmax of masked scores computed without attnlib
    oracle_w = masked_softmax_oracle(q64 @ k64.transpose(-2, -1) / math.sqrt(case.shapes.E), mask64)
    torch.testing.assert_close(w.double(), oracle_w, **TOL[dtype])

    # fully masked rows: exactly zero, like SDPA in torch 2.13; every other row sums to 1
    dead = ~case.allowed.any(-1)
    assert (w[dead] == 0).all() and (out[dead] == 0).all() and (expected[dead] == 0).all()
    torch.testing.assert_close(
        w.double().sum(-1)[~dead], torch.ones(int((~dead).sum()), dtype=torch.float64), **TOL[dtype]
    )


def test_ladder_check_catches_a_wrong_implementation():
    """The tolerance of the ladder is tight enough to see a 1/sqrt(E) -> 1/E slip or a dropped mask."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    mask = attnlib.causal_mask(4)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    wrong_scale, _ = attnlib.scaled_dot_product_attention(q, k, v, mask, scale=1 / 4)
    no_mask, _ = attnlib.scaled_dot_product_attention(q, k, v)
    for wrong in (wrong_scale, no_mask):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(wrong, expected, **TOL[torch.float32])


# ----------------------------------------------------------------------------------------------- MultiheadAttention

MHA_MASKS = ("none", "bool", "float", "causal-top-left", "causal-bottom-right", "padding", "combined", "per-head")


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-zero biases too (torch initialises in_proj_bias to zeros, which would hide a bias copied wrongly)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)


@st.composite
def mha_cases(draw):
    H = draw(st.integers(1, 3))
    return {
        "B": draw(st.integers(1, 3)),
        "H": H,
        "E": H * draw(st.integers(1, 3)),
        "L": draw(st.integers(1, 4)),
        "S": draw(st.integers(1, 4)),
        "kdim": draw(st.sampled_from([None, 2, 5])),
        "vdim": draw(st.sampled_from([None, 3])),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "mask": draw(st.sampled_from(MHA_MASKS)),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "seed": draw(seeds),
        "lengths_seed": draw(seeds),
    }


def _mha_masks(c, g):
    """(attnlib mask, torch attn_mask, torch key_padding_mask) meaning the same thing."""
    B, H, L, S, kind, dtype = c["B"], c["H"], c["L"], c["S"], c["mask"], c["dtype"]
    lengths = torch.randint(0, S + 1, (B,), generator=g).tolist()
    pad = attnlib.padding_mask(lengths, S)
    if kind == "none":
        return None, None, None
    if kind == "bool":
        m = torch.rand(L, S, generator=g) < 0.7
        return m, attnlib.to_mha_mask(m), None
    if kind == "float":
        m = torch.randn(L, S, generator=g, dtype=torch.float64).to(dtype)
        return m, attnlib.to_mha_mask(m), None
    if kind.startswith("causal"):
        m = attnlib.causal_mask(L, S, alignment=kind.removeprefix("causal-"))
        return m, attnlib.to_mha_mask(m), None
    if kind == "padding":
        return pad, None, attnlib.to_mha_mask(pad).reshape(B, S)
    if kind == "combined":
        causal = attnlib.causal_mask(L, S)
        return attnlib.combine_masks(causal, pad), attnlib.to_mha_mask(causal), attnlib.to_mha_mask(pad).reshape(B, S)
    m = torch.rand(B, H, L, S, generator=g) < 0.7  # per-head: torch wants (B*H, L, S), index b*H + h
    return m, attnlib.to_mha_mask(m).reshape(B * H, L, S), None


@fewer_examples
@given(mha_cases())
def test_ladder_multihead_attention_from_torch(c):
    B, H, E, L, S, dtype = c["B"], c["H"], c["E"], c["L"], c["S"], c["dtype"]
    kdim, vdim = c["kdim"] or E, c["vdim"] or E
    theirs = torch.nn.MultiheadAttention(
        E, H, bias=c["bias"], kdim=kdim, vdim=vdim, batch_first=c["batch_first"], dtype=dtype
    ).eval()
    _randomise(theirs, c["seed"])
    ours = attnlib.MultiHeadAttention.from_torch(theirs)
    assert ours.head_dim == E // H and ours.kdim == kdim and ours.vdim == vdim

    g = torch.Generator().manual_seed(c["lengths_seed"])
    query = torch.randn(B, L, E, generator=g, dtype=torch.float64).to(dtype)
    key = torch.randn(B, S, kdim, generator=g, dtype=torch.float64).to(dtype)
    value = torch.randn(B, S, vdim, generator=g, dtype=torch.float64).to(dtype)
    mask, attn_mask, key_padding_mask = _mha_masks(c, g)

    out, w = ours(query, key, value, mask)
    assert out.shape == (B, L, E) and w.shape == (B, H, L, S)

    def torch_side(x):  # torch's batch_first=False layout is (seq, batch, features)
        return x if c["batch_first"] else x.transpose(0, 1)

    args = [torch_side(t) for t in (query, key, value)]
    kwargs = {"attn_mask": attn_mask, "key_padding_mask": key_padding_mask}
    # need_weights=False: torch's SDPA path, where fully masked rows give zeros before out_proj, as in attnlib
    expected, none = theirs(*args, need_weights=False, **kwargs)
    assert none is None
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 5e-5, "rtol": 1e-4}
    torch.testing.assert_close(out, torch_side(expected), **tol)

    # need_weights=True, average_attn_weights=False: per-head weights (B, H, L, S). torch's weights path returns NaN
    # for a row whose every key is masked (an all-padding item, or a causal row with no key; an open upstream bug):
    # there attnlib must give zeros, and elsewhere the same weights and outputs as torch.
    expected2, expected_w = theirs(*args, need_weights=True, average_attn_weights=False, **kwargs)
    nan_rows = torch.isnan(expected_w).any(-1)  # (B, H, L)
    assert (w[nan_rows] == 0).all()
    torch.testing.assert_close(w[~nan_rows], expected_w[~nan_rows], **tol)
    clean_q = ~nan_rows.any(1)  # (B, L): queries whose torch output has no NaN
    torch.testing.assert_close(out[clean_q], torch_side(expected2)[clean_q], **tol)


def test_mha_all_padding_item_needs_need_weights_false_in_torch():
    """Documents the torch behaviour the ladder avoids: an all-padding item gives NaN with need_weights=True.

    attnlib gives zero weights and an output equal to out_proj's bias there; torch's need_weights=False agrees.
    """
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=torch.float64).eval()
    _randomise(theirs, 0)
    ours = attnlib.MultiHeadAttention.from_torch(theirs)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    pad = attnlib.padding_mask([3, 0], 3)
    out, w = ours(x, attn_mask=pad)
    assert (w[1] == 0).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out[1], ours.w_o.bias.expand(3, 4))
    expected, _ = theirs(x, x, x, key_padding_mask=attnlib.to_mha_mask(pad).reshape(2, 3), need_weights=False)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kv", [(None, None), (3, 5)])
def test_to_torch_round_trip(bias, kv):
    kdim, vdim = kv
    torch.manual_seed(1)
    ours = attnlib.MultiHeadAttention(6, 3, bias=bias, kdim=kdim, vdim=vdim, dtype=torch.float64)
    _randomise(ours, 1)
    theirs = ours.to_torch()
    assert theirs.batch_first and theirs.num_heads == 3 and theirs._qkv_same_embed_dim == (kdim is None)
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    ctx_k = torch.randn(2, 5, kdim or 6, dtype=torch.float64)
    ctx_v = torch.randn(2, 5, vdim or 6, dtype=torch.float64)
    out, w = ours(x, ctx_k, ctx_v)
    expected, expected_w = theirs(x, ctx_k, ctx_v, average_attn_weights=False)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w, expected_w)
    back = attnlib.MultiHeadAttention.from_torch(theirs)
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # copies, not shared storage
    with torch.no_grad():
        theirs.out_proj.weight.add_(1.0)
    assert not torch.equal(theirs.out_proj.weight, ours.w_o.weight)


def test_mha_unbatched_input_equals_torch():
    torch.manual_seed(2)
    theirs = torch.nn.MultiheadAttention(4, 2, dtype=torch.float64).eval()
    _randomise(theirs, 2)
    ours = attnlib.MultiHeadAttention.from_torch(theirs)
    x = torch.randn(3, 4, dtype=torch.float64)
    causal = attnlib.causal_mask(3)
    out, w = ours(x, attn_mask=causal)
    expected, expected_w = theirs(x, x, x, attn_mask=attnlib.to_mha_mask(causal), average_attn_weights=False)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w, expected_w)
