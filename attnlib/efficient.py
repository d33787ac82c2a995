r"""Memory-efficient attention: the FlashAttention algorithm in plain PyTorch.

The math path (:func:`attnlib.scaled_dot_product_attention`) builds the whole (L, S) score matrix, so its memory
grows with L·S: 8 GiB per (batch, heads) pair of fp32 scores at B=4, H=8, L=S=8192. :func:`chunked_attention`
gives the same output while holding only one (block_q, block_k) block of scores at a time. It walks over query
blocks and, for each, over key blocks, and keeps three running quantities per query row:

* ``m``, the largest score seen so far (the running max),
* ``l``, the sum of ``exp(score - m)`` over the keys seen so far (the running sum),
* ``acc``, the sum of ``exp(score - m) * value`` (the unnormalised output).

When a new block raises the max from ``m`` to ``m'``, everything accumulated so far was computed relative to the
old max, so ``l`` and ``acc`` are multiplied by ``exp(m - m')`` before the block's terms are added. At the end
``out = acc / l`` and ``logsumexp = m + log(l)``. :func:`online_softmax` shows the same update on one vector.

Training stays linear in memory too: the backward pass saves only q, k, v, the output and the per-row logsumexp
(as its two parts, m and log l), and recomputes each block of weights as ``exp(score - m - log l)`` when it needs it.

What makes a Python loop over blocks fast enough (see ``attnlib bench``): the score scale is folded into the
matmul (``baddbmm_`` with ``alpha``, no scaled copy of q); one score buffer is reused for every block and
exponentiated in place; scores are kept in base 2 so that ``exp2`` (about 2.5x cheaper than ``exp`` on a CPU,
same accuracy) does the exponentials; causal key blocks that are entirely in the future are never computed; and
on the CPU each core runs the loop on its own slice of the batch with single-threaded ops, instead of every small
op forking and joining across the cores.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch.autograd.function import once_differentiable

from ._checks import (
    causal_bias_info,
    check_bool,
    check_float_tensor,
    check_mask,
    check_positive_int,
    shape_str,
)
from .functional import _check_qkv, _resolve_scale
from .masks import causal_mask

__all__ = ["chunked_attention", "online_softmax", "online_softmax_update"]

_ALIGNMENTS = ("top-left", "bottom-right")
# The kernels work in base 2: scores are pre-multiplied by log2(e) so that exp2 (about 2.5x cheaper than exp on a
# CPU, same accuracy) replaces exp; exp2(x * log2 e) == exp(x).
LOG2E = math.log2(math.e)


# --------------------------------------------------------------------------------------------------------------
# The idea on one vector
# --------------------------------------------------------------------------------------------------------------


def online_softmax_update(state: tuple[float, float], chunk: torch.Tensor) -> tuple[float, float]:
    r"""One step of the online softmax: fold ``chunk`` into the running ``(max, sum)``.

    ``state`` is ``(m, l)``: the largest score seen so far and :math:`\sum_j e^{s_j - m}` over those scores
    (start from ``(-inf, 0.0)``). With :math:`m' = \max(m, \max \text{chunk})` the new state is

    .. math:: l' = l\, e^{m - m'} + \sum_{s \in \text{chunk}} e^{s - m'}

    The factor :math:`e^{m - m'}` rescales the old sum to the new max; forgetting it is the classic bug.
    ``-inf`` scores (masked) add nothing; while every score so far is ``-inf`` the state stays ``(-inf, 0)``.
    """
    m, l = state
    chunk = check_float_tensor(chunk, "chunk")
    if chunk.dim() != 1 or chunk.numel() == 0:
        raise ValueError(f"chunk must be a non-empty 1-D tensor of scores, got shape {shape_str(chunk.shape)}")
    m_new = max(m, float(chunk.max()))
    if m_new == -math.inf:  # nothing but masked scores so far
        return m_new, 0.0
    rescale = math.exp(m - m_new)  # exp(-inf) = 0 on the first real chunk
    return m_new, l * rescale + float(torch.exp(chunk - m_new).sum())


def online_softmax(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """Softmax of a 1-D score vector given as consecutive chunks, reading each chunk once to get the normaliser.

    Pass 1 streams over the chunks with :func:`online_softmax_update`, keeping only the running max ``m`` and
    running sum ``l``; pass 2 returns ``exp(chunk - m) / l`` for every chunk, concatenated. The result equals
    ``torch.softmax(torch.cat(chunks), 0)``; an all ``-inf`` vector gives zeros (not NaN), as in attnlib.
    The attention kernel :func:`chunked_attention` goes one step further and never needs a second pass, because it
    multiplies the weights by the values on the fly (rescaling the partial output exactly like ``l``).
    """
    chunks = list(chunks)
    if not chunks:
        raise ValueError("chunks is empty: need at least one chunk of scores")
    for i, c in enumerate(chunks):
        check_float_tensor(c, f"chunks[{i}]")
        if c.dim() != 1 or c.numel() == 0:
            raise ValueError(f"chunks[{i}] must be a non-empty 1-D tensor, got shape {shape_str(c.shape)}")
        if torch.isnan(c).any() or torch.isposinf(c).any():
            raise ValueError(f"chunks[{i}] contains NaN or +inf; scores must be finite or -inf (masked)")
    state = (-math.inf, 0.0)
    for c in chunks:
        state = online_softmax_update(state, c)
    m, l = state
    if l == 0.0:
        return torch.zeros_like(torch.cat(chunks))
    return torch.cat([torch.exp(c - m) / l for c in chunks])


# --------------------------------------------------------------------------------------------------------------
# Blocks and masks
# --------------------------------------------------------------------------------------------------------------


def _causal_offset(is_causal: bool, alignment: str, L: int, S: int) -> int | None:
    """Query i may see key j iff j <= i + offset; None when there is no causal mask."""
    if not is_causal:
        return None
    return 0 if alignment == "top-left" else S - L


def _key_end(offset: int | None, i1: int, S: int) -> int:
    """One past the last key any query in rows [i0, i1) may see."""
    return S if offset is None else max(0, min(S, i1 + offset))


def _causal_block(offset: int | None, i0: int, i1: int, j0: int, j1: int, cache: dict) -> torch.Tensor | None:
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


class _Plan:
    """Everything the blocked loops need besides the tensors: shapes, block sizes, causal offset and masks.

    ``blocked`` (bool, True = masked) and ``additive`` (float) masks are padded to ``len(batch) + 2`` dims and
    keep their broadcast (size 1) dims; the loops slice them per block and never expand them.
    """

    def __init__(self, batch, L, S, block_q, block_k, offset, blocked, additive, device, alpha, base2=True):
        self.batch, self.L, self.S = tuple(batch), L, S
        # base2: alpha = scale * log2(e), q k^T * alpha is the score in base 2 and exp2/log2 do the work;
        # otherwise (scores or masks too large for that) alpha = scale and exp/log work on natural-log scores.
        self.alpha, self.base2 = alpha, base2
        self.exp_ = torch.Tensor.exp2_ if base2 else torch.Tensor.exp_
        self.exp = torch.exp2 if base2 else torch.exp
        self.log = torch.log2 if base2 else torch.log
        self.block_q, self.block_k, self.offset = block_q, block_k, offset
        self.blocked, self.additive = blocked, additive
        self.device = device
        self.causal_cache = {"device": device}

    def blocks(self):
        """Yield (i0, i1, [(j0, j1), ...]) with key blocks that are entirely causally masked left out."""
        for i0 in range(0, self.L, self.block_q):
            i1 = min(i0 + self.block_q, self.L)
            end = _key_end(self.offset, i1, self.S)
            yield i0, i1, [(j0, min(j0 + self.block_k, end)) for j0 in range(0, end, self.block_k)]

    def apply_masks(self, s: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
        """Mask the score block ``s`` (N, i1-i0, j1-j0) in place."""
        causal = _causal_block(self.offset, i0, i1, j0, j1, self.causal_cache)
        if causal is not None:
            s.masked_fill_(causal, -math.inf)
        if self.blocked is not None or self.additive is not None:
            s4 = s.view(*self.batch, i1 - i0, j1 - j0)
            if self.blocked is not None:
                s4.masked_fill_(_mask_block(self.blocked, i0, i1, j0, j1), -math.inf)
            if self.additive is not None:
                s4.add_(_mask_block(self.additive, i0, i1, j0, j1), alpha=LOG2E if self.base2 else 1.0)

    def piece(self, index: tuple[slice, ...]) -> _Plan:
        """The plan of the batch entries ``index`` (one slice per batch dim); broadcast mask dims stay whole."""
        sub = _Plan(
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
        )
        sub.causal_cache = self.causal_cache
        return sub

    def pieces(self, max_rows: int) -> list[tuple[int, int, tuple[slice, ...], _Plan]]:
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


def _scratch(cache: dict, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
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
# CPU: (batch, head) entries per op x block_q x block_k. An 8 MiB fp32 score block per op (per worker): ops this
# large spend their time in the matmuls and exp2 rather than in dispatch (measured with `attnlib bench`: 2^18
# reached 0.41x SDPA's throughput at L = 4096 on a 2-core AVX-512 CPU, 2^21 with 256 x 512 blocks 0.6-0.7x).
SCORES_PER_OP = 1 << 21
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

            pool = ThreadPoolExecutor(workers, thread_name_prefix="attnlib-chunked", initializer=init)
            for f in [pool.submit(int) for _ in range(workers)]:  # start every thread now
                f.result()
            torch.set_num_threads(outer)  # ... which is restored here; the callers' threads are unaffected
            _POOLS[workers] = pool
        return pool


def _run_parallel(tasks: list) -> None:
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


def _schedule(plan: _Plan, t: torch.Tensor) -> tuple[list, int]:
    """The pieces of the batch each op works on, and how many worker threads share them.

    On the CPU an op covers ``SCORES_PER_OP // (block_q * block_k)`` (batch, head) entries (fewer when that would
    leave a thread without a piece), so that per-op overhead is small while one block of scores per worker stays
    a few MiB; elsewhere (GPUs) one op covers the whole batch.
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


