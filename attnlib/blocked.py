r"""Blocked attention: the one core under lesson 12's ``chunked_attention`` and lesson 13's ``flash_attention``.

Both compute softmax(q kᵀ · scale + mask) v one (block_q, block_k) block of scores at a time, keeping per query
row a running shift ``m`` (the largest score seen, or close to it), a running sum ``l`` of ``exp(score - m)`` and
an unnormalised output ``acc`` (lesson 12's online softmax), and save for the backward pass only the output and
the logsumexp ``m + log l`` per row (lesson 13). This module holds everything they share, once:

* :func:`check_blocked_call` — the one validator of the three front-ends (chunked, flash, Triton);
* :func:`causal_offset` and :func:`key_end` — query i sees key j iff ``j <= i + offset``; key blocks past
  ``key_end`` are never computed;
* :class:`BlockPlan` — shapes, block sizes, causal offset, masks and the units of the scores (base 2 or natural);
* :func:`forward_blocks` / :func:`backward_blocks` — the kernels on (N, L, E) tensors;
* the CPU worker pool and :data:`SCORES_PER_OP`, how much work one op gets;
* :class:`BlockedAttention` — the autograd Function, and :func:`blocked_attention`, the unchecked entry.

What makes the Python loop fast on a CPU: the scale is folded into the matmul (``baddbmm`` with ``alpha``), and
so is the subtraction of the running shift (``baddbmm`` with the shift as its input); scores are kept in base 2
so that ``exp2`` (cheaper than ``exp``, same accuracy) does the exponentials; one score buffer is reused and
exponentiated in place; causal key blocks entirely in the future are skipped; each core runs single-threaded ops
on its own slice of the (batch, head) rows; and the running max is only recomputed when a bound
(``scale·|q_i|·max|k_j|``) says that the block's scores might exceed the current shift by more than
:data:`HEADROOM` (``2^HEADROOM`` is far from overflowing): on ordinary inputs each block then costs its two
matmuls and one ``exp2`` pass, not five elementwise passes.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch

from ._checks import (
    ALIGNMENTS,
    causal_bias_info,
    check_alignment,
    check_bool,
    check_mask,
    check_positive_float,
    check_positive_int,
    check_qkv,
)

__all__ = [
    "ALIGNMENTS",
    "BlockPlan",
    "BlockedAttention",
    "HEADROOM",
    "SCORES_PER_OP",
    "backward_blocks",
    "blocked_attention",
    "causal_offset",
    "check_blocked_call",
    "forward_blocks",
    "key_end",
]

LOG2E = math.log2(math.e)  # exp(x) == exp2(x * LOG2E)
LN2 = math.log(2.0)  # log(x) == log2(x) * LN2
# The running shift m is refreshed (max recomputed, sums rescaled) only when a block's scores may exceed it by more
# than this many units (base 2: factors up to 2^16; the sums and acc stay far from overflow, see _headroom).
HEADROOM = 16.0


# --------------------------------------------------------------------------------------------------------------
# The one validator
# --------------------------------------------------------------------------------------------------------------


def check_blocked_call(
    q, k, v, attn_mask, is_causal, causal_alignment, scale, block_q, block_k, return_lse
) -> tuple[torch.Tensor | None, bool, str, float, tuple[float, float, float]]:
    """Check a call of a blocked front-end; returns ``(attn_mask, is_causal, causal_alignment, scale, maxima)``,
    ``maxima`` being ``(max|q|, max|k|, max|v|)`` from the passes that checked them (the kernels' bounds).

    q (..., L, E), k (..., S, E), v (..., S, Ev) as :func:`attnlib.scaled_dot_product_attention` takes them
    (finite, L, S, E >= 1). A ``CausalBias`` mask becomes ``is_causal`` with its alignment. ``is_causal`` with
    ``attn_mask`` is a ValueError, as everywhere in attnlib.
    """
    maxima = check_qkv(q, k, v)
    check_bool(is_causal, "is_causal")
    check_bool(return_lse, "return_lse")
    check_alignment(causal_alignment, "causal_alignment")
    check_positive_int(block_q, "block_q")
    check_positive_int(block_k, "block_k")
    L, S = q.shape[-2], k.shape[-2]
    bias_alignment = causal_bias_info(attn_mask, L, S)
    if attn_mask is not None and is_causal:
        raise ValueError(
            "is_causal=True and attn_mask were both given; combine them explicitly with "
            "attnlib.combine_masks(attnlib.causal_mask(L, S, alignment=...), attn_mask), or pass the causal "
            "mask alone as is_causal=True"
        )
    if bias_alignment is not None:  # generated block by block, future key blocks skipped, as with is_causal
        attn_mask, is_causal, causal_alignment = None, True, bias_alignment
    if attn_mask is not None:
        check_mask(attn_mask, (*q.shape[:-2], L, S), q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check_positive_float(scale, "scale")
    return attn_mask, is_causal, causal_alignment, scale, maxima


# --------------------------------------------------------------------------------------------------------------
# Blocks and masks
# --------------------------------------------------------------------------------------------------------------


def causal_offset(is_causal: bool, alignment: str, L: int, S: int) -> int | None:
    """Query i may see key j iff ``j <= i + offset``; None when there is no causal mask."""
    if not is_causal:
        return None
    return 0 if alignment == "top-left" else S - L


def key_end(offset: int | None, i1: int, S: int) -> int:
    """One past the last key any query in rows [.., i1) may see."""
    return S if offset is None else max(0, min(S, i1 + offset))


def causal_block(offset: int | None, i0: int, i1: int, j0: int, j1: int, cache: dict) -> torch.Tensor | None:
    """The blocked (True = masked) part of the causal mask on block [i0, i1) x [j0, j1), or None if all visible."""
    if offset is None or j1 - 1 <= i0 + offset:
        return None
    key = (i1 - i0, j1 - j0, i0 + offset - j0)
    if key not in cache:
        rows, cols, diagonal = key
        cache[key] = torch.ones(rows, cols, dtype=torch.bool, device=cache["device"]).triu(diagonal + 1)
    return cache[key]


def _mask_block(mask: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
    """Rows [i0, i1) and columns [j0, j1) of a mask whose last two dims may be broadcast (size 1)."""
    rows = slice(0, 1) if mask.shape[-2] == 1 else slice(i0, i1)
    cols = slice(0, 1) if mask.shape[-1] == 1 else slice(j0, j1)
    return mask[..., rows, cols]


class BlockPlan:
    """Everything the blocked loops need besides q, k, v: shapes, block sizes, causal offset, masks and units.

    ``blocked`` (bool, True = masked) and ``additive`` (float) masks are padded to ``len(batch) + 2`` dims and
    keep their broadcast (size 1) dims; the loops slice them per block and never expand them. With ``base2``
    the scores are ``q kᵀ · scale · log2(e)`` and exp2/log2 do the work (``alpha`` is that factor); otherwise
    they are natural-log scores (``alpha = scale``), for scores or masks too large for the base-2 factor.
    ``headroom``: how far above the running shift a block's scores may go without refreshing it (0: always
    refresh, the textbook online softmax).
    """

    def __init__(
        self, batch, L, S, block_q, block_k, offset, blocked, additive, device, alpha, base2=True, headroom=0.0
    ):
        self.batch, self.L, self.S = tuple(batch), L, S
        self.alpha, self.base2, self.headroom = alpha, base2, headroom
        self.exp_ = torch.Tensor.exp2_ if base2 else torch.Tensor.exp_
        self.exp = torch.exp2 if base2 else torch.exp
        self.log = torch.log2 if base2 else torch.log
        self.block_q, self.block_k, self.offset = block_q, block_k, offset
        self.blocked, self.additive = blocked, additive
        self.device = device
        self.mask_high = 0.0  # the largest positive additive mask entry, in score units (for the bound)
        self.causal_cache = {"device": device}

    def blocks(self):
        """Yield (i0, i1, [(j0, j1), ...]) with key blocks that are entirely causally masked left out."""
        for i0 in range(0, self.L, self.block_q):
            i1 = min(i0 + self.block_q, self.L)
            end = key_end(self.offset, i1, self.S)
            yield i0, i1, [(j0, min(j0 + self.block_k, end)) for j0 in range(0, end, self.block_k)]

    def apply_masks(self, s: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
        """Mask the score block ``s`` (N, i1-i0, j1-j0) in place."""
        causal = causal_block(self.offset, i0, i1, j0, j1, self.causal_cache)
        if causal is not None:
            s.masked_fill_(causal, -math.inf)
        if self.blocked is not None or self.additive is not None:
            s4 = s.view(*self.batch, i1 - i0, j1 - j0)
            if self.blocked is not None:
                s4.masked_fill_(_mask_block(self.blocked, i0, i1, j0, j1), -math.inf)
            if self.additive is not None:
                s4.add_(_mask_block(self.additive, i0, i1, j0, j1), alpha=LOG2E if self.base2 else 1.0)

    def piece(self, index: tuple[slice, ...]) -> BlockPlan:
        """The plan of the batch entries ``index`` (one slice per batch dim); broadcast mask dims stay whole."""
        sub = BlockPlan(
            tuple(len(range(*i.indices(n))) for i, n in zip(index, self.batch, strict=True)),
            self.L,
            self.S,
            self.block_q,
            self.block_k,
            self.offset,
            None if self.blocked is None else self.blocked[_mask_index(self.blocked, index)],
            None if self.additive is None else self.additive[_mask_index(self.additive, index)],
            self.device,
            self.alpha,
            self.base2,
            self.headroom,
        )
        sub.mask_high = self.mask_high
        sub.causal_cache = self.causal_cache
        return sub

    def pieces(self, max_rows: int) -> list[tuple[int, int, tuple[slice, ...], BlockPlan]]:
        """Cut the batch into pieces of at most ``max_rows`` (batch, head) entries (at least one each).

        Returns ``(n0, n1, index, plan)``: rows [n0, n1) of the flattened (N, ...) tensors, the slices of the batch
        dims they are, and their plan. Pieces are contiguous in the flattened order.
        """
        out = []
        for index in _batch_pieces(self.batch, max_rows):
            n0 = sum(
                (i.indices(n)[0]) * math.prod(self.batch[d + 1 :])
                for d, (i, n) in enumerate(zip(index, self.batch, strict=True))
            )
            sub = self.piece(index)
            out.append((n0, n0 + math.prod(sub.batch), index, sub))
        return out


def _batch_pieces(batch: tuple[int, ...], max_rows: int):
    """Index tuples (one slice per batch dim) covering ``batch`` in row-major order, <= max_rows entries each."""

    def rec(dim: int, prefix: tuple[slice, ...]):
        if dim == len(batch):
            yield prefix
            return
        inner = math.prod(batch[dim + 1 :])
        if inner <= max_rows:
            step = max(1, max_rows // inner)
            rest = (slice(None),) * (len(batch) - dim - 1)
            for a in range(0, batch[dim], step):
                yield (*prefix, slice(a, min(a + step, batch[dim])), *rest)
        else:
            for a in range(batch[dim]):
                yield from rec(dim + 1, (*prefix, slice(a, a + 1)))

    yield from rec(0, ())


def _mask_index(mask: torch.Tensor, index: tuple[slice, ...]) -> tuple[slice, ...]:
    """``index`` applied to a padded mask: its broadcast (size 1) batch dims are kept whole."""
    return tuple(slice(None) if m == 1 else i for m, i in zip(mask.shape, index, strict=False))


def scratch(cache: dict, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable contiguous buffer of ``shape`` (one allocation per name, resized views for edge blocks)."""
    numel = math.prod(shape)
    buf = cache.get(name)
    if buf is None or buf.numel() < numel:
        buf = cache[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


# --------------------------------------------------------------------------------------------------------------
# Threads: one single-threaded worker per core, each on its own slice of the batch
# --------------------------------------------------------------------------------------------------------------
# A blocked loop issues thousands of small ops. Run with torch's intra-op threads, every op is a fork/join across
# the cores, and on a busy machine each join waits for a descheduled thread. Giving each core its own slice of
# the batch, with single-threaded ops, removes those joins (the way fused kernels parallelise: once, on the
# outside). Only used on the CPU and when there is enough work per thread.

MIN_SCORES_PER_THREAD = 1 << 20  # below this many scores per thread, run inline with torch's own threading
# CPU: (batch, head) entries per op x block_q x block_k. Measured (single-thread CPU time, interleaved with SDPA in
# one process, B=4 H=8 D=64 fp32, L = 2048 and 4096, on the course's 2-core AVX-512 machine): two (batch, head)
# entries of 512 x 512 blocks per op, 2 MiB of fp32 scores, was the fastest of the block shapes 128..1024 x
# 256..1024 and 2^17 .. 2^20 scores per op (0.91x SDPA at L = 4096 against 0.78x for 256 x 512 at 2^18; 2^20 and
# more lose the L2 cache between the matmul and the exp2 pass). `attnlib bench --scores-per-op` re-measures it.
SCORES_PER_OP = 1 << 19
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOLS.clear)  # threads do not survive a fork


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads whose torch ops are single-threaded."""
    with _POOL_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            outer = torch.get_num_threads()
            started = threading.Barrier(workers)

            def init() -> None:
                torch.set_num_threads(1)  # per-thread OpenMP/MKL setting, plus torch's process-wide default ...
                started.wait()

            pool = ThreadPoolExecutor(workers, thread_name_prefix="attnlib-blocked", initializer=init)
            for f in [pool.submit(int) for _ in range(workers)]:  # start every thread now
                f.result()
            torch.set_num_threads(outer)  # ... which is restored here; the callers' threads are unaffected
            _POOLS[workers] = pool
        return pool


def run_parallel(tasks: list) -> None:
    """Run zero-argument callables, on the worker pool when there are several (inline otherwise)."""
    if len(tasks) == 1:
        tasks[0]()
        return

    def no_grad(task):
        def run():
            with torch.no_grad():  # grad mode is per thread; the kernels use out= and in-place ops
                task()

        return run

    for f in [_pool(len(tasks)).submit(no_grad(t)) for t in tasks]:
        f.result()


def schedule(plan: BlockPlan, t: torch.Tensor) -> tuple[list, int]:
    """The pieces of the batch each op works on, and how many worker threads share them.

    On the CPU an op covers ``SCORES_PER_OP // (block_q * block_k)`` (batch, head) entries (fewer when that would
    leave a thread without a piece); elsewhere (GPUs) one op covers the whole batch.
    """
    N = math.prod(plan.batch)
    if t.device.type != "cpu":
        return plan.pieces(max(1, N)), 1
    threads = torch.get_num_threads()
    work = N * plan.L * plan.S
    rows_per_op = max(1, SCORES_PER_OP // (plan.block_q * plan.block_k))
    if work >= threads * MIN_SCORES_PER_THREAD:  # enough work to share: at least one piece per thread
        rows_per_op = min(rows_per_op, -(-N // threads))
    pieces = plan.pieces(rows_per_op)
    workers = max(1, min(threads, len(pieces), work // max(1, MIN_SCORES_PER_THREAD)))
    return pieces, workers


# --------------------------------------------------------------------------------------------------------------
# Forward and backward kernels on (N, L, E) tensors
# --------------------------------------------------------------------------------------------------------------


def forward_blocks(q, k, v, plan: BlockPlan, out, stats, matmuls_only: bool = False) -> None:
    """Blocked forward; writes out (N, L, Ev) and stats (N, L, 2).

    ``stats[..., 0]`` is each row's final shift m and ``stats[..., 1]`` the log of its sum l of exp(score - m)
    (base 2 with ``plan.base2``), so that the row's logsumexp is their sum. They are kept apart because m + log l
    rounds log l away when |m| is huge (e.g. finfo.min masks), and the backward needs exp(score - m - log l)
    exactly. Rows whose keys are all masked get out = 0 and m = +inf (so that recomputed weights are 0).
    ``matmuls_only`` runs the same loops with only the two matmuls per block (not attention: the benchmark's
    floor under this kernel).
    """
    N, Ev = q.shape[0], v.shape[-1]
    buffers: dict = {}
    # The bound that lets a block skip its max: every score of row i in key block b is at most
    # alpha * |q_i| * max_{j in b} |k_j| (+ the largest additive mask entry).
    lazy = plan.headroom > 0 and not matmuls_only and q.device.type == "cpu"
    if lazy:
        q_norm = torch.linalg.vector_norm(q, dim=-1).mul_(abs(plan.alpha))  # (N, L)
        k_norm = torch.linalg.vector_norm(k, dim=-1)  # (N, S)
    for i0, i1, key_blocks in plan.blocks():
        rows = i1 - i0
        if not key_blocks:  # every key of these rows is causally masked
            out[:, i0:i1] = 0
            stats[:, i0:i1, 0] = math.inf
            stats[:, i0:i1, 1] = 0.0
            continue
        q_blk = q[:, i0:i1]
        acc = scratch(buffers, "acc", (N, rows, Ev), q)
        m = l = None
        for j0, j1 in key_blocks:
            s = scratch(buffers, "s", (N, rows, j1 - j0), q)
            k_t = k[:, j0:j1].transpose(1, 2)
            if matmuls_only:
                s.baddbmm_(q_blk, k_t, beta=0.0, alpha=plan.alpha)
                acc.baddbmm_(s, v[:, j0:j1], beta=0.0 if m is None else 1.0)
                m = True
                continue
            if m is None:  # the first block sets the shift to its max (rows with nothing visible: 0)
                s.baddbmm_(q_blk, k_t, beta=0.0, alpha=plan.alpha)  # alpha scales in the matmul: no copy of q
                plan.apply_masks(s, i0, i1, j0, j1)
                m = s.amax(dim=-1)
                m.masked_fill_(m == -math.inf, 0.0)
                plan.exp_(s.sub_(m.unsqueeze(-1)))  # weights relative to the shift, in place
                l = s.sum(dim=-1)
                torch.bmm(s, v[:, j0:j1], out=acc)
                continue
            if plan.headroom > 0:  # small scores: the shift is subtracted inside the matmul (beta = 1 on -m)
                torch.baddbmm(m.neg().unsqueeze(-1), q_blk, k_t, alpha=plan.alpha, out=s)
                plan.apply_masks(s, i0, i1, j0, j1)
                refresh = True
                if lazy:  # can any score exceed the shift by more than the headroom, or is any row still empty?
                    k_max = k_norm[:, j0:j1].amax(dim=-1, keepdim=True)  # (N, 1)
                    bound = q_norm[:, i0:i1] * k_max + plan.mask_high - m
                    refresh = bool((bound > plan.headroom).any()) or bool((l == 0).any())
                if refresh:  # raise the shift to the block's max where it is higher, rescale what was summed
                    grow = s.amax(dim=-1)
                    # a row that had seen nothing (l = 0) takes the block's max as it is, whatever its sign
                    grow = torch.where(l == 0, grow, grow.clamp(min=0.0)).masked_fill_(grow == -math.inf, 0.0)
                    s.sub_(grow.unsqueeze(-1))
                    # how much the old terms shrink under the new shift (nothing to shrink where l = 0: 1, not inf)
                    rescale = plan.exp(grow.neg()).masked_fill_(l == 0, 1.0)
                    l.mul_(rescale)
                    acc.mul_(rescale.unsqueeze(-1))
                    m = m + grow
            else:  # large scores: the textbook update, the shift always one of the scores (so ties stay ties)
                s.baddbmm_(q_blk, k_t, beta=0.0, alpha=plan.alpha)
                plan.apply_masks(s, i0, i1, j0, j1)
                m_blk = s.amax(dim=-1)
                m_new = torch.where(l == 0, m_blk, torch.maximum(m, m_blk))  # empty rows take the block's max
                m_new.masked_fill_(m_new == -math.inf, 0.0)
                s.sub_(m_new.unsqueeze(-1))
                rescale = plan.exp(m - m_new).masked_fill_(l == 0, 1.0)  # how much the old terms shrink
                l.mul_(rescale)
                acc.mul_(rescale.unsqueeze(-1))
                m = m_new
            plan.exp_(s)
            l.add_(s.sum(dim=-1))
            acc.baddbmm_(s, v[:, j0:j1])
        if matmuls_only:
            out[:, i0:i1] = acc
            continue
        seen = l > 0
        safe_l = torch.where(seen, l, 1.0)
        torch.div(acc, safe_l.unsqueeze(-1), out=out[:, i0:i1])  # fully masked rows: acc = 0 -> 0
        stats[:, i0:i1, 0] = torch.where(seen, m, math.inf)
        stats[:, i0:i1, 1] = plan.log(safe_l)


def backward_blocks(
    grad_out, grad_lse, q, k, v, out, stats, plan: BlockPlan, dq, dk, dv, mask_grad, matmuls_only=False
) -> None:
    """Blocked backward (FlashAttention-2): recompute the weights P = exp(S - m - log l) block by block.

    Accumulates into the zero-initialised dq and dk (both without the final factor ``scale``), dv and, when
    given, ``mask_grad``. ``grad_lse`` (N, L) is the gradient of the natural-log logsumexp output: d lse_i /
    d s_ij = P_ij, so it enters as dS += P * grad_lse. ``matmuls_only``: only the five matmuls per block.
    """
    N = q.shape[0]
    if not matmuls_only:
        delta = (grad_out * out).sum(dim=-1) - grad_lse  # D_i = dO_i . O_i (= sum_j P_ij dP_ij), less the lse grad
        # one subtraction inside the matmul (of m + log l) unless |m| is so large that the sum would round log l
        # away (finfo.min masks); the scores' own rounding error is of the order |m| * eps either way
        shift = stats[..., 0]
        exact = bool(((shift.abs() < 1024) | (shift == math.inf)).all())
    buffers: dict = {}
    for i0, i1, key_blocks in plan.blocks():
        rows = i1 - i0
        q_blk, do_blk, dq_blk = q[:, i0:i1], grad_out[:, i0:i1], dq[:, i0:i1]
        if not matmuls_only:
            if exact:
                neg_lse = -stats[:, i0:i1, 0:1] - stats[:, i0:i1, 1:2]
            else:
                neg_m, log_l = -stats[:, i0:i1, 0:1], stats[:, i0:i1, 1:2]
            neg_delta = -delta[:, i0:i1].unsqueeze(-1)
        for j0, j1 in key_blocks:
            cols = j1 - j0
            k_t = k[:, j0:j1].transpose(1, 2)
            p = scratch(buffers, "p", (N, rows, cols), q)
            ds = scratch(buffers, "ds", (N, rows, cols), q)
            if matmuls_only:
                p.baddbmm_(q_blk, k_t, beta=0.0, alpha=plan.alpha)
                dv[:, j0:j1].baddbmm_(p.transpose(1, 2), do_blk)
                torch.bmm(do_blk, v[:, j0:j1].transpose(1, 2), out=ds)
            else:
                if exact:  # p = S - lse, the subtraction done by the matmul
                    torch.baddbmm(neg_lse, q_blk, k_t, alpha=plan.alpha, out=p)
                    plan.apply_masks(p, i0, i1, j0, j1)
                else:  # masks first: a finfo.min mask and a shift near finfo.max must cancel before log l counts
                    p.baddbmm_(q_blk, k_t, beta=0.0, alpha=plan.alpha)
                    plan.apply_masks(p, i0, i1, j0, j1)
                    p.add_(neg_m).sub_(log_l)
                plan.exp_(p)  # the weights of the forward pass, recomputed
                dv[:, j0:j1].baddbmm_(p.transpose(1, 2), do_blk)  # dV += P^T dO
                torch.baddbmm(neg_delta, do_blk, v[:, j0:j1].transpose(1, 2), out=ds)  # dP - D, dP = dO V^T
                ds.mul_(p)  # dS = P * (dP - D), the gradient of the natural-log scores
                if mask_grad is not None:
                    target = _mask_block(mask_grad, i0, i1, j0, j1)
                    target += ds.view(*plan.batch, rows, cols).sum_to_size(target.shape)
            dq_blk.baddbmm_(ds, k[:, j0:j1])  # dQ += dS K
            dk[:, j0:j1].baddbmm_(ds.transpose(1, 2), q_blk)  # dK += dS^T Q


def _forward_pieces(pieces, q, k, v, out, stats, matmuls_only=False) -> None:
    for n0, n1, _, sub in pieces:
        forward_blocks(q[n0:n1], k[n0:n1], v[n0:n1], sub, out[n0:n1], stats[n0:n1], matmuls_only)


def _backward_pieces(pieces, grad_out, grad_lse, q, k, v, out, stats, dq, dk, dv, mask_grad, matmuls_only) -> None:
    for n0, n1, index, sub in pieces:
        g = None if mask_grad is None else mask_grad[_mask_index(mask_grad, index)]
        r = slice(n0, n1)
        go, gl = grad_out[r], None if grad_lse is None else grad_lse[r]
        backward_blocks(go, gl, q[r], k[r], v[r], out[r], stats[r], sub, dq[r], dk[r], dv[r], g, matmuls_only)


def run_forward(q3, k3, v3, plan: BlockPlan, matmuls_only: bool = False):
    """(out, stats) of the (N, L, E) kernel-dtype tensors, the batch spread over the worker pool."""
    N, L = q3.shape[:2]
    out = q3.new_empty(N, L, v3.shape[-1])
    stats = q3.new_empty(N, L, 2)  # per row: the shift m and the log of the sum of exponentials
    pieces, workers = schedule(plan, q3)
    tasks = [partial(_forward_pieces, pieces[w::workers], q3, k3, v3, out, stats, matmuls_only) for w in range(workers)]
    run_parallel(tasks)
    return out, stats


def run_backward(grad_out, grad_lse, q, k, v, out, stats, plan: BlockPlan, mask_shape=None, matmuls_only=False):
    """(dq, dk, dv, mask_grad) with dq and dk still to be multiplied by the scale."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    pieces, workers = schedule(plan, q)
    # one mask-gradient buffer per worker: pieces that share broadcast mask entries must not race
    mask_grads = [None if mask_shape is None else q.new_zeros(mask_shape) for _ in range(workers)]
    tasks = [
        partial(
            _backward_pieces,
            pieces[w::workers],
            grad_out,
            grad_lse,
            q,
            k,
            v,
            out,
            stats,
            dq,
            dk,
            dv,
            mask_grads[w],
            matmuls_only,
        )  # fmt: skip
        for w in range(workers)
    ]
    run_parallel(tasks)
    mask_grad = None
    if mask_shape is not None:
        mask_grad = mask_grads[0]
        for g in mask_grads[1:]:
            mask_grad += g
    return dq, dk, dv, mask_grad


