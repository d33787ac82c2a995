r"""Lesson 12 (the cost of attention): sizes from shapes, timing and memory harnesses, the schedule figure.

The lesson writes the chunked attention loop itself; this module holds the measuring around it.

* :func:`score_matrix_bytes` / :func:`kv_cache_bytes` compute sizes from shapes (deterministic, no measuring);
* :func:`peak_extra_memory` measures the peak memory one call adds (Linux), so the lesson can check the
  computed sizes against the machine;
* :func:`fit_power_law` fits ``y = c * n^p`` on a log-log scale (used on measured times in the lesson);
* :func:`chunk_schedule` says which (query block, key block) pairs a chunked loop must compute; with a causal
  mask, blocks wholly above the diagonal are skipped;
* :func:`render_cost` is the pure render function behind the lesson's widget.

Shapes: q (..., L, E), k (..., S, E), v (..., S, Ev). Boolean masks: True = may attend. Inputs are never
modified.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import viz
from .._checks import check_positive_int

__all__ = [
    "score_matrix_bytes",
    "kv_cache_bytes",
    "format_bytes",
    "fit_power_law",
    "median_time",
    "peak_extra_memory",
    "chunk_schedule",
    "render_cost",
]


def score_matrix_bytes(batch: int, heads: int, L: int, S: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the (batch, heads, L, S) score (and weight) matrix the math path materialises."""
    for value, name in ((batch, "batch"), (heads, "heads"), (L, "L"), (S, "S")):
        check_positive_int(value, name)
    return batch * heads * L * S * torch.empty((), dtype=dtype).element_size()