def _forward(q, k, v, plan: _Plan, out, stats) -> None:
    """Blocked forward; writes out (N, L, Ev) and stats (N, L, 2). Scores are q k^T * scale * log2(e) (base 2).

    ``stats[..., 0]`` is each row's largest score m and ``stats[..., 1]`` = log2 of its sum l of exp2(score - m),
    so that the row's base-2 logsumexp is their sum (natural logsumexp / ln 2). They are kept apart because
    m + log2(l) rounds log2(l) away when |m| is huge (e.g. finfo.min masks), and the backward pass needs
    exp2(score - m - log2 l) exactly. Rows whose keys are all masked get out = 0 and m = +inf (so that the
    recomputed weights are 0). With ``plan.base2`` False the scores and logs are in natural-log units instead.
    """
    N, Ev = q.shape[0], v.shape[-1]
    buffers: dict = {}
    for i0, i1, key_blocks in plan.blocks():
        rows = i1 - i0
        if not key_blocks:  # every key of these rows is causally masked
            out[:, i0:i1] = 0
            stats[:, i0:i1, 0] = math.inf
            stats[:, i0:i1, 1] = 0.0
            continue
        q_blk = q[:, i0:i1]
        acc = _scratch(buffers, "acc", (N, rows, Ev), q)
        m = l = None
        for j0, j1 in key_blocks:
            s = _scratch(buffers, "s", (N, rows, j1 - j0), q)
            # one block of scores, the only big temporary; alpha scales them in the matmul (no copy of q)
            s.baddbmm_(q_blk, k[:, j0:j1].transpose(1, 2), beta=0.0, alpha=plan.alpha)
            plan.apply_masks(s, i0, i1, j0, j1)
            m_blk = s.amax(dim=-1)
            m_new = m_blk if m is None else torch.maximum(m, m_blk)
            shift = m_new.masked_fill(m_new == -math.inf, 0.0)  # rows with nothing visible yet: exp(-inf - 0) = 0
            plan.exp_(s.sub_(shift.unsqueeze(-1)))  # weights relative to the running max, in place
            if m is None:
                l = s.sum(dim=-1)
                torch.bmm(s, v[:, j0:j1], out=acc)
            else:
                rescale = plan.exp(m - shift)  # how much the old terms shrink under the new max
                l.mul_(rescale).add_(s.sum(dim=-1))
                acc.mul_(rescale.unsqueeze(-1)).baddbmm_(s, v[:, j0:j1])
            m = m_new
        seen = l > 0
        out[:, i0:i1] = acc / torch.where(seen, l, 1.0).unsqueeze(-1)  # fully masked rows: acc = 0 -> 0
        stats[:, i0:i1, 0] = torch.where(seen, m, math.inf)
        stats[:, i0:i1, 1] = plan.log(torch.where(seen, l, 1.0))


