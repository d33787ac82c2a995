r"""FlashAttention-2 in PyTorch: a tiled forward that saves the logsumexp, and a backward that recomputes.

Shapes follow (batch, heads, seq, dim): ``q`` is (..., L, E), ``k`` (..., S, E), ``v`` (..., S, Ev), with the
same leading dims (usually batch, heads). Only the causal mask is supported (no ``attn_mask``): query ``i`` may
see key ``j`` iff ``j <= i`` (``causal_alignment="top-left"``, SDPA's ``is_causal``) or ``j <= i + S - L``
(``"bottom-right"``, what decoding with a KV cache needs). Rows with no visible key give 0, like SDPA.

The forward pass walks over blocks of ``block_q`` queries and, for each, over blocks of ``block_k`` keys,
keeping per query row a running max ``m``, a running sum ``l`` and an unnormalised output ``acc`` (lesson 3's
online softmax, carried through the multiplication by V). It saves only the output ``O`` and the natural-log
logsumexp per query row,

.. math:: \mathrm{lse}_i = \log \sum_j e^{s_{ij}},\qquad s_{ij} = \mathrm{scale}\; q_i \cdot k_j,

shape (..., L). The backward pass never stores the (L, S) weights either: block by block it recomputes
:math:`P_{ij} = e^{s_{ij} - \mathrm{lse}_i}` and uses

.. math:: dV = P^\top dO,\quad dP = dO\, V^\top,\quad dS = P \circ (dP - D),\quad D_i = \textstyle\sum_j P_{ij}\,dP_{ij}
          = dO_i \cdot O_i,

so ``D`` (one number per query row) comes from ``dO`` and ``O`` alone, before any block is revisited.
Then :math:`dQ = \mathrm{scale}\; dS\, K` and :math:`dK = \mathrm{scale}\; dS^\top Q`.

Two implementations of the same algorithm:

* :func:`flash_attention_loops` — the algorithm as the math reads: natural-log ``exp``, out-of-place ops, plain
  autograd through it. For reading, and as a second oracle in the tests.
* :func:`flash_attention` / :class:`FlashAttention2` — the same loops made fast on the CPU: scores in base 2
  (``exp2`` is cheaper than ``exp``), the scale folded into the matmul, one reused score buffer per worker
  exponentiated in place, causal blocks that are entirely in the future skipped, and one single-threaded worker
  per core on its own slice of the (batch, head) rows. A ``torch.autograd.Function`` with the backward above.

fp16 and bf16 inputs are computed (and accumulated) in fp32; the output has the input's dtype and the logsumexp is
always fp32. Inputs are never modified.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

from ._checks import (
    check_float_tensor,
    check_positive_float,
    check_positive_int,
    check_same_dtype_device,
    shape_str,
)

__all__ = [
    "FlashAttention2",
    "flash_attention",
    "flash_attention_loops",
    "flash_backward_loops",
    "flash_matmuls_only",
]

LOG2E = math.log2(math.e)  # exp(x) == exp2(x * LOG2E)
LN2 = math.log(2.0)  # log(x) == log2(x) * LN2
ALIGNMENTS = ("top-left", "bottom-right")


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


def _check_inputs(q, k, v, is_causal, causal_alignment, scale, block_q, block_k) -> float:
    """Check everything; return the scale to use."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(t, name)
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., seq, dim), got shape {shape_str(t.shape)}")
    check_same_dtype_device({"q": q, "k": k, "v": v})
    if k.dim() != q.dim() or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"k must be (..., S, E) with q's leading dims and feature dim E, got q {shape_str(q.shape)} "
            f"and k {shape_str(k.shape)}"
        )
    if v.dim() != k.dim() or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            f"v must be (..., S, Ev) with k's leading dims and length S, got k {shape_str(k.shape)} "
            f"and v {shape_str(v.shape)}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf values; attention needs finite inputs")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment must be 'top-left' or 'bottom-right', got {causal_alignment!r}")
    check_positive_int(block_q, "block_q")
    check_positive_int(block_k, "block_k")
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    return check_positive_float(scale, "scale")


