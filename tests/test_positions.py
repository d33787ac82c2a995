"""attnlib.positions against independent formulations: the sinusoidal formula written per entry, RoPE as complex
multiplication and as an explicit 2x2 rotation matrix, and ALiBi from the paper's definition."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnlib
from attnlib.positions import rope_angles, rotate_half

seeds = st.integers(0, 2**31 - 1)


def test_sinusoidal_table_is_the_formula_entry_by_entry():
    L, d = 7, 10
    table = attnlib.sinusoidal_positions(L, d, dtype=torch.float64)
    assert table.shape == (L, d)
    for p in range(L):
        for i in range(d // 2):
            w = 10000.0 ** (-2 * i / d)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-12)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-12)


def test_sinusoidal_dot_product_depends_only_on_the_offset():
    table = attnlib.sinusoidal_positions(64, 32, dtype=torch.float64)
    for k in (1, 5, 17):
        dots = (table[:-k] * table[k:]).sum(-1)
        assert (dots - dots[0]).abs().max() < 1e-10


@pytest.mark.parametrize(("args", "error"), [((0, 4), ValueError), ((4, 5), ValueError), ((4.0, 4), TypeError)])
def test_sinusoidal_rejects_bad_sizes_naming_them(args, error):
    with pytest.raises(error, match="seq_len|dim"):
        attnlib.sinusoidal_positions(*args)


def _rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE as z * e^{i p theta} on complex numbers z = x[i] + i x[i + d/2] (an independent formulation)."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rotated = z * torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta)
    return torch.cat([rotated.real, rotated.imag], dim=-1).to(x.dtype)


@given(seeds, st.integers(1, 3), st.integers(1, 9), st.sampled_from([2, 4, 8, 16]), st.integers(0, 50))
def test_apply_rope_equals_complex_multiplication(seed, heads, seq, dim, start):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, heads, seq, dim, generator=g, dtype=torch.float64)
    before = x.clone()
    positions = torch.arange(start, start + seq)
    ours = attnlib.apply_rope(x, positions)
    torch.testing.assert_close(ours, _rope_complex(x, positions), atol=1e-10, rtol=1e-10)
    assert torch.equal(x, before), "apply_rope modified its input"


def test_apply_rope_is_a_rotation_matrix_per_pair():
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    out = attnlib.apply_rope(x)
    d = 4
    for p in range(3):
        for i in range(d // 2):
            a = p * 10000.0 ** (-2 * i / d)
            rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
            pair = torch.stack([x[0, 0, p, i], x[0, 0, p, i + d // 2]])
            expected = rot @ pair
            torch.testing.assert_close(torch.stack([out[0, 0, p, i], out[0, 0, p, i + d // 2]]), expected)


@given(seeds, st.integers(0, 40), st.integers(0, 40), st.integers(-10, 10))
def test_rope_scores_depend_only_on_the_offset(seed, m, n, shift):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=g, dtype=torch.float64).unbind(0)
    m2, n2 = m + shift + 10, n + shift + 10  # the same offset m - n, at other absolute positions

    def score(a: int, b: int) -> torch.Tensor:
        return (attnlib.apply_rope(q, torch.tensor([a])) * attnlib.apply_rope(k, torch.tensor([b]))).sum()

    assert abs(score(m, n) - score(m2, n2)) < 1e-9


def test_rope_preserves_norms_and_position_zero_is_the_identity():
    x = torch.randn(2, 2, 6, 8)
    out = attnlib.apply_rope(x)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])


def test_rotating_interleaved_pairs_is_a_different_convention_caught_by_the_reference():
    """The find-the-bug mistake: pairing features (2i, 2i+1) with the rotate-half angles differs from RoPE."""
    x = torch.randn(1, 1, 5, 8, dtype=torch.float64)
    cos, sin = rope_angles(torch.arange(5), 8, dtype=torch.float64)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    wrong = torch.stack([-x2, x1], dim=-1).flatten(-2)
    assert (x * cos + wrong * sin - attnlib.apply_rope(x)).abs().max() > 1e-2


def test_apply_rope_validates():
    with pytest.raises(ValueError, match="even"):
        attnlib.apply_rope(torch.randn(1, 1, 3, 5))
    with pytest.raises(ValueError, match="positions"):
        attnlib.apply_rope(torch.randn(1, 1, 3, 4), torch.arange(4))
    with pytest.raises(TypeError, match="x"):
        attnlib.apply_rope(torch.arange(8).reshape(1, 1, 2, 4))
    with pytest.raises(ValueError, match="even"):
        rotate_half(torch.randn(3))


@pytest.mark.parametrize(("heads", "expected"), [(8, [2.0 ** -(h + 1) for h in range(8)]), (1, [2.0**-8])])
def test_alibi_slopes_for_powers_of_two(heads, expected):
    torch.testing.assert_close(attnlib.alibi_slopes(heads, dtype=torch.float64), torch.tensor(expected).double())


def test_alibi_slopes_for_other_head_counts_follow_the_papers_rule():
    # 6 heads: the 4-head slopes, then the first two odd-indexed 8-head slopes (1/2, 1/8)
    expected = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    torch.testing.assert_close(attnlib.alibi_slopes(6, dtype=torch.float64), torch.tensor(expected).double())


def test_alibi_bias_is_minus_slope_times_distance_and_bottom_right_aligned():
    bias = attnlib.alibi_bias(2, 3, 5, dtype=torch.float64)
    slopes = attnlib.alibi_slopes(2, dtype=torch.float64)
    assert bias.shape == (2, 3, 5)
    for h in range(2):
        for i in range(3):
            for j in range(5):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h].item() * abs(i + 2 - j))
    assert (bias[:, -1, -1] == 0).all()  # the newest query sits on the newest key


def test_alibi_bias_as_a_float_mask_matches_torch_sdpa():
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    bias = attnlib.alibi_bias(4, 6)
    causal = attnlib.causal_mask(6)
    float_mask = bias.masked_fill(~causal, float("-inf"))
    ours, _ = attnlib.scaled_dot_product_attention(q, k, v, float_mask)
    torch.testing.assert_close(ours, torch.nn.functional.scaled_dot_product_attention(q, k, v, float_mask))
