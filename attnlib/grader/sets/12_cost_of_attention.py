"""Set 12 (lesson 12, the cost of attention): memory and FLOPs from the shapes, a chunked attention forward built
on lesson 3's online softmax, a causal mask bug to find in a two-level (query blocks, key blocks) version of it,
and the size of a KV cache."""

from __future__ import annotations

import math

import numpy as np

from ..common import (
    LIBRARY_ATTENTION,
    NO_FULL_MATRIX_BUDGET,
    NO_FULL_MATRIX_LENGTH,
    SOFTMAX,
    Case,
    Exercise,
    f32,
    full_attention_f64,
    is_no_full_matrix,
    memory_raises,
    no_full_matrix_case,
    qk_swap_raises,
    score_magnitude,
)

SET = "12_cost_of_attention"
TITLE = "Lesson 12: memory and FLOPs of attention, and chunked attention with the online softmax"
FROM_SCRATCH = (*SOFTMAX, *LIBRARY_ATTENTION)


def _mem_cases(rng):
    L = int(rng.choice([256, 1000, 2048]))
    return [
        # batch, heads and bytes differ, so that forgetting one of them gives its own number
        Case("batch=2, heads=8, L=S=4096, fp32 (4 bytes)", (2, 8, 4096, 4096, 4)),
        Case("batch=1, heads=12, L=S=512, fp16 (2 bytes)", (1, 12, 512, 512, 2)),
        Case("batch=2, heads=1, L=1 query, S=8192 keys, fp64 (8 bytes)", (2, 1, 1, 8192, 8)),
        Case(f"batch=3, heads=6, L={L}, S=100, fp32", (3, 6, L, 100, 4)),
    ]


def _mem_expect(case):
    B, H, L, S, nbytes = case.args
    return {"out": np.array(float(B * H * L * S * nbytes))}


def _mem_mistakes(case):
    B, H, L, S, nbytes = case.args
    why = (
        "the score matrix has one entry for every combination of batch element, head, query and key; count the "
        "entries, then the bytes each one takes"
    )
    right = B * H * L * S * nbytes
    candidates = [
        ("the heads are missing: every head has its own (L, S) scores. ", B * L * S * nbytes),
        ("the batch is missing. ", H * L * S * nbytes),
        ("that counts entries, not bytes. ", B * H * L * S),
        ("that counts bits, not bytes. ", B * H * L * S * nbytes * 8),
        ("that uses L·L; the scores are L·S. ", B * H * L * L * nbytes),
    ]
    out = []
    for hint, value in candidates:
        if value != right:  # a candidate that does not apply to this check (no bias to forget, one head)
            out.append((hint + why, {"out": np.array(float(value))}))
    return [*out, ("not the size of the scores: " + why, {})]


def _flop_cases(rng):
    D = int(rng.choice([16, 32, 64, 128]))
    return [
        Case("batch=4, heads=8, L=S=1024, head_dim=64", (4, 8, 1024, 1024, 64)),
        Case("batch=1, heads=1, L=1, S=4096, head_dim=128 (one decoding step)", (1, 1, 1, 4096, 128)),
        Case(f"batch=2, heads=12, L=S=512, head_dim={D}", (2, 12, 512, 512, D)),
    ]


def _flop_expect(case):
    B, H, L, S, D = case.args
    return {"out": np.array(4.0 * B * H * L * S * D)}


def _flop_mistakes(case):
    B, H, L, S, D = case.args
    why = (
        "count the multiply-adds of each of the two matrix products (q @ k^T and weights @ v) for one (batch, "
        "head), remember that a multiply-add is 2 FLOPs, then scale to every batch element and head (the "
        "softmax is not counted)"
    )
    right = 4 * B * H * L * S * D
    candidates = [
        (
            "that is half the count: either only one of the two matrix products, or multiply-adds instead of FLOPs. ",
            2 * B * H * L * S * D,
        ),
        ("that counts each multiply-add as one operation for only one product. ", B * H * L * S * D),
        ("the heads are missing. ", 4 * B * L * S * D),
    ]
    out = []
    for hint, value in candidates:
        if value != right:  # a candidate that does not apply to this check (no bias to forget, one head)
            out.append((hint + why, {"out": np.array(float(value))}))
    return [*out, ("not the FLOP count: " + why, {})]


