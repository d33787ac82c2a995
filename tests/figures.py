"""Checks shared by the tests of the lessons' render functions."""

from __future__ import annotations


def assert_axes_labelled(fig) -> None:
    """Every axes that draws data has both axis labels (colorbars excepted)."""
    data_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert data_axes, "the figure has no axes"
    for ax in data_axes:
        assert ax.get_xlabel().strip(), f"axes {ax.get_title()!r} has no x label"
        assert ax.get_ylabel().strip(), f"axes {ax.get_title()!r} has no y label"