def causal_offset(is_causal: bool, causal_alignment: str, L: int, S: int) -> int | None:
    """Query i may see key j iff ``j <= i + offset``; None when there is no causal mask."""
    if not is_causal:
        return None
    return 0 if causal_alignment == "top-left" else S - L


# --------------------------------------------------------------------------------------------------------------
# The algorithm as it reads (for the lesson, and a second oracle)
# --------------------------------------------------------------------------------------------------------------


def flash_attention_loops(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    return_lse: bool = False,
):
    """The FlashAttention-2 forward as plain loops over blocks; differentiable by ordinary autograd.

    Args:
        q: queries (batch, heads, L, E) (any leading dims). k: keys (batch, heads, S, E). v: values
            (batch, heads, S, Ev).
        is_causal, causal_alignment: causal mask, ``"top-left"`` (SDPA's) or ``"bottom-right"``.
        scale: multiplier of the scores, default 1/sqrt(E). block_q, block_k: tile sizes (any positive ints).
        return_lse: also return the natural-log logsumexp per query row, (batch, heads, L), fp32 (``-inf`` for a
            row with no visible key).

    Returns:
        output (batch, heads, L, Ev) in q's dtype, and the logsumexp if ``return_lse``.
    """
    scale = _check_inputs(q, k, v, is_causal, causal_alignment, scale, block_q, block_k)
    L, S = q.shape[-2], k.shape[-2]
    offset = causal_offset(is_causal, causal_alignment, L, S)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(compute), k.to(compute), v.to(compute)
    out_blocks, lse_blocks = [], []
    for i0 in range(0, L, block_q):
        qi = qf[..., i0 : i0 + block_q, :]
        rows = torch.arange(i0, i0 + qi.shape[-2], device=q.device)
        m = torch.full(qi.shape[:-1], -math.inf, dtype=compute, device=q.device)  # running max
        l = torch.zeros_like(m)  # running sum of exp(s - m)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=compute, device=q.device)  # sum of exp(s - m) v
        for j0 in range(0, S, block_k):
            kj, vj = kf[..., j0 : j0 + block_k, :], vf[..., j0 : j0 + block_k, :]
            s = scale * qi @ kj.transpose(-2, -1)  # (..., block_q, block_k)
            if offset is not None:
                cols = torch.arange(j0, j0 + kj.shape[-2], device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None] + offset, -math.inf)
            m_new = torch.maximum(m, s.amax(dim=-1))
            shift = torch.where(m_new == -math.inf, 0.0, m_new)  # nothing visible yet: exp(-inf - 0) = 0
            p = torch.exp(s - shift.unsqueeze(-1))
            rescale = torch.exp(m - shift)  # how much the old terms shrink under the new max
            l = l * rescale + p.sum(dim=-1)
            acc = acc * rescale.unsqueeze(-1) + p @ vj
            m = m_new
        seen = l > 0
        out_blocks.append(acc / torch.where(seen, l, 1.0).unsqueeze(-1))  # no visible key: 0 / 1 = 0
        lse_blocks.append(torch.where(seen, m + torch.log(torch.where(seen, l, 1.0)), -math.inf))
    if L == 0:
        out = q.new_zeros(*q.shape[:-1], v.shape[-1])
        lse = torch.zeros(q.shape[:-1], dtype=torch.float32, device=q.device)
    else:
        out, lse = torch.cat(out_blocks, dim=-2).to(q.dtype), torch.cat(lse_blocks, dim=-1)
        lse = lse.to(torch.float32) if compute != torch.float64 else lse
    return (out, lse) if return_lse else out


