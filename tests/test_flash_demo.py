"""attnlib.lessons.flash_demo: lesson 13's figures draw what they are given, labelled, and reject bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from figures import assert_axes_labelled

from attnlib.lessons import flash_demo


def toy_traffic(n, d, block):
    return {"naive": (4.0 * n * n, 2.0 * n * n), "tiled": (2.0 * n * d * n / block, 1.0 * n * d)}


def test_render_traffic_draws_the_counts_it_is_given():
    fig = flash_demo.render_traffic(toy_traffic, n=1024, head_dim=64, block_q=128)
    try:
        assert_axes_labelled(fig)
        bars, curves = fig.axes[0], fig.axes[1]
        heights = [p.get_height() for p in bars.patches]  # read bars then written bars, in MiB
        assert heights == pytest.approx([4 * 1024**2 / 2**20, 2 * 1024 * 64 * 8 / 2**20, 2.0, 64 / 1024])
        assert [t.get_text() for t in bars.get_xticklabels()] == ["naive", "tiled"]
        assert {line.get_label() for line in curves.get_lines()} >= {"naive", "tiled"}
        assert "n = 1024" in bars.get_title()
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("traffic", "kwargs", "match"),
    [
        (toy_traffic, dict(n=0), "n must be a positive int"),
        (toy_traffic, dict(block_q=1.5), "block_q must be an int"),
        (lambda n, d, b: {}, {}, "non-empty dict"),
        (lambda n, d, b: {"x": (-1.0, 0.0)}, {}, "bytes read, bytes written"),
    ],
)
def test_render_traffic_rejects_bad_input(traffic, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        flash_demo.render_traffic(traffic, **kwargs)


def test_plot_benchmark_draws_one_panel_per_mask_with_the_ratios():
    results = {
        "config": {"modes": ["full", "causal"], "lengths": [1024, 2048], "backward": False},
        "results": [
            {"mode": m, "L": L, "impl": i, "status": "ok", "speed_vs_sdpa": r}
            for m in ("full", "causal")
            for L in (1024, 2048)
            for i, r in (("chunked", 0.5), ("flash", 0.75), ("flash-mm", 0.9))
        ],
    }
    fig = flash_demo.plot_benchmark(results)
    try:
        assert_axes_labelled(fig)
        assert len(fig.axes) == 2 and "causal" in fig.axes[1].get_title()
        heights = sorted({round(p.get_height(), 3) for p in fig.axes[0].patches})
        assert heights == [0.5, 0.75, 0.9]
    finally:
        plt.close(fig)


def test_plot_benchmark_legend_hides_no_bar_and_bars_carry_the_repeats_spread():
    results = {
        "config": {"modes": ["full"], "lengths": [1024, 8192], "backward": False},
        "results": [
            {"mode": "full", "L": L, "impl": i, "status": "ok", "speed_vs_sdpa": r, "median_s": t, "times_s": ts}
            for L in (1024, 8192)
            for i, r, t, ts in (
                ("sdpa", 1.0, 1.0, [0.9, 1.0, 1.1]),
                ("chunked", 0.5, 2.0, [1.6, 2.0, 2.5]),
                ("flash", 1.2, 1.0 / 1.2, [0.7, 0.8333, 1.0]),
                ("flash-mm", 1.5, 1.0 / 1.5, [0.6, 0.6667, 0.7]),
            )
        ],
    }
    fig = flash_demo.plot_benchmark(results)
    try:
        ax = fig.axes[0]
        assert ax.get_legend() is None and fig.legends, "the legend belongs below the panels, not over the bars"
        assert ax.get_ylim()[1] >= 1.0 / 0.6  # the tallest error bar (SDPA median / fastest repeat) fits
        assert len(ax.containers) >= 3 and any(c.has_yerr for c in ax.containers if hasattr(c, "has_yerr"))
    finally:
        plt.close(fig)