def _backward(grad_out, grad_lse, q, k, v, out, stats, plan: _Plan, dq, dk, dv, mask_grad) -> None:
    """Blocked backward (FlashAttention-2 style): recompute the weights P = exp2(S2 - m - log2 l) block by block.

    S2 = q k^T * scale * log2(e) is the base-2 score. Accumulates into the zero-initialised dq and dk (both
    without the final factor ``scale``), dv and, when given, ``mask_grad``. ``grad_lse`` (N, L) is the gradient
    of the natural-log logsumexp output: d lse_i / d s_ij = P_ij, so it enters as dS += P * grad_lse.
    """
    N = q.shape[0]
    delta = (grad_out * out).sum(dim=-1) - grad_lse  # D_i = dO_i . O_i (= sum_j P_ij dP_ij), less the lse grad
    buffers: dict = {}
    for i0, i1, key_blocks in plan.blocks():
        rows = i1 - i0
        q_blk, do_blk, dq_blk = q[:, i0:i1], grad_out[:, i0:i1], dq[:, i0:i1]
        m_blk, log_l_blk = stats[:, i0:i1, 0:1], stats[:, i0:i1, 1:2]
        delta_blk = delta[:, i0:i1].unsqueeze(-1)
        for j0, j1 in key_blocks:
            cols = j1 - j0
            p = _scratch(buffers, "p", (N, rows, cols), q)
            p.baddbmm_(q_blk, k[:, j0:j1].transpose(1, 2), beta=0.0, alpha=plan.alpha)
            plan.apply_masks(p, i0, i1, j0, j1)
            plan.exp_(p.sub_(m_blk).sub_(log_l_blk))  # the weights of the forward pass, recomputed
            dv[:, j0:j1].baddbmm_(p.transpose(1, 2), do_blk)
            ds = _scratch(buffers, "ds", (N, rows, cols), q)
            torch.bmm(do_blk, v[:, j0:j1].transpose(1, 2), out=ds)  # dP
            ds.sub_(delta_blk).mul_(p)  # dS = P * (dP - D), the gradient of the natural-log scores
            if mask_grad is not None:
                target = _mask_block(mask_grad, i0, i1, j0, j1)
                target += ds.view(*plan.batch, rows, cols).sum_to_size(target.shape)
            dq_blk.baddbmm_(ds, k[:, j0:j1])
            dk[:, j0:j1].baddbmm_(ds.transpose(1, 2), q_blk)  # dK = dS^T q * scale