def lse_from_stats(stats: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
    """The natural-log logsumexp (N, L) from the kernels' (shift, log sum) pairs; -inf where nothing is visible."""
    lse = stats.sum(dim=-1)
    if plan.base2:
        lse.mul_(LN2)
    return lse.masked_fill_(lse == math.inf, -math.inf)


_NO_DOUBLE_BACKWARD = (
    "attnlib's blocked attention (chunked_attention, flash_attention, FlashAttention2) has a hand-written "
    "backward that is not itself differentiable, and it frees what it saved after one backward pass; for second "
    "derivatives use attnlib.scaled_dot_product_attention, and for a second backward pass retain_graph=True"
)


def saved_for_backward(ctx) -> tuple[torch.Tensor, ...]:
    """``ctx.saved_tensors``, with attnlib's message when a second backward finds them freed."""
    try:
        return ctx.saved_tensors
    except RuntimeError as err:
        raise RuntimeError(f"{_NO_DOUBLE_BACKWARD} (torch: {str(err).splitlines()[0]})") from None


def refuse_double_backward() -> None:
    """Called at the top of a backward: with ``create_graph=True`` grad mode is on, and the blocked backward
    (in-place ops, worker threads) would silently return gradients without a graph."""
    if torch.is_grad_enabled():
        raise RuntimeError(_NO_DOUBLE_BACKWARD + " (this call asked for create_graph=True)")


class BlockedAttention(torch.autograd.Function):
    """Autograd wrapper of the kernels: saves q, k, v, the output (in the kernel dtype: fp32 for fp16/bf16
    inputs, so the backward's D = rowsum(dO * O) is not rounded) and two numbers per row; the backward
    recomputes the weights block by block. Returns the output and the natural-log logsumexp (N, L), both
    differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, additive, plan, scale):
        q, k, v = q.detach().contiguous(), k.detach().contiguous(), v.detach().contiguous()
        out, stats = run_forward(q, k, v, plan)
        ctx.plan, ctx.scale = plan, scale
        ctx.mask_shape = None if additive is None or not additive.requires_grad else additive.shape
        ctx.save_for_backward(q, k, v, out, stats)
        return out, lse_from_stats(stats, plan)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        refuse_double_backward()
        q, k, v, out, stats = saved_for_backward(ctx)
        grad_out = grad_out.contiguous()
        grad_lse = grad_lse.masked_fill(stats[..., 0] == math.inf, 0.0).contiguous()  # fully masked: a constant
        dq, dk, dv, mask_grad = run_backward(grad_out, grad_lse, q, k, v, out, stats, ctx.plan, ctx.mask_shape)
        return dq.mul_(ctx.scale), dk.mul_(ctx.scale), dv, mask_grad, None, None


# --------------------------------------------------------------------------------------------------------------
# The unchecked entry: units, dtype, plan
# --------------------------------------------------------------------------------------------------------------


def _units(bound: float, additive: torch.Tensor | None, scale: float, dtype: torch.dtype) -> str | None:
    """How the kernels can hold the scores in ``dtype`` without overflow: "base2", "natural" or None (cannot).

    Base 2 multiplies scores and additive masks by log2(e) (so ``finfo.min`` masks, the Hugging Face convention,
    would overflow to -inf there); natural units add the mask as it is, as SDPA does.
    """
    limit = torch.finfo(dtype).max / 8  # headroom for score differences and mask additions
    mask_hi = mask_lo = 0.0
    if additive is not None and additive.numel():
        lo, hi = torch.aminmax(additive.detach())
        mask_hi, mask_lo = max(0.0, float(hi)), max(0.0, -float(lo))
    if (bound + max(mask_hi, mask_lo)) * LOG2E < limit:
        return "base2"
    if bound + mask_hi < limit and scale < limit:
        return "natural"
    return None


def _headroom(dtype: torch.dtype, S: int, v_max: float, base2: bool) -> float:
    """How far above the running shift scores may go unrefreshed: HEADROOM, less whatever would bring the sums
    (up to S · 2^headroom) or acc (times max|v|) within 2^16 of the dtype's largest value (0: always refresh)."""
    room = math.log2(torch.finfo(dtype).max) - 16 - math.log2(max(S, 1)) - math.log2(max(v_max, 1.0))
    if not base2:
        room *= LN2
    return max(0.0, min(HEADROOM if base2 else HEADROOM * LN2, room))


def _pad_dims(mask: torch.Tensor, rank: int) -> torch.Tensor:
    return mask.reshape((1,) * (rank - mask.dim()) + tuple(mask.shape))


def make_plan(q, k, v, attn_mask, is_causal, causal_alignment, scale, block_q, block_k, maxima):
    """The kernels' inputs for checked arguments: ``(q3, k3, v3, additive, plan)``, (N, L, E) tensors in the
    kernel dtype (fp32 for fp16/bf16, float64 where float32 scores would overflow even in natural units).
    ``maxima`` is ``(max|q|, max|k|, max|v|)`` as :func:`check_blocked_call` returns it."""
    q_max, k_max, v_max = maxima
    batch, L, S = q.shape[:-2], q.shape[-2], k.shape[-2]
    N = math.prod(batch)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    bound = scale * q.shape[-1] * q_max * k_max  # >= every |score|
    additive_in = None if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask
    units = _units(bound, additive_in, scale, compute)
    kernel_dtype = compute
    if units is None and compute != torch.float64:
        kernel_dtype, units = torch.float64, _units(bound, additive_in, scale, torch.float64)
    if units is None:
        raise ValueError(
            f"scale={scale:g} with |q| up to {q_max:.3g} and |k| up to {k_max:.3g} makes the scores overflow even "
            "float64; use a smaller scale"
        )
    q3, k3, v3 = (t.reshape(N, t.shape[-2], t.shape[-1]).to(kernel_dtype) for t in (q, k, v))
    blocked = additive = None
    if attn_mask is not None:
        padded = _pad_dims(attn_mask, len(batch) + 2)
        if attn_mask.dtype == torch.bool:
            blocked = ~padded
        else:
            additive = padded.to(kernel_dtype)
    offset = causal_offset(is_causal, causal_alignment, L, S)
    base2 = units == "base2"
    alpha = scale * LOG2E if base2 else scale
    # the lazy shift, subtracted inside the matmul, only for scores small enough that alpha * q.k rounds no worse
    # than the textbook's separate subtraction (|score| <= 256: a residual of at most 2^-16 in the exponent)
    headroom = _headroom(kernel_dtype, S, v_max, base2) if bound * (LOG2E if base2 else 1.0) <= 256 else 0.0
    plan = BlockPlan(batch, L, S, block_q, block_k, offset, blocked, additive, q.device, alpha, base2, headroom)
    if additive is not None and additive.numel():
        finite = additive.detach().masked_fill(additive.detach().isinf(), 0.0)  # -inf entries only give exp = 0
        lo, hi = torch.aminmax(finite)
        plan.mask_high = max(0.0, float(hi)) * (LOG2E if base2 else 1.0)
        if -float(lo) * (LOG2E if base2 else 1.0) > 256:  # the lazy shift adds the mask after subtracting m: keep
            plan.headroom = 0.0  # them small, or a finfo.min mask would swallow the scores (textbook order then)
    return q3, k3, v3, additive, plan


def blocked_attention(q, k, v, attn_mask, is_causal, causal_alignment, scale, block_q, block_k, return_lse, maxima):
    """The unchecked entry of the core: arguments as :func:`check_blocked_call` returns them. Returns the output
    (..., L, Ev) in q's dtype, and with ``return_lse`` the natural-log logsumexp (..., L) (fp32 for fp16/bf16)."""
    batch, L, Ev = q.shape[:-2], q.shape[-2], v.shape[-1]
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if math.prod(batch) == 0:  # nothing to compute, but keep the graph: the output depends on q, k, v (and the mask)
        link = (q.sum() + k.sum() + v.sum()) * 0
        if attn_mask is not None and attn_mask.is_floating_point():
            link = link + attn_mask.sum() * 0
        out = q.new_zeros(*batch, L, Ev) + link
        return (out, torch.full((*batch, L), -math.inf, dtype=compute, device=q.device) + link) if return_lse else out
    q3, k3, v3, additive, plan = make_plan(
        q, k, v, attn_mask, is_causal, causal_alignment, scale, block_q, block_k, maxima
    )
    out, lse = BlockedAttention.apply(q3, k3, v3, additive, plan, scale)
    out = out.reshape(*batch, L, Ev).to(q.dtype)
    if not return_lse:
        return out
    return out, lse.reshape(*batch, L).to(compute)
