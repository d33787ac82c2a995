"""chunked_attention and online_softmax against the math path and torch's own softmax/SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import attnlib.blocked as eff
from attnlib import causal_mask, combine_masks, padding_mask, scaled_dot_product_attention, to_additive
from attnlib.efficient import chunked_attention, online_softmax, online_softmax_update

MASK_KINDS = ["none", "bool", "additive", "causal-tl", "causal-br", "padding", "causal+padding", "causal-br+additive"]


@pytest.fixture(params=[1, 4])
def threaded(monkeypatch, request):
    """Force the multi-threaded CPU path even for tiny inputs: two worker threads, each op on 1 or 4 (batch, head)
    entries (``SCORES_PER_OP`` is set so that ``SCORES_PER_OP // (block_q * block_k)`` is about that)."""
    monkeypatch.setattr(eff, "MIN_SCORES_PER_THREAD", 1)
    monkeypatch.setattr(eff, "SCORES_PER_OP", request.param * 16 * 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


def _make_case(seed, batch, L, S, E, Ev, kind, dtype=torch.float64, device="cpu"):
    """Inputs, the mask/flags for chunked_attention, and the equivalent single mask for the math path."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    q, k, v = rnd(*batch, L, E), rnd(*batch, S, E), rnd(*batch, S, Ev)
    mask, causal, align = None, False, "top-left"
    if kind == "bool":
        shape = (batch[0], *([1] * (len(batch) - 1)), L, S) if batch else (L, S)  # per item, broadcast over heads
        mask = (torch.rand(shape, generator=g) > 0.4).to(device)
    elif kind == "additive":
        mask = rnd(L, S) * 2
        mask[0, : S // 2] = -math.inf  # some -inf entries, and row 0 partly blocked
    elif kind.startswith("causal"):
        causal, align = True, ("bottom-right" if "br" in kind else "top-left")
    if kind.endswith("padding") and batch:
        lengths = [int(x) for x in torch.randint(0, S + 1, (batch[0],), generator=g)]
        mask = padding_mask(lengths, S, device=device).reshape(batch[0], *([1] * (len(batch) - 1)), 1, S)
    if kind.endswith("+additive"):
        mask = rnd(1, S)
    ref_mask = mask
    if causal:
        ref_mask = combine_masks(causal_mask(L, S, alignment=align, device=device), mask)
        if mask is not None:  # attnlib's one rule: is_causal with a mask is refused, the caller combines them
            mask, causal = ref_mask, False
    return q, k, v, mask, causal, align, ref_mask


def _assert_close_to_math(q, k, v, mask, causal, align, ref_mask, block_q, block_k, atol):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    expected, _ = scaled_dot_product_attention(q, k, v, ref_mask)
    got = chunked_attention(q, k, v, mask, is_causal=causal, causal_alignment=align, block_q=block_q, block_k=block_k)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, atol=atol, rtol=atol)
    grad = torch.randn_like(expected)
    g_exp = torch.autograd.grad(expected, (q, k, v), grad)
    g_got = torch.autograd.grad(got, (q, k, v), grad)
    for name, a, b in zip("qkv", g_got, g_exp, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=atol, rtol=atol, msg=lambda m, n=name: f"grad of {n}: {m}")


@given(
    seed=st.integers(0, 2**16),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    L=st.integers(1, 19),
    S=st.integers(1, 19),
    E=st.integers(1, 5),
    Ev=st.integers(1, 5),
    block_q=st.integers(1, 24),
    block_k=st.integers(1, 24),
    kind=st.sampled_from(MASK_KINDS),
)
def test_chunked_equals_math_path_fp64(seed, batch, L, S, E, Ev, block_q, block_k, kind):
    """Random shapes, block sizes that do and do not divide L and S, every mask kind: outputs and gradients."""
    case = _make_case(seed, batch, L, S, E, Ev, kind)
    _assert_close_to_math(*case, block_q=block_q, block_k=block_k, atol=1e-10)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("blocks", [(16, 32), (7, 5), (64, 64)])
def test_chunked_equals_math_path_fp32_threaded(threaded, kind, blocks):
    case = _make_case(3, (3, 2), 45, 37, 8, 6, kind, dtype=torch.float32)
    _assert_close_to_math(*case, *blocks, atol=2e-5)


def test_chunked_matches_torch_sdpa(device):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 100, 16, device=device) for _ in range(3))
    for causal in (False, True):
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        got = chunked_attention(q, k, v, is_causal=causal, block_q=32, block_k=48)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_bottom_right_alignment_matches_torch_causal_lower_right():
    from torch.nn.attention.bias import causal_lower_right

    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(5, 12))
    got = chunked_attention(q, k, v, is_causal=True, causal_alignment="bottom-right", block_q=2, block_k=5)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, 2] = False  # query 2 of item 0 sees nothing
    mask[1] = False  # item 1 sees nothing at all
    for m in (mask, to_additive(mask, torch.float64)):
        out = chunked_attention(q, k, v, m, block_q=4, block_k=4)
        assert torch.equal(out[0, :, 2], torch.zeros(3, 4, dtype=torch.float64))
        assert torch.equal(out[1], torch.zeros(3, 6, 4, dtype=torch.float64))
        gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in (gq, gk, gv))
        assert torch.equal(gq[1], torch.zeros_like(gq[1])) and torch.equal(gv[1], torch.zeros_like(gv[1]))
    # bottom-right with L > S: the first L - S queries see no key
    out = chunked_attention(
        q[..., :5, :],
        k[..., :3, :],
        v[..., :3, :],
        is_causal=True,
        causal_alignment="bottom-right",
        block_q=2,
        block_k=2,
    )
    assert torch.equal(out[..., :2, :], torch.zeros(2, 3, 2, 4, dtype=torch.float64))
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("mask_shape", [(2, 3, 7, 9), (1, 3, 7, 9), (2, 1, 1, 9), (7, 9), (7, 1)])
def test_gradient_of_an_additive_mask(threaded, mask_shape):
    torch.manual_seed(3)
    q, k, v = (
        torch.randn(2, 3, 7, 4, dtype=torch.float64),
        torch.randn(2, 3, 9, 4, dtype=torch.float64),
        torch.randn(2, 3, 9, 5, dtype=torch.float64),
    )
    mask = torch.randn(mask_shape, dtype=torch.float64, requires_grad=True)
    expected, _ = scaled_dot_product_attention(q, k, v, mask)
    got = chunked_attention(q, k, v, mask, block_q=3, block_k=4)
    grad = torch.randn_like(expected)
    (g_exp,) = torch.autograd.grad(expected, mask, grad)
    (g_got,) = torch.autograd.grad(got, mask, grad)
    assert g_got.shape == mask.shape
    torch.testing.assert_close(g_got, g_exp, atol=1e-10, rtol=1e-10)


def test_half_precision_is_computed_in_fp32_and_returned_in_its_dtype():
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 33, 16) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for dtype, tol in ((torch.float16, 3e-3), (torch.bfloat16, 2e-2)):
        out = chunked_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True, block_q=8, block_k=8)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), exact, atol=tol, rtol=tol)


def test_inputs_are_not_modified():
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 2, 9, 4) for _ in range(3))
    mask = torch.randn(9, 9)
    before = [t.clone() for t in (q, k, v, mask)]
    chunked_attention(q, k, v, mask, block_q=4, block_k=4)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v, mask), strict=True))


def test_backward_saves_only_linear_size_tensors():
    """Training memory is linear in L: nothing of size L x S is kept for the backward pass."""
    B, H, L, S, D = 1, 2, 64, 80, 8
    q, k, v = (torch.randn(B, H, n, D, requires_grad=True) for n in (L, S, S))
    saved = {}

    def pack(t):
        saved[t.data_ptr(), t.numel()] = t.numel()  # one entry per distinct tensor
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_attention(q, k, v, block_q=16, block_k=16)
    assert saved and max(saved.values()) < L * S
    # q, k, v, out, and per row the max score and the log of its sum of exponentials (the logsumexp, in two parts)
    assert sum(saved.values()) <= B * H * (L * D + 2 * S * D + L * D + 2 * L)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scaled_dot_product_attention(q, k, v)
    assert max(saved.values()) >= B * H * L * S  # the math path keeps the weights: the check tells them apart


@pytest.mark.parametrize("max_rows", [1, 2, 3, 4, 5, 7, 100])
def test_batch_pieces_cover_the_batch_in_order(max_rows):
    plan = eff.BlockPlan((3, 2, 2), 4, 4, 2, 2, None, None, None, torch.device("cpu"), 1.0)
    pieces = plan.pieces(max_rows)
    rows = [n for n0, n1, _, _ in pieces for n in range(n0, n1)]
    assert rows == list(range(12))  # contiguous, in order, no overlap
    assert all(n1 - n0 <= max_rows for n0, n1, _, _ in pieces)
    grid = torch.arange(12).reshape(3, 2, 2)
    for n0, n1, index, sub in pieces:  # each index tuple selects exactly its rows
        assert grid[index].flatten().tolist() == list(range(n0, n1))
        assert math.prod(sub.batch) == n1 - n0


def test_causal_skips_key_blocks_that_are_entirely_masked():
    plan = eff.BlockPlan((1,), 8, 8, 2, 2, 0, None, None, torch.device("cpu"), 1.0)
    visited = sum(len(keys) for _, _, keys in plan.blocks())
    assert visited == 4 + 3 + 2 + 1  # the lower triangle of a 4 x 4 grid of blocks, not 16


def _key_end_off_by_one(offset, i1, S):
    return S if offset is None else max(0, min(S, i1 - 1 + offset))  # forgets that row i1 - 1 sees key i1 - 1


def test_the_comparison_catches_an_off_by_one_in_block_skipping(monkeypatch):
    case = _make_case(0, (1, 2), 12, 12, 4, 4, "causal-tl")
    _assert_close_to_math(*case, block_q=4, block_k=4, atol=1e-10)
    monkeypatch.setattr(eff, "key_end", _key_end_off_by_one)
    with pytest.raises(AssertionError):
        _assert_close_to_math(*case, block_q=4, block_k=4, atol=1e-10)


def test_causal_and_a_mask_follow_the_one_rule():
    """is_causal with attn_mask is a ValueError in chunked_attention as in scaled_dot_product_attention; the
    combined mask gives the same answer as the math path."""
    case = _make_case(7, (2, 2), 10, 10, 4, 4, "causal+padding")
    q, k, v, mask, causal, align, ref_mask = case
    assert mask is ref_mask and not causal
    _assert_close_to_math(*case, block_q=3, block_k=3, atol=1e-10)
    pad = padding_mask([3, 10], 10).reshape(2, 1, 1, 10)
    for fn in (chunked_attention, lambda *a, **kw: scaled_dot_product_attention(*a, **kw)[0]):
        with pytest.raises(ValueError, match="is_causal=True and attn_mask were both given"):
            fn(q, k, v, pad, is_causal=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"q": torch.randn(2, 5, 4), "k": torch.randn(2, 6, 3)}, ValueError, "same feature dim"),
        ({"v": torch.randn(2, 7, 4)}, ValueError, "v must be"),
        ({"attn_mask": torch.ones(5, 6, dtype=torch.long)}, TypeError, "ambiguous"),
        ({"attn_mask": torch.ones(4, 6, dtype=torch.bool)}, ValueError, "attn_mask has shape"),
        ({"causal_alignment": "bottom"}, ValueError, "causal_alignment"),
        ({"is_causal": 1}, TypeError, "is_causal"),
        ({"block_q": 0}, ValueError, "block_q"),
        ({"block_k": 2.5}, TypeError, "block_k"),
        ({"scale": -1.0}, ValueError, "scale"),
        ({"q": torch.full((2, 5, 4), math.nan)}, ValueError, "NaN"),
        ({"k": torch.randn(2, 6, 4, dtype=torch.float64)}, TypeError, "dtype"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, error, match):
    args = {"q": torch.randn(2, 5, 4), "k": torch.randn(2, 6, 4), "v": torch.randn(2, 6, 3)}
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(error, match=match):
        chunked_attention(q, k, v, **args)


# ---------------------------------------------------------------------------------------------------------------
# online softmax
# ---------------------------------------------------------------------------------------------------------------


def _matches_softmax(fn, chunks) -> bool:
    """The check used below: does ``fn(chunks)`` equal softmax of the concatenated chunks?"""
    expected = torch.softmax(torch.cat(chunks), dim=0)
    return torch.allclose(fn(chunks), expected, atol=1e-12, rtol=1e-9)


chunk_lists = st.lists(
    st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=6).map(
        lambda xs: torch.tensor(xs, dtype=torch.float64)
    ),
    min_size=1,
    max_size=6,
)


@given(chunk_lists)
def test_online_softmax_equals_softmax(chunks):
    assert _matches_softmax(online_softmax, chunks)


def _online_softmax_without_rescale(chunks):
    """The classic mistake: the running sum is not rescaled when the running max grows."""
    m, l = -math.inf, 0.0
    for c in chunks:
        m_new = max(m, float(c.max()))
        l = l + float(torch.exp(c - m_new).sum())  # missing: l * exp(m - m_new)
        m = m_new
    return torch.cat([torch.exp(c - m) / l for c in chunks])


def test_the_check_catches_an_online_softmax_that_forgets_to_rescale():
    increasing = [torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([3.0, 2.0], dtype=torch.float64)]
    assert _matches_softmax(online_softmax, increasing)
    assert not _matches_softmax(_online_softmax_without_rescale, increasing)


def test_online_softmax_update_tracks_running_max_and_sum():
    state = (-math.inf, 0.0)
    state = online_softmax_update(state, torch.tensor([1.0, 2.0]))
    assert state[0] == 2.0 and state[1] == pytest.approx(math.exp(-1) + 1)
    state = online_softmax_update(state, torch.tensor([4.0]))
    assert state[0] == 4.0 and state[1] == pytest.approx((math.exp(-1) + 1) * math.exp(-2) + 1)


def test_online_softmax_masked_entries():
    chunks = [torch.tensor([-math.inf, -math.inf]), torch.tensor([0.5, -math.inf])]
    assert torch.equal(online_softmax(chunks), torch.tensor([0.0, 0.0, 1.0, 0.0]))
    all_masked = [torch.full((3,), -math.inf)]
    assert torch.equal(online_softmax(all_masked), torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        online_softmax([])
    with pytest.raises(ValueError, match="1-D"):
        online_softmax([torch.zeros(2, 2)])


@pytest.mark.parametrize("causal", [False, True])
def test_the_lazy_shift_is_refreshed_when_a_later_block_could_exceed_it(causal, monkeypatch):
    """Key blocks whose scores rise from about -60 to +60 (in base-2 units): the running shift of the first block
    is far below the later scores, so the kernel must refresh it (the headroom bound says so) and still agree with
    the math path; and the refresh really happens (counted), while ordinary inputs never need it."""
    g = torch.Generator().manual_seed(0)
    q = torch.ones(1, 2, 64, 4, dtype=torch.float64) + 0.01 * torch.randn(1, 2, 64, 4, generator=g, dtype=torch.float64)
    ramp = torch.linspace(-4.0, 4.0, 64, dtype=torch.float64)[:, None]  # scores ramp up along the keys
    k = ramp * torch.ones(1, 2, 64, 4, dtype=torch.float64)
    v = torch.randn(1, 2, 64, 3, generator=g, dtype=torch.float64)
    expected, _ = scaled_dot_product_attention(q, k, v, is_causal=causal, scale=8.0)
    refreshes = []
    original = torch.Tensor.amax
    monkeypatch.setattr(torch.Tensor, "amax", lambda t, *a, **kw: refreshes.append(t.shape) or original(t, *a, **kw))
    got = chunked_attention(q, k, v, is_causal=causal, scale=8.0, block_q=16, block_k=16)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    score_blocks = [s for s in refreshes if len(s) == 3]  # amax over a (N, rows, cols) score block
    assert len(score_blocks) > 4  # more than one per query block: later blocks refreshed the shift
    refreshes.clear()
    q, k, v = (torch.randn(1, 2, 64, 4, generator=g, dtype=torch.float64) for _ in range(3))
    chunked_attention(q, k, v, is_causal=causal, block_q=16, block_k=16)
    assert len([s for s in refreshes if len(s) == 3]) == 4  # ordinary scores: only the first block of each row
