"""Fair and reproducible grading: over 200 seeds, the solutions and independent correct implementations (float64,
einsum, loop, log-space, tiled versions) lose no points, and a classic mistake of every exercise loses points on
every seed. In-process, through the grader's own comparison (tests/exercise_harness.py), with single-threaded
BLAS and torch so that the sweep takes seconds per exercise, not minutes.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from exercise_harness import EXERCISES_DIR, SOLUTIONS, load, lost_points
from test_exercise_sets import BROKEN, MY_SETS

from attnlib.grader.exercises import BY_KEY, DEFAULT_SEED, EXERCISES

SEEDS = [*range(200), DEFAULT_SEED]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(1)
    except ImportError:  # only slower
        limit = contextlib.nullcontext()
    with limit:
        yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# Correct implementations written differently from the solutions


def soft_lookup_f64(query, keys, values, temperature=1.0):
    s = query.double() @ keys.double().T / temperature
    w = torch.exp(s - s.amax(-1, keepdim=True))
    w = w / w.sum(-1, keepdim=True)
    return (w @ values.double()), w


def scaled_scores_einsum(q, k):
    return torch.einsum("ld,sd->ls", q, k) / q.shape[-1] ** 0.5


def log_softmax_max_values(x, dim=-1, temperature=1.0):
    z = x / temperature
    m = z.max(dim=dim, keepdim=True).values.nan_to_num(neginf=0.0)
    lse = m + torch.log(torch.exp(z - m).sum(dim=dim, keepdim=True))
    return torch.where(torch.isneginf(lse), lse, z - lse)


def log_softmax_f64(x, dim=-1, temperature=1.0):
    z = x.double() / temperature
    s = z - z.amax(dim=dim, keepdim=True).nan_to_num(neginf=0.0)
    total = s.exp().sum(dim=dim, keepdim=True)
    return torch.where(total > 0, s - total.log(), torch.full_like(s, float("-inf")))


def online_update_logspace(m, l, chunk):
    m_new = torch.maximum(m, chunk.amax(-1))
    log_l = torch.logaddexp(torch.log(l) + m, torch.logsumexp(chunk, dim=-1))
    l_new = torch.where(torch.isfinite(m_new), torch.exp(log_l - m_new), torch.zeros_like(l))
    return m_new, l_new


def online_softmax_loop(x, block):
    out = torch.empty_like(x, dtype=torch.float64)
    flat, res = x.reshape(-1, x.shape[-1]).double(), out.view(-1, x.shape[-1])
    for r in range(flat.shape[0]):
        m, l = -math.inf, 0.0
        for j in range(0, flat.shape[1], block):
            c = flat[r, j : j + block]
            m_new = max(m, float(c.max()))
            if m_new > -math.inf:
                l = l * math.exp(m - m_new) + float(torch.exp(c - m_new).sum())
                m = m_new
        res[r] = torch.exp(flat[r] - m) / l if l > 0 else 0.0
    return out


def attention_scores_einsum(q, k, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.einsum("...ld,...sd->...ls", q, k) * scale


def sdpa_einsum(q, k, v, scale=None):
    w = torch.softmax(attention_scores_einsum(q, k, scale), dim=-1)
    return torch.einsum("...ls,...se->...le", w, v), w


def sdpa_f64(q, k, v, scale=None):
    out, w = sdpa_einsum(q.double(), k.double(), v.double(), scale)
    return out, w


def masked_additive(q, k, v, mask):
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + torch.where(mask, 0.0, -math.inf)
    top = s.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    e = torch.exp(s - top)
    total = e.sum(-1, keepdim=True)
    w = torch.where(total > 0, e / total, torch.zeros_like(e))
    return w @ v, w


def masked_f64(q, k, v, mask):
    out, w = masked_additive(q.double(), k.double(), v.double(), mask)
    return out, w


class SelfAttentionEinsum(torch.nn.Module):
    def __init__(self, d_model, d_k):
        super().__init__()
        self.w_q, self.w_k, self.w_v = (torch.nn.Linear(d_model, d_k, bias=False) for _ in range(3))

    def forward(self, x, mask=None):
        q, k, v = (torch.einsum("bld,kd->blk", x, lin.weight) for lin in (self.w_q, self.w_k, self.w_v))
        s = torch.einsum("blk,bsk->bls", q, k) / q.shape[-1] ** 0.5
        if mask is not None:
            s = s.masked_fill(~mask, -math.inf)
        w = torch.softmax(s, -1).nan_to_num(0.0)
        return w @ v, w


class CrossAttentionF64(torch.nn.Module):
    """Per source in a loop, on its real tokens only (no mask); a source of length 0 gives zeros."""

    def __init__(self, d_model, d_context, d_k):
        super().__init__()
        self.w_q = torch.nn.Linear(d_model, d_k, bias=False)
        self.w_k = torch.nn.Linear(d_context, d_k, bias=False)
        self.w_v = torch.nn.Linear(d_context, d_k, bias=False)

    def forward(self, x, context, context_lengths):
        q = x.double() @ self.w_q.weight.double().T
        k, v = (context.double() @ lin.weight.double().T for lin in (self.w_k, self.w_v))
        outs, weights = [], []
        for b, n in enumerate(context_lengths.tolist()):
            w = torch.zeros(x.shape[1], context.shape[1], dtype=torch.float64)
            if n:
                w = torch.cat([torch.softmax(q[b] @ k[b, :n].T / q.shape[-1] ** 0.5, -1), w[:, n:]], -1)
            outs.append(w @ v[b])
            weights.append(w)
        return torch.stack(outs).float(), torch.stack(weights).float()


class MultiHeadLoop(torch.nn.Module):
    """Each head attends in a Python loop over its slice of the features; merged with torch.cat."""

    def __init__(self, embed_dim, num_heads):
        super().__init__()
        self.h, self.d = num_heads, embed_dim // num_heads
        self.w_q, self.w_k, self.w_v, self.w_o = (torch.nn.Linear(embed_dim, embed_dim) for _ in range(4))

    def forward(self, query, key, value, attn_mask=None):
        q, k, v = self.w_q(query), self.w_k(key), self.w_v(value)
        outs, weights = [], []
        for h in range(self.h):
            sl = slice(h * self.d, (h + 1) * self.d)
            s = q[..., sl] @ k[..., sl].transpose(-2, -1) / math.sqrt(self.d)
            if attn_mask is not None:
                m = attn_mask if attn_mask.dim() < 4 else attn_mask[:, 0]
                s = s.masked_fill(~m, -math.inf)
            w = torch.softmax(s, -1).nan_to_num(0.0)
            outs.append(w @ v[..., sl])
            weights.append(w)
        return self.w_o(torch.cat(outs, -1)), torch.stack(weights, 1)


def split_qkv_chunks(qkv, num_heads):
    b, s, f = qkv.shape
    return tuple(t.reshape(b, s, num_heads, f // (3 * num_heads)).permute(0, 2, 1, 3) for t in qkv.chunk(3, dim=-1))


def head_contributions_loop(o, w_o):
    d = o.shape[-1]
    return torch.stack([o[:, h] @ w_o[:, h * d : (h + 1) * d].T for h in range(o.shape[1])], dim=1)


def chunked_tiles_f64(q, k, v, block_size, is_causal=False):
    """Tiles over queries too, in float64, with the log-sum-exp kept in log space."""
    q, k, v = q.double(), k.double(), v.double()
    L, S = q.shape[-2], k.shape[-2]
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    lse = torch.zeros(q.shape[:-1], dtype=torch.float64)
    for i in range(0, L, 2):
        qi = q[..., i : i + 2, :]
        m = torch.full(qi.shape[:-1], -math.inf, dtype=torch.float64)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=torch.float64)
        log_l = torch.full(qi.shape[:-1], -math.inf, dtype=torch.float64)
        for j in range(0, S, block_size):
            s = qi @ k[..., j : j + block_size, :].transpose(-2, -1) / math.sqrt(q.shape[-1])
            if is_causal:
                rows = torch.arange(i, i + qi.shape[-2])[:, None]
                s = s.masked_fill(torch.arange(j, j + s.shape[-1])[None, :] > rows, -math.inf)
            m_new = torch.maximum(m, s.amax(-1))
            acc = (
                acc * torch.exp(m - m_new)[..., None] + torch.exp(s - m_new[..., None]) @ v[..., j : j + block_size, :]
            )
            log_l = torch.logaddexp(log_l, torch.logsumexp(s, -1))
            m = m_new
        out[..., i : i + 2, :] = acc / torch.exp(log_l - m)[..., None]
        lse[..., i : i + 2] = log_l
    return out, lse


def bert_attention_by_hand(hidden, attention_mask, qw, qb, kw, kb, vw, vb, ow, ob):
    B, L, E = hidden.shape

    def heads(x):
        return x.reshape(B, L, 12, E // 12).transpose(1, 2)

    q, k, v = heads(hidden @ qw.T + qb), heads(hidden @ kw.T + kb), heads(hidden @ vw.T + vb)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(E // 12)
    s = s.masked_fill(attention_mask[:, None, None, :] == 0, -math.inf)
    w = torch.softmax(s, -1)
    return (w @ v).transpose(1, 2).reshape(B, L, E) @ ow.T + ob, w


ALTERNATIVES = {
    "01.2": [soft_lookup_f64],
    "02.1": [scaled_scores_einsum],
    "03.1": [log_softmax_max_values, log_softmax_f64],
    "03.2": [online_update_logspace],
    "03.3": [online_softmax_loop],
    "04.1": [attention_scores_einsum],
    "04.2": [sdpa_einsum, sdpa_f64],
    "05.5": [masked_additive, masked_f64],
    "06.1": [SelfAttentionEinsum],
    "07.1": [CrossAttentionF64],
    "08.1": [split_qkv_chunks],
    "08.2": [head_contributions_loop],
    "08.3": [MultiHeadLoop],
    "12.2": [chunked_tiles_f64],
    "14.1": [bert_attention_by_hand],
}
KEYS = [ex.key for ex in EXERCISES if ex.set in MY_SETS]
# One classic mistake per exercise: the first broken copy listed for it.
CLASSIC = {}
for _ident, _key, _old, _new, _hint in BROKEN:
    CLASSIC.setdefault(_key, (_ident, _old, _new))


@pytest.mark.parametrize("key", KEYS)
def test_correct_implementations_lose_nothing_on_any_seed(key):
    ex = BY_KEY[key]
    targets = [load(SOLUTIONS, ex.set)[ex.entry], *ALTERNATIVES.get(key, [])]
    lost = {
        (getattr(t, "__name__", "solution"), seed): points
        for t in targets
        for seed in SEEDS
        if (points := lost_points(ex, t, seed)) > 0
    }
    assert not lost, f"{key}: points lost by correct code at (implementation, seed): {sorted(lost.items())[:5]}"


@pytest.mark.parametrize("key", sorted(CLASSIC))
def test_a_classic_mistake_loses_points_on_every_seed(key):
    ex = BY_KEY[key]
    ident, old, new = CLASSIC[key]
    broken = load(SOLUTIONS, ex.set, (old, new), ex.entry)[ex.entry]
    kept = [seed for seed in SEEDS if lost_points(ex, broken, seed) == 0]
    assert not kept, f"{ident} scored full marks at seeds {kept[:10]}"


@pytest.mark.parametrize("key", [k for k in KEYS if BY_KEY[k].style == "fix"])
def test_the_bug_of_every_find_the_bug_exercise_loses_points_on_every_seed(key):
    ex = BY_KEY[key]
    given = load(EXERCISES_DIR, ex.set)[ex.entry]  # the code the learner gets
    kept = [seed for seed in SEEDS if lost_points(ex, given, seed) == 0]
    assert not kept, f"the bug of {key} scored full marks at seeds {kept[:10]}"


def test_sweep_covers_every_exercise():
    assert len(SEEDS) > 200
    assert set(ALTERNATIVES) <= set(KEYS)
    assert set(CLASSIC) >= {k for k in KEYS if BY_KEY[k].style != "fix"}  # find-the-bug: the test above
