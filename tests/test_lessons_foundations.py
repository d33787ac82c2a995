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
L2 = load_definitions("notebooks/02_similarity_and_scaling.ipynb")  # what lesson 2's learner writes


def dot_variance_ok(measured: float, expected: float) -> bool:
    return abs(measured - expected) < 0.1 * expected


@pytest.mark.parametrize("d_k", [1, 16, 256])
def test_lesson2_score_variance_grows_like_d_k_and_scaling_removes_it(d_k):
    g = torch.Generator().manual_seed(1)
    assert dot_variance_ok(L2["score_variance"](d_k, n=20000, generator=g), d_k)
    assert dot_variance_ok(L2["score_variance"](d_k, scaled=True, n=20000, generator=g), 1.0)


def test_variance_check_catches_dividing_by_d_k_instead_of_sqrt_d_k():
    g = torch.Generator().manual_seed(2)
    d_k = 64
    q, k = torch.randn(20000, d_k, generator=g), torch.randn(20000, d_k, generator=g)
    wrong = float(((q * k).sum(-1) / d_k).var())  # the mistake: variance 1/d_k, not 1
    assert not dot_variance_ok(wrong, 1.0)


def test_render_variance_plots_the_measured_curve_with_labels():
    curve = {"d_k": [1, 4, 16], "unscaled": [1.1, 3.9, 16.5], "scaled": [1.1, 0.97, 1.03], "n_samples": 500}
    fig = scaling.render_variance(curve)
    assert_axes_labelled(fig)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), curve["unscaled"])
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), curve["scaled"])
    assert fingerprint(fig) != fingerprint(scaling.render_variance({**curve, "scaled": [1.0, 1.0, 1.0]}))
    with pytest.raises(ValueError, match="n_samples"):
        scaling.render_variance({"d_k": [1]})


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


def test_lesson2_token_matcher_weights_are_a_scaled_softmax():
    g = torch.Generator().manual_seed(0)
    tokens, query, _ = scaling.make_matching_batch(4, 8, g)
    for scaled, scale in ((True, 1 / 4.0), (False, 1.0)):
        model = L2["TokenMatcher"](8, 16, scaled, generator=torch.Generator().manual_seed(1))
        scores, w = model(tokens, query)
        expected = torch.softmax(torch.einsum("bd,bsd->bs", model.W_Q[query], model.W_K[tokens]) * scale, -1)
        torch.testing.assert_close(w, expected)


# The notebook's claim: over its SEEDS and both of its OPTIMISERS the unscaled model never learns and the scaled
# one always does. The grid is read from the notebook, so the sentence and this test cannot drift apart.
GRID = [(name, seed) for name in L2["OPTIMISERS"] for seed in L2["SEEDS"]]


@pytest.mark.parametrize("optimizer, seed", GRID, ids=[f"{n}-seed{s}" for n, s in GRID])
def test_lesson2_unscaled_matcher_flatlines_and_scaled_one_learns(optimizer, seed):
    lr, steps = L2["OPTIMISERS"][optimizer]
    flat = L2["train_matcher"](False, optimizer, lr, steps, seed=seed)
    good = L2["train_matcher"](True, optimizer, lr, steps, seed=seed)
    first, last = np.mean(flat["losses"][:10]), np.mean(flat["losses"][-10:])
    assert last > 0.8 * first and flat["accuracy"] < 0.5 and min(flat["max_weight"]) > 0.8
    assert flat["wrong_score_grad"] < 1e-5  # the stuck examples send (almost) no gradient
    assert np.mean(good["losses"][-10:]) < 0.2 * np.mean(good["losses"][:10]) and good["accuracy"] >= 0.85


def test_lesson2_grid_covers_both_optimisers_and_more_than_one_seed():
    assert set(L2["OPTIMISERS"]) == {"sgd", "adam"} and len(L2["SEEDS"]) >= 2


def test_lesson2_train_matcher_is_deterministic():
    a = L2["train_matcher"](True, steps=5, seed=3)
    b = L2["train_matcher"](True, steps=5, seed=3)
    assert a["losses"] == b["losses"]


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