# ----------------------------------------------------------------------------------------------------------
# chunked attention


def _np_chunked(
    q,
    k,
    v,
    block,
    causal=False,
    *,
    scale=None,
    rescale_acc=True,
    rescale_l=True,
    drop_last=False,
    align="top-left",
    strict=False,
    local_rows=False,
):
    """The tiled forward in NumPy (float64), with switches that reproduce its classic mistakes."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    m = np.full(q.shape[:-1], -np.inf)
    l = np.zeros(q.shape[:-1])
    acc = np.zeros((*q.shape[:-1], v.shape[-1]))
    offset = 0 if align == "top-left" else S - L
    stop = S - S % block if drop_last and S % block else S
    with np.errstate(all="ignore"):
        for j in range(0, stop, block):
            s = q @ np.swapaxes(k[..., j : j + block, :], -1, -2) * scale
            if causal:
                i_idx = (np.arange(L) % block if local_rows else np.arange(L))[:, None]
                j_idx = np.arange(j, min(j + block, S))[None, :]
                s = np.where((j_idx < i_idx + offset) if strict else (j_idx <= i_idx + offset), s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1))
            safe = np.where(np.isfinite(m_new), m_new, 0.0)
            factor = np.where(np.isfinite(m_new), np.exp(m - safe), 0.0)
            p = np.exp(s - safe[..., None])
            l = (l * factor if rescale_l else l) + p.sum(axis=-1)
            acc = (acc * factor[..., None] if rescale_acc else acc) + p @ v[..., j : j + block, :]
            m = m_new
        if strict:  # a row with every key blocked: l = 0, so the learner's acc / l is 0/0 and m + log(l) is -inf
            return {"out": acc / l[..., None], "lse": m + np.log(l)}
        out = acc / np.where(l > 0, l, 1.0)[..., None]
        lse = np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -np.inf)
    return {"out": out, "lse": lse}


def chunked_cases(rng):
    specs = [
        ("L=S=8, blocks of 3 (the last one shorter)", (2, 8, 4), (2, 8, 4), (2, 8, 3), 3, {}, 1.0),
        ("L=5 != S=9, blocks of 4", (1, 5, 8), (1, 9, 8), (1, 9, 2), 4, {}, 1.0),
        ("batch and heads (2, 3, 6, 4), blocks of 2", (2, 3, 6, 4), (2, 3, 6, 4), (2, 3, 6, 4), 2, {}, 1.0),
        ("causal (top-left), L=S=7, blocks of 3", (2, 7, 4), (2, 7, 4), (2, 7, 4), 3, {"is_causal": True}, 1.0),
        ("causal with L=4 != S=6, blocks of 4", (1, 4, 4), (1, 6, 4), (1, 6, 3), 4, {"is_causal": True}, 1.0),
        ("a block larger than S (one block)", (2, 3, 4), (2, 5, 4), (2, 5, 2), 16, {}, 1.0),
        ("large scores (|score| ~ 1000), blocks of 2", (1, 4, 4), (1, 6, 4), (1, 6, 3), 2, {}, 40.0),
    ]
    cases = []
    for name, qs, ks, vs, block, kw, big in specs:
        q, k = f32(*qs, rng=rng, scale=big), f32(*ks, rng=rng, scale=big)
        cases.append(Case(name, (q, k, f32(*vs, rng=rng), block), kw, magnitude=score_magnitude(q, k)))
    cases.append(_very_negative_case(rng))
    n = NO_FULL_MATRIX_LENGTH
    q, k, v = f32(1, n, 8, rng=rng), f32(1, n, 8, rng=rng), f32(1, n, 4, rng=rng)
    cases.append(no_full_matrix_case(f"L=S={n}, blocks of 128", (q, k, v, 128), magnitude=score_magnitude(q, k)))
    return cases


def _very_negative_case(rng, L=3, row=1, causal=False):
    """A query (``row``) whose scores are all about -1000 or lower (exp of them is 0 even in float64): a running
    max that starts at 0 instead of -inf gives l = 0 and 0/0 for it."""
    u = np.zeros(8)
    u[int(rng.integers(8))] = 1.0  # a direction every key shares (6 standard deviations along it)
    k = (f32(2, 9, 8, rng=rng) + 6.0 * u).astype(np.float32)
    q = f32(2, L, 8, rng=rng)
    along = k.astype(np.float64) @ u  # (2, 9), all positive
    q[:, row, :] = (-1000.0 * math.sqrt(8) / along.min(axis=-1))[:, None] * u  # its largest score: -1000
    return Case(
        ("causal, " if causal else "") + f"query {row} of L={L} has scores all about -1000 or lower, blocks of 4",
        (q, k, f32(2, 9, 4, rng=rng), 4),
        {"is_causal": True} if causal else {},
        magnitude=score_magnitude(q, k),
    )


def chunked_expect(case):
    import torch

    from ...functional import scaled_dot_product_attention
    from ..common import t64

    q, k, v, _ = case.args
    if is_no_full_matrix(case) and not case.kwargs.get("is_causal"):
        return full_attention_f64(q, k, v)
    L, S = q.shape[-2], k.shape[-2]
    mask = torch.ones(L, S, dtype=torch.bool).tril() if case.kwargs.get("is_causal") else None
    out, _ = scaled_dot_product_attention(t64(q), t64(k), t64(v), mask)
    s = t64(q) @ t64(k).transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return {"out": out.numpy(), "lse": torch.logsumexp(s, dim=-1).numpy()}


def chunked_mistakes(case):
    if is_no_full_matrix(case):
        return []
    q, k, v, block = case.args
    causal = bool(case.kwargs.get("is_causal", False))
    S = k.shape[-2]
    ref = chunked_expect(case)
    found = []
    dead = _score_max(q, k, causal) < -104.0  # float32's exp(s) is 0 below about -103.3 (subnormals included)
    if dead.any():
        found.append(
            (
                "the running max starts at 0 instead of -inf: for a query whose scores are all very negative, "
                "exp(s - 0) underflows to 0 in every block, so l = 0 and the output is 0/0; start m at -inf so "
                "that the first block sets it",
                {"out": np.where(dead[..., None], np.nan, ref["out"]), "lse": np.where(dead, -np.inf, ref["lse"])},
            )
        )
    found += [
        (
            "the partial output is not rescaled: when a block raises a row's max from m to m', multiply the "
            "accumulated exp(s - m) @ v by exp(m - m') before adding the block's terms (as the sum l is)",
            _np_chunked(q, k, v, block, causal, rescale_acc=False),
        ),
        (
            "the running sum l is not rescaled when the max rises: multiply it by exp(m - m') in every step",
            _np_chunked(q, k, v, block, causal, rescale_l=False),
        ),
        (
            "the running sum is not rescaled, nor the partial output: both were accumulated relative to the old "
            "max; multiply both by exp(m - m') when it rises",
            _np_chunked(q, k, v, block, causal, rescale_acc=False, rescale_l=False),
        ),
        ("the scores are not scaled by 1/sqrt(d_k)", _np_chunked(q, k, v, block, causal, scale=1.0)),
        (
            "lse is the running max m only; the log-sum-exp is m + log(l)",
            {"out": ref["out"], "lse": _score_max(q, k, causal)},
        ),
        (
            "lse is in base 2 (or uses log2): return the natural log-sum-exp, m + ln(l)",
            {"out": ref["out"], "lse": ref["lse"] / math.log(2)},
        ),
    ]
    if S % block and (not causal or S - S % block < q.shape[-2]):  # the skipped keys are visible to some query
        found.append(
            (
                f"the last, shorter key block is skipped (S={S} is not a multiple of block_size={block}): loop with "
                "range(0, S, block_size) and slice k[..., j:j + block_size, :]",
                _np_chunked(q, k, v, block, causal, drop_last=True),
            )
        )
    if causal:
        found.append(("the causal mask is ignored: block keys j > i", _np_chunked(q, k, v, block, False)))
        found.append(
            (
                "the causal mask also blocks the diagonal: query i may see key i itself (block cols > rows, not >=)",
                _np_chunked(q, k, v, block, True, strict=True),
            )
        )
        if q.shape[-2] > block:
            found.append(
                (
                    "the causal mask compares the keys' positions with the queries' positions inside their query "
                    "block (0 .. block_size - 1), not in the sequence: every query block after the first sees too "
                    "few keys",
                    _np_chunked(q, k, v, block, True, local_rows=True),
                )
            )
        if q.shape[-2] != S:
            found.append(
                (
                    "the causal mask is aligned bottom-right; this exercise asks for is_causal=True's top-left "
                    "alignment: query i sees keys j <= i",
                    _np_chunked(q, k, v, block, True, align="bottom-right"),
                )
            )
    return found


def _score_max(q, k, causal):
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    s = q64 @ np.swapaxes(k64, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
    return s.max(axis=-1)


def chunked_raises(case):
    q, k = case.args[:2]
    return [*memory_raises(q.shape[-2], k.shape[-2]), *qk_swap_raises(q, k, "each block's scores")]


def _fix_cases(rng):
    """Causal checks with several query blocks each: the bug shows only in the query blocks after the first."""
    cases = []
    for name, (B, H), L, S, E, Ev, block in (
        ("causal, L=S=9, blocks of 4 (three query blocks, the last one shorter)", (2, 1), 9, 9, 4, 3, 4),
        ("causal with L=7 != S=11, blocks of 2", (1, 2), 7, 11, 8, 4, 2),
        ("causal with L=8 > S=5, blocks of 3", (1, 1), 8, 5, 4, 4, 3),
        ("causal, batch and heads (2, 3), L=S=10, blocks of 3", (2, 3), 10, 10, 8, 5, 3),
    ):
        q, k, v = f32(B, H, L, E, rng=rng), f32(B, H, S, E, rng=rng), f32(B, H, S, Ev, rng=rng)
        cases.append(Case(name, (q, k, v, block), {"is_causal": True}, magnitude=score_magnitude(q, k)))
    cases.append(_very_negative_case(rng, L=6, row=5, causal=True))  # in the second query block
    n = NO_FULL_MATRIX_LENGTH
    q, k, v = f32(1, n, 8, rng=rng), f32(1, n, 8, rng=rng), f32(1, n, 4, rng=rng)
    name = f"causal, L=S={n}, blocks of 128"
    cases.append(no_full_matrix_case(name, (q, k, v, 128), {"is_causal": True}, magnitude=score_magnitude(q, k)))
    return cases


# ----------------------------------------------------------------------------------------------------------
# the KV cache: its bytes, and how many tokens fit


def _kv(B, layers, kv_heads, seq, head_dim, nbytes):
    return 2 * B * layers * kv_heads * seq * head_dim * nbytes


def kv_cases(rng):
    seq = int(rng.integers(100, 5000))
    # every factor different from the others and from 2, so that forgetting any one gives its own number
    specs = ((3, 6, 5, 1000, 64, 4), (1, 32, 8, 4096, 128, 4), (5, 12, 4, 512, 32, 1), (7, 24, 3, seq, 96, 4))
    return [
        Case(f"batch={B}, {n} layers, {h} kv heads, {t} tokens, head_dim={d}, {b} bytes", (B, n, h, t, d, b))
        for B, n, h, t, d, b in specs
    ]


def kv_expect(case):
    return {"out": np.array(float(_kv(*case.args)))}


def kv_mistakes(case):
    B, n, h, t, d, b = case.args
    why = (
        "the cache stores, for every layer, every kv head, every token and every batch element, one key AND one "
        "value vector of head_dim numbers of bytes_per_element bytes"
    )
    right = _kv(*case.args)
    candidates = [
        ("only the keys (or only the values) are counted. ", right // 2),
        ("the layers are missing: every layer has its own cache. ", right // n),
        ("the batch is missing. ", right // B),
        ("the kv heads are missing. ", right // h),
        ("that counts numbers, not bytes. ", right // b),
        ("that counts bits, not bytes. ", right * 8),
    ]
    out = [(hint + why, {"out": np.array(float(v))}) for hint, v in candidates if v != right]
    return [*out, ("not the size of the cache: " + why, {})]


def tokens_cases(rng):
    # a few hundred tokens with a clear fraction left over, so that an answer that is not a whole number (or
    # rounded up) is visibly wrong, not within the comparison's relative tolerance
    per = _kv(5, 6, 4, 1, 64, 4)
    memory = per * int(rng.integers(50, 500)) + int(per * rng.uniform(0.2, 0.8))
    specs = ((50_000_000, 3, 32, 8, 128, 2), (memory, 5, 6, 4, 64, 4), (10**7, 7, 12, 3, 96, 1))
    return [
        Case(f"{m} bytes, batch={B}, {n} layers, {h} kv heads, head_dim={d}, {b} bytes", (m, B, n, h, d, b))
        for m, B, n, h, d, b in specs
    ]


def tokens_expect(case):
    m, *rest = case.args
    B, n, h, d, b = rest
    return {"out": np.array(float(m // _kv(B, n, h, 1, d, b)))}


def tokens_mistakes(case):
    m, B, n, h, d, b = case.args
    per = _kv(B, n, h, 1, d, b)
    right = m // per
    why = (
        "divide the memory by what ONE more token costs in the cache (a key and a value per layer, kv head and "
        "batch element), and keep only whole tokens"
    )
    candidates = [
        ("a token costs a key AND a value: that counts only one of them. ", m // (per // 2)),
        ("the layers are missing from a token's cost. ", m // (per // n)),
        ("that is not a whole number of tokens: round down. ", m / per),
        ("rounded up: a token that does not fit completely does not fit. ", -(-m // per)),
    ]
    out = [(hint + why, {"out": np.array(float(v))}) for hint, v in candidates if v != right]
    return [*out, ("not the number of tokens: " + why, {})]


EXERCISES = [
    Exercise(
        key="12.1",
        set=SET,
        entry="score_memory_bytes",
        title="Question: the memory of the score matrix",
        points=2,
        difficulty="easy",
        minutes=5,
        cases=_mem_cases,
        expect=_mem_expect,
        mistakes=_mem_mistakes,
        arg_names=("batch", "heads", "L", "S", "bytes_per_element"),
        style="question",
    ),
    Exercise(
        key="12.2",
        set=SET,
        entry="chunked_attention",
        title="Chunked (tiled) attention with the online softmax, never holding all the scores",
        points=6,
        difficulty="hard",
        minutes=40,
        returns=("out", "lse"),
        forbidden=FROM_SCRATCH,
        cases=chunked_cases,
        expect=chunked_expect,
        mistakes=chunked_mistakes,
        raises=chunked_raises,
        memory_limit_bytes=NO_FULL_MATRIX_BUDGET,
        arg_names=("q", "k", "v", "block_size"),
    ),
    Exercise(
        key="12.3",
        set=SET,
        entry="attention_flops",
        title="Question: the FLOPs of one attention forward pass",
        points=1,
        difficulty="easy",
        minutes=5,
        cases=_flop_cases,
        expect=_flop_expect,
        mistakes=_flop_mistakes,
        arg_names=("batch", "heads", "L", "S", "head_dim"),
        style="question",
    ),
    Exercise(
        key="12.4",
        set=SET,
        entry="fixed_chunked_attention",
        title="Find the bug: causal chunked attention that is right for the first block of queries only",
        points=3,
        difficulty="medium",
        minutes=15,
        returns=("out", "lse"),
        forbidden=FROM_SCRATCH,
        cases=_fix_cases,
        expect=chunked_expect,
        mistakes=chunked_mistakes,
        raises=chunked_raises,
        memory_limit_bytes=NO_FULL_MATRIX_BUDGET,
        arg_names=("q", "k", "v", "block_size"),
        style="fix",
    ),
    Exercise(
        key="12.5",
        set=SET,
        entry="kv_cache_bytes",
        title="Question: the memory of a KV cache",
        points=2,
        difficulty="easy",
        minutes=10,
        cases=kv_cases,
        expect=kv_expect,
        mistakes=kv_mistakes,
        arg_names=("batch", "layers", "kv_heads", "seq", "head_dim", "bytes_per_element"),
        style="question",
    ),
    Exercise(
        key="12.6",
        set=SET,
        entry="kv_cache_max_tokens",
        title="Question: how many tokens a memory budget holds in the KV cache",
        points=2,
        difficulty="medium",
        minutes=10,
        cases=tokens_cases,
        expect=tokens_expect,
        mistakes=tokens_mistakes,
        arg_names=("memory_bytes", "batch", "layers", "kv_heads", "head_dim", "bytes_per_element"),
        style="question",
    ),
]
