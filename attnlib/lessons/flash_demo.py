"""Figures and the explorer of lesson 13 (FlashAttention). The byte counts, the tiled forward and backward are the
lesson's subject and live in the notebook; this module only draws what it is given."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import viz
from .._checks import check_positive_int

Traffic = Callable[..., dict[str, tuple[float, float]]]  # (n, head_dim, block_q, ...) -> {version: (read, written)}


def _check_counts(counts: dict) -> dict[str, tuple[float, float]]:
    if not isinstance(counts, dict) or not counts:
        raise ValueError(f"the traffic function must return a non-empty dict of (read, written), got {counts!r}")
    for name, pair in counts.items():
        if len(pair) != 2 or min(pair) < 0:
            raise ValueError(f"counts[{name!r}] must be (bytes read, bytes written) >= 0, got {pair!r}")
    return counts


def render_traffic(traffic: Traffic, n: int = 4096, head_dim: int = 64, block_q: int = 128):
    """Left: bytes each version moves between main memory and the chip at length ``n`` (read and written
    stacked). Right: total bytes against n for every version (log-log), ``n`` marked.

    ``traffic(n, head_dim, block_q)`` returns ``{version: (bytes read, bytes written)}`` for one (batch, head).
    """
    n, head_dim, block_q = (
        check_positive_int(x, name) for x, name in ((n, "n"), (head_dim, "head_dim"), (block_q, "block_q"))
    )
    counts = _check_counts(traffic(n, head_dim, block_q))
    names = list(counts)
    fig, axes = viz.new_figure(2, width=4.8, height=3.8)
    ax_bar, ax_n = axes[0]
    read = np.array([counts[k][0] for k in names]) / 2**20
    written = np.array([counts[k][1] for k in names]) / 2**20
    x = np.arange(len(names))
    ax_bar.bar(x, read, label="read", color="tab:blue")
    ax_bar.bar(x, written, bottom=read, label="written", color="tab:orange")
    for i, total in enumerate(read + written):
        ax_bar.annotate(f"{total:.1f} MiB", (i, total), ha="center", va="bottom", fontsize=8)
    ax_bar.set_xticks(x, names, fontsize=8)
    ax_bar.set_xlabel("version (fwd: forward pass, bwd: backward pass)")
    ax_bar.set_ylabel("main-memory traffic per (batch, head) (MiB)")
    ax_bar.set_title(f"n = {n}, d = {head_dim}, query block {block_q}")
    ax_bar.legend(fontsize=8)
    ns = np.unique(np.geomspace(256, 65536, 17).astype(int))
    for name in names:
        totals = [sum(_check_counts(traffic(int(m), head_dim, block_q))[name]) / 2**20 for m in ns]
        ax_n.loglog(ns, totals, marker=".", label=name)
        ax_n.plot([n], [sum(counts[name]) / 2**20], "o", color="tab:red")
    ax_n.set_xlabel("sequence length n (L = S)")
    ax_n.set_ylabel("total traffic (MiB, log scale)")
    ax_n.set_title("traffic against length")
    ax_n.legend(fontsize=8)
    ax_n.grid(True, which="both", alpha=0.3)
    return fig


def plot_benchmark(results: dict, impls: tuple[str, ...] = ("chunked", "flash", "flash-mm")):
    """Throughput relative to SDPA (SDPA time / time) per length, one panel per mask, from `attnlib bench` JSON.

    A bar above 1 is faster than SDPA. ``flash-mm`` (flash's matmuls alone) is the ceiling flash would reach if
    its softmax bookkeeping cost nothing. Each bar is the ratio of the medians; its error bar spans the ratio of
    SDPA's median to the implementation's slowest and fastest repeat. The legend sits below the panels, so it
    hides no bar.
    """
    rows = [r for r in results["results"] if r["status"] == "ok" and r["impl"] in impls]
    sdpa = {
        (r.get("mode", "full"), r["L"]): r["median_s"]
        for r in results["results"]
        if r["status"] == "ok" and r["impl"] == "sdpa"
    }
    modes = results["config"].get("modes") or ["full"]
    lengths = results["config"]["lengths"]
    fig, axes = viz.new_figure(len(modes), width=4.6, height=4.0)
    panels = [axes] if len(modes) == 1 else list(axes[0])  # new_figure returns a bare Axes for one panel
    width = 0.8 / len(impls)
    top = 1.0
    for ax, mode in zip(panels, modes, strict=True):
        for i, impl in enumerate(impls):
            got = {r["L"]: r for r in rows if r["impl"] == impl and r.get("mode", "full") == mode}
            xs = [j + (i - (len(impls) - 1) / 2) * width for j in range(len(lengths))]
            heights = [got[L]["speed_vs_sdpa"] if L in got else 0.0 for L in lengths]
            low, high = [], []
            for L, h in zip(lengths, heights, strict=True):
                times = got[L].get("times_s") if L in got else None
                if times and (mode, L) in sdpa:
                    low.append(max(h - sdpa[(mode, L)] / max(times), 0.0))
                    high.append(max(sdpa[(mode, L)] / min(times) - h, 0.0))
                else:
                    low.append(0.0)
                    high.append(0.0)
            top = max(top, *(h + e for h, e in zip(heights, high, strict=True)))
            ax.bar(xs, heights, width=width, label=impl, yerr=[low, high], capsize=2, ecolor="black")
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="SDPA")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_xlabel("sequence length L = S")
        ax.set_ylabel("throughput / SDPA's (higher is faster)")
        kind = "forward + backward" if results["config"]["backward"] else "forward"
        ax.set_title(f"{kind}, {mode} mask")
    for ax in panels:
        ax.set_ylim(0, top * 1.08)
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    return fig
