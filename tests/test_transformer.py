"""attnlib.transformer against PyTorch: the block vs nn.TransformerEncoderLayer(norm_first=True) with its weights,
the loss vs F.cross_entropy on another layout, and cached generation vs uncached."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import attnlib
from attnlib.kvcache import KVCache

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_block_matches_torch_encoder_layer_norm_first(activation):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(
        16, 4, dim_feedforward=24, dropout=0.0, activation=activation, norm_first=True, batch_first=True
    ).eval()
    block = attnlib.TransformerBlock.from_torch(layer).eval()
    x = torch.randn(2, 7, 16)
    mask = attnlib.causal_mask(7)
    ours, weights = block(x, mask)
    theirs = layer(x, src_mask=attnlib.to_mha_mask(mask))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(block(x)[0], layer(x), atol=1e-5, rtol=1e-5)


def test_block_from_torch_rejects_post_norm():
    with pytest.raises(ValueError, match="post-norm"):
        attnlib.TransformerBlock.from_torch(torch.nn.TransformerEncoderLayer(8, 2, norm_first=False))
    with pytest.raises(TypeError, match="layer"):
        attnlib.TransformerBlock.from_torch(torch.nn.Linear(2, 2))


def test_post_norm_is_a_different_block():
    """The mistake of normalising after the residual: a post-norm layer with the same weights disagrees."""
    torch.manual_seed(1)
    pre = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, norm_first=True, batch_first=True).eval()
    post = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, norm_first=False, batch_first=True).eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(1, 5, 8)
    block = attnlib.TransformerBlock.from_torch(pre).eval()
    assert (block(x)[0] - post(x)).abs().max() > 1e-2


def test_block_with_a_cache_equals_the_causal_block():
    torch.manual_seed(2)
    block = attnlib.TransformerBlock(16, 2).eval()
    x = torch.randn(1, 6, 16)
    full, _ = block(x, is_causal=True)
    cache = KVCache()
    steps = [block(x[:, :2], cache=cache)[0]] + [block(x[:, t : t + 1], cache=cache)[0] for t in range(2, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cache"):
        block(x, attnlib.causal_mask(6), cache=KVCache())


def test_block_validates_input():
    block = attnlib.TransformerBlock(8, 2)
    with pytest.raises(ValueError, match="features"):
        block(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="x must have 3 dims"):
        block(torch.randn(3, 8))
    with pytest.raises(ValueError, match="activation"):
        attnlib.TransformerBlock(8, 2, activation="tanh")


@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.integers(2, 9))
def test_causal_lm_loss_is_cross_entropy_of_the_next_token(seed, T, V):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, T, V, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (3, T), generator=g)
    ours = attnlib.causal_lm_loss(logits, tokens)
    theirs = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:])  # the (B, V, T) layout
    by_hand = -torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None]).mean()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours, by_hand)


def test_causal_lm_loss_without_the_shift_is_caught():
    """The off-by-one mistake (scoring logits[:, t] against tokens[:, t]) gives a different number."""
    torch.manual_seed(3)
    logits, tokens = torch.randn(2, 6, 5), torch.randint(0, 5, (2, 6))
    unshifted = F.cross_entropy(logits.reshape(-1, 5), tokens.reshape(-1))
    assert abs(unshifted - attnlib.causal_lm_loss(logits, tokens)) > 1e-3


def test_causal_lm_loss_ignores_padding_and_validates():
    logits, tokens = torch.randn(1, 4, 3), torch.tensor([[0, 1, 2, -100]])
    expected = F.cross_entropy(logits[0, :2], tokens[0, 1:3])
    torch.testing.assert_close(attnlib.causal_lm_loss(logits, tokens), expected)
    with pytest.raises(TypeError, match="int64"):
        attnlib.causal_lm_loss(logits, tokens.float())
    with pytest.raises(ValueError, match="at least 2"):
        attnlib.causal_lm_loss(torch.randn(1, 1, 3), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="tokens"):
        attnlib.causal_lm_loss(logits, torch.tensor([[0, 1]]))


def test_decoder_is_causal_a_future_token_changes_nothing_before_it():
    torch.manual_seed(4)
    model = attnlib.TinyDecoder(11, 16, 2, 2, max_len=12).eval()
    a = torch.randint(0, 11, (1, 8))
    b = a.clone()
    b[0, 5] = (a[0, 5] + 1) % 11
    with torch.no_grad():
        la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :5], lb[:, :5])
    assert (la[:, 5:] - lb[:, 5:]).abs().max() > 1e-4


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cached_generation_equals_uncached(temperature):
    torch.manual_seed(5)
    model = attnlib.TinyDecoder(13, 16, 2, 2, max_len=20).eval()
    prompt = torch.randint(0, 13, (3, 4))
    cached = attnlib.generate(model, prompt, 10, temperature=temperature, generator=torch.Generator().manual_seed(1))
    plain = attnlib.generate(
        model, prompt, 10, use_cache=False, temperature=temperature, generator=torch.Generator().manual_seed(1)
    )
    assert cached.shape == (3, 14) and torch.equal(cached[:, :4], prompt)
    assert torch.equal(cached, plain)


def test_cached_logits_equal_full_logits():
    torch.manual_seed(6)
    model = attnlib.TinyDecoder(9, 16, 4, 2, max_len=10).eval()
    tokens = torch.randint(0, 9, (2, 7))
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_caches()
        parts = [model(tokens[:, :3], caches=caches)]
        parts += [model(tokens[:, t : t + 1], caches=caches) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_generate_and_decoder_validate():
    model = attnlib.TinyDecoder(5, 8, 2, 1, max_len=6)
    with pytest.raises(ValueError, match="max_len"):
        attnlib.generate(model, torch.zeros(1, 4, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="model"):
        attnlib.generate(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="temperature"):
        attnlib.generate(model, torch.zeros(1, 2, dtype=torch.long), 1, temperature=-1.0)
    with pytest.raises(ValueError, match="ids"):
        model(torch.tensor([[0, 7]]))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 2))
