"""attnlib.minilm rebuilds all-MiniLM-L6-v2 from attnlib parts and matches the reference implementation.

The oracle is Hugging Face ``transformers``' BertModel loaded from the same local files (eager attention, so
it returns its attention weights), with sentence-transformers' pooling (mean over real tokens, L2-normalise).
Nothing may touch the network: the model is loaded and run with every socket connection raising.
Run with ``-rP`` to see the measured differences printed by the parity tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnlib import minilm
from attnlib.lessons import heads_explorer as hx

pytestmark = pytest.mark.usefixtures("one_thread")

matplotlib.use("Agg")

SENTENCES = [
    "The animal didn't cross the street because it was too tired.",
    "The animal didn't cross the street because it was too wide.",
    "Java programming is fun.",
    "We sat on the bank of the river and watched the water.",
    "I deposited my salary at the bank.",
    "Attention weights are not explanations, but they are still worth a look!",
    ("How old is the bridge?", "It was built in 1883."),
    "Hi",
]
HIDDEN_ATOL = 1e-5
COSINE_MIN = 0.99999


class NetworkAttempt(AssertionError):
    """Raised by the socket guard: something tried to open a network connection."""


@contextlib.contextmanager
def no_network():
    """Make every way of opening a connection raise NetworkAttempt (a test failure) while active."""

    def refuse(*args, **kwargs):
        raise NetworkAttempt(f"network access attempted: {args!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="module")
def model(one_thread) -> minilm.MiniLM:
    with no_network():
        return minilm.load_minilm(device="cpu")


@pytest.fixture(scope="module")
def reference(one_thread):
    """transformers' BertModel over the same packaged files: the oracle."""
    with no_network():
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(minilm.model_dir()), attn_implementation="eager").eval()


def run_reference(reference, batch: minilm.TokenBatch):
    with torch.no_grad(), no_network():
        return reference(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
            output_hidden_states=True,
            output_attentions=True,
        )


