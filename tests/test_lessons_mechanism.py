"""Level 2 lessons' code: what the notebooks of lessons 4 and 5 define for the learner (read from their cells with
tests/notebook_defs.py), the helpers they use (attnlib.lessons.sdpa_demo, .masking_demo), and
attnlib.lessons.self_attention_demo (lesson 6).

Every render function is checked for labelled axes and for a figure that changes when its knob moves; the
figure summary used for the latter is itself shown to catch a render function that ignores its knob.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from figures import assert_axes_labelled
from hypothesis import given
from hypothesis import strategies as st
from notebook_defs import load_definitions

import attnlib
from attnlib import reference
from attnlib.lessons import masking_demo, sdpa_demo, softmax_demo
from attnlib.lessons import self_attention_demo as sa

matplotlib.use("Agg")


# ---------------------------------------------------------------------------------------------- figure helpers
def summary(fig) -> list:
    """What a reader sees in a figure as plain data: titles, bar heights, lines, images, texts, tick labels."""
    out = []
    for ax in fig.axes:
        out.append(ax.get_title())
        out.append([round(float(p.get_height()), 6) for p in ax.patches if hasattr(p, "get_height")])
        out.append([np.round(np.asarray(line.get_xydata(), dtype=float), 6).tolist() for line in ax.lines])
        out.append(
            [np.round(np.ma.filled(np.asarray(im.get_array(), dtype=float), -1), 6).tolist() for im in ax.images]
        )
        out.append([t.get_text() for t in ax.texts])
        out.append([t.get_text() for t in ax.get_xticklabels()] + [t.get_text() for t in ax.get_yticklabels()])
    return out


def test_summary_catches_a_render_function_that_ignores_its_knob():
    from attnlib import viz

    def ignores(temperature):  # the mistake the knob tests guard against
        fig, ax = viz.new_figure()
        viz.weight_bars(ax, [0.4, 0.6], ["a", "b"])
        return fig

    def uses(temperature):
        fig, ax = viz.new_figure()
        viz.weight_bars(ax, torch.softmax(torch.tensor([0.0, 1.0]) / temperature, -1), ["a", "b"])
        return fig

    assert summary(ignores(0.5)) == summary(ignores(2.0))
    assert summary(uses(0.5)) != summary(uses(2.0))


def test_assert_axes_labelled_catches_a_missing_label():
    from attnlib import viz

    fig, ax = viz.new_figure()
    ax.plot([0, 1])
    ax.set_ylabel("y")
    with pytest.raises(AssertionError, match="no x label"):
        assert_axes_labelled(fig)


# ---------------------------------------------------------------------------------------- lesson 4: sdpa_demo
def test_known_answer_matches_the_reference_numbers_in_every_implementation():
    q, k, v = sdpa_demo.known_answer()
    want_w = np.array([[0.849675, 0.150325], [0.000173, 0.999827]])
    want_out = np.array([[0.800651, 1.349675], [2.499653, 0.500173]])
    np.testing.assert_allclose((q @ k.T).numpy(), [[5, 2], [2, 17]])
    out, w = attnlib.scaled_dot_product_attention(q, k, v)
    np.testing.assert_allclose(w.numpy(), want_w, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), want_out, atol=1e-6)
    for impl in (reference.attention_loops, reference.attention):
        o, ww = impl(q.numpy(), k.numpy(), v.numpy())
        np.testing.assert_allclose(o, want_out, atol=1e-6)
        np.testing.assert_allclose(ww, want_w, atol=1e-6)
    np.testing.assert_allclose(F.scaled_dot_product_attention(q, k, v).numpy(), want_out, atol=1e-6)
    # each output row is [2.5 - 2p, 0.5 + p] with p the weight on token 0
    p = w[:, 0]
    torch.testing.assert_close(out, torch.stack([2.5 - 2 * p, 0.5 + p], dim=-1))


def test_known_answer_returns_fresh_tensors():
    q, k, _ = sdpa_demo.known_answer()
    q[0, 0] = 99.0
    assert k[0, 0] == 1.0 and sdpa_demo.known_answer()[0][0, 0] == 1.0


def test_illustrated_weights_are_not_a_softmax_of_the_scores():
    s = torch.tensor(softmax_demo.MAKING_SCORES, dtype=torch.float64)
    t = torch.tensor(softmax_demo.MAKING_ILLUSTRATED, dtype=torch.float64)
    assert float(t.sum()) == pytest.approx(1.12)
    np.testing.assert_allclose(
        torch.softmax(s, 0).numpy(), [0.0747, 0.1504, 0.0826, 0.1663, 0.1361, 0.0912, 0.0747, 0.1232, 0.1008], atol=1e-4
    )
    assert softmax_demo.temperature_loss(s, t, 1.0) > 0.05


def test_fit_temperature_finds_the_grid_minimum_near_0_27():
    s = torch.tensor(softmax_demo.MAKING_SCORES, dtype=torch.float64)
    t = torch.tensor(softmax_demo.MAKING_ILLUSTRATED, dtype=torch.float64)
    best_t, residual = softmax_demo.fit_temperature(s, t)
    assert best_t == pytest.approx(0.27, abs=0.005)
    grid = np.logspace(-2, 2, 3001)
    losses = np.array([softmax_demo.temperature_loss(s, t, float(x)) for x in grid])
    assert residual <= losses.min() + 1e-9
    assert best_t == pytest.approx(grid[losses.argmin()], rel=0.01)
    # the loss falls then rises on the grid: one minimum, which golden-section search needs
    i = int(losses.argmin())
    assert np.all(np.diff(losses[: i + 1]) <= 1e-12) and np.all(np.diff(losses[i:]) >= -1e-12)


@given(st.floats(0.1, 5.0), st.lists(st.floats(-2, 2), min_size=3, max_size=8))
def test_fit_temperature_recovers_a_known_temperature(true_t, raw):
    s = torch.tensor(raw, dtype=torch.float64)
    if float(s.max() - s.min()) < 0.5:  # nearly constant scores: every T gives almost the same softmax
        return
    target = torch.softmax(s / true_t, 0)
    best_t, residual = softmax_demo.fit_temperature(s, target)
    assert residual < 1e-12
    assert best_t == pytest.approx(true_t, rel=1e-3)


def test_fit_temperature_and_loss_reject_bad_input():
    s = torch.tensor([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"scores .*\(3\).*target .*\(2\)"):
        softmax_demo.temperature_loss(s, torch.tensor([0.5, 0.5]), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        softmax_demo.temperature_loss(s, s, 0.0)
    with pytest.raises(ValueError, match="low < high"):
        softmax_demo.fit_temperature(s, s, low=2.0, high=1.0)
    with pytest.raises(TypeError, match="scores"):
        softmax_demo.fit_temperature([0.1, 0.2], s)


L4 = load_definitions("notebooks/04_scaled_dot_product_attention.ipynb")  # lesson 4's attention, three ways


def test_lesson4_known_answer_in_the_learners_loops_and_matrix_versions():
    q, k, v = sdpa_demo.known_answer()
    want_w = torch.tensor([[0.849675, 0.150325], [0.000173, 0.999827]], dtype=torch.float64)
    want_out = torch.tensor([[0.800651, 1.349675], [2.499653, 0.500173]], dtype=torch.float64)
    for impl in (L4["attention_loops"], L4["attention"]):
        out, w = impl(q, k, v)
        torch.testing.assert_close(w, want_w, atol=1e-6, rtol=0)
        torch.testing.assert_close(out, want_out, atol=1e-6, rtol=0)


@given(st.integers(1, 6), st.integers(1, 7), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_lesson4_loops_and_matrix_match_torch_sdpa(L, S, d_k, d_v, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for n, d in ((L, d_k), (S, d_k), (S, d_v)))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(L4["attention_loops"](q, k, v)[0], expected)
    torch.testing.assert_close(L4["attention"](q, k, v)[0], expected)


def test_lesson4_batched_heads_agree_with_torch_and_the_loops(device):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    loops = torch.stack(
        [torch.stack([L4["attention_loops"](q[b, h], k[b, h], v[b, h])[0] for h in range(3)]) for b in range(2)]
    )
    ours, w = L4["attention"](q.to(device), k.to(device), v.to(device))
    torch.testing.assert_close(ours.cpu(), loops, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours.cpu(), F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(w.sum(-1).cpu(), torch.ones(2, 3, 5, dtype=torch.float64))


def test_lesson4_check_catches_the_softmax_over_the_wrong_axis():
    q, k, v = (torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) for _ in range(3))
    wrong = torch.softmax(q @ k.T / 2.0, dim=0) @ v  # the mistake lesson 4 shows
    assert not torch.allclose(wrong, L4["attention"](q, k, v)[0])


def test_render_attention_is_labelled_and_follows_its_knob():
    base = sdpa_demo.render_attention(1.0)
    assert_axes_labelled(base)
    data_axes = [ax for ax in base.axes if ax.get_label() != "<colorbar>"]
    assert [t.get_text() for t in data_axes[0].get_xticklabels()] == list(sdpa_demo.TOKENS)
    assert len(base.axes) == 6, "each of the three heatmaps has its colour bar"
    assert summary(base) != summary(sdpa_demo.render_attention(10.0))
    assert summary(base) == summary(sdpa_demo.render_attention(1.0))
    with pytest.raises(ValueError, match="scale_factor"):
        sdpa_demo.render_attention(0.0)


def test_render_attention_outputs_tend_to_the_mean_or_to_one_value():
    q, k, v = sdpa_demo.explorer_example()
    flat = np.asarray([ax for ax in sdpa_demo.render_attention(1e-3).axes if ax.images][1].images[0].get_array())
    np.testing.assert_allclose(flat, v.mean(0).expand(6, -1).numpy(), atol=1e-3)
    sharp = np.asarray([ax for ax in sdpa_demo.render_attention(1e3).axes if ax.images][1].images[0].get_array())
    best = (q @ k.T).argmax(-1)
    np.testing.assert_allclose(sharp, v[best].numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------- lesson 5: masking_demo
@pytest.mark.parametrize("L,S", [(1, 6), (3, 6), (6, 6), (4, 5)])
def test_build_mask_alignments_match_torchs_causal_biases(L, S):
    from torch.nn.attention.bias import causal_lower_right, causal_upper_left

    def dense(bias):
        return bias._materialize(torch.device("cpu"))

    top = masking_demo.build_mask(L, S, causal=True, alignment="top-left")
    bottom = masking_demo.build_mask(L, S, causal=True, alignment="bottom-right")
    torch.testing.assert_close(top, dense(causal_upper_left(L, S)))
    torch.testing.assert_close(bottom, dense(causal_lower_right(L, S)))
    assert masking_demo.build_mask(L, S, causal=False).all()


def test_build_mask_padding_blocks_the_last_keys_and_combines_with_causal():
    m = masking_demo.build_mask(6, 6, causal=True, pad=2)
    assert not m[:, 4:].any()
    torch.testing.assert_close(m[:, :4], torch.ones(6, 6, dtype=torch.bool).tril()[:, :4])
    assert not masking_demo.build_mask(3, 6, causal=False, pad=6).any()


def test_build_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pad"):
        masking_demo.build_mask(2, 4, causal=True, pad=5)
    with pytest.raises(ValueError, match="L <= S"):
        masking_demo.build_mask(5, 4, causal=True)
    with pytest.raises(ValueError, match="alignment"):
        masking_demo.build_mask(2, 4, causal=True, alignment="middle")


@given(st.integers(1, 6), st.integers(0, 6), st.booleans(), st.sampled_from(["top-left", "bottom-right"]))
def test_masked_weights_rows_are_distributions_or_zeros_and_match_torch(L, pad, causal, alignment):
    S = 6
    w, q_labels, k_labels = masking_demo.masked_weights(L, S, causal=causal, alignment=alignment, pad=pad)
    mask = masking_demo.build_mask(L, S, causal=causal, alignment=alignment, pad=pad)
    assert len(q_labels) == L and len(k_labels) == S and k_labels.count(masking_demo.PAD) == pad
    assert torch.isfinite(w).all()
    assert (w[~mask] == 0).all()
    sums = w.sum(-1)
    empty = ~mask.any(-1)
    torch.testing.assert_close(sums[~empty], torch.ones(int((~empty).sum())))
    assert (sums[empty] == 0).all()
    x = torch.randn(S, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        w @ x, F.scaled_dot_product_attention(x[S - L :], x, x, attn_mask=mask), atol=1e-6, rtol=1e-5
    )


def test_naive_masked_softmax_gives_nan_where_the_lesson_says():
    # the trap the lesson shows: torch.softmax over an all -inf row is NaN; attnlib gives zeros
    scores = torch.zeros(2, 3).masked_fill(~torch.tensor([[True, True, False], [False, False, False]]), -torch.inf)
    assert torch.isnan(torch.softmax(scores, -1)[1]).all()
    assert (attnlib.softmax(scores)[1] == 0).all()


@pytest.mark.parametrize(
    "change",
    [
        {"causal": False},
        {"alignment": "top-left"},
        {"pad": 2},
        {"n_queries": 3},
    ],
)
def test_render_mask_is_labelled_and_follows_each_knob(change):
    base = {"causal": True, "alignment": "bottom-right", "n_queries": 3, "pad": 0}
    if "n_queries" in change:
        base["n_queries"] = 6
    a = masking_demo.render_mask(**base)
    b = masking_demo.render_mask(**{**base, **change})
    assert_axes_labelled(a)
    assert summary(a) != summary(b)
    assert [t.get_text() for t in a.axes[0].get_xticklabels()] == list(masking_demo.SENTENCE)


def test_render_mask_shows_empty_rows_as_zeros():
    fig = masking_demo.render_mask(causal=True, n_queries=2, pad=6)
    assert "see nothing" in fig.axes[1].get_title()
    weights = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][1].images[0].get_array()
    assert np.all(np.asarray(weights) == 0)


def test_corpus_is_deterministic_and_periodic():
    a, b = masking_demo.make_corpus(20, seed=3), masking_demo.make_corpus(20, seed=3)
    torch.testing.assert_close(a, b)
    assert a.shape == (20, masking_demo.BLOCK + 1) and a.dtype == torch.long
    torch.testing.assert_close(a[:, 4:], a[:, :-4])
    assert (a[:, 3::4] == 0).all() and (a[:, :3] > 0).all()
    assert not torch.equal(a, masking_demo.make_corpus(20, seed=4))


def test_encode_decode_roundtrip_and_errors():
    assert masking_demo.decode(masking_demo.encode("cab cab")) == "cab cab"
    with pytest.raises(ValueError, match=r"outside the vocabulary.*\['z'\]"):
        masking_demo.encode("zab")
    with pytest.raises(ValueError, match="prompt is empty"):
        masking_demo.generate(masking_demo.TinyLM(), "", 3, causal=True)


def test_tiny_lm_shapes_size_and_causality():
    torch.manual_seed(0)
    model = masking_demo.TinyLM()
    n_params = sum(p.numel() for p in model.parameters())
    assert 1000 <= n_params <= 5000
    ids = masking_demo.make_corpus(4)[:, :-1]
    logits, w = model(ids, causal=True)
    assert logits.shape == (4, masking_demo.BLOCK, len(masking_demo.VOCAB)) and w.shape == (4, 16, 16)
    assert (w.triu(diagonal=1) == 0).all()
    # changing a later token must not change earlier logits under the mask (and does without it)
    ids2 = ids.clone()
    ids2[:, 10] = (ids2[:, 10] % 8) + 1
    assert torch.equal(model(ids2, causal=True)[0][:, :10], logits[:, :10])
    assert not torch.allclose(model(ids2, causal=False)[0][:, :10], model(ids, causal=False)[0][:, :10])
    with pytest.raises(ValueError, match="int64"):
        model(ids.float())
    with pytest.raises(ValueError, match="1 <= T <= 16"):
        model(masking_demo.make_corpus(1, length=17))


L5 = load_definitions("notebooks/05_masking.ipynb")  # lesson 5's masks, masked attention and training loop


@pytest.mark.parametrize("L,S", [(1, 6), (3, 6), (6, 6), (4, 5), (6, 4)])
def test_lesson5_causal_masks_match_torchs_causal_biases(L, S):
    from torch.nn.attention.bias import causal_lower_right, causal_upper_left

    def dense(bias):
        return bias._materialize(torch.device("cpu"))

    assert torch.equal(L5["causal_mask"](L, S, "top-left"), dense(causal_upper_left(L, S)))
    assert torch.equal(L5["causal_mask"](L, S, "bottom-right"), dense(causal_lower_right(L, S)))
    assert torch.equal(L5["causal_mask"](L), torch.ones(L, L, dtype=torch.bool).tril())


def test_lesson5_causal_check_catches_an_off_by_one_diagonal():
    off_by_one = torch.ones(4, 4, dtype=torch.bool).tril(-1)  # the mistake: each token hidden from itself
    assert not torch.equal(L5["causal_mask"](4), off_by_one)


@given(st.lists(st.integers(0, 7), min_size=1, max_size=4), st.integers(1, 7))
def test_lesson5_padding_mask_matches_attnlib(lengths, S):
    lengths = [min(n, S) for n in lengths]
    assert torch.equal(L5["padding_mask"](lengths, S), attnlib.padding_mask(lengths, S))


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**16), st.sampled_from(["top-left", "bottom-right"]))
def test_lesson5_masked_attention_matches_torch_sdpa_even_on_empty_rows(L, S, seed, alignment):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, n, 4, generator=g, dtype=torch.float64) for n in (L, S, S))
    mask = L5["causal_mask"](L, S, alignment) & L5["padding_mask"]([S, S // 2, 0], S)[:, 0]  # (3, L, S)
    out, w = L5["masked_attention"](q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.isfinite(w).all() and (w[~mask] == 0).all()
    assert (out[2] == 0).all()  # a sequence of length 0 attends to nothing


def test_lesson5_training_without_the_mask_leaks_and_with_it_generates():
    corpus = masking_demo.make_corpus(2000, seed=1)
    test = masking_demo.make_corpus(200, seed=99)
    floor = 2 * math.log(len(masking_demo.LETTERS)) / masking_demo.BLOCK  # two unpredictable letters per line
    masked, masked_losses = L5["train_lm"](True, corpus)
    leaky, _ = L5["train_lm"](False, corpus)
    with torch.no_grad():
        masked_loss = float(L5["lm_loss"](masked, test, True))
        leaky_loss = float(L5["lm_loss"](leaky, test, False))
    assert masked_loss > floor - 0.02  # an honest model cannot beat the floor
    assert leaky_loss < 0.05 < floor  # a leaking one "beats" it by reading the answers
    assert masking_demo.future_weight(masked, test, causal=True) == 0.0
    assert masking_demo.future_weight(leaky, test, causal=False) > 0.5
    assert masking_demo.generate(masked, "cab ", 12, causal=True) == "cab cab cab cab "
    assert masking_demo.generate(leaky, "cab ", 12, causal=False) != "cab cab cab cab "
    assert len(masked_losses) == 200


def test_render_mask_has_a_colour_bar_on_both_panels():
    fig = masking_demo.render_mask(causal=True, alignment="bottom-right", n_queries=3, pad=1)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["0: blocked", "1: may attend"]


# ------------------------------------------------------------------------------- lesson 6: self_attention_demo
# The lesson writes the layer, the hand-built projections and the residual loop in its own cells (nbval checks
# their outputs); the module keeps the lexicon, the sentences and two render functions.
def test_embed_uses_the_lexicon_and_unknown_words_are_zero():
    x = sa.embed(["bank", "the"])
    assert x.shape == (2, len(sa.FEATURES))
    assert x[0, sa.FEATURES.index("ambiguous")] == 1.0 and (x[1] == 0).all()
    assert sa.tokens_of("money")[7] == "bank" and sa.tokens_of("river")[4] == "bank"
    with pytest.raises(ValueError, match="sentence"):
        sa.tokens_of("   ")


def _maps():
    g = torch.Generator().manual_seed(0)
    maps = {}
    for name in ("tired", "wide"):
        tokens = sa.tokens_of(name)
        maps[name] = (tokens, torch.softmax(torch.randn(len(tokens), len(tokens), generator=g), -1), name)
    return maps


def test_render_query_rejects_bad_input():
    with pytest.raises(ValueError, match="one of"):
        sa.render_query(_maps(), "nope", 0)
    with pytest.raises(ValueError, match=r"0\.\.10"):
        sa.render_query(_maps(), "tired", 11)
    bad = {"tired": (sa.tokens_of("tired"), torch.ones(3, 3), "x")}
    with pytest.raises(ValueError, match=r"\(11, 11\)"):
        sa.render_query(bad, "tired", 0)


@pytest.mark.parametrize("change", [{"query": 1}, {"sentence": "wide"}])
def test_render_query_is_labelled_and_follows_its_knobs(change):
    maps = _maps()
    a = sa.render_query(maps, "tired", 7)
    b = sa.render_query(**{"maps": maps, "sentence": "tired", "query": 7, **change})
    assert_axes_labelled(a)
    assert summary(a) != summary(b)
    assert [t.get_text() for t in a.axes[1].get_xticklabels()] == sa.tokens_of("tired")


def test_difference_heatmap_is_signed_symmetric_and_token_labelled():
    from attnlib import viz

    tokens = ["a", "b", "c"]
    diff = torch.tensor([[0.1, -0.3, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.0]])
    fig, ax = viz.new_figure()
    image = sa.difference_heatmap(ax, diff, tokens, title="bug - right")
    assert image.get_clim() == pytest.approx((-0.3, 0.3))  # symmetric about 0, set by the data, not by 1
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert len(fig.axes) == 2  # the colour bar
    assert_axes_labelled(fig)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        sa.difference_heatmap(ax, torch.zeros(2, 2), tokens)


def test_tinylm_runs_the_learners_attention_and_mask_with_the_same_parameters():
    torch.manual_seed(0)
    default = masking_demo.TinyLM()
    torch.manual_seed(0)
    calls = []

    def attention(q, k, v, mask):
        calls.append(mask)
        return attnlib.scaled_dot_product_attention(q, k, v, mask)

    learners = masking_demo.TinyLM(attention=attention, causal_mask=lambda T: attnlib.causal_mask(T))
    ids = torch.randint(0, len(masking_demo.VOCAB), (3, 9))
    for causal in (True, False):
        torch.testing.assert_close(learners(ids, causal=causal)[0], default(ids, causal=causal)[0])
    assert torch.equal(calls[0], attnlib.causal_mask(9)) and bool(calls[1].all())
    with pytest.raises(ValueError, match="both attention and causal_mask"):
        masking_demo.TinyLM(attention=attention)