def _forward_pieces(pieces, q, k, v, out, lse) -> None:
    for n0, n1, _, sub in pieces:
        _forward(q[n0:n1], k[n0:n1], v[n0:n1], sub, out[n0:n1], lse[n0:n1])


def _backward_pieces(pieces, grad_out, grad_lse, q, k, v, out, lse, dq, dk, dv, mask_grad) -> None:
    for n0, n1, index, sub in pieces:
        g = None if mask_grad is None else mask_grad[_mask_index(mask_grad, index)]
        r = slice(n0, n1)
        _backward(grad_out[r], grad_lse[r], q[r], k[r], v[r], out[r], lse[r], sub, dq[r], dk[r], dv[r], g)


class _ChunkedAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, out and two numbers per row (max score, log of the sum of exponentials);
    the backward recomputes the weights block by block.

    Returns the output and the natural-log logsumexp (N, L), -inf on fully masked rows; both differentiable.
    """

    @staticmethod
    def forward(ctx, q, k, v, additive, plan, scale):
        N, L = q.shape[:2]
        out = q.new_empty(N, L, v.shape[-1])
        stats = q.new_empty(N, L, 2)  # per row: max score, log of the sum of exponentials
        q, k, v = q.detach(), k.detach(), v.detach()
        pieces, workers = _schedule(plan, q)
        _run_parallel([partial(_forward_pieces, pieces[w::workers], q, k, v, out, stats) for w in range(workers)])
        ctx.plan, ctx.scale = plan, scale
        ctx.mask_needs_grad = additive is not None and additive.requires_grad
        ctx.mask_shape = None if additive is None else additive.shape
        ctx.save_for_backward(q, k, v, out, stats)
        lse = stats.sum(dim=-1)
        if plan.base2:
            lse.mul_(math.log(2.0))
        return out, lse.masked_fill_(lse == math.inf, -math.inf)  # internal m = +inf: nothing visible

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, stats = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_lse = grad_lse.masked_fill(stats[..., 0] == math.inf, 0.0).contiguous()  # fully masked: a constant
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        pieces, workers = _schedule(ctx.plan, q)
        # one mask-gradient buffer per worker: pieces that share broadcast mask entries must not race
        mask_grads = [q.new_zeros(ctx.mask_shape) if ctx.mask_needs_grad else None for _ in range(workers)]
        _run_parallel(
            [
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
                )
                for w in range(workers)
            ]
        )
        mask_grad = None
        if ctx.mask_needs_grad:
            mask_grad = mask_grads[0]
            for g in mask_grads[1:]:
                mask_grad += g
        return dq.mul_(ctx.scale), dk.mul_(ctx.scale), dv, mask_grad, None, None


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def _validate(q, k, v, attn_mask, is_causal, causal_alignment, block_q, block_k, return_lse):
    """Check the arguments; returns ``(attn_mask, is_causal, causal_alignment)`` with a CausalBias resolved."""
    _check_qkv(q, k, v)
    check_bool(is_causal, "is_causal")
    check_bool(return_lse, "return_lse")
    if causal_alignment not in _ALIGNMENTS:
        raise ValueError(f"causal_alignment must be 'top-left' or 'bottom-right', got {causal_alignment!r}")
    L, S = q.shape[-2], k.shape[-2]
    bias_alignment = causal_bias_info(attn_mask, L, S)
    if bias_alignment is not None:
        if not is_causal:  # generated block by block, future key blocks skipped, as with is_causal
            attn_mask, is_causal, causal_alignment = None, True, bias_alignment
        else:  # both: a key must pass both causal masks
            attn_mask = causal_mask(L, S, alignment=bias_alignment, device=q.device)
    if attn_mask is not None:
        check_mask(attn_mask, (*q.shape[:-2], L, S), q)
    check_positive_int(block_q, "block_q")
    check_positive_int(block_k, "block_k")
    return attn_mask, is_causal, causal_alignment


def _score_bound(q: torch.Tensor, k: torch.Tensor, scale: float) -> float:
    """An upper bound on |q_i . k_j| * scale: scale * E * max|q| * max|k| (a Python float, may be inf)."""
    q_max = float(torch.linalg.vector_norm(q.detach(), ord=math.inf)) if q.numel() else 0.0
    k_max = float(torch.linalg.vector_norm(k.detach(), ord=math.inf)) if k.numel() else 0.0
    return scale * q.shape[-1] * q_max * k_max


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


def _pad_dims(mask: torch.Tensor, rank: int) -> torch.Tensor:
    return mask.reshape((1,) * (rank - mask.dim()) + tuple(mask.shape))


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    causal_alignment: str = "top-left",
    scale: float | None = None,
    block_q: int = 256,
    block_k: int = 512,
    return_lse: bool = False,
):
    r"""Scaled dot-product attention computed block by block with the online softmax; returns the output.

    Same result as ``attnlib.scaled_dot_product_attention(q, k, v, attn_mask, ...)[0]`` (within floating-point
    rounding) with memory that grows linearly in L and S: at most one (block_q, block_k) block of scores per
    (batch, head) is alive at a time (on the CPU, one block of about ``SCORES_PER_OP`` scores per worker thread),
    and no (L, S) weight matrix is ever built or returned.

    Args:
        q: queries (..., L, E), typically (batch, heads, L, head_dim).
        k: keys (..., S, E).
        v: values (..., S, Ev).
        attn_mask: bool (True = may attend) or additive float mask of q's dtype, broadcastable to (..., L, S),
            e.g. a padding mask (batch, 1, 1, S). It is sliced per block, never expanded to (..., L, S).
            torch's ``CausalBias`` (``causal_upper_left(L, S)`` / ``causal_lower_right(L, S)``) is read as
            ``is_causal=True`` with ``causal_alignment="top-left"`` / ``"bottom-right"``.
        is_causal: apply a causal mask generated block by block; key blocks that are entirely in the future are
            skipped, which roughly halves the work when L == S. Unlike ``scaled_dot_product_attention`` it may be
            combined with ``attn_mask`` (a key must then pass both), equal to passing
            ``combine_masks(causal_mask(L, S, alignment=causal_alignment), attn_mask)``.
        causal_alignment: ``"top-left"`` (query i sees keys j <= i, SDPA's ``is_causal``) or ``"bottom-right"``
            (query i sees keys j <= i + S - L, what decoding with a KV cache needs). Same when L == S.
        scale: multiplier of the scores, default :math:`1/\sqrt{E}`.
        block_q, block_k: block sizes along L and S; any positive ints (they need not divide L or S).
        return_lse: also return ``lse`` (..., L), the natural-log logsumexp over keys of the masked, scaled
            scores (what FlashAttention keeps for its backward pass); ``-inf`` for a query whose keys are all
            masked. Differentiable; float32 for fp16/bf16 inputs, q's dtype otherwise.

    Returns:
        output (..., L, Ev), or ``(output, lse)`` with ``return_lse=True``. Rows whose keys are all masked are
        zeros, with zero gradients, never NaN.

    Gradients flow to q, k, v and to a float ``attn_mask`` that requires grad; the backward pass saves only
    q, k, v, the output and one logsumexp per query row, and recomputes the weights block by block.
    fp16/bf16 inputs are computed in fp32 and the output is returned in their dtype. No dropout.
    Scores too large for base-2 arithmetic (a huge ``scale``, ``finfo.min`` masks) are computed in natural-log
    units, and, where even those would overflow float32, in float64; a ``ValueError`` naming ``scale`` is raised
    only where float64 overflows too.
    """
    attn_mask, is_causal, causal_alignment = _validate(
        q, k, v, attn_mask, is_causal, causal_alignment, block_q, block_k, return_lse
    )
    scale = _resolve_scale(scale, q.shape[-1])
    batch, L, S, Ev = q.shape[:-2], q.shape[-2], k.shape[-2], v.shape[-1]
    N = math.prod(batch)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if N == 0:  # nothing to compute, but keep the graph: the output depends on q, k, v (and the mask), as in torch
        link = (q.sum() + k.sum() + v.sum()) * 0
        if attn_mask is not None and attn_mask.is_floating_point():
            link = link + attn_mask.sum() * 0
        out = q.new_zeros(*batch, L, Ev) + link
        return (out, torch.full((*batch, L), -math.inf, dtype=compute, device=q.device) + link) if return_lse else out
    bound = _score_bound(q, k, scale)
    additive_in = None if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask
    units = _units(bound, additive_in, scale, compute)
    kernel_dtype = compute
    if units is None and compute != torch.float64:
        kernel_dtype, units = torch.float64, _units(bound, additive_in, scale, torch.float64)
    if units is None:
        raise ValueError(
            f"scale={scale:g} with |q| up to {float(q.detach().abs().max()):.3g} and |k| up to "
            f"{float(k.detach().abs().max()):.3g} "
            "makes the scores overflow even float64; use a smaller scale"
        )
    q3, k3, v3 = (t.reshape(N, t.shape[-2], t.shape[-1]).to(kernel_dtype) for t in (q, k, v))
    blocked = additive = None
    if attn_mask is not None:
        padded = _pad_dims(attn_mask, len(batch) + 2)
        if attn_mask.dtype == torch.bool:
            blocked = ~padded
        else:
            additive = padded.to(kernel_dtype)
    offset = _causal_offset(is_causal, causal_alignment, L, S)
    base2 = units == "base2"
    alpha = scale * LOG2E if base2 else scale
    plan = _Plan(batch, L, S, block_q, block_k, offset, blocked, additive, q.device, alpha, base2)
    out, lse = _ChunkedAttention.apply(q3, k3, v3, additive, plan, scale)
    out = out.reshape(*batch, L, Ev).to(q.dtype)
    if not return_lse:
        return out
    return out, lse.reshape(*batch, L).to(compute)
