"""How often a caught mistake gets only the generic message ("out differs from the reference at N of M entries").

SWEEP is a list of plausible wrong answers, written the way learners write them (a copy of a solution with one
change), including the mistakes issue 22 found misdiagnosed or left generic. Each must be caught, none may be
misdiagnosed (no check of a copy may carry a hint that names a different mistake: the ``avoid`` pattern), and at
most one caught mistake in six may get only generic messages on every failed check.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from exercise_harness import SOLUTIONS, grade, load

from attnlib.grader import diagnose
from attnlib.grader.common import NO_FULL_MATRIX_MARK
from attnlib.grader.exercises import BY_KEY, EXERCISES

# (id, exercise key, old, new, regex a hint on some failed check must match or None, regex no message may match)
SWEEP = [
    ("softmax-global-max", "03.1", "m = z.amax(dim=dim, keepdim=True)", "m = z.max()", "whole tensor", "overflow"),
    (
        "softmax-sum-all",
        "03.1",
        "torch.exp(shifted).sum(dim=dim, keepdim=True)",
        "torch.exp(shifted).sum()",
        "whole tensor|every entry",
        None,
    ),
    ("online-no-shift", "03.3", "e = torch.exp(rows - shift[:, None])", "e = torch.exp(rows)", None, None),
    ("scores-k-T", "04.1", "(q @ k.transpose(-2, -1))", "(q @ k.T)", "k.T", "swapped"),
    ("scores-transpose-12", "04.1", "(q @ k.transpose(-2, -1))", "(q @ k.transpose(1, 2))", "transpose", "swapped"),
    (
        "padding-minus-one",
        "05.3",
        "positions[None, :] < lengths[:, None]",
        "positions[None, :] < lengths[:, None] - 1",
        "last real token",
        None,
    ),
    ("padding-3d", "05.3", "[:, None, None, :]", "[:, None, :]", "shape", None),
    (
        "self-weights-transposed",
        "06.1",
        "return weights @ v, weights",
        "return weights @ v, weights.transpose(-2, -1)",
        "transposed",
        "wrong axis",
    ),
    (
        "self-k-T",
        "06.1",
        "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "scores = q @ k.T / math.sqrt(q.shape[-1])",
        "k.T",
        "wrong way round|swapped",
    ),
    (
        "self-no-scale",
        "06.1",
        "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "scores = q @ k.transpose(-2, -1)",
        "not scaled",
        None,
    ),
    (
        "cross-k-qT",
        "07.1",
        "real, q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "real, k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "swapped",
        "future",
    ),
    (
        "cross-lengths-3d-mask",
        "07.1",
        ").unsqueeze(1)  # (batch, 1, S_max)",
        ")  # (batch, 1, S_max)",
        "no axis for the queries",
        "swapped|wrong input",
    ),
    (
        "qkv-chunk-then-bare-view",
        "08.1",
        "parts = qkv.reshape(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)",
        "parts = [t.reshape(batch, num_heads, seq, head_dim) for t in qkv.chunk(3, dim=-1)]",
        "without the transpose",
        "interleaved|every third",
    ),
    (
        "contrib-rows-of-w-o",
        "08.2",
        "per_head = w_o.reshape(w_o.shape[0], heads, head_dim).transpose(0, 1)",
        "per_head = w_o.reshape(heads, head_dim, w_o.shape[0]).transpose(-2, -1)",
        "ROWS",
        "every heads-th",
    ),
    (
        "head-weights-k-columns",
        "08.5",
        "q_h, k_h = x @ w_q[block].T, x @ w_k[block].T",
        "q_h, k_h = x @ w_q[block].T, x @ w_k[:, block]",
        "k is taken from columns",
        "q is taken",
    ),
    (
        "block-weights-transposed",
        "10.1",
        "self_weights, cross_weights\n",
        "self_weights.transpose(-2, -1), cross_weights\n",
        "transposed",
        "wrong axis",
    ),
    (
        "kv-new-key-first",
        "10.3",
        "keys = torch.cat([k_cache, k], dim=2)",
        "keys = torch.cat([k, k_cache], dim=2)",
        "at the end of the cache",
        "BEFORE attending",
    ),
    (
        "window-no-diagonal",
        "11.2",
        "(offset >= 0) & (offset < window)",
        "(offset > 0) & (offset < window)",
        "itself|diagonal",
        None,
    ),
    (
        "chunk-causal-diagonal",
        "12.2",
        "s.masked_fill(cols > rows,",
        "s.masked_fill(cols >= rows,",
        "diagonal|itself",
        None,
    ),
    (
        "bert-mask-queries",
        "14.1",
        "mask = attention_mask.bool()[:, None, None, :]",
        "mask = attention_mask.bool()[:, None, :, None]",
        "quer",
        "wrong axis",
    ),
    (
        "chunk-max-zero",
        "12.2",
        "m = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype)",
        "m = torch.zeros(q.shape[:-1], dtype=q.dtype)",
        "starts at 0",
        None,
    ),
    (
        "chunk-rows-in-block",
        "12.4",
        "rows = torch.arange(i, i + qi.shape[-2])[:, None]",
        "rows = torch.arange(qi.shape[-2])[:, None]",
        "inside their query block",
        "diagonal|ignored|bottom-right",
    ),
    (
        "merge-max-zero",
        "13.1",
        "m = lses.amax(dim=0)",
        "m = torch.zeros_like(lses[0])\n    for lse in lses:\n        m = torch.maximum(m, lse)",
        "starts at 0",
        "whole tensor|without the row's max",
    ),
    ("merge-global-max", "13.1", "m = lses.amax(dim=0)", "m = lses.amax()", "whole tensor", "starts at 0"),
    (
        "merge-no-shift",
        "13.1",
        "w = torch.exp(lses - shift)",
        "w = torch.exp(lses)",
        "without the row's max",
        "starts at 0|whole tensor",
    ),
    (
        "merge-no-guard",
        "13.1",
        "shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))",
        "shift = m",
        "saw no key",
        None,
    ),
    (
        "merge-mean",
        "13.1",
        "out = (w[..., None] * outs).sum(dim=0) / torch.where(total > 0, total, torch.ones_like(total))[..., None]",
        "out = outs.mean(dim=0)",
        "equal weights",
        None,
    ),
    (
        "causal-linear-noncausal-norm",
        "11.4",
        "z = torch.cumsum(phi_k, dim=-2)",
        "z = phi_k.sum(dim=-2, keepdim=True)",
        "normaliser",
        None,
    ),
    (
        "slopes-power-of-two",
        "09.6",
        "slopes = powers(lower) + powers(2 * lower)[0::2][: num_heads - lower]",
        "slopes = powers(num_heads)",
        "power of two",
        None,
    ),
    ("bias-top-left", "09.7", "torch.arange(L)[:, None] + (S - L)", "torch.arange(L)[:, None]", "top-left", None),
    ("mask-mod-causal-only", "11.5", "(DOC_IDS[q_idx] == DOC_IDS[kv_idx]) & ", "", "OTHER documents", None),
    ("softcap-clamp", "11.6", "CAP * torch.tanh(score / CAP)", "score.clamp(-CAP, CAP)", "clamp", None),
    ("stats-ddof0", "14.4", "scores.std(dim=0)", "scores.std(dim=0, unbiased=False)", "ddof", None),
    ("stats-diagonal", "14.4", "weights[n, :, i, i - 1]", "weights[n, :, i, i]", "diagonal", None),
    (
        "shift-backwards",
        "09.1",
        "m[0::2, 1::2] = torch.diag(s)\n    m[1::2, 0::2] = torch.diag(-s)",
        "m[0::2, 1::2] = torch.diag(-s)\n    m[1::2, 0::2] = torch.diag(s)",
        "BACK",
        None,
    ),
    (
        "partial-theta-head-dim",
        "09.2",
        "dtype=torch.float64) / r)",
        "dtype=torch.float64) / x.shape[-1])",
        "whole head",
        None,
    ),
    (
        "partial-row-0",
        "09.2",
        "positions.double()[:, None, :, None]",
        "positions[:1].double()[:, None, :, None]",
        "row 0",
        None,
    ),
    (
        "half-rope-theta-float16",
        "09.3",
        "freqs = positions.double()[:, None] * inv_freq",
        "freqs = positions.double()[:, None] * inv_freq.to(x.dtype)",
        "still rounded to float16",
        "bug is still there",
    ),
    (
        "weight-halves-swapped",
        "09.4",
        "2, cols).transpose(1, 2)",
        "2, cols).flip(2).transpose(1, 2)",
        "swapped",
        None,
    ),
    (  # square weights get the hint; the others come back transposed (a shape error)
        "weight-columns",
        "09.4",
        "return w.reshape(num_heads, rows // num_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)",
        "return w.T.reshape(num_heads, rows // num_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols).T",
        "columns are reordered",
        None,
    ),
    (
        "weight-one-block",
        "09.4",
        "w.reshape(num_heads, rows // num_heads // 2, 2, cols)",
        "w.reshape(1, rows // 2, 2, cols)",
        "inside each head",
        None,
    ),
    (
        "gqa-repeat",
        "11.1",
        "k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)",
        "k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)",
        "tiled",
        None,
    ),
    (
        "mha-no-out",
        "08.3",
        "return self.w_o(merge_heads(weights @ v)), weights",
        "return merge_heads(weights @ v), weights",
        "output projection",
        None,
    ),
    (
        "masked-fill-zero",
        "05.5",
        'scores.masked_fill(~mask, float("-inf"))',
        "scores.masked_fill(~mask, 0.0)",
        "0 instead of -inf",
        None,
    ),
    (
        "loss-no-shift",
        "10.2",
        "log_probs = torch.log_softmax(logits[:, :-1], dim=-1)\n    targets = tokens[:, 1:]",
        "log_probs = torch.log_softmax(logits, dim=-1)\n    targets = tokens",
        "shift",
        None,
    ),
]

# the messages that name no mistake: where the output differs, that it holds NaN/inf, or a bare error
GENERIC = re.compile(
    r"^(\w+ (differs from the reference at|is wrong at) \d+ of \d+|\w+ contains NaN or inf|raised \w+: [^:]*$)"
)


def _messages(key, old, new):
    ex = BY_KEY[key]
    broken = load(SOLUTIONS, ex.set, (old, new), ex.entry)
    return grade(ex, broken[ex.entry], memory_check=False)


@pytest.mark.parametrize("row", SWEEP, ids=[r[0] for r in SWEEP])
def test_each_plausible_mistake_is_caught_and_never_misdiagnosed(row):
    ident, key, old, new, hint, avoid = row
    lost, messages = _messages(key, old, new)
    assert lost > 0, f"{ident} was not caught"
    if hint:
        assert any(re.search(hint, m) for m in messages), (ident, messages)
    if avoid:
        assert not [m for m in messages if re.search(avoid, m)], (ident, messages)


def test_at_most_one_caught_mistake_in_six_gets_only_the_generic_message():
    generic = []
    for ident, key, old, new, _, _ in SWEEP:
        _, messages = _messages(key, old, new)
        if messages and all(GENERIC.match(m) for m in messages):
            generic.append(ident)
    assert len(generic) * 6 <= len(SWEEP), (len(generic), len(SWEEP), generic)


# (exercise graded, old, new in the EARLIER exercise's cell, regex the message must match): a chained exercise's
# failure caused by an earlier exercise names that exercise
CHAINED = [
    (
        "04.2",
        "scale = 1.0 / math.sqrt(q.shape[-1])\n    return (q @ k.transpose(-2, -1)) * scale",
        "scale = 1.0 / math.sqrt(q.shape[-1])\n    return (q.double() @ k.double().transpose(-2, -1)) * scale",
        "exercise 4.1",
    ),
    (
        "09.7",
        "slopes = powers(lower) + powers(2 * lower)[0::2][: num_heads - lower]",
        "slopes = powers(num_heads)",
        "exercise 9.6",
    ),
]


@pytest.mark.parametrize("row", CHAINED, ids=[r[0] for r in CHAINED])
def test_a_chained_exercise_names_the_earlier_exercise_that_caused_its_failure(row):
    key, old, new, pattern = row
    ex = BY_KEY[key]
    lost, messages = grade(ex, load(SOLUTIONS, ex.set, (old, new))[ex.entry])
    assert lost > 0 and messages and all(re.search(pattern, m) for m in messages), messages


def test_the_earlier_exercise_itself_checks_what_it_hands_on():
    ex = BY_KEY["04.1"]
    old, new = CHAINED[0][1:3]
    lost, messages = grade(ex, load(SOLUTIONS, ex.set, (old, new))[ex.entry])
    assert lost == ex.points and all("float32" in m for m in messages), messages


def _complete(wrong, expected):
    """A mistake's outputs, with the forward names it does not change taken from the reference and each in the
    reference's dtype (as a learner's code that makes only that mistake returns them)."""
    forward = {n: e for n, e in expected.items() if not n.startswith("grad:")}
    got = {**forward, **wrong}  # with the mistake's gradients, which the worker sends back too
    return {n: np.asarray(g).astype(forward[n].dtype) if n in forward else g for n, g in got.items()}


@pytest.mark.parametrize("ex", [ex for ex in EXERCISES if ex.style != "question"], ids=lambda ex: ex.key)
def test_each_catalogued_hint_is_given_for_its_mistake_and_for_no_other(ex):
    """Every catalogued mistake's own outputs get its own hint; another hint only where the two mistakes give the
    same outputs on that check (the evidence cannot tell them apart there)."""
    for case in ex.cases(ex.rng(1)):
        if case.name.endswith(NO_FULL_MATRIX_MARK):
            continue
        expected = ex.expect(case)
        forward = {n: e for n, e in expected.items() if not n.startswith("grad:")}
        mistakes = list(ex.mistakes(case))
        for hint, wrong in mistakes:
            got = _complete(wrong, expected)
            if diagnose.matches(got, forward, magnitude=case.magnitude):
                continue  # this check cannot show the mistake in the forward pass
            ok, message = diagnose.diagnose(
                got, forward, mistakes, distribution=ex.distribution, magnitude=case.magnitude
            )
            assert not ok, (ex.key, case.name, hint)
            if message != hint:
                other = next((w for h, w in mistakes if h == message), None)
                same = other is not None and diagnose.matches(got, _complete(other, forward), magnitude=case.magnitude)
                assert same, (ex.key, case.name, "mistake:", hint, "got the hint:", message)
