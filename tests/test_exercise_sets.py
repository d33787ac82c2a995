"""The exercise sets: layout, notebooks, full marks for the solutions, zero for the untouched exercises, and
every catalogued mistake (one broken copy of a solution per mistake) losing points with its own hint.

Everything runs in-process through the grader's comparison code (tests/exercise_harness.py); the sandboxed
engine is tested end to end in tests/test_grader.py.
"""

from __future__ import annotations

import importlib
import re

import nbformat
import pytest
from exercise_harness import EXERCISES_DIR, ROOT, SOLUTIONS, grade, load

from attnlib import course
from attnlib.grader.exercises import BY_KEY, EXERCISE_SETS, EXERCISES, SETS_DIR, exercises_of

MY_SETS = [s for s in EXERCISE_SETS if s[:2] in {"01", "02", "03", "04", "05", "06", "07", "08", "12", "14"}]


def test_layout_lesson_set_checks_share_number_and_slug():
    lessons = {Path_stem(p): p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for set_name, title in EXERCISE_SETS.items():
        assert set_name in lessons, f"set {set_name} has no lesson notebooks/{set_name}.ipynb"
        assert all((d / f"{set_name}_exercises.ipynb").exists() for d in (SOLUTIONS, EXERCISES_DIR))
        module = importlib.import_module(f"attnlib.grader.sets.{set_name}")
        assert module.SET == set_name and module.TITLE == title
        keys = [ex.key for ex in module.EXERCISES]
        assert keys == [f"{set_name[:2]}.{i}" for i in range(1, len(keys) + 1)]
    assert sorted(p.stem for p in SETS_DIR.glob("[0-9][0-9]_*.py")) == sorted(EXERCISE_SETS)
    for lesson in course.LESSONS:
        if lesson.exercise is not None:
            stem = course.exercise_set_of(lesson)
            assert stem in EXERCISE_SETS and stem == Path_stem(lesson.path), lesson


def Path_stem(p) -> str:
    return str(p).rsplit("/", 1)[-1].removesuffix(".ipynb")


def test_at_least_forty_exercises_of_every_kind():
    mine = [ex for ex in EXERCISES if ex.set in MY_SETS]
    assert len(mine) >= 40
    styles = {ex.style for ex in mine}
    assert styles == {"write", "fix", "question"}
    assert all(exercises_of(s) for s in MY_SETS)
    for entry in ("online_softmax_update", "causal_mask_bottom_right", "padding_causal_mask", "chunked_attention"):
        assert any(ex.entry == entry for ex in mine)
    assert BY_KEY["14.1"].entry == "bert_attention"


# What issue 22 found taught but never practised, each with the exercise that practises it now.
PRACTISED = {
    "ALiBi's slopes for any head count": "alibi_slopes",
    "a FlexAttention mask function": "document_mask_mod",
    "a FlexAttention score function": "softcap_score_mod",
    "causal linear attention": "causal_linear_attention",
    "KV-cache memory arithmetic": "kv_cache_bytes",
    "the sliding window's reach over layers": "sliding_window_reach",
    "a statistic over MiniLM's heads with its spread": "previous_token_stats",
    "converting RoPE between the interleaved and half-split layouts": "interleaved_to_half_split_weight",
}


def test_at_least_65_exercises_and_each_topic_issue_22_found_unpractised_has_one():
    assert len(EXERCISES) >= 65, len(EXERCISES)
    entries = {ex.entry for ex in EXERCISES}
    assert not {topic for topic, entry in PRACTISED.items() if entry not in entries}


def _text(folder, set_name):
    nb = nbformat.read(folder / f"{set_name}_exercises.ipynb", as_version=4)
    return nb, "\n".join(c.source for c in nb.cells)


@pytest.mark.parametrize("set_name", MY_SETS)
def test_notebooks_state_points_hints_rules_and_self_checks(set_name):
    nb, text = _text(EXERCISES_DIR, set_name)
    _, sol = _text(SOLUTIONS, set_name)
    assert "### BEGIN SOLUTION" not in text and "### BEGIN FIX" not in text and "### BUGGY" not in text
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    for ex in exercises_of(set_name):
        heading = re.search(
            rf"## Exercise {int(ex.key[:2])}\.{ex.key[3:]} — `{ex.entry}`[^\n]*\n(.*?)(?=\n## |\Z)", text, re.S
        )
        assert heading, (set_name, ex.entry)
        section = heading.group(1)
        assert ex.header in section
        assert "<details><summary>Hint 1</summary>" in section
        assert f"selfcheck.check_{ex.entry}({ex.entry})" in text
        if ex.forbidden:
            assert "Not allowed" in section, f"{ex.entry}: what it forbids must be stated"
        if ex.style == "fix":
            assert "(find the bug)" in text.split(f"`{ex.entry}`")[1][:20]
            assert f'NotImplementedError("{ex.entry}' not in text  # the learner gets working, wrong code
        else:
            assert f'raise NotImplementedError("{ex.entry}' in text or f"{ex.entry}.forward" in text
        assert ex.title in section or ex.title in text


@pytest.mark.parametrize("set_name", MY_SETS)
def test_solutions_score_full_marks_and_exercises_zero(set_name):
    solved = load(SOLUTIONS, set_name)
    untouched = load(EXERCISES_DIR, set_name)
    for ex in exercises_of(set_name):
        lost, messages = grade(ex, solved[ex.entry])
        assert lost == 0, (ex.key, messages)
        lost, messages = grade(ex, untouched[ex.entry])
        assert lost == ex.points, (ex.key, "an untouched exercise must score zero", messages)


# (id, exercise key, old, new, substring of the hint every failed check must show)
BROKEN = [
    ("hard-argmin", "01.1", "scores.argmax(dim=-1)", "scores.argmin(dim=-1)", "argmin"),
    ("hard-soft", "01.1", "return values[best]", "return torch.softmax(scores, -1) @ values", "soft lookup"),
    (
        "soft-temp-times",
        "01.2",
        "query @ keys.T / temperature",
        "query @ keys.T * temperature",
        "multiplied by the temperature",
    ),
    (
        "soft-axis",
        "01.2",
        "torch.softmax(scores, dim=-1)\n    return",
        "torch.softmax(scores, dim=0)\n    return",
        "over the queries",
    ),
    (
        "soft-sqrt",
        "01.2",
        "query @ keys.T / temperature",
        "query @ keys.T / temperature / keys.shape[-1] ** 0.5",
        "divided by sqrt",
    ),
    ("low-t-mean", "01.4", "return 2", "return 1", "T -> infinity"),
    ("low-t-other", "01.4", "return 2", "return 7", "not the right answer"),
    ("scores-no-scale", "02.1", "return q @ k.T / math.sqrt(q.shape[-1])", "return q @ k.T", "not scaled"),
    (
        "scores-by-d",
        "02.1",
        "return q @ k.T / math.sqrt(q.shape[-1])",
        "return q @ k.T / q.shape[-1]",
        "divided by d_k",
    ),
    (
        "scores-by-L",
        "02.1",
        "return q @ k.T / math.sqrt(q.shape[-1])",
        "return q @ k.T / math.sqrt(q.shape[0])",
        "number of queries",
    ),
    ("var-no-square", "02.2", "return d_k * sigma_q**2 * sigma_k**2", "return d_k * sigma_q * sigma_k", "not squared"),
    (
        "std-is-var",
        "02.4",
        "return math.sqrt(score_variance(144, 0.5, 3.0)) / math.sqrt(144)",
        "return score_variance(144, 0.5, 3.0) / 144",
        "the variance",
    ),
    (
        "std-unscaled",
        "02.4",
        "return math.sqrt(score_variance(144, 0.5, 3.0)) / math.sqrt(144)",
        "return math.sqrt(score_variance(144, 0.5, 3.0))",
        "BEFORE dividing",
    ),
    ("softmax-no-max", "03.1", "shifted = z - m", "shifted = z", "subtract the maximum"),
    ("softmax-temp-times", "03.1", "z = x / temperature", "z = x * temperature", "multiplied by the temperature"),
    ("softmax-temp-ignored", "03.1", "z = x / temperature", "z = x", "temperature is ignored"),
    ("softmax-axis", "03.1", "z = x / temperature", "z = x / temperature\n    dim = -1", "this check asked for dim="),
    (
        "softmax-in-place",
        "03.1",
        "z = x / temperature",
        "x -= 0.0\n    x.mul_(1.0 / temperature)\n    z = x",
        "in place",
    ),
    (
        "softmax-shortcut",
        "03.1",
        "out = shifted - torch.log(total)",
        "out = torch.log_softmax(z, dim)",
        "write it yourself",
    ),
    (
        "softmax-logsumexp",
        "03.1",
        "out = shifted - torch.log(total)",
        "out = z - torch.logsumexp(z, dim, keepdim=True)",
        "write it yourself",
    ),
    (
        "softmax-max-of-x",
        "03.1",
        "m = z.amax(dim=dim, keepdim=True)",
        "m = x.amax(dim=dim, keepdim=True)",
        "maximum of x is subtracted from x / temperature",
    ),
    (
        "softmax-log-of-probabilities",
        "03.1",
        "out = shifted - torch.log(total)",
        "out = torch.log(torch.exp(shifted) / total)",
        "log of a softmax computed first",
    ),
    ("softmax-no-log-sum", "03.1", "out = shifted - torch.log(total)", "out = shifted", "is not subtracted"),
    (
        "softmax-max-not-back",
        "03.1",
        "out = shifted - torch.log(total)",
        "out = z - torch.log(total)",
        "off by each row",
    ),
    (
        "softmax-all-inf-row-nan",
        "03.1",
        "return torch.where(total > 0, out, torch.full_like(out, -math.inf))",
        "return out",
        "all -inf",
    ),
    ("update-no-rescale", "03.2", "return m_new, l * rescale +", "return m_new, l +", "not rescaled"),
    ("update-inverted", "03.2", "rescale = torch.exp(m - shift)", "rescale = torch.exp(shift - m)", "rescaled by exp"),
    (
        "update-nan",
        "03.2",
        "shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))\n    rescale",
        "shift = m_new\n    rescale",
        "NaN while every score",
    ),
    (
        "online-no-last-block",
        "03.3",
        "range(0, rows.shape[-1], block)",
        "range(0, rows.shape[-1] - block + 1, block)",
        "shorter block",
    ),
    ("f16-one-exp", "03.4", "return float(x)", "return math.log(torch.finfo(torch.float16).max)", "ONE exp"),
    ("f16-real", "03.4", "return float(x)", "return math.log(torch.finfo(torch.float16).max / 64)", "real-number"),
    (
        "scores-ignore-scale",
        "04.1",
        "if scale is None:\n        scale = 1.0 / math.sqrt(q.shape[-1])",
        "scale = 1.0 / math.sqrt(q.shape[-1])",
        "scale argument is ignored",
    ),
    ("scores-qk-swapped", "04.1", "(q @ k.transpose(-2, -1))", "(k @ q.transpose(-2, -1))", "swapped"),
    (
        "sdpa-qk-swapped",
        "04.2",
        "attention_scores(q, k, scale)",
        "attention_scores(k, q, scale).transpose(-2, -1).transpose(-2, -1)",
        "swapped",
    ),
    (
        "sdpa-axis",
        "04.2",
        "attention_scores(q, k, scale), dim=-1)",
        "attention_scores(q, k, scale), dim=-2)",
        "over the queries",
    ),
    ("shape-transposed", "04.4", "return 1", "return 2", "transpose"),
    (
        "causal-triu",
        "05.1",
        "return torch.ones(L, S, dtype=torch.bool).tril()",
        "return torch.ones(L, S, dtype=torch.bool).triu()",
        "upper triangle",
    ),
    (
        "causal-diagonal",
        "05.1",
        "return torch.ones(L, S, dtype=torch.bool).tril()",
        "return torch.ones(L, S, dtype=torch.bool).tril(1)",
        "off by one",
    ),
    (
        "causal-bottom-right",
        "05.1",
        "return torch.ones(L, S, dtype=torch.bool).tril()",
        "return torch.ones(L, S, dtype=torch.bool).tril(S - L)",
        "bottom-right",
    ),
    ("br-top-left", "05.2", "tril(diagonal=S - L)", "tril()", "top-left"),
    ("br-sign", "05.2", "tril(diagonal=S - L)", "tril(diagonal=L - S)", "wrong sign"),
    (
        "padding-inverted",
        "05.3",
        "positions[None, :] < lengths[:, None]",
        "positions[None, :] >= lengths[:, None]",
        "inverted",
    ),
    ("padding-list", "05.3", "    lengths = torch.as_tensor(lengths)\n", "", "raised"),
    (
        "combined-or",
        "05.4",
        "return causal_mask(L) & padding_mask(lengths, L)",
        "return causal_mask(L) | padding_mask(lengths, L)",
        "OR",
    ),
    (
        "combined-no-padding",
        "05.4",
        "return causal_mask(L) & padding_mask(lengths, L)",
        "return causal_mask(L) & padding_mask(lengths, L).transpose(-1, -2)",
        "QUERY positions",
    ),
    (
        "masked-inverted",
        "05.5",
        'scores.masked_fill(~mask, float("-inf"))',
        'scores.masked_fill(mask, float("-inf"))',
        "inverted",
    ),
    (
        "masked-fill-1e9",
        "05.5",
        'scores.masked_fill(~mask, float("-inf"))',
        "scores.masked_fill(~mask, -1e9)",
        "large finite number",
    ),
    (
        "masked-nan-rows",
        "05.5",
        "weights = e / torch.where(total > 0, total, torch.ones_like(total))",
        "weights = torch.softmax(scores, dim=-1)",
        "NaN in fully masked rows",
    ),
    (
        "masked-qk-swapped",
        "05.5",
        "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n    scores = scores.masked_fill",
        "scores = k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])\n    scores = scores.masked_fill",
        "swapped",
    ),
    ("decode-top-left", "05.6", "return 2", "return 1", "top-left"),
    ("self-scale-d-model", "06.1", "math.sqrt(q.shape[-1])", "math.sqrt(x.shape[-1])", "d_model"),
    (
        "self-fill-1e9",
        "06.1",
        'scores = scores.masked_fill(~mask, float("-inf"))',
        "scores = scores.masked_fill(~mask, -1e9)",
        "large finite number",
    ),
    (
        "self-plain-softmax",
        "06.1",
        "weights = safe_softmax(scores)\n        return weights @ v, weights",
        "weights = torch.softmax(scores, dim=-1)\n        return weights @ v, weights",
        "NaN in fully masked rows",
    ),
    (
        "self-no-value-projection",
        "06.1",
        "self.w_v(x)\n        scores",
        "x\n        scores",
        "values are not projected",
    ),
    (
        "self-transposed-weights",
        "06.1",
        "q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)",
        "q, k, v = x @ self.w_q.weight, x @ self.w_k.weight, x @ self.w_v.weight",
        "wrong way round|transposed",
    ),
    (
        "self-qk-swapped",
        "06.1",
        "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "scores = k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "swapped",
    ),
    ("count-no-bias", "06.3", "+ ((2 * d_k + d_v) if bias else 0)", "", "biases are missing"),
    ("cross-keys-from-x", "07.1", "self.w_k(context)", "self.w_k(x)", "keys|wrong input"),
    (
        "cross-padding-ignored",
        "07.1",
        'torch.where(real, q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), float("-inf"))',
        "q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "mask is ignored",
    ),
    (
        "cross-lengths-one-too-many",
        "07.1",
        "slots[None, :] < context_lengths",
        "slots[None, :] <= context_lengths",
        "one slot too many",
    ),
    (
        "cross-lengths-drops-last",
        "07.1",
        "< context_lengths[:, None]",
        "< context_lengths[:, None] - 1",
        "drops the last real token",
    ),
    (
        "cross-mask-on-queries",
        "07.1",
        ").unsqueeze(1)  # (batch, 1, S_max)",
        ").unsqueeze(2)  # (batch, 1, S_max)",
        "hides queries",
    ),
    (
        "cross-mask-no-query-axis",
        "07.1",
        ").unsqueeze(1)  # (batch, 1, S_max)",
        ")  # (batch, 1, S_max)",
        "no axis for the queries",
    ),
    ("cross-fill-1e9", "07.1", 'float("-inf"))\n        weights', "-1e9)\n        weights", "large finite number"),
    (
        "cross-plain-softmax",
        "07.1",
        "weights = safe_softmax(scores)  # a source",
        "weights = torch.softmax(scores, dim=-1)  # a source",
        "NaN in fully masked rows",
    ),
    (
        "cross-fix-keys-from-x",
        "07.2",
        "q, k, v = self.w_q(x), self.w_k(context), self.w_v(context)",
        "q, k, v = self.w_q(x), self.w_k(x), self.w_v(context)",
        "keys|wrong input",
    ),
    ("symmetric-always", "06.4", "return 2", "return 1", "divides row i"),
    ("cross-which-queries", "07.3", "return 2", "return 1", "queries"),
    (
        "qkv-interleaved",
        "08.1",
        "reshape(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)",
        "reshape(batch, seq, num_heads, 3, head_dim).permute(3, 0, 2, 1, 4)",
        "interleaved per head",
    ),
    (
        "qkv-no-transpose",
        "08.1",
        "reshape(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)",
        "reshape(batch, seq, 3, num_heads, head_dim).permute(2, 0, 1, 3, 4)",
        "move the heads in front",
    ),
    ("qkv-head-dim", "08.1", "head_dim = width // (3 * num_heads)", "head_dim = width // num_heads", "a third"),
    (
        "contrib-rows",
        "08.2",
        "w_o.reshape(w_o.shape[0], heads, head_dim).transpose(0, 1)",
        "w_o.reshape(heads, head_dim, w_o.shape[0]).transpose(-2, -1)",
        "ROWS",
    ),
    (
        "contrib-interleaved",
        "08.2",
        "w_o.reshape(w_o.shape[0], heads, head_dim).transpose(0, 1)",
        "w_o.reshape(w_o.shape[0], head_dim, heads).permute(2, 0, 1)",
        "every heads-th column",
    ),
    ("mha-scale-embed", "08.3", "math.sqrt(self.head_dim)", "math.sqrt(self.head_dim * self.num_heads)", "embed_dim"),
    (
        "mha-no-out-proj",
        "08.3",
        "return self.w_o(merge_heads(weights @ v)), weights",
        "return merge_heads(weights @ v), weights",
        "output projection",
    ),
    (
        "mha-keys-from-query",
        "08.3",
        "split_heads(self.w_k(key), self.num_heads)",
        "split_heads(self.w_k(query), self.num_heads)",
        "projected from the query input|wrong input",
    ),
    ("mha-mask-inverted", "08.3", "masked_fill(~attn_mask,", "masked_fill(attn_mask,", "inverted"),
    (
        "mha-fill-1e9",
        "08.3",
        'scores = scores.masked_fill(~attn_mask, float("-inf"))',
        "scores = scores.masked_fill(~attn_mask, -1e9)",
        "large finite number",
    ),
    (
        "mha-plain-softmax",
        "08.3",
        "weights = safe_softmax(scores)",
        "weights = torch.softmax(scores, dim=-1)",
        "NaN in fully masked rows",
    ),
    (
        "mha-count-heads",
        "08.4",
        "return 4 * embed_dim * embed_dim + (4 * embed_dim if bias else 0)",
        "return (4 * embed_dim * embed_dim + (4 * embed_dim if bias else 0)) // num_heads",
        "heads",
    ),
    (
        "head-weights-columns",
        "08.5",
        "q_h, k_h = x @ w_q[block].T, x @ w_k[block].T",
        "q_h, k_h = x @ w_q[:, block], x @ w_k[:, block]",
        "COLUMNS",
    ),
    (
        "memory-no-heads",
        "12.1",
        "return batch * heads * L * S * bytes_per_element",
        "return batch * L * S * bytes_per_element",
        "heads are missing",
    ),
    (
        "chunk-no-acc-rescale",
        "12.2",
        "acc = acc * rescale[..., None] + p @ v",
        "acc = acc + p @ v",
        "partial output is not rescaled",
    ),
    (
        "chunk-no-l-rescale",
        "12.2",
        "l = l * rescale + p.sum(dim=-1)",
        "l = l + p.sum(dim=-1)",
        "running sum l is not rescaled",
    ),
    (
        "chunk-lse-max",
        "12.2",
        "return acc / l[..., None], m + torch.log(l)",
        "return acc / l[..., None], m",
        "lse is the running max",
    ),
    (
        "chunk-causal-ignored",
        "12.2",
        "if is_causal:\n            cols",
        "if False:\n            cols",
        "causal mask is ignored",
    ),
    (
        "chunk-max-zero",
        "12.2",
        "m = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype)",
        "m = torch.zeros(q.shape[:-1], dtype=q.dtype)",
        "running max starts at 0",
    ),
    (
        "chunk-rows-in-block",
        "12.4",
        "rows = torch.arange(i, i + qi.shape[-2])[:, None]",
        "rows = torch.arange(qi.shape[-2])[:, None]",
        "inside their query block",
    ),
    ("flops-one-product", "12.3", "return 4 * batch", "return 2 * batch", "one of the two"),
    (
        "kv-keys-only",
        "12.5",
        "return 2 * batch * layers * kv_heads * seq * head_dim * bytes_per_element",
        "return batch * layers * kv_heads * seq * head_dim * bytes_per_element",
        "only the keys",
    ),
    ("tokens-not-whole", "12.6", "return memory_bytes // per_token", "return memory_bytes / per_token", "round down"),
    ("stats-ddof0", "14.4", "scores.std(dim=0)", "scores.std(dim=0, unbiased=False)", "ddof"),
    ("stats-diagonal", "14.4", "weights[n, :, i, i - 1]", "weights[n, :, i, i]", "diagonal"),
    ("bert-transposed", "14.1", "layer.weight.copy_(weight)", "layer.weight.copy_(weight.T)", "transposed"),
    (
        "bert-one-head",
        "14.1",
        "mha = MultiHeadAttention(hidden.shape[-1], 12)",
        "mha = MultiHeadAttention(hidden.shape[-1], 1)",
        "12 heads",
    ),
    (
        "bert-mask-inverted",
        "14.1",
        "mask = attention_mask.bool()[:, None, None, :]",
        "mask = ~attention_mask.bool()[:, None, None, :]",
        "inverted",
    ),
    (
        "bert-params-attention-only",
        "14.2",
        "return attention + layer_norms + feed_forward",
        "return attention",
        "alone",
    ),
    (
        "bert-params-no-norms",
        "14.2",
        "return attention + layer_norms + feed_forward",
        "return attention + feed_forward",
        "LayerNorms are missing",
    ),
    (
        "shift-pair-exponent",
        "09.1",
        "-torch.arange(0, d, 2, dtype=torch.float64) / d",
        "-torch.arange(d // 2, dtype=torch.float64) / d",
        r"10000\^\(-i/d\)",
    ),
    ("partial-whole-head", "09.2", "r = rotary_dim", "r = x.shape[-1]", "whole head is rotated"),
    (
        "half-rope-positions-float16",
        "09.3",
        "positions.double()",
        "positions.to(x.dtype)",
        "positions are still rounded",
    ),
    (
        "weight-opposite",
        "09.4",
        "w.reshape(num_heads, rows // num_heads // 2, 2, cols)",
        "w.reshape(num_heads, 2, rows // num_heads // 2, cols)",
        "opposite conversion",
    ),
    (
        "decoder-pre-norm",
        "10.1",
        "self.self_attn(x, attn_mask=causal)\n        x = self.ln1(x + attended)\n"
        "        read, cross_weights = self.cross_attn(x, memory, attn_mask=memory_mask)"
        "\n        x = self.ln2(x + read)\n        return self.ln3(x + self.mlp(x))",
        "self.self_attn(self.ln1(x), attn_mask=causal)\n        x = x + attended\n"
        "        read, cross_weights = self.cross_attn(self.ln2(x), memory, attn_mask=memory_mask)"
        "\n        x = x + read\n        return x + self.mlp(self.ln3(x))",
        "pre-norm",
    ),
    ("decoder-no-causal", "10.1", "self.self_attn(x, attn_mask=causal)", "self.self_attn(x)", "not causal"),
    ("decoder-triu", "10.1", "device=x.device).tril()", "device=x.device).triu()", "upper-triangular"),
    (
        "decoder-keys-from-x",
        "10.1",
        "self.cross_attn(x, memory, attn_mask=memory_mask)",
        "self.cross_attn(x, x, attn_mask=memory_mask)",
        "keys and values come from x",
    ),
    (
        "decoder-norm-before-residual",
        "10.1",
        "x = self.ln1(x + attended)\n        read, cross_weights = self.cross_attn(x, memory, attn_mask=memory_mask)"
        "\n        x = self.ln2(x + read)\n        return self.ln3(x + self.mlp(x))",
        "x = x + self.ln1(attended)\n        read, cross_weights = self.cross_attn(x, memory, attn_mask=memory_mask)"
        "\n        x = x + self.ln2(read)\n        return x + self.ln3(self.mlp(x))",
        "applied to the sub-layer's output",
    ),
    (
        "decoder-no-residual",
        "10.1",
        "x = self.ln1(x + attended)\n        read, cross_weights = self.cross_attn(x, memory, attn_mask=memory_mask)"
        "\n        x = self.ln2(x + read)\n        return self.ln3(x + self.mlp(x))",
        "x = self.ln1(attended)\n        read, cross_weights = self.cross_attn(x, memory, attn_mask=memory_mask)"
        "\n        x = self.ln2(read)\n        return self.ln3(self.mlp(x))",
        "residual connections are missing",
    ),
    (
        "decoder-cross-first",
        "10.1",
        "attended, self_weights = self.self_attn(x, attn_mask=causal)\n        x = self.ln1(x + attended)\n"
        "        read, cross_weights = self.cross_attn(x, memory, attn_mask=memory_mask)\n"
        "        x = self.ln2(x + read)",
        "read, cross_weights = self.cross_attn(x, memory, attn_mask=memory_mask)\n        x = self.ln1(x + read)\n"
        "        attended, self_weights = self.self_attn(x, attn_mask=causal)\n        x = self.ln2(x + attended)",
        "comes before the masked self-attention",
    ),
    (
        "decoder-one-norm",
        "10.1",
        "x = self.ln2(x + read)\n        return self.ln3(",
        "x = self.ln1(x + read)\n        return self.ln1(",
        "ln1 is used for every sub-layer",
    ),
    (
        "decoder-no-memory-mask",
        "10.1",
        "self.cross_attn(x, memory, attn_mask=memory_mask)",
        "self.cross_attn(x, memory)",
        "padding mask is not applied",
    ),
    (
        "decoder-shortcut",
        "10.1",
        "attended, self_weights = self.self_attn(x, attn_mask=causal)",
        "attended, self_weights = nn.MultiheadAttention(x.shape[-1], 1, batch_first=True)(x, x, x)",
        "write it yourself",
    ),
]
# Exercises that a broken copy may also break, beside the one it targets (they share the changed code).
SHARED = {"02.4": {"02.2"}, "05.4": {"05.1", "05.3"}}


# Checks on which a broken copy's output coincides with another catalogued mistake's (so either hint is true):
# (broken copy id, regex of the other hint)
COINCIDE = {
    "update-inverted": "NaN while every score so far is -inf",  # 0 * exp(+inf) is NaN too
    "br-sign": "inverted|off by one|all True|upper triangle",  # for L=1 the wrong-sign mask is all False
    "scores-by-L": "not scaled",  # with L=1 query, sqrt(L) = 1
    "causal-bottom-right": "upper triangle|all True",  # for L=1 the bottom-right mask is all True
}


@pytest.mark.parametrize("case", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_catalogued_mistake_loses_points_with_its_hint(case):
    ident, key, old, new, hint = case
    ex = BY_KEY[key]
    broken = load(SOLUTIONS, ex.set, (old, new), ex.entry)
    lost, messages = grade(ex, broken[ex.entry], record=True, memory_check=False)
    assert lost > 0, f"{ident} was not caught"
    assert any(re.search(hint, m) for m in messages), (ident, messages)
    other = COINCIDE.get(ident)
    stray = [m for m in messages if not re.search(hint, m) and not (other and re.search(other, m))]
    assert not stray, (ident, "checks without the hint:", stray)
    # a hint that offers several mistakes ("either ... or ...") is given only when their errors cannot be told apart
    hedged = [m for m in messages if "usually means" not in m and "either" not in m]
    wrong = [w for w in ("swapped", "detached", "wrong axis") if w not in hint and any(w in m for m in hedged)]
    assert not wrong, (ident, "misdiagnosed as", wrong, messages)


def test_fixed_misdiagnoses_of_the_issue():
    """q/k swapped on L != S, triu, a -1e9 fill, keys from the wrong input, transposed weights: each gets its own
    hint (checked above); here, none of them is described as another mistake on any check."""
    expected = {
        "sdpa-qk-swapped": "swapped",
        "causal-triu": "triu",
        "masked-fill-1e9": "-1e9",
        "mha-keys-from-query": "query input|wrong input|the keys",
        "cross-keys-from-x": "from x|wrong input",
        "bert-transposed": "transposed",
        "self-transposed-weights": "transposed|wrong way round",
    }
    by_id = {b[0]: b for b in BROKEN}
    for ident, word in expected.items():
        _, key, old, new, _ = by_id[ident]
        ex = BY_KEY[key]
        lost, messages = grade(ex, load(SOLUTIONS, ex.set, (old, new), ex.entry)[ex.entry])
        assert lost > 0 and all(re.search(word, m) for m in messages), (ident, messages)
        for m in messages:
            assert "normalise over the wrong axis" not in m and "detached from autograd" not in m, (ident, m)


UNCATALOGUED = [
    ("sdpa-scaled-output", "04.2", "return weights @ v, weights", "return 1.01 * (weights @ v), weights"),
    (
        "mha-bias-twice",
        "08.3",
        "return self.w_o(merge_heads(weights @ v)), weights",
        "return self.w_o(merge_heads(weights @ v)) + self.w_o.bias, weights",
    ),
    ("chunk-half-lse", "12.2", "m + torch.log(l)", "m + 0.5 * torch.log(l)"),
    (
        "causal-first-column",
        "05.1",
        "return torch.ones(L, S, dtype=torch.bool).tril()",
        "out = torch.ones(L, S, dtype=torch.bool).tril()\n    if L >= 3:\n        out[2, 0] = False\n    return out",
    ),
]


@pytest.mark.parametrize("case", UNCATALOGUED, ids=[u[0] for u in UNCATALOGUED])
def test_an_uncatalogued_mistake_gets_where_the_output_differs_not_a_diagnosis(case):
    ident, key, old, new = case
    ex = BY_KEY[key]
    lost, messages = grade(ex, load(SOLUTIONS, ex.set, (old, new), ex.entry)[ex.entry])
    assert lost > 0
    for m in messages:
        assert re.match(r"(out|weights|lse) (differs from the reference at|is wrong at) \d+ of \d+", m), (ident, m)


def test_the_instructor_guide_lists_the_sets_the_registry_has():
    from attnlib.grader.exercises import SETS_TABLE_END, SETS_TABLE_START, sets_markdown

    guide = (ROOT / "docs" / "grading.md").read_text()
    block = guide.split(SETS_TABLE_START, 1)[1].split(SETS_TABLE_END, 1)[0]
    assert block.strip() == sets_markdown(), "docs/grading.md's table of sets is stale: paste sets_markdown()"


def test_the_4_3_task_states_what_the_bug_does():
    """4.3 says the buggy function agrees with scaled_dot_product_attention on some shapes and not on others: true
    (it divides by sqrt(S), right exactly when S = d_k). It no longer claims a lucky known answer."""
    import torch

    buggy = load(EXERCISES_DIR, "04_scaled_dot_product_attention")["fixed_attention"]
    right = load(SOLUTIONS, "04_scaled_dot_product_attention")["scaled_dot_product_attention"]
    g = torch.Generator().manual_seed(0)
    q, v = torch.randn(3, 4, generator=g), torch.randn(4, 2, generator=g)
    k_square, k_other = torch.randn(4, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.allclose(buggy(q, k_square, v)[0], right(q, k_square, v)[0])
    v6 = torch.randn(6, 2, generator=g)
    assert not torch.allclose(buggy(q, k_other, v6)[0], right(q, k_other, v6)[0])
    _, text = _text(EXERCISES_DIR, "04_scaled_dot_product_attention")
    assert "only by luck" not in text and "some shapes and not on others" in text
