"""attnlib.viz: heatmaps carry token labels, bars carry values, and the explorer re-renders on every change."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from attnlib import viz

matplotlib.use("Agg")


def test_heatmap_has_token_labels_axis_titles_and_values():
    fig, ax = viz.new_figure()
    w = torch.tensor([[0.9, 0.1], [0.25, 0.75]])
    viz.attention_heatmap(ax, w, ["the", "cat"], ["a", "dog"], title="t")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "dog"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["the", "cat"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "t"
    assert sorted(t.get_text() for t in ax.texts) == ["0.10", "0.25", "0.75", "0.90"]
    np.testing.assert_allclose(ax.images[0].get_array(), w.numpy())


def test_heatmap_rejects_label_count_mismatch_and_wrong_rank():
    fig, ax = viz.new_figure()
    with pytest.raises(ValueError, match=r"1 query labels and 2 key labels .* shape \(2, 2\)"):
        viz.attention_heatmap(ax, np.eye(2), ["x"], ["a", "b"])
    with pytest.raises(ValueError, match=r"2-D \(L, S\).*\(2, 2, 2\)"):
        viz.attention_heatmap(ax, np.zeros((2, 2, 2)))


def test_large_heatmaps_are_not_annotated_by_default():
    fig, ax = viz.new_figure()
    viz.attention_heatmap(ax, np.full((13, 13), 1 / 13))
    assert len(ax.texts) == 0


def test_weight_bars_label_keys_and_values():
    fig, ax = viz.new_figure()
    viz.weight_bars(ax, [0.2, 0.8], ["x", "y"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y"]
    assert [t.get_text() for t in ax.texts] == ["0.20", "0.80"]
    assert ax.get_ylabel() == "attention weight" and ax.get_xlabel() == "key"
    with pytest.raises(ValueError, match="1 labels for 2 weights"):
        viz.weight_bars(ax, [0.2, 0.8], ["x"])


def test_explorer_calls_the_render_function_with_fixed_and_live_state():
    import ipywidgets as widgets

    calls = []

    def render(temperature, labels):
        calls.append((temperature, labels))
        fig, ax = viz.new_figure()
        ax.plot([0, temperature])
        return fig

    slider = widgets.FloatSlider(value=1.0, min=0.1, max=2.0)
    box = viz.explorer(render, temperature=slider, labels=("a", "b"))
    assert isinstance(box, widgets.VBox) and slider in box.children[0].children
    slider.value = 0.5
    assert calls[0] == (1.0, ("a", "b")) and calls[-1] == (0.5, ("a", "b"))


def test_heatmap_draws_masked_cells_apart_from_a_zero_weight():
    fig, ax = viz.new_figure()
    w = torch.tensor([[1.0, 0.0], [0.4, 0.6]])
    hidden = torch.tensor([[False, True], [False, False]])
    viz.attention_heatmap(ax, w, ["a", "b"], ["a", "b"], masked=hidden)
    shown = ax.images[0].get_array()
    assert np.ma.is_masked(shown[0, 1]) and not np.ma.is_masked(shown[1, 0])
    bad = ax.images[0].get_cmap().get_bad()
    assert tuple(bad[:3]) != tuple(ax.images[0].get_cmap()(0.0)[:3]), "masked cells share the colour of weight 0"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["masked (not allowed)"]
    assert "0.00" not in [t.get_text() for t in ax.texts], "a masked cell must not be annotated as a weight"
    with pytest.raises(ValueError, match=r"masked must have the weights' shape \(2, 2\)"):
        viz.attention_heatmap(ax, w, masked=np.ones((3, 3), dtype=bool))


def test_explorer_shows_every_label_in_full():
    widgets = pytest.importorskip("ipywidgets")
    controls = {
        "d_k": widgets.SelectionSlider(options=[1, 2], value=1, description="key dimension d_k"),
        "scaled": widgets.Checkbox(value=False, description="divide by sqrt(d_k)"),
        "mode": widgets.Dropdown(options=["a", "b"], value="a", description="alignment of the mask"),
    }
    box = viz.explorer(lambda **kw: None, **controls)
    for control in controls.values():
        assert control.style.description_width == "initial", control.description
    assert box.children[0].layout.flex_flow == "row wrap"
