"""Lessons 9-11 (positions, the Transformer block, attention variants): data, metrics and render functions.

Every render function returns a figure with labelled axes that changes when its knob changes, and rejects bad
knobs by name.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from figures import assert_axes_labelled
from hypothesis import given
from hypothesis import strategies as st

from attnlib.lessons import block_demo, positions_demo, variants_demo

pytestmark = pytest.mark.usefixtures("one_thread")

matplotlib.use("Agg")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def _has_colorbar(fig) -> bool:
    return any(ax.get_label() == "<colorbar>" for ax in fig.axes)


# ---------------------------------------------------------------- lesson 9: positions


@given(st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_first_token_batches_answer_the_first_token(batch_size, seed):
    b = positions_demo.make_batch(batch_size, torch.Generator().manual_seed(seed))
    assert b.tokens.shape == (batch_size, positions_demo.N)
    assert torch.equal(b.first, b.tokens[:, 0])
    assert int(b.tokens.max()) < positions_demo.V


def test_order_blind_ceiling_is_the_mode_frequency():
    tokens = torch.tensor([[1, 1, 2, 3], [4, 4, 4, 4]])
    assert positions_demo.best_order_blind_accuracy(tokens) == pytest.approx((2 / 4 + 1) / 2)


def test_a_model_without_positions_is_permutation_invariant_and_one_with_them_is_not():
    tokens = positions_demo.make_batch(5, torch.Generator().manual_seed(0)).tokens
    perm = torch.randperm(positions_demo.N, generator=torch.Generator().manual_seed(1))
    for kind, invariant in (("none", True), ("learned", False), ("sinusoidal", False)):
        torch.manual_seed(0)
        model = positions_demo.FirstTokenModel(kind).eval()
        if model.learned is not None:
            torch.nn.init.normal_(model.learned)
        with torch.no_grad():
            gap = (model(tokens)[0] - model(tokens[:, perm])[0]).abs().max().item()
        assert (gap < 1e-5) == invariant, (kind, gap)
    with pytest.raises(ValueError, match="positions"):
        positions_demo.FirstTokenModel("rotary")


def test_positions_let_the_model_learn_the_first_token():
    test = positions_demo.make_batch(300, torch.Generator().manual_seed(1))
    with_positions, _ = positions_demo.train_first_token("learned", steps=120)
    without, _ = positions_demo.train_first_token("none", steps=120)
    ceiling = positions_demo.best_order_blind_accuracy(test.tokens)
    assert positions_demo.accuracy(with_positions, test) > 0.9
    assert positions_demo.accuracy(without, test) < ceiling + 0.05


def test_rope_score_matrix_is_constant_along_diagonals():
    q, k = torch.randn(2, 16, dtype=torch.float64).unbind(0)
    scores = positions_demo.rope_score_matrix(q, k, 20)
    for o in range(-19, 20):
        diag = scores.diagonal(o)
        assert (diag - diag[0]).abs().max() < 1e-9


@pytest.mark.parametrize("kind", ["sinusoidal", "rope", "alibi"])
def test_render_positions_is_labelled_with_colour_bars_and_follows_its_knobs(kind):
    fig = positions_demo.render_positions(kind)
    assert_axes_labelled(fig)
    assert _has_colorbar(fig)
    other = positions_demo.render_positions(kind, base=100.0, head=3)
    assert _png(fig) != _png(other)


def test_render_positions_rejects_bad_knobs():
    with pytest.raises(ValueError, match="kind"):
        positions_demo.render_positions("nope")
    with pytest.raises(ValueError, match="head"):
        positions_demo.render_positions("alibi", head=8)


def test_render_permutation_labels_tokens_and_checks_perm():
    w = torch.softmax(torch.randn(3, 3), -1)
    fig = positions_demo.render_permutation(w, w[[2, 0, 1]][:, [2, 0, 1]], ["a", "b", "c"], [2, 0, 1])
    assert_axes_labelled(fig)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="perm"):
        positions_demo.render_permutation(w, w, ["a", "b", "c"], [0, 0, 1])


# ---------------------------------------------------------------- lesson 10: the Transformer block


@given(st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_text_lines_are_a_word_and_its_copy(batch_size, seed):
    text = block_demo.make_text(batch_size, torch.Generator().manual_seed(seed))
    W = block_demo.WORD_LEN
    assert text.shape == (batch_size, block_demo.SEQ_LEN)
    assert torch.equal(text[:, : W + 1], text[:, W + 1 :])
    assert (text[:, W] == block_demo.SEP).all() and (text[:, :W] < block_demo.SEP).all()
    t = block_demo.copy_queries()
    assert torch.equal(text[:, t + 1], text[:, t - W])  # the next token of each copy query is W back


def test_encode_decode_round_trip_and_reject_unknown_characters():
    assert block_demo.decode(block_demo.encode("abc|")) == "abc|"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        block_demo.encode("xyz")


def test_offset_weights_find_a_planted_fixed_offset_head():
    B, T, W = 4, block_demo.SEQ_LEN, block_demo.WORD_LEN
    weights = torch.zeros(B, 2, T, T)
    t = torch.arange(T)
    weights[:, 0, t, (t - W).clamp(min=0)] = 1.0  # head 0 looks W back
    weights[:, 1, t, t] = 1.0  # head 1 looks at itself
    mean, std = block_demo.offset_weights(weights, block_demo.copy_queries(), max_offset=T - 2)
    assert mean.shape == (2, T - 1)
    assert mean[0, W] == 1.0 and std[0, W] == 0.0 and mean[0].sum() == 1.0
    assert mean[1, 0] == 1.0 and mean[1, W] == 0.0


def test_per_position_loss_is_cross_entropy_per_prediction():
    logits, tokens = torch.randn(2, 5, 4), torch.randint(0, 4, (2, 5))
    loss = block_demo.per_position_loss(logits, tokens)
    assert loss.shape == (2, 4)
    expected = -torch.log_softmax(logits[0, 2], -1)[tokens[0, 3]]
    assert loss[0, 2].item() == pytest.approx(expected.item(), rel=1e-6)


def test_render_attention_is_token_labelled_and_follows_its_knobs():
    tokens = block_demo.make_text(3, torch.Generator().manual_seed(0))
    T = block_demo.SEQ_LEN
    weights = [torch.softmax(torch.randn(3, 2, T, T), -1) for _ in range(2)]
    fig = block_demo.render_attention(weights, tokens, example=1, layer=1, head=0)
    assert_axes_labelled(fig)
    assert _has_colorbar(fig)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == block_demo.decode(tokens[1])[0] + "0"
    assert _png(fig) != _png(block_demo.render_attention(weights, tokens, example=1, layer=1, head=1))
    with pytest.raises(ValueError, match="layer"):
        block_demo.render_attention(weights, tokens, layer=2)


def test_render_offsets_and_position_loss_are_labelled():
    fig = block_demo.render_offsets(np.full((2, 5), 0.2), np.zeros((2, 5)))
    assert_axes_labelled(fig)
    fig = block_demo.render_position_loss(torch.ones(13), torch.zeros(13))
    assert_axes_labelled(fig)
    with pytest.raises(ValueError, match="mean and std"):
        block_demo.render_offsets(np.zeros((2, 5)), np.zeros((2, 4)))


# ---------------------------------------------------------------- lesson 11: attention variants


def test_render_groups_shows_which_kv_head_each_query_head_reads():
    fig = variants_demo.render_groups(8, 2)
    assert_axes_labelled(fig)
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (8, 2) and grid[:4, 0].sum() == 4 and grid[4:, 1].sum() == 4
    assert _png(fig) != _png(variants_demo.render_groups(8, 4))
    with pytest.raises(ValueError, match="divide"):
        variants_demo.render_groups(8, 3)


def test_render_window_is_labelled_and_follows_the_window():
    fig = variants_demo.render_window(12, 3)
    assert_axes_labelled(fig)
    assert _has_colorbar(fig)
    assert _png(fig) != _png(variants_demo.render_window(12, 5))


def test_kernel_weights_are_a_distribution_and_flatter_than_softmax_when_sharp():
    q, k = torch.randn(2, 10, 16).unbind(0)
    w = variants_demo.kernel_weights(q * 4, k)
    torch.testing.assert_close(w.sum(-1), torch.ones(10))
    assert (w >= 0).all()
    assert w.max(-1).values.mean() < torch.softmax(4 * q @ k.T / 4, -1).max(-1).values.mean()


def test_render_linear_vs_softmax_follows_the_sharpness():
    fig = variants_demo.render_linear_vs_softmax(1.0)
    assert_axes_labelled(fig)
    assert _png(fig) != _png(variants_demo.render_linear_vs_softmax(4.0))


def test_time_table_times_every_function_at_every_length():
    table = variants_demo.time_table({"a": lambda n: lambda: sum(range(n))}, [10, 20], repeats=1)
    assert list(table) == ["a"] and len(table["a"]) == 2 and all(t >= 0 for t in table["a"])
