"""The NumPy reference: the known-answer example, loops == vectorised, and both == torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import cases, masked_softmax_oracle

import attnlib
from attnlib import reference

# The known-answer example (reference doc, "Known-answer example"): Q = K, d_k = 3.
Q = [[1.0, 0.0, 2.0], [0.0, 4.0, 1.0]]
V = [[0.5, 1.5], [2.5, 0.5]]
RAW_SCORES = np.array([[5.0, 2.0], [2.0, 17.0]])
WEIGHTS = np.array([[0.849675, 0.150325], [0.000173, 0.999827]])
OUTPUT = np.array([[0.800651, 1.349675], [2.499653, 0.500173]])


def _torch_attention(q, k, v):
    t = [torch.tensor(a, dtype=torch.float64) for a in (q, k, v)]
    out, w = attnlib.scaled_dot_product_attention(*t)
    return out.numpy(), w.numpy()


IMPLEMENTATIONS = {
    "loops": reference.attention_loops,
    "vectorised": reference.attention,
    "torch": _torch_attention,
}


def test_known_answer_scores():
    np.testing.assert_allclose(np.array(Q) @ np.array(Q).T, RAW_SCORES, atol=1e-12)
    scores = attnlib.attention_scores(torch.tensor(Q, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64))
    np.testing.assert_allclose(scores.numpy(), RAW_SCORES / math.sqrt(3), atol=1e-12)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_known_answer(impl):
    out, w = IMPLEMENTATIONS[impl](Q, Q, V)
    np.testing.assert_allclose(w, WEIGHTS, atol=1e-6)
    np.testing.assert_allclose(out, OUTPUT, atol=1e-6)
    # Each output row is p * 0.5 + (1 - p) * 2.5 and p * 1.5 + (1 - p) * 0.5, with p the weight of key 0.
    p = w[:, 0]
    np.testing.assert_allclose(out, np.stack([2.5 - 2 * p, 0.5 + p], axis=1), atol=1e-12)
    # The scores each implementation used, read back from its weights: log(w0 / w1) = s0 - s1.
    scores = RAW_SCORES / math.sqrt(3)
    np.testing.assert_allclose(np.log(w[:, 0] / w[:, 1]), scores[:, 0] - scores[:, 1], atol=1e-6)


def test_known_answer_catches_wrong_scale():
    """The example tells sqrt(d_k) from no scaling and from sqrt(L): a wrong scale misses the weights by far."""
    for wrong in (1.0, 1 / math.sqrt(2), 1 / 3):
        _, w = reference.attention(Q, Q, V, scale=wrong)
        assert np.abs(w - WEIGHTS).max() > 1e-2


@given(cases(kinds=("none", "bool", "float", "causal-top-left", "causal-bottom-right"), max_batch_dims=0))
def test_loops_equal_vectorised(case):
    mask = None if case.mask is None else case.mask.numpy()
    args = (case.q.numpy(), case.k.numpy(), case.v.numpy(), mask)
    out_loops, w_loops = reference.attention_loops(*args)
    out_vec, w_vec = reference.attention(*args)
    np.testing.assert_allclose(w_loops, w_vec, atol=1e-12)
    np.testing.assert_allclose(out_loops, out_vec, atol=1e-12)


@given(cases())
def test_reference_equals_torch_sdpa(case):
    """NumPy (float64) vs torch's own scaled_dot_product_attention, every mask kind, fully masked rows included."""
    mask = None if case.mask is None else case.mask.numpy()
    out, w = reference.attention(case.q.numpy(), case.k.numpy(), case.v.numpy(), mask)
    expected = F.scaled_dot_product_attention(case.q, case.k, case.v, attn_mask=case.mask)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-12)
    scores = case.q @ case.k.transpose(-2, -1) / math.sqrt(case.shapes.E)
    np.testing.assert_allclose(w, masked_softmax_oracle(scores, case.mask).numpy(), atol=1e-12)


def test_fully_masked_row_gives_zeros_in_reference():
    q = np.ones((2, 3))
    mask = np.array([[True, False], [False, False]])
    for impl in (reference.attention_loops, reference.attention):
        out, w = impl(q, q, np.ones((2, 4)), mask)
        np.testing.assert_array_equal(w[1], 0.0)
        np.testing.assert_array_equal(out[1], 0.0)
        np.testing.assert_allclose(w[0], [1.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_softmax_is_stable(dtype):
    x = np.array([1e4, 0.0, -1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        w = reference.softmax(x)
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0])
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(x) / np.exp(x).sum()  # what the subtraction of the max protects against
    assert np.isnan(naive[0])


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=8), st.sampled_from([0.25, 1.0, 3.0]))
def test_reference_softmax_equals_torch(values, temperature):
    x = np.array(values)
    expected = torch.softmax(torch.tensor(x) / temperature, dim=-1).numpy()
    np.testing.assert_allclose(reference.softmax(x, temperature=temperature), expected, atol=1e-12)


def test_reference_rejects_bad_input():
    with pytest.raises(ValueError, match=r"same feature dim.*\(2, 3\).*\(2, 4\)"):
        reference.attention(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"same length S.*\(2, 3\).*\(3, 4\)"):
        reference.attention(np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"one sequence.*\(1, 2, 3\)"):
        reference.attention_loops(np.ones((1, 2, 3)), np.ones((1, 2, 3)), np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="temperature must be a positive, finite number, got 0"):
        reference.softmax(np.ones(3), temperature=0)
    with pytest.raises(TypeError, match="x must be an array of numbers"):
        reference.softmax(np.array(["a", "b"]))