L3 = load_definitions("notebooks/03_softmax.ipynb")  # the softmaxes lesson 3's learner writes


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_lesson3_naive_softmax_overflows_where_stable_softmax_does_not(dtype):
    x = torch.tensor([[softmax_demo.exp_overflow_point(dtype)["overflows_at"], 0.0]], dtype=dtype)
    assert torch.isnan(L3["naive_softmax"](x)).any()
    expected = torch.softmax(x.double(), -1).to(dtype)
    torch.testing.assert_close(L3["stable_softmax"](x), expected)
    torch.testing.assert_close(attnlib.softmax(x), expected)


@given(st.lists(st.floats(-60, 60), min_size=1, max_size=12), st.floats(0.1, 10.0), st.sampled_from([0, 1]))
def test_lesson3_stable_softmax_matches_torch_with_temperature_and_dim(row, temperature, dim):
    x = torch.tensor(row, dtype=torch.float64).reshape(1, -1).repeat(2, 1)
    x = x if dim == 1 else x.T
    torch.testing.assert_close(L3["stable_softmax"](x, dim=dim, T=temperature), torch.softmax(x / temperature, dim))


def test_lesson3_all_minus_inf_row_nan_by_hand_zeros_in_stable_softmax():
    x = torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]])
    assert torch.isnan(L3["naive_softmax"](x)[1]).all()
    assert torch.isnan(torch.softmax(x, -1)[1]).all()
    assert torch.equal(L3["stable_softmax"](x)[1], torch.zeros(2))
    torch.testing.assert_close(L3["stable_softmax"](x)[0], torch.softmax(x[0], -1))


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=6))
def test_lesson3_softmax_jacobian_matches_autograd(xs):
    s = torch.tensor(xs, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(lambda z: torch.softmax(z, -1), s)
    torch.testing.assert_close(L3["softmax_jacobian"](torch.softmax(s, -1)), expected)


def test_lesson3_softmax_jacobian_vanishes_for_one_hot():
    assert torch.equal(L3["softmax_jacobian"](torch.tensor([0.0, 1.0, 0.0])), torch.zeros(3, 3))


@given(st.lists(st.floats(-30, 30), min_size=1, max_size=40), st.integers(1, 45))
def test_lesson3_online_softmax_matches_torch_and_attnlib(row, chunk):
    x = torch.tensor(row, dtype=torch.float64)
    trace = []
    got = L3["online_softmax"](x, chunk, trace)
    torch.testing.assert_close(got, torch.softmax(x, -1))
    torch.testing.assert_close(got, attnlib.softmax(x))
    assert len(trace) == math.ceil(len(row) / chunk)
    assert trace[-1][2] == float(x.max()) and trace[-1][1] == len(row)


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
    torch.testing.assert_close(L3["online_softmax"](x, 2), torch.softmax(x, -1))


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
    assert not base.axes[0].texts, "bar value labels would sit under the source's red dots"
    with pytest.raises(ValueError, match="temperature"):
        softmax_demo.render_temperature(0.0)


def test_render_online_is_labelled_and_draws_its_trace():
    x = torch.tensor([1.0, 3.0, 2.0, 5.0, 0.0, 4.0, 2.0, 8.0, 1.0], dtype=torch.float64)
    trace3, trace2 = [], []
    L3["online_softmax"](x, 3, trace3)
    L3["online_softmax"](x, 2, trace2)
    base = softmax_demo.render_online(x, trace3)
    assert_axes_labelled(base)
    assert [round(y, 6) for y in base.axes[1].lines[0].get_ydata()] == [round(rec[3], 6) for rec in trace3]
    assert fingerprint(base) != fingerprint(softmax_demo.render_online(x, trace2))
    with pytest.raises(ValueError, match=r"\(S,\)"):
        softmax_demo.render_online(x[None], trace3)
    with pytest.raises(ValueError, match="trace"):
        softmax_demo.render_online(x, trace3[:-1])


def test_temperature_figure_has_a_legend_entry_for_its_bars():
    fig = softmax_demo.render_temperature(0.5)
    try:
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any(label.startswith("softmax of the scores at T = 0.5") for label in labels), labels
        assert any("source figure" in label for label in labels), labels
    finally:
        del fig  # a matplotlib Figure built without pyplot: nothing to close


def test_random_vectors_are_labelled_x0_to_xn_not_words():
    assert list(scaling.TOKENS) == [f"x{i}" for i in range(len(scaling.TOKENS))]