def reference_sentence_embedding(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' Pooling(mean) + Normalize, written out."""
    m = attention_mask[..., None].to(last_hidden.dtype)
    return torch.nn.functional.normalize((last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def max_real_token_diff(ours: tuple[torch.Tensor, ...], theirs: tuple[torch.Tensor, ...], batch) -> list[float]:
    """Per layer: the largest |difference| over the real (non-padding) tokens of every item."""
    real = batch.attention_mask.bool()
    return [float((a - b)[real].abs().max()) for a, b in zip(ours, theirs, strict=True)]


@pytest.fixture(scope="module")
def padded(model, reference):
    batch = model.tokenizer(SENTENCES)
    with no_network():
        ours = model(SENTENCES)
    return batch, ours, run_reference(reference, batch)


# --- parity with the reference -------------------------------------------------------------------------------


def test_the_batch_really_is_padded_with_different_lengths(padded):
    batch, ours, _ = padded
    lengths = batch.lengths.tolist()
    assert len(set(lengths)) >= 5 and min(lengths) < max(lengths)
    assert (batch.input_ids[batch.attention_mask == 0] == 0).all()  # [PAD] is id 0


def test_hidden_states_of_every_layer_match_the_reference(padded):
    batch, ours, ref = padded
    assert len(ours.hidden_states) == len(ref.hidden_states) == 7
    diffs = max_real_token_diff(ours.hidden_states, ref.hidden_states, batch)
    print("max |hidden state difference| per layer (embeddings, layers 0-5):", [f"{d:.2e}" for d in diffs])
    assert max(diffs) <= HIDDEN_ATOL, diffs


def test_attention_weights_match_the_reference_on_real_queries(padded):
    batch, ours, ref = padded
    real_queries = batch.attention_mask.bool()[:, None, :, None]
    diffs = [float(((a - b) * real_queries).abs().max()) for a, b in zip(ours.attentions, ref.attentions, strict=True)]
    print("max |attention weight difference| per layer:", [f"{d:.2e}" for d in diffs])
    assert max(diffs) <= HIDDEN_ATOL, diffs


def test_pooled_sentence_embedding_matches_the_reference(padded):
    batch, ours, ref = padded
    expected = reference_sentence_embedding(ref.last_hidden_state, batch.attention_mask)
    cosine = torch.nn.functional.cosine_similarity(ours.sentence_embedding, expected)
    gap = float((ours.sentence_embedding - expected).abs().max())
    print(f"min cosine similarity {float(cosine.min()):.9f}, max |diff| {gap:.2e}")
    assert float(cosine.min()) >= COSINE_MIN
    torch.testing.assert_close(ours.sentence_embedding.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_pooled_embedding_matches_sentence_transformers_itself(model):
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    texts = [s for s in SENTENCES if isinstance(s, str)]
    with no_network():
        st_model = sentence_transformers.SentenceTransformer(str(minilm.model_dir()), device="cpu")
        expected = st_model.encode(texts, convert_to_tensor=True, batch_size=len(texts))
        ours = model(texts).sentence_embedding
    cosine = torch.nn.functional.cosine_similarity(ours, expected)
    print(f"vs SentenceTransformer.encode: min cosine {float(cosine.min()):.9f}")
    assert float(cosine.min()) >= COSINE_MIN


@pytest.mark.parametrize("order", [[2, 0], [0, 2], [7, 3, 2]], ids=["short-long", "long-short", "three"])
def test_padding_does_not_change_real_tokens(model, padded, order):
    """An item's real-token states and embedding are the same alone, in any padded batch, in any position."""
    _, full, _ = padded
    texts = [SENTENCES[i] for i in order]
    out = model(texts)
    for b, i in enumerate(order):
        n = int(full.lengths[i])
        torch.testing.assert_close(out.hidden_of(b), full.hidden_of(i), atol=HIDDEN_ATOL, rtol=0)
        alone = model(SENTENCES[i])
        torch.testing.assert_close(out.hidden_of(b), alone.hidden_of(0), atol=HIDDEN_ATOL, rtol=0)
        torch.testing.assert_close(out.sentence_embedding[b], alone.sentence_embedding[0], atol=1e-6, rtol=0)
        assert out.attention_of(b).shape == (6, 12, n, n)


# --- the checks catch the mistakes they guard against -------------------------------------------------------------


def test_parity_check_catches_swapped_query_and_key_weights(model, padded):
    batch, _, ref = padded
    broken = minilm.MiniLMEncoder(model.encoder.config)
    broken.load_state_dict(model.encoder.state_dict())
    with torch.no_grad():
        layer = broken.layers[2].attention
        layer.w_q.weight.copy_(model.encoder.layers[2].attention.w_k.weight)
        layer.w_k.weight.copy_(model.encoder.layers[2].attention.w_q.weight)
        out = broken(batch.input_ids, batch.lengths, batch.token_type_ids)
    diffs = max_real_token_diff(out.hidden_states, ref.hidden_states, batch)
    assert max(diffs[:3]) <= HIDDEN_ATOL < min(diffs[3:])


def test_forgetting_the_padding_mask_changes_the_short_items(model, padded):
    batch, _, ref = padded
    with torch.no_grad():
        unmasked = model.encoder(batch.input_ids, None, batch.token_type_ids)  # every position treated as real
    diffs = max_real_token_diff(unmasked.hidden_states, ref.hidden_states, batch)
    assert max(diffs[1:]) > 1e-2


def test_mean_pooling_over_padding_fails_the_cosine_check(padded):
    batch, ours, ref = padded
    wrong = torch.nn.functional.normalize(ours.hidden_states[-1].mean(dim=1), dim=-1)  # pads included
    expected = reference_sentence_embedding(ref.last_hidden_state, batch.attention_mask)
    assert float(torch.nn.functional.cosine_similarity(wrong, expected).min()) < COSINE_MIN


# --- attention weights -----------------------------------------------------------------------------------------


def test_attention_shapes_rows_and_padding(padded):
    batch, ours, _ = padded
    B, L = batch.input_ids.shape
    real = batch.attention_mask.bool()
    assert len(ours.attentions) == 6
    for w in ours.attentions:
        assert w.shape == (B, 12, L, L) and torch.isfinite(w).all() and (w >= 0).all()
        sums = w.sum(-1)  # (B, 12, L)
        torch.testing.assert_close(sums[real[:, None, :].expand_as(sums)], torch.ones(int(real.sum()) * 12))
        assert (sums[~real[:, None, :].expand_as(sums)] == 0).all()  # padding queries: all-zero rows
        assert (w * ~real[:, None, None, :] == 0).all()  # nobody attends to padding keys


def test_attention_of_cuts_padding_and_checks_the_index(padded):
    _, ours, _ = padded
    short = SENTENCES.index("Hi")
    assert ours.attention_of(short).shape == (6, 12, 3, 3)
    assert ours.tokens[short] == ["[CLS]", "hi", "[SEP]"]
    with pytest.raises(ValueError, match="item must be an int index into the 8 items"):
        ours.attention_of(8)


# --- offline guarantee -------------------------------------------------------------------------------------------


def test_the_socket_guard_really_blocks_connections():
    with no_network(), pytest.raises(NetworkAttempt):
        socket.create_connection(("127.0.0.1", 9), timeout=0.1)
    with no_network(), pytest.raises(NetworkAttempt):
        socket.socket().connect(("127.0.0.1", 9))


def test_loading_and_running_never_touch_the_network():
    with no_network():
        model = minilm.load_minilm()
        out = model(["Nothing is downloaded.", ("a pair", "of texts")])
    assert out.sentence_embedding.shape == (2, 384)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_attnlib_minilm_imports_no_hub_or_http_client():
    code = (
        "import sys, attnlib.minilm as m; m.load_minilm()(['hello']);"
        "bad = sorted({k.split('.')[0] for k in sys.modules} & "
        "{'huggingface_hub', 'transformers', 'requests', 'httpx', 'urllib3', 'sentence_transformers'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


# --- tokenizer, weights and bad input ------------------------------------------------------------------------------


def test_tokenizer_pieces_pairs_and_truncation(model):
    batch = model.tokenizer(SENTENCES[0])
    assert batch.tokens[0][:3] == ["[CLS]", "the", "animal"] and batch.tokens[0][-1] == "[SEP]"
    assert batch.tokens[0][10] == "it" and len(batch.tokens[0]) == 16
    pair = model.tokenizer([("a b", "c")])
    assert pair.tokens[0] == ["[CLS]", "a", "b", "[SEP]", "c", "[SEP]"]
    assert pair.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1]
    short = minilm.MiniLMTokenizer(max_length=8)
    assert short("one two three four five six seven eight nine").lengths.tolist() == [8]


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ([], ValueError, "texts is empty"),
        ([3], TypeError, r"texts\[0\] must be a str"),
        ([("a", "b", "c")], TypeError, "pair"),
    ],
)
def test_tokenizer_rejects_bad_texts(model, texts, error, match):
    with pytest.raises(error, match=match):
        model.tokenizer(texts)


def test_encoder_rejects_bad_input(model):
    enc = model.encoder
    ids = torch.tensor([[101, 7592, 102]])
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        enc(ids.float())
    with pytest.raises(ValueError, match="got 2 lengths for a batch of 1"):
        enc(ids, [3, 2])
    with pytest.raises(ValueError, match="every length must be >= 1"):
        enc(ids, [0])
    with pytest.raises(ValueError, match=r"exceed the key length S=3"):
        enc(ids, [4])
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 30522\)"):
        enc(torch.tensor([[101, 40000, 102]]))
    with pytest.raises(ValueError, match="only 512 positions"):
        enc(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(TypeError, match="path must be a str"):
        minilm.MiniLMTokenizer(3)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        minilm.MiniLMEncoder.from_pretrained("/nonexistent/minilm")


def test_checkpoint_names_map_onto_attnlib_modules():
    assert minilm.rename_bert_key("encoder.layer.3.attention.self.query.weight") == "layers.3.attention.w_q.weight"
    assert minilm.rename_bert_key("encoder.layer.0.attention.output.dense.bias") == "layers.0.attention.w_o.bias"
    assert minilm.rename_bert_key("encoder.layer.5.output.LayerNorm.weight") == "layers.5.norm_2.weight"
    assert minilm.rename_bert_key("embeddings.word_embeddings.weight") == "embeddings.word.weight"
    assert minilm.rename_bert_key("pooler.dense.weight") is None
    with pytest.raises(KeyError, match="no place"):
        minilm.rename_bert_key("encoder.layer.0.attention.self.rotary.weight")


def test_loading_is_strict_about_missing_and_misshapen_tensors(model):
    from safetensors.torch import load_file

    tensors = load_file(str(minilm.model_dir() / "model.safetensors"))
    fresh = minilm.MiniLMEncoder()
    missing = dict(tensors)
    del missing["encoder.layer.4.attention.self.value.bias"]
    with pytest.raises(ValueError, match="does not provide 1 parameters"):
        fresh.load_bert_state_dict(missing)
    misshapen = dict(tensors)
    misshapen["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(384, 384)
    with pytest.raises(ValueError, match=r"shape \(384, 384\); layers.1.feed_forward.w_1.weight expects \(1536, 384\)"):
        fresh.load_bert_state_dict(misshapen)


def test_mean_pool_ignores_padding_and_checks_shapes():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(minilm.mean_pool(hidden, [2]), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"hidden must be \(batch, L, d\)"):
        minilm.mean_pool(hidden[0], [2])
    with pytest.raises(ValueError, match="got 2 lengths"):
        minilm.mean_pool(hidden, [2, 1])


# --- lesson statistics ------------------------------------------------------------------------------------------


def _uniform(layers=2, heads=3, n=5):
    return torch.full((layers, heads, n, n), 1.0 / n)


def test_head_statistics_on_known_patterns():
    n = 5
    previous = torch.zeros(n, n)
    previous[0, 0] = 1.0
    previous[torch.arange(1, n), torch.arange(n - 1)] = 1.0
    to_cls = torch.zeros(n, n)
    to_cls[:, 0] = 1.0
    attn = torch.stack([torch.stack([previous, to_cls, torch.full((n, n), 1 / n)])])  # (1, 3, n, n)
    tokens = ["[CLS]", "a", "b", "c", "[SEP]"]
    torch.testing.assert_close(hx.previous_token_score(attn), torch.tensor([[1.0, 1 / (n - 1), 1 / n]]))
    torch.testing.assert_close(hx.special_token_score(attn, tokens), torch.tensor([[2 / n, 1.0, 2 / n]]))
    torch.testing.assert_close(hx.head_entropy(attn), torch.tensor([[0.0, 0.0, math.log(n)]]))
    assert hx.top_heads(hx.head_entropy(attn), 1) == [(0, 2, pytest.approx(math.log(n)))]
    assert [h[:2] for h in hx.top_heads(hx.previous_token_score(attn), 2, largest=False)] == [(0, 2), (0, 1)]
    torch.testing.assert_close(hx.pattern_difference(attn, attn), torch.zeros(1, 3))
    # previous-token head vs [CLS] head: rows 0 and 1 agree, the other n - 2 rows move all their weight
    moved = hx.pattern_difference(attn[:, :1], attn[:, 1:2])
    torch.testing.assert_close(moved, torch.tensor([[(n - 2) / n]]))
    assert float(hx.attention_from_to(attn, 3, 2)[0, 0]) == 1.0


@given(st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_statistics_stay_in_their_ranges_for_any_attention(n, seed):
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(3 * torch.randn(2, 3, n, n, generator=g), dim=-1)
    tokens = ["[CLS]"] + ["w"] * (n - 2) + ["[SEP]"]
    ent = hx.head_entropy(attn)
    assert (ent >= -1e-6).all() and (ent <= math.log(n) + 1e-5).all()
    for score in (hx.previous_token_score(attn), hx.special_token_score(attn, tokens)):
        assert (score >= 0).all() and (score <= 1 + 1e-6).all()
    other = torch.softmax(torch.randn(2, 3, n, n, generator=g), dim=-1)
    d = hx.pattern_difference(attn, other)
    assert (d >= 0).all() and (d <= 1 + 1e-6).all()
    torch.testing.assert_close(d, hx.pattern_difference(other, attn))


def test_statistics_reject_bad_input():
    with pytest.raises(ValueError, match=r"attention must be a float tensor \(layers, heads, n, n\)"):
        hx.head_entropy(torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="got 2 tokens for attention over n=5"):
        hx.special_token_score(_uniform(), ["[CLS]", "x"])
    with pytest.raises(ValueError, match="must have the same shape"):
        hx.pattern_difference(_uniform(n=5), _uniform(n=4))
    with pytest.raises(ValueError, match="'it' occurs 0 time"):
        hx.token_index(["[CLS]", "a"], "it")
    with pytest.raises(ValueError, match="query=9 is out of range"):
        hx.attention_from_to(_uniform(), 9, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        hx.top_heads(torch.zeros(2, 2), 1.5)


# --- render functions ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tired(padded):
    _, ours, _ = padded
    return ours.attention_of(0), ours.tokens[0]


def test_render_head_labels_tokens_and_changes_with_every_knob(tired):
    attention, tokens = tired
    fig = hx.render_head(attention, tokens, layer=3, head=1, query=10)
    ax_map, ax_bar = fig.axes[:2]
    assert [t.get_text() for t in ax_map.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax_map.get_yticklabels()] == tokens
    assert ax_map.get_xlabel() and ax_map.get_ylabel() and ax_bar.get_ylabel() and ax_bar.get_xlabel()
    assert ax_map.get_title() == "layer 3, head 1" and "'it'" in ax_bar.get_title()
    np.testing.assert_allclose(ax_map.images[0].get_array(), attention[3, 1].numpy())
    np.testing.assert_allclose([p.get_height() for p in ax_bar.patches], attention[3, 1, 10].numpy(), rtol=1e-6)

    base_image = np.asarray(ax_map.images[0].get_array())
    base_bars = [p.get_height() for p in ax_bar.patches]
    for knob, value in (("layer", 0), ("head", 2), ("query", 2)):
        state = {"layer": 3, "head": 1, "query": 10, knob: value}
        moved = hx.render_head(attention, tokens, **state)
        image = np.asarray(moved.axes[0].images[0].get_array())
        bars = [p.get_height() for p in moved.axes[1].patches]
        assert not (np.allclose(image, base_image) and np.allclose(bars, base_bars)), knob


def test_render_head_rejects_out_of_range_knobs(tired):
    attention, tokens = tired
    with pytest.raises(ValueError, match=r"layer=6 is out of range: this model has layers 0..5"):
        hx.render_head(attention, tokens, layer=6, head=0, query=0)
    with pytest.raises(ValueError, match=r"head=12 is out of range"):
        hx.render_head(attention, tokens, layer=0, head=12, query=0)
    with pytest.raises(TypeError, match="query must be an int"):
        hx.render_head(attention, tokens, layer=0, head=0, query="it")
    with pytest.raises(ValueError, match="got 3 tokens"):
        hx.render_head(attention, tokens[:3], layer=0, head=0, query=0)


def test_render_all_heads_draws_a_labelled_6_by_12_mosaic(tired):
    attention, tokens = tired
    n = len(tokens)
    fig = hx.render_all_heads(attention, tokens)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(h) for h in range(12)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(layer) for layer in range(6)]
    assert ax.get_xlabel().startswith("head") and ax.get_ylabel().startswith("layer")
    assert "animal" in ax.get_title()
    mosaic = np.ma.filled(ax.images[0].get_array(), np.nan)
    assert mosaic.shape == (6 * (n + 1) - 1, 12 * (n + 1) - 1)
    cell = mosaic[3 * (n + 1) : 3 * (n + 1) + n, 1 * (n + 1) : 1 * (n + 1) + n]  # layer 3, head 1
    np.testing.assert_allclose(cell, attention[3, 1].numpy())
    assert np.isnan(mosaic[n, :]).all() and np.isnan(mosaic[:, n]).all()  # blank separators
    other = hx.render_all_heads(attention.flip(-1), tokens)
    assert not np.allclose(np.ma.filled(other.axes[0].images[0].get_array(), 0), np.nan_to_num(mosaic))


def test_render_head_scores_annotates_every_head(tired):
    attention, _ = tired
    scores = hx.previous_token_score(attention)
    fig = hx.render_head_scores(scores, title="previous-token score", label="mean weight on i - 1")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" and ax.get_title() == "previous-token score"
    assert len(ax.texts) == 72 and ax.texts[2].get_text() == f"{float(scores[0, 2]):.2f}"
    with pytest.raises(ValueError, match=r"scores must be \(layers, heads\)"):
        hx.render_head_scores(scores[0], title="x", label="y")
