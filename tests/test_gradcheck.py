"""torch.autograd.gradcheck (float64): analytic gradients equal finite differences, masked rows included."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import attnlib

f64 = {"dtype": torch.float64}


def _leaf(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, **f64).requires_grad_()


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_softmax(temperature):
    x = _leaf(2, 3, 5, seed=0)
    assert gradcheck(lambda t: attnlib.softmax(t, temperature=temperature), (x,))
    assert gradcheck(lambda t: attnlib.softmax(t, dim=1), (x,))


def test_softmax_with_minus_inf_entries():
    x = _leaf(3, 4, seed=1)
    blocked = torch.tensor([[False, True, False, False], [True, True, True, True], [False] * 4])
    assert gradcheck(lambda t: attnlib.softmax(t.masked_fill(blocked, float("-inf"))), (x,))


def test_attention_scores():
    q, k = _leaf(2, 3, 4, seed=0), _leaf(2, 5, 4, seed=1)
    assert gradcheck(attnlib.attention_scores, (q, k))
    assert gradcheck(lambda a, b: attnlib.attention_scores(a, b, scale=0.3), (q, k))


def _sdpa(mask=None, **kw):
    def f(q, k, v):
        return attnlib.scaled_dot_product_attention(q, k, v, mask, **kw)  # (out, weights): both are checked

    return f


MASKS = {
    "none": None,
    "bool": torch.tensor([[True, False, True, True, False]] * 3),
    "float": torch.tensor([[0.0, -1.0, 2.0, float("-inf"), 0.5]] * 3, **f64),
    "causal-bottom-right": attnlib.causal_mask(3, 5, alignment="bottom-right"),
    # row 1 has no allowed key, row 0 one: gradients must still be finite and correct
    "fully-masked-row": torch.tensor(
        [[True, False, False, False, False], [False] * 5, [True, True, False, True, True]]
    ),
    "padding": attnlib.padding_mask([3, 0], 5).squeeze(1),  # (2, 1, 5); item 1 is all padding
}


@pytest.mark.parametrize("kind", MASKS)
def test_scaled_dot_product_attention(kind):
    q, k, v = _leaf(2, 3, 4, seed=0), _leaf(2, 5, 4, seed=1), _leaf(2, 5, 2, seed=2)
    assert gradcheck(_sdpa(MASKS[kind]), (q, k, v))


def test_fully_masked_row_gradients_are_finite_and_zero():
    q, k, v = _leaf(2, 3, 4, seed=0), _leaf(2, 5, 4, seed=1), _leaf(2, 5, 2, seed=2)
    mask = MASKS["fully-masked-row"]
    out, w = attnlib.scaled_dot_product_attention(q, k, v, mask)
    (out.sum() + w.sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, 1] == 0).all()  # the query that sees nothing gets no gradient


def test_is_causal_and_scale():
    q, k, v = _leaf(1, 2, 4, 3, seed=0), _leaf(1, 2, 4, 3, seed=1), _leaf(1, 2, 4, 3, seed=2)
    assert gradcheck(_sdpa(is_causal=True, scale=0.7), (q, k, v))


def test_split_and_merge_heads():
    x = _leaf(2, 3, 6, seed=0)
    assert gradcheck(lambda t: attnlib.merge_heads(attnlib.split_heads(t, 3) * 2.0), (x,))


def _module_check(layer, *inputs):
    """gradcheck over the inputs and every parameter of ``layer`` (float64)."""
    params = dict(layer.named_parameters())
    names = list(params)

    def f(*args):
        xs, ps = args[: len(inputs)], args[len(inputs) :]
        out, w = torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), xs)
        return out, w

    return gradcheck(f, (*inputs, *(p.detach().clone().requires_grad_() for p in params.values())))


def test_self_attention():
    torch.manual_seed(0)
    layer = attnlib.SelfAttention(3, 2, bias=True, **f64)
    assert _module_check(layer, _leaf(2, 3, 3, seed=0))
    masked = lambda x: layer(x, attnlib.padding_mask([2, 0], 3).squeeze(1))  # noqa: E731
    assert gradcheck(masked, (_leaf(2, 3, 3, seed=1),))


def test_cross_attention():
    torch.manual_seed(0)
    layer = attnlib.CrossAttention(3, 4, 2, 3, bias=True, **f64)
    assert _module_check(layer, _leaf(2, 2, 3, seed=0), _leaf(2, 4, 4, seed=1))


def test_multi_head_attention():
    torch.manual_seed(0)
    layer = attnlib.MultiHeadAttention(4, 2, kdim=3, vdim=2, **f64)
    assert _module_check(layer, _leaf(1, 3, 4, seed=0), _leaf(1, 2, 3, seed=1), _leaf(1, 2, 2, seed=2))
    self_attn = attnlib.MultiHeadAttention(4, 2, **f64)
    mask = attnlib.combine_masks(attnlib.causal_mask(3), attnlib.padding_mask([3, 0], 3))  # item 1: all padding
    assert gradcheck(lambda x: self_attn(x, attn_mask=mask), (_leaf(2, 3, 4, seed=3),))


def test_gradcheck_catches_a_wrong_gradient():
    """gradcheck is a real check: a function whose backward is off by a factor of 2 fails it."""

    class WrongSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = attnlib.softmax(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return 2 * y * (grad - (grad * y).sum(-1, keepdim=True))

    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        gradcheck(WrongSoftmax.apply, (_leaf(2, 3, seed=0),))