def kv_cache_bytes(
    layers: int, batch: int, heads: int, S: int, head_dim: int, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of a KV cache holding keys **and** values for ``S`` positions in every layer: 2·layers·B·H·S·d."""
    for value, name in ((layers, "layers"), (batch, "batch"), (heads, "heads"), (S, "S"), (head_dim, "head_dim")):
        check_positive_int(value, name)
    return 2 * layers * batch * heads * S * head_dim * torch.empty((), dtype=dtype).element_size()


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units up to TiB."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fit_power_law(ns: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``values ≈ c * ns**p`` on a log-log scale; returns ``(p, c)``.

    ``p`` is the slope of log(value) against log(n): 1 for linear growth, 2 for quadratic.
    """
    n = np.asarray(ns, dtype=float)
    y = np.asarray(values, dtype=float)
    if n.shape != y.shape or n.ndim != 1 or n.size < 2:
        raise ValueError(f"need two 1-D sequences of the same length >= 2, got {n.shape} and {y.shape}")
    if (n <= 0).any() or (y <= 0).any():
        raise ValueError("a power law is fitted on a log scale: every n and value must be > 0")
    slope, intercept = np.polyfit(np.log(n), np.log(y), 1)
    return float(slope), float(np.exp(intercept))


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after ``warmup`` untimed calls."""
    repeats = check_positive_int(repeats, "repeats")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} is not in /proc/self/status")


def peak_extra_memory(fn: Callable[[], object]) -> int | None:
    """Peak resident memory, in bytes, that one call of ``fn()`` adds on top of what the process already holds.

    Linux only (returns ``None`` elsewhere): after one warm-up call (one-off buffers and thread pools are not the
    call's cost) it hands freed memory back to the OS, resets the kernel's peak-RSS mark through
    ``/proc/self/clear_refs``, calls ``fn`` and reads the new peak (``VmHWM``) minus the resident size before the
    call. Everything the call allocates counts, the result it returns included. Give it calls that allocate
    megabytes: a few hundred KiB either way is noise.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        # A fixed mmap threshold (M_MMAP_THRESHOLD = -3): every large block is mapped on allocation and unmapped
        # on free, so the resident size follows the tensors alive instead of glibc's heap-growth heuristics.
        libc.mallopt(-3, 128 * 1024)
    except (OSError, AttributeError):
        libc = None
    fn()
    gc.collect()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before = _status_bytes("VmRSS")
    except OSError:
        return None
    result = fn()
    peak = _status_bytes("VmHWM")
    del result
    return max(0, peak - before)


def chunk_schedule(L: int, S: int, block_q: int, block_k: int, *, is_causal: bool = False) -> torch.Tensor:
    """(ceil(L/block_q), ceil(S/block_k)) bool: True for the blocks a chunked loop must compute.

    Without a mask every block is needed. With a (top-left) causal mask, query i sees keys j <= i, so a block
    whose first key comes after its last query is entirely masked and is skipped.
    """
    L, S = check_positive_int(L, "L"), check_positive_int(S, "S")
    block_q, block_k = check_positive_int(block_q, "block_q"), check_positive_int(block_k, "block_k")
    q_last = torch.arange(0, L, block_q).add(block_q - 1).clamp(max=L - 1)  # last query of each block
    k_first = torch.arange(0, S, block_k)  # first key of each block
    if not is_causal:
        return torch.ones(len(q_last), len(k_first), dtype=torch.bool)
    return k_first[None, :] <= q_last[:, None]


def render_cost(n: int = 1024, block: int = 256, causal: bool = True, batch: int = 1, heads: int = 8):
    """Left: bytes of the fp32 (batch, heads, n, n) score matrix against n (log-log), next to one
    (block, block) score block, with the chosen n marked. Right: the chunked schedule for n, which
    (query block, key block) pairs are computed and which a causal mask lets the loop skip."""
    n, block = check_positive_int(n, "n"), check_positive_int(block, "block")
    fig, axes = viz.new_figure(2, width=4.8, height=4.0)
    ax_mem, ax_grid = axes[0]
    ns = np.unique(np.geomspace(128, 16384, 15).astype(int))
    full = [score_matrix_bytes(batch, heads, int(m), int(m)) / 2**20 for m in ns]
    one_block = [score_matrix_bytes(batch, heads, min(block, int(m)), min(block, int(m))) / 2**20 for m in ns]
    ax_mem.loglog(ns, full, label="full n x n scores (math path)")
    ax_mem.loglog(ns, one_block, label=f"one {block} x {block} block (chunked)", linestyle="--")
    here = score_matrix_bytes(batch, heads, n, n)
    ax_mem.plot([n], [here / 2**20], "o", color="tab:red")
    ax_mem.annotate(format_bytes(here), (n, here / 2**20), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax_mem.set_xlabel("sequence length n (L = S)")
    ax_mem.set_ylabel("fp32 memory (MiB)")
    ax_mem.set_title(f"score memory, batch {batch}, {heads} heads")
    ax_mem.legend(fontsize=7, loc="upper left")
    schedule = chunk_schedule(n, n, block, block, is_causal=causal)
    ax_grid.imshow(schedule.float().numpy(), cmap="Greens", vmin=-0.3, vmax=1.0, aspect="equal")
    nq, nk = schedule.shape
    if nq <= 16:
        for i in range(nq):
            for j in range(nk):
                computed = bool(schedule[i, j])
                colour = "white" if computed else "black"
                ax_grid.text(j, i, "x" if computed else "skip", ha="center", va="center", fontsize=7, color=colour)
    ticks_q = list(range(nq)) if nq <= 16 else list(range(0, nq, max(1, nq // 6)))
    ticks_k = list(range(nk)) if nk <= 16 else list(range(0, nk, max(1, nk // 6)))
    ax_grid.set_yticks(ticks_q, [f"{i * block}" for i in ticks_q])
    ax_grid.set_xticks(ticks_k, [f"{j * block}" for j in ticks_k], rotation=45)
    ax_grid.set_xlabel("key block (first key index)")
    ax_grid.set_ylabel("query block (first query index)")
    done = int(schedule.sum())
    ax_grid.set_title(f"{done} of {schedule.numel()} blocks computed" + (" (causal)" if causal else ""))
    return fig
