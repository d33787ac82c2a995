"""Level 1 lessons' code: what the notebooks of lessons 1-3 define for the learner (read from their cells with
tests/notebook_defs.py), and the helpers they use: attnlib.lessons.lookup, .scaling and .softmax_demo.

Render functions are checked for labelled axes and for a figure that changes when their knob moves; the
fingerprint used for the latter is itself shown to catch a render function that ignores its knob.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from figures import assert_axes_labelled
from hypothesis import given
from hypothesis import strategies as st
from notebook_defs import load_definitions

import attnlib
from attnlib.lessons import lookup, scaling, softmax_demo

pytestmark = pytest.mark.usefixtures("one_thread")

matplotlib.use("Agg")


# ---------------------------------------------------------------------------------------------- figure helpers
def fingerprint(fig) -> list:
    """Everything a reader sees in a figure, as plain data: bar heights, line data, images, texts, arrows."""
    out = []
    for ax in fig.axes:
        out.append(ax.get_title())
        out.append([round(float(p.get_height()), 6) for p in ax.patches if hasattr(p, "get_height")])
        out.append([np.round(np.asarray(line.get_xydata(), dtype=float), 6).tolist() for line in ax.lines])
        out.append([np.round(np.asarray(im.get_array(), dtype=float), 6).tolist() for im in ax.images])
        out.append([np.round(np.asarray(c.get_offsets(), dtype=float), 6).tolist() for c in ax.collections])
        out.append([(t.get_text(), tuple(np.round(t.get_position(), 6))) for t in ax.texts])
        out.append([tuple(np.round(getattr(a, "xy", (0, 0)), 6)) for a in ax.texts if hasattr(a, "xy")])
    return out


def test_fingerprint_catches_a_render_function_that_ignores_its_knob():
    from attnlib import viz

    def ignores_knob(temperature):  # the mistake the knob tests guard against
        fig, ax = viz.new_figure()
        viz.weight_bars(ax, [0.3, 0.7], ["a", "b"])
        return fig

    def uses_knob(temperature):
        fig, ax = viz.new_figure()
        p = torch.softmax(torch.tensor([0.0, 1.0]) / temperature, -1)
        viz.weight_bars(ax, p, ["a", "b"])
        return fig

    assert fingerprint(ignores_knob(0.5)) == fingerprint(ignores_knob(2.0))
    assert fingerprint(uses_knob(0.5)) != fingerprint(uses_knob(2.0))


def test_assert_axes_labelled_catches_a_missing_label():
    from attnlib import viz

    fig, ax = viz.new_figure()
    ax.plot([0, 1])
    ax.set_xlabel("x")
    with pytest.raises(AssertionError, match="no y label"):
        assert_axes_labelled(fig)


# ------------------------------------------------------------------------------------------ lesson 1: lookup
LIB = lookup.make_library()


def test_library_is_consistent():
    assert len(LIB.titles) == LIB.keys.shape[0] == LIB.values.shape[0] == 6
    torch.testing.assert_close(LIB.keys.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(LIB.values.sum(-1), torch.ones(6))


L1 = load_definitions("notebooks/01_qkv_analogy.ipynb")  # the lookups the learner reads in lesson 1


@given(st.floats(-360, 360), st.floats(0.05, 20.0))
def test_lesson1_soft_lookup_matches_torch_sdpa_and_weights_are_a_distribution(angle, temperature):
    q = lookup.query_vector(angle)[None]
    out, w = L1["soft_lookup"](q, LIB.keys, LIB.values, T=temperature)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q[None], LIB.keys[None], LIB.values[None], scale=1 / temperature
    )[0]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w.sum(-1), torch.ones(1))
    assert (w >= 0).all()


def test_lesson1_soft_lookup_interpolates_between_hard_lookup_and_the_mean():
    q = lookup.query_vector(100.0)[None]
    hard, idx = L1["hard_lookup"](q, LIB.keys, LIB.values)
    assert idx.tolist() == [2]  # The Roman Empire sits at 90 degrees
    cold, _ = L1["soft_lookup"](q, LIB.keys, LIB.values, T=0.02)
    hot, _ = L1["soft_lookup"](q, LIB.keys, LIB.values, T=1e4)
    torch.testing.assert_close(cold, hard, atol=1e-3, rtol=0)
    torch.testing.assert_close(hot[0], LIB.values.mean(0), atol=1e-3, rtol=0)


def test_lesson1_lookups_take_batches_and_leave_inputs_untouched():
    qs = torch.stack([lookup.query_vector(a) for a in (0.0, 95.0, 185.0)])
    before = (qs.clone(), LIB.keys.clone(), LIB.values.clone())
    out, w = L1["soft_lookup"](qs, LIB.keys, LIB.values, 0.3)
    vals, idx = L1["hard_lookup"](qs, LIB.keys, LIB.values)
    assert out.shape == (3, 3) and w.shape == (3, 6) and vals.shape == (3, 3)
    assert idx.tolist() == [0, 2, 4]
    for a, b in zip(before, (qs, LIB.keys, LIB.values), strict=True):
        assert torch.equal(a, b)


def test_lesson1_fit_query_learns_with_soft_lookup_and_is_stuck_with_hard():
    start, target = lookup.query_vector(0.0), LIB.values[3]  # from rockets towards Medieval Feasts
    q_soft, soft = L1["fit_query"](lambda q: L1["soft_lookup"](q, LIB.keys, LIB.values, T=0.25), start, target)
    q_hard, hard = L1["fit_query"](lambda q: L1["hard_lookup"](q, LIB.keys, LIB.values), start, target)
    assert soft[-1] < 0.05 * soft[0]
    assert L1["hard_lookup"](q_soft[None], LIB.keys, LIB.values)[1].tolist() == [3]
    assert hard[0] == hard[-1] and torch.equal(q_hard, start)


def test_query_vector_rejects_a_bad_angle():
    with pytest.raises(ValueError, match="angle"):
        lookup.query_vector(float("nan"))


def test_render_lookup_is_labelled_and_follows_both_knobs():
    base = lookup.render_lookup(angle=30.0, temperature=0.25)
    assert_axes_labelled(base)
    titles = [t.get_text() for t in base.axes[1].get_xticklabels()]
    assert titles == list(LIB.titles)
    assert fingerprint(base) != fingerprint(lookup.render_lookup(angle=120.0, temperature=0.25))
    assert fingerprint(base) != fingerprint(lookup.render_lookup(angle=30.0, temperature=2.0))
    assert fingerprint(base) == fingerprint(lookup.render_lookup(angle=30.0, temperature=0.25))  # pure


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 115.0, 200.0, 330.0])
def test_render_lookup_query_label_keeps_clear_of_the_titles(angle):
    fig = lookup.render_lookup(angle=angle, temperature=0.25)
    (label,) = [t for t in fig.axes[0].texts if t.get_text() == "query"]
    x, y = label.get_position()
    assert math.hypot(x, y) < 0.75, "the label must sit inside the ring of books, which are at radius 1"


def test_render_lookup_bars_are_the_soft_weights():
    fig = lookup.render_lookup(angle=200.0, temperature=0.5)
    heights = [p.get_height() for p in fig.axes[1].patches]
    w = torch.softmax(LIB.keys @ lookup.query_vector(200.0) / 0.5, -1)
    np.testing.assert_allclose(heights, w.numpy(), rtol=1e-5)
    assert math.isclose(sum(heights), 1.0, rel_tol=1e-5)


# ----------------------------------------------------------------------------------------- lesson 2: scaling
@pytest.mark.parametrize("d_k", [1, 16, 256])
def test_dot_product_variance_grows_like_d_k_and_scaling_removes_it(d_k):
    g = torch.Generator().manual_seed(1)
    assert dot_variance_ok(scaling.dot_product_variance(d_k, n_samples=20000, generator=g), d_k)
    assert dot_variance_ok(scaling.dot_product_variance(d_k, scaled=True, n_samples=20000, generator=g), 1.0)


def dot_variance_ok(measured: float, expected: float) -> bool:
    return abs(measured - expected) < 0.1 * expected


def test_variance_check_catches_dividing_by_d_k_instead_of_sqrt_d_k():
    g = torch.Generator().manual_seed(2)
    d_k = 64
    q, k = torch.randn(20000, d_k, generator=g), torch.randn(20000, d_k, generator=g)
    wrong = float(((q * k).sum(-1) / d_k).var())  # the mistake: variance 1/d_k, not 1
    assert not dot_variance_ok(wrong, 1.0)


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=6))
def test_softmax_jacobian_matches_autograd(xs):
    s = torch.tensor(xs, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(lambda z: torch.softmax(z, -1), s)
    torch.testing.assert_close(scaling.softmax_jacobian(torch.softmax(s, -1)), expected)


def test_softmax_jacobian_vanishes_for_one_hot_and_rejects_scalars():
    assert torch.equal(scaling.softmax_jacobian(torch.tensor([0.0, 1.0, 0.0])), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="0-dim"):
        scaling.softmax_jacobian(torch.tensor(1.0))


def test_saturation_grows_with_d_k_only_without_scaling():
    lo, hi = scaling.saturation(4, scaled=False), scaling.saturation(1024, scaled=False)
    assert hi["max_weight"] > 0.9 > lo["max_weight"] and hi["jacobian_norm"] < 0.1 < lo["jacobian_norm"]
    for d_k in (4, 1024):
        s = scaling.saturation(d_k, scaled=True)
        assert 0.25 < s["max_weight"] < 0.5 and s["jacobian_norm"] > 0.3


def test_render_variance_plots_the_measured_curve_with_labels():
    fig = scaling.render_variance(dims=(1, 4, 16), n_samples=500, seed=3)
    assert_axes_labelled(fig)
    curve = scaling.variance_curve((1, 4, 16), n_samples=500, seed=3)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), curve["unscaled"])
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), curve["scaled"])
    assert fingerprint(fig) != fingerprint(scaling.render_variance(dims=(1, 4, 16), n_samples=500, seed=4))


def test_render_scaling_is_labelled_and_follows_both_knobs():
    base = scaling.render_scaling(d_k=64, scaled=False)
    assert_axes_labelled(base)
    assert [t.get_text() for t in base.axes[0].get_xticklabels()] == list(scaling.TOKENS)
    assert [t.get_text() for t in base.axes[0].get_yticklabels()] == list(scaling.TOKENS)
    assert fingerprint(base) != fingerprint(scaling.render_scaling(d_k=64, scaled=True))
    assert fingerprint(base) != fingerprint(scaling.render_scaling(d_k=8, scaled=False))
    assert fingerprint(base) == fingerprint(scaling.render_scaling(d_k=64, scaled=False))


def test_render_scaling_heatmap_saturates_without_scaling():
    top = lambda fig: np.asarray(fig.axes[0].images[0].get_array()).max(-1).mean()  # noqa: E731
    assert top(scaling.render_scaling(d_k=1024, scaled=False)) > 0.8
    assert top(scaling.render_scaling(d_k=1024, scaled=True)) < 0.7


def test_matching_batch_is_a_permutation_with_the_query_at_target():
    tokens, query, target = scaling.make_matching_batch(32, 8, torch.Generator().manual_seed(0))
    assert torch.equal(tokens.sort(-1).values, torch.arange(8).expand(32, 8))
    assert torch.equal(tokens[torch.arange(32), target], query)


def test_token_matcher_weights_are_a_scaled_softmax():
    g = torch.Generator().manual_seed(0)
    tokens, query, _ = scaling.make_matching_batch(4, 8, g)
    for scaled, scale in ((True, 1 / 4.0), (False, 1.0)):
        model = scaling.TokenMatcher(8, 16, scaled=scaled, generator=torch.Generator().manual_seed(1))
        w = model(tokens, query)
        expected = torch.softmax(torch.einsum("bd,bsd->bs", model.W_Q[query], model.W_K[tokens]) * scale, -1)
        torch.testing.assert_close(w, expected)
    with pytest.raises(ValueError, match=r"tokens must be \(B, S\) and query \(B,\)"):
        model(tokens, query[:2])


@pytest.mark.parametrize("optimizer, seed", [("sgd", 0), ("sgd", 1), ("adam", 0)])
def test_unscaled_matcher_flatlines_and_scaled_one_learns(optimizer, seed):
    steps = 120 if optimizer == "sgd" else 50
    flat = scaling.train_matcher(False, optimizer=optimizer, seed=seed, steps=steps)
    good = scaling.train_matcher(True, optimizer=optimizer, seed=seed, steps=steps)
    first, last = np.mean(flat["losses"][:10]), np.mean(flat["losses"][-10:])
    assert last > 0.8 * first and flat["accuracy"] < 0.5 and min(flat["max_weight"]) > 0.8
    assert flat["wrong_score_grad"] < 1e-5  # the stuck examples send (almost) no gradient
    assert np.mean(good["losses"][-10:]) < 0.2 * np.mean(good["losses"][:10]) and good["accuracy"] >= 0.95


def test_train_matcher_is_deterministic_and_validates():
    a = scaling.train_matcher(True, steps=5, seed=3)
    b = scaling.train_matcher(True, steps=5, seed=3)
    assert a["losses"] == b["losses"]
    with pytest.raises(ValueError, match="optimizer"):
        scaling.train_matcher(True, optimizer="rmsprop")


@pytest.mark.parametrize("kind, torch_opt", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_optimiser_matches_torch_optim(kind, torch_opt):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 4, generator=g)
    ours = torch.randn(3, 4, generator=g).requires_grad_()
    theirs = ours.detach().clone().requires_grad_()
    opt_ours, opt_theirs = scaling.Optimiser([ours], kind, lr=0.1), torch_opt([theirs], lr=0.1)
    for _ in range(5):
        opt_ours.step(torch.autograd.grad(((ours - target) ** 3).sum(), [ours]))
        opt_theirs.zero_grad()
        ((theirs - target) ** 3).sum().backward()
        opt_theirs.step()
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="optimizer"):
        scaling.Optimiser([ours], "lbfgs")


# ------------------------------------------------------------------------------------ lesson 3: softmax_demo
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_exp_overflow_point_is_exact(dtype):
    point = softmax_demo.exp_overflow_point(dtype)
    below = torch.tensor(point["largest_finite"], dtype=dtype)
    above = torch.tensor(point["overflows_at"], dtype=dtype)
    assert float(below) == point["largest_finite"] and float(above) == point["overflows_at"]  # representable
    assert torch.isfinite(torch.exp(below)) and torch.isinf(torch.exp(above))
    assert torch.equal(torch.nextafter(below, torch.tensor(math.inf, dtype=dtype)), above)  # adjacent
    assert abs(point["log_max"] - math.log(torch.finfo(dtype).max)) < 1e-12
    assert abs(point["largest_finite"] - point["log_max"]) < 0.6


def test_known_overflow_points():
    assert softmax_demo.exp_overflow_point(torch.float16)["overflows_at"] == 11.09375
    assert 88.72 < softmax_demo.exp_overflow_point(torch.float32)["overflows_at"] < 88.73
    with pytest.raises(TypeError, match="floating-point"):
        softmax_demo.exp_overflow_point(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_naive_softmax_overflows_where_shifted_and_attnlib_do_not(dtype):
    x = torch.tensor([[softmax_demo.exp_overflow_point(dtype)["overflows_at"], 0.0]], dtype=dtype)
    assert torch.isnan(softmax_demo.naive_softmax(x)).any()
    expected = torch.softmax(x.double(), -1).to(dtype)
    torch.testing.assert_close(softmax_demo.max_shifted_softmax(x), expected)
    torch.testing.assert_close(attnlib.softmax(x), expected)


def test_all_minus_inf_row_nan_by_hand_zeros_in_attnlib():
    x = torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]])
    assert torch.isnan(softmax_demo.naive_softmax(x)[1]).all()
    assert torch.isnan(softmax_demo.max_shifted_softmax(x)[1]).all()
    assert torch.isnan(torch.softmax(x, -1)[1]).all()
    assert torch.equal(softmax_demo.online_softmax(x, 1)[1], torch.zeros(2))
    torch.testing.assert_close(softmax_demo.online_softmax(x, 1)[0], torch.softmax(x[0], -1))


finite_rows = st.lists(st.floats(-30, 30), min_size=1, max_size=40)


@given(finite_rows, st.integers(1, 45), st.data())
def test_online_softmax_matches_torch_and_attnlib(row, chunk, data):
    x = torch.tensor(row, dtype=torch.float64)
    blocked = data.draw(st.lists(st.booleans(), min_size=len(row), max_size=len(row)))
    x = x.masked_fill(torch.tensor(blocked), -math.inf)
    expected = attnlib.softmax(x)
    got = softmax_demo.online_softmax(x, chunk)
    torch.testing.assert_close(got, expected)
    if not all(blocked):
        torch.testing.assert_close(got, torch.softmax(x, -1))
    trace = softmax_demo.online_softmax_trace(x, chunk)
    assert len(trace) == math.ceil(len(row) / chunk)
    assert float(trace[-1]["max"]) == float(x.max())


def test_online_softmax_check_catches_a_missing_rescale():
    def no_rescale(x, chunk):  # the classic bug: forget to rescale the old sum when the max grows
        m, total = -math.inf, 0.0
        for start in range(0, x.numel(), chunk):
            c = x[start : start + chunk]
            m = max(m, float(c.max()))
            total = total + float(torch.exp(c - m).sum())
        return torch.exp(x - m) / total

    x = torch.tensor([0.0, 1.0, 5.0, 2.0], dtype=torch.float64)
    assert not torch.allclose(no_rescale(x, 2), torch.softmax(x, -1))
    torch.testing.assert_close(softmax_demo.online_softmax(x, 2), torch.softmax(x, -1))


@given(st.integers(1, 6), st.integers(1, 20), st.integers(1, 25), st.integers(0, 2**16))
def test_streaming_attention_matches_torch_sdpa(L, S, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, n, d, generator=g, dtype=torch.float64) for n, d in ((L, 4), (S, 4), (S, 3)))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(softmax_demo.streaming_attention(q, k, v, chunk), expected)


def test_streaming_attention_inputs_untouched_and_bad_shapes_rejected():
    q, k, v = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)
    before = [t.clone() for t in (q, k, v)]
    softmax_demo.streaming_attention(q, k, v, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v), strict=True))
    with pytest.raises(ValueError, match=r"q \(3, 4\), k \(5, 3\)"):
        softmax_demo.streaming_attention(q, torch.randn(5, 3), v, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        softmax_demo.online_softmax(q, 0)


def test_source_illustrated_weights_are_not_a_softmax():
    w = torch.tensor(softmax_demo.MAKING_ILLUSTRATED, dtype=torch.float64)
    assert abs(float(w.sum()) - 1.12) < 1e-9
    t, err = softmax_demo.fit_temperature(torch.tensor(softmax_demo.MAKING_SCORES, dtype=torch.float64), w)
    assert 0.25 < t < 0.29 and err > 1e-3  # the best temperature still misses
    p = attnlib.softmax(torch.tensor(softmax_demo.MAKING_SCORES, dtype=torch.float64))
    expected = [0.0747, 0.1504, 0.0826, 0.1663, 0.1361, 0.0912, 0.0747, 0.1232, 0.1008]
    np.testing.assert_allclose(p.numpy(), expected, atol=5e-5)


def test_entropy_bounds():
    assert float(softmax_demo.entropy(torch.tensor([0.0, 1.0, 0.0]))) == 0.0
    torch.testing.assert_close(softmax_demo.entropy(torch.full((9,), 1 / 9)), torch.tensor(math.log(9)))


def test_render_temperature_is_labelled_and_follows_its_knob():
    base = softmax_demo.render_temperature(1.0)
    assert_axes_labelled(base)
    assert [t.get_text() for t in base.axes[0].get_xticklabels()] == list(softmax_demo.MAKING_TOKENS)
    assert fingerprint(base) != fingerprint(softmax_demo.render_temperature(0.2))
    assert fingerprint(base) == fingerprint(softmax_demo.render_temperature(1.0))
    heights = [p.get_height() for p in base.axes[0].patches]
    np.testing.assert_allclose(heights, torch.softmax(torch.tensor(softmax_demo.MAKING_SCORES), -1), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        softmax_demo.render_temperature(0.0)


def test_render_online_is_labelled_and_follows_chunk_size():
    x = torch.tensor([1.0, 3.0, 2.0, 5.0, 0.0, 4.0, 2.0, 8.0, 1.0])
    base = softmax_demo.render_online(x, 3)
    assert_axes_labelled(base)
    assert [round(y, 6) for y in base.axes[1].lines[0].get_ydata()] == [
        round(float(r["sum"]), 6) for r in softmax_demo.online_softmax_trace(x.double(), 3)
    ]
    assert fingerprint(base) != fingerprint(softmax_demo.render_online(x, 2))
    with pytest.raises(ValueError, match=r"\(S,\)"):
        softmax_demo.render_online(x[None], 3)