def flash_backward_loops(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The FlashAttention-2 backward as plain loops: (dq, dk, dv) from q, k, v, the output, its logsumexp and dO.

    ``out`` (batch, heads, L, Ev) and ``lse`` (batch, heads, L) are what the forward saved; ``grad_out`` is dO,
    shaped like ``out``. Nothing of size (L, S) is stored: each block of weights is recomputed as
    ``exp(s - lse)``, and ``D = rowsum(dO * O)`` replaces the row sums of ``P * dP`` that would need them all.
    """
    scale = _check_inputs(q, k, v, is_causal, causal_alignment, scale, block_q, block_k)
    L, S = q.shape[-2], k.shape[-2]
    offset = causal_offset(is_causal, causal_alignment, L, S)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf, of, dof = (t.to(compute) for t in (q, k, v, out, grad_out))
    lse = lse.to(compute)
    lse = torch.where(lse == -math.inf, math.inf, lse)  # no visible key: exp(s - inf) = 0, not exp(-inf + inf)
    D = (dof * of).sum(dim=-1)  # (..., L): D_i = dO_i . O_i
    dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
    for i0 in range(0, L, block_q):
        i1 = min(i0 + block_q, L)
        rows = torch.arange(i0, i1, device=q.device)
        qi, doi, lse_i, D_i = qf[..., i0:i1, :], dof[..., i0:i1, :], lse[..., i0:i1, None], D[..., i0:i1, None]
        for j0 in range(0, S, block_k):
            j1 = min(j0 + block_k, S)
            kj, vj = kf[..., j0:j1, :], vf[..., j0:j1, :]
            s = scale * qi @ kj.transpose(-2, -1)
            if offset is not None:
                cols = torch.arange(j0, j1, device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None] + offset, -math.inf)
            p = torch.exp(s - lse_i)  # the forward's weights, recomputed
            dv[..., j0:j1, :] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)
            ds = p * (dp - D_i)  # gradient of the scores
            dq[..., i0:i1, :] += scale * ds @ kj
            dk[..., j0:j1, :] += scale * ds.transpose(-2, -1) @ qi
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------------------------
# The fast path: kernels on (N, L, E) tensors in base 2, in place, one worker per core
# --------------------------------------------------------------------------------------------------------------


def _buffer(cache: dict, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    numel = math.prod(shape)
    buf = cache.get(name)
    if buf is None or buf.numel() < numel:
        buf = cache[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


def _causal_block(cache: dict, rows: int, cols: int, diagonal: int, device) -> torch.Tensor:
    """True where local (row r, col c) is masked: c > r + diagonal."""
    key = (rows, cols, diagonal)
    if key not in cache:
        cache[key] = torch.ones(rows, cols, dtype=torch.bool, device=device).triu(diagonal + 1)
    return cache[key]


def _key_end(offset: int | None, i1: int, S: int) -> int:
    """One past the last key that any of the query rows [.., i1) may see."""
    return S if offset is None else max(0, min(S, i1 + offset))


def _forward_kernel(q, k, v, out, lse2, alpha, offset, block_q, block_k, matmuls_only=False) -> None:
    """Writes out (N, L, Ev) and lse2 (N, L), the logsumexp of the base-2 scores (+inf: no visible key).

    ``matmuls_only`` runs the same loop with only the two matmuls per block (a wrong answer): what the benchmark
    times to show how much of the time the softmax bookkeeping takes.
    """
    N, L, S = q.shape[0], q.shape[1], k.shape[1]
    bufs: dict = {}
    masks: dict = {}
    for i0 in range(0, L, block_q):
        i1 = min(i0 + block_q, L)
        rows, end = i1 - i0, _key_end(offset, i1, S)
        if end == 0:  # every key of these rows is in their future
            out[:, i0:i1] = 0
            lse2[:, i0:i1] = math.inf
            continue
        qi, acc = q[:, i0:i1], _buffer(bufs, "acc", (N, rows, v.shape[-1]), q)
        m = l = None
        for j0 in range(0, end, block_k):
            j1 = min(j0 + block_k, end)
            s = _buffer(bufs, "s", (N, rows, j1 - j0), q)
            torch.baddbmm(s, qi, k[:, j0:j1].transpose(1, 2), beta=0.0, alpha=alpha, out=s)  # base-2 scores
            if matmuls_only:
                acc.baddbmm_(s, v[:, j0:j1])
                continue
            if offset is not None and j1 - 1 > i0 + offset:  # the block crosses the diagonal
                s.masked_fill_(_causal_block(masks, rows, j1 - j0, i0 + offset - j0, q.device), -math.inf)
            m_blk = s.amax(dim=-1)
            m_new = m_blk if m is None else torch.maximum(m, m_blk)
            shift = m_new.masked_fill(m_new == -math.inf, 0.0)
            s.sub_(shift.unsqueeze(-1)).exp2_()  # p = exp2(s - m), in place
            if m is None:
                l = s.sum(dim=-1)
                torch.bmm(s, v[:, j0:j1], out=acc)
            else:
                rescale = torch.exp2(m - shift)
                l.mul_(rescale).add_(s.sum(dim=-1))
                acc.mul_(rescale.unsqueeze(-1)).baddbmm_(s, v[:, j0:j1])
            m = m_new
        if matmuls_only:
            out[:, i0:i1] = acc
            continue
        seen = l > 0
        safe_l = torch.where(seen, l, 1.0)
        torch.div(acc, safe_l.unsqueeze(-1), out=out[:, i0:i1])
        lse2[:, i0:i1] = torch.where(seen, m + torch.log2(safe_l), math.inf)


def _backward_kernel(
    q, k, v, grad_out, delta, lse2, dq, dk, dv, alpha, offset, block_q, block_k, matmuls_only=False
) -> None:
    """Accumulates into zeroed dq, dk (both still to be multiplied by scale) and dv.

    ``delta`` is D - dlse (N, L): D_i = dO_i . O_i, less the gradient flowing into the logsumexp output if any.
    ``matmuls_only``: only the five matmuls per block (a wrong answer; for the benchmark's bound).
    """
    N, L, S = q.shape[0], q.shape[1], k.shape[1]
    bufs: dict = {}
    masks: dict = {}
    for i0 in range(0, L, block_q):
        i1 = min(i0 + block_q, L)
        rows, end = i1 - i0, _key_end(offset, i1, S)
        qi, doi, dqi = q[:, i0:i1], grad_out[:, i0:i1], dq[:, i0:i1]
        if not matmuls_only:  # subtracted inside the matmuls (beta = 1 on a broadcast input): no extra pass
            neg_lse_i, neg_delta_i = -lse2[:, i0:i1].unsqueeze(-1), -delta[:, i0:i1].unsqueeze(-1)
        for j0 in range(0, end, block_k):
            j1 = min(j0 + block_k, end)
            cols = j1 - j0
            p = _buffer(bufs, "p", (N, rows, cols), q)
            ds = _buffer(bufs, "ds", (N, rows, cols), q)
            if matmuls_only:
                torch.baddbmm(p, qi, k[:, j0:j1].transpose(1, 2), beta=0.0, alpha=alpha, out=p)
                dv[:, j0:j1].baddbmm_(p.transpose(1, 2), doi)
                torch.bmm(doi, v[:, j0:j1].transpose(1, 2), out=ds)
            else:
                torch.baddbmm(neg_lse_i, qi, k[:, j0:j1].transpose(1, 2), alpha=alpha, out=p)  # s - lse (base 2)
                if offset is not None and j1 - 1 > i0 + offset:
                    p.masked_fill_(_causal_block(masks, rows, cols, i0 + offset - j0, q.device), -math.inf)
                p.exp2_()  # P, recomputed from the saved logsumexp
                dv[:, j0:j1].baddbmm_(p.transpose(1, 2), doi)  # dV += P^T dO
                torch.baddbmm(neg_delta_i, doi, v[:, j0:j1].transpose(1, 2), out=ds)  # dP - D, dP = dO V^T
                ds.mul_(p)  # dS = P * (dP - D)
            dqi.baddbmm_(ds, k[:, j0:j1])  # dQ += dS K
            dk[:, j0:j1].baddbmm_(ds.transpose(1, 2), qi)  # dK += dS^T Q


# Threads: a blocked loop issues many small ops; with torch's intra-op threads each op forks and joins across
# the cores. One single-threaded worker per core, each on its own contiguous slice of the N (batch, head) rows,
# joins once per call instead.
MIN_SCORES_PER_WORKER = 1 << 20
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if workers not in _POOLS:
            before = torch.get_num_threads()
            ready = threading.Barrier(workers)

            def init() -> None:
                torch.set_num_threads(1)
                ready.wait()

            pool = ThreadPoolExecutor(workers, thread_name_prefix="attnlib-flash", initializer=init)
            for f in [pool.submit(int) for _ in range(workers)]:
                f.result()
            torch.set_num_threads(before)
            _POOLS[workers] = pool
        return _POOLS[workers]


# Scores per op on the CPU: (batch, head) rows per op x block_q x block_k. 2^18 fp32 scores (1 MiB, e.g. two rows of
# 256 x 512 blocks) stay in a core's L2 cache across the elementwise passes, while each op is still large enough
# that dispatch is small next to the matmuls (single-thread CPU time at L = 2048, B=4, H=8, D=64 on a busy machine:
# 2^18 gave 0.79-0.84x SDPA forward, 2^21 0.67-0.75x, 2^23 0.63-0.70x; see `attnlib bench` for the real thing).
SCORES_PER_OP = 1 << 18


def _rows_per_op(q: torch.Tensor, N: int, block_q: int, block_k: int) -> int:
    return max(1, N if q.device.type != "cpu" else SCORES_PER_OP // (block_q * block_k))


def _workers(q: torch.Tensor, N: int, L: int, S: int) -> int:
    if q.device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), N, (N * L * S) // MIN_SCORES_PER_WORKER))


def _run_split(fn, N: int, workers: int, rows_per_op: int, *tensors) -> None:
    """Call ``fn(*slices)`` on ``workers`` contiguous slices of the first dim of every tensor, each slice cut
    into pieces of at most ``rows_per_op`` rows (so that one score block stays a few MiB)."""

    def run_range(a, b):
        for c in range(a, b, rows_per_op):
            fn(*(t[c : min(c + rows_per_op, b)] for t in tensors))

    if workers == 1:
        run_range(0, N)
        return
    bounds = [round(w * N / workers) for w in range(workers + 1)]

    def task(a, b):
        def run():
            with torch.no_grad():
                run_range(a, b)

        return run

    futures = [_pool(workers).submit(task(a, b)) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    for f in futures:
        f.result()


def _flash_forward(q3, k3, v3, scale, offset, block_q, block_k, matmuls_only=False):
    """(out, lse2) for fp32/fp64 (N, L, E) tensors."""
    N, L, S = q3.shape[0], q3.shape[1], k3.shape[1]
    out = q3.new_empty(N, L, v3.shape[-1])
    lse2 = q3.new_empty(N, L)
    alpha = scale * LOG2E

    def fn(q, k, v, o, lse):
        _forward_kernel(q, k, v, o, lse, alpha, offset, block_q, block_k, matmuls_only)

    _run_split(fn, N, _workers(q3, N, L, S), _rows_per_op(q3, N, block_q, block_k), q3, k3, v3, out, lse2)
    return out, lse2


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class FlashAttention2(torch.autograd.Function):
    """FlashAttention-2 as an autograd Function: ``FlashAttention2.apply(q, k, v, is_causal=False, ...)``.

    ``q`` (..., L, E), ``k`` (..., S, E), ``v`` (..., S, Ev); extra positional arguments after ``is_causal``:
    ``scale`` (None: 1/sqrt(E)), ``block_q``, ``block_k``, ``causal_alignment``. Returns the output (..., L, Ev).
    The forward saves q, k, v, the output and the natural-log logsumexp (..., L) (fp32; for inputs of shape
    (batch, n_queries, d), a (batch, n_queries) tensor, what CS336's tests look for in ``ctx.saved_tensors``).
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False, scale=None, block_q=256, block_k=512, causal_alignment="top-left"):
        out, lse = _forward_impl(ctx, q, k, v, is_causal, scale, block_q, block_k, causal_alignment)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return (*_backward_impl(ctx, grad_out, None), None, None, None, None, None)


class _FlashAttention2WithLse(torch.autograd.Function):
    """Same as :class:`FlashAttention2`, returning (out, lse); the logsumexp is differentiable too."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_q, block_k, causal_alignment):
        return _forward_impl(ctx, q, k, v, is_causal, scale, block_q, block_k, causal_alignment)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_lse):
        return (*_backward_impl(ctx, grad_out, grad_lse), None, None, None, None, None)


def _forward_impl(ctx, q, k, v, is_causal, scale, block_q, block_k, causal_alignment):
    scale = _check_inputs(q, k, v, is_causal, causal_alignment, scale, block_q, block_k)
    batch, L, S, Ev = q.shape[:-2], q.shape[-2], k.shape[-2], v.shape[-1]
    N = math.prod(batch)
    offset = causal_offset(is_causal, causal_alignment, L, S)
    compute = _compute_dtype(q.dtype)
    q3, k3, v3 = (t.detach().reshape(N, t.shape[-2], t.shape[-1]).to(compute).contiguous() for t in (q, k, v))
    if N * L == 0:
        out3, lse2 = q3.new_zeros(N, L, Ev), q3.new_full((N, L), math.inf)
    else:
        out3, lse2 = _flash_forward(q3, k3, v3, scale, offset, block_q, block_k)
    lse2[lse2 == math.inf] = -math.inf  # logsumexp over no keys is -inf (as torch.logsumexp)
    lse = (lse2 * LN2).to(torch.float64 if compute == torch.float64 else torch.float32).reshape(*batch, L)
    out = out3.reshape(*batch, L, Ev).to(q.dtype)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.settings = (scale, offset, block_q, block_k)
    return out, lse


def _backward_impl(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    scale, offset, block_q, block_k = ctx.settings
    batch, L, S, E, Ev = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    N = math.prod(batch)
    compute = _compute_dtype(q.dtype)
    q3, k3, v3 = (t.reshape(N, t.shape[-2], t.shape[-1]).to(compute).contiguous() for t in (q, k, v))
    o3 = out.reshape(N, L, Ev).to(compute)
    do3 = grad_out.reshape(N, L, Ev).to(compute).contiguous()
    delta = (do3 * o3).sum(dim=-1)  # D_i = dO_i . O_i
    if grad_lse is not None:
        delta -= grad_lse.reshape(N, L).to(compute)  # d lse_i / d s_ij = P_ij: dS = P * (dP - D + dlse)
    lse2 = lse.reshape(N, L).to(compute) * LOG2E
    lse2 = lse2.masked_fill(lse2 == -math.inf, math.inf)  # no visible key: P = exp2(s - inf) = 0
    dq, dk, dv = torch.zeros_like(q3), torch.zeros_like(k3), torch.zeros_like(v3)
    if N * L * S > 0:

        def fn(q_, k_, v_, do_, de_, ls_, dq_, dk_, dv_):
            _backward_kernel(q_, k_, v_, do_, de_, ls_, dq_, dk_, dv_, scale * LOG2E, offset, block_q, block_k)

        _run_split(
            fn,
            N,
            _workers(q3, N, L, S),
            _rows_per_op(q3, N, block_q, block_k),
            q3,
            k3,
            v3,
            do3,
            delta,
            lse2,
            dq,
            dk,
            dv,
        )
    dq = dq.mul_(scale).reshape(*batch, L, E).to(q.dtype)
    dk = dk.mul_(scale).reshape(*batch, S, E).to(k.dtype)
    return dq, dk, dv.reshape(*batch, S, Ev).to(v.dtype)


def flash_matmuls_only(q, k, v, grad_out=None, *, is_causal=False, block_q=256, block_k=512) -> torch.Tensor:
    """The fast path's loops, threads and buffers with **only their matmuls** (the result is not attention).

    Its time is the floor under :func:`flash_attention` on this machine: what is left when the softmax bookkeeping
    (max, exp2, sums, rescaling, masking; elementwise passes over every score block) costs nothing. ``attnlib
    bench`` times it as ``flash-mm`` to show, measured, how much of the tiled path's time is outside the matmuls.
    With ``grad_out`` it also runs the backward's five matmuls per block. Inputs (batch, heads, seq, dim), fp32/64.
    """
    _check_inputs(q, k, v, is_causal, "top-left", None, block_q, block_k)
    batch, L, S = q.shape[:-2], q.shape[-2], k.shape[-2]
    N = math.prod(batch)
    offset = causal_offset(is_causal, "top-left", L, S)
    q3, k3, v3 = (t.detach().reshape(N, t.shape[-2], t.shape[-1]).contiguous() for t in (q, k, v))
    with torch.no_grad():
        out, lse2 = _flash_forward(q3, k3, v3, 1.0, offset, block_q, block_k, matmuls_only=True)
        out = out.reshape(*batch, L, v.shape[-1])
        if grad_out is None:
            return out
        do3 = grad_out.reshape(N, L, -1).contiguous()
        dq, dk, dv = torch.zeros_like(q3), torch.zeros_like(k3), torch.zeros_like(v3)

        def fn(q_, k_, v_, do_, dq_, dk_, dv_):
            _backward_kernel(q_, k_, v_, do_, None, None, dq_, dk_, dv_, 1.0, offset, block_q, block_k, True)

        _run_split(fn, N, _workers(q3, N, L, S), _rows_per_op(q3, N, block_q, block_k), q3, k3, v3, do3, dq, dk, dv)
        return out


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 256,
    block_k: int = 512,
    return_lse: bool = False,
):
    r"""Scaled dot-product attention by FlashAttention-2 (tiled forward, recomputing backward), in PyTorch.

    Equal to ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=..., scale=...)`` within
    rounding, with memory linear in L and S: one (block_q, block_k) block of scores per (batch, head) row alive at
    a time, and only the output and one logsumexp per query row saved for the backward pass.

    Args:
        q: queries (batch, heads, L, E); any number of leading dims, shared by k and v.
        k: keys (batch, heads, S, E).
        v: values (batch, heads, S, Ev).
        is_causal: mask every key after the query's position; blocks entirely in the future are skipped.
        causal_alignment: ``"top-left"`` (query i sees keys j <= i, SDPA's ``is_causal``) or ``"bottom-right"``
            (j <= i + S - L, attnlib's ``causal_mask(..., alignment="bottom-right")``). Same when L == S.
        scale: multiplier of the scores, default 1/sqrt(E).
        block_q, block_k: tile sizes along L and S; any positive ints (they need not divide L or S).
        return_lse: also return the natural-log logsumexp of the scaled, masked scores per query row,
            (batch, heads, L), fp32 (fp64 for fp64 inputs); ``-inf`` for a row with no visible key. Differentiable.

    Returns:
        output (batch, heads, L, Ev) in q's dtype (rows with no visible key are 0, with zero gradients), and the
        logsumexp if ``return_lse``.

    Raises:
        TypeError / ValueError naming the argument for non-tensors, integer dtypes, mismatched dtypes or devices,
        shapes that do not fit, NaN/inf inputs, non-bool ``is_causal``, unknown alignments, bad block sizes or scale.
    """
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    args = (q, k, v, is_causal, scale, block_q, block_k, causal_alignment)
    if return_lse:
        return _FlashAttention2WithLse.apply(*args)
    return FlashAttention2.apply(*args)
