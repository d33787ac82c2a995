"""Exercise sets 09-11: the solutions notebooks pass every check, every known mistake is distinguishable from the
reference on some check, and a wrong implementation gets the hint that names its mistake.

The set modules live in attnlib/grader/sets/NN_slug.py and are imported here with importlib, as the registry
does; their checks are called directly (cases, expect, mistakes), through the same ``run_case`` and ``judge``
the grader and the self-check use.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnlib.grader import diagnose
from attnlib.grader.invoke import run_case

ROOT = Path(__file__).resolve().parents[1]
SETS = ("09_positions", "10_transformer_block", "11_attention_variants")

pytestmark = pytest.mark.usefixtures("one_thread")


def _module(name: str):
    return importlib.import_module(f"attnlib.grader.sets.{name}")


def _as_dict(case) -> dict:
    return {
        "args": list(case.args),
        "kwargs": dict(case.kwargs),
        "init": list(case.init),
        "weights": dict(case.weights),
        "grad_output": case.grad_output,
    }


def _solution_namespace(name: str, *, buggy: bool = False) -> dict:
    """Execute the code cells of solutions/<name>.ipynb (not the self-checks) and return their namespace.

    With ``buggy``, each ``### BEGIN FIX`` region is dropped and each ``### BUGGY:`` line becomes code, as the
    exercise notebook shows it to the learner.
    """
    cells = json.loads((ROOT / "solutions" / f"{name}_exercises.ipynb").read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        src = "".join(cell["source"])
        if cell["cell_type"] != "code" or "selfcheck.check_" in src:
            continue
        if buggy:
            lines, out, skip = src.split("\n"), [], False
            for line in lines:
                stripped = line.strip()
                if stripped == "### BEGIN FIX":
                    skip = True
                elif stripped == "### END FIX":
                    skip = False
                elif stripped.startswith("### BUGGY:"):
                    indent = line[: len(line) - len(line.lstrip())]
                    out.append(indent + stripped[len("### BUGGY:") :].strip())
                elif not skip:
                    out.append(line)
            src = "\n".join(out)
        exec(compile(src, f"{name}.ipynb", "exec"), namespace)  # noqa: S102 - our own committed notebook
    return namespace


def _judge(ex, target, case):
    outputs = run_case(target, ex.kind, list(ex.returns), _as_dict(case))
    names = getattr(ex, "arg_names", ())
    return diagnose.judge(case.args, names, outputs, ex.expect(case), ex.mistakes(case), distribution=ex.distribution)


def _all_exercises():
    return [(name, ex) for name in SETS for ex in _module(name).EXERCISES]


@pytest.mark.parametrize("name", SETS)
def test_set_modules_declare_their_set(name):
    mod = _module(name)
    assert mod.SET == name and mod.TITLE
    keys = [ex.key for ex in mod.EXERCISES]
    assert keys == [f"{name[:2]}.{i}" for i in range(1, len(keys) + 1)]
    for ex in mod.EXERCISES:
        assert ex.set == name and ex.points > 0 and ex.minutes > 0 and ex.difficulty in ("easy", "medium", "hard")


@pytest.mark.parametrize(("name", "ex"), _all_exercises(), ids=lambda x: getattr(x, "key", x))
def test_the_solution_passes_every_check(name, ex):
    target = _solution_namespace(name)[ex.entry]
    for case in ex.cases(np.random.default_rng(7)):
        ok, message = _judge(ex, target, case)
        assert ok, f"{ex.key} {case.name}: {message}"


@pytest.mark.parametrize(("name", "ex"), _all_exercises(), ids=lambda x: getattr(x, "key", x))
def test_every_mistake_differs_from_the_reference_somewhere(name, ex):
    cases = ex.cases(np.random.default_rng(11))
    hints: dict[str, bool] = {}
    for case in cases:
        expected = ex.expect(case)
        for hint, wrong in ex.mistakes(case):
            if not wrong:  # a question's explanation: it matches any wrong answer, it has no outputs of its own
                continue
            differs = not all(
                diagnose.close(np.asarray(wrong[n]), np.asarray(expected[n])) for n in wrong if n in expected
            )
            hints[hint] = hints.get(hint, False) or differs
    assert hints, f"{ex.key} lists no mistakes"
    same = [h for h, d in hints.items() if not d]
    assert not same, f"{ex.key}: these mistakes equal the reference on every check: {same}"


def test_the_notebooks_headings_state_the_points():
    for name in SETS:
        text = (ROOT / "solutions" / f"{name}_exercises.ipynb").read_text()
        for ex in _module(name).EXERCISES:
            assert ex.header in text.replace("\\n", "\n"), f"{name} does not state {ex.key}'s header {ex.header!r}"
            assert f"`{ex.entry}`" in text


def _first_failure(ex, target):
    for case in ex.cases(np.random.default_rng(3)):
        ok, message = _judge(ex, target, case)
        if not ok:
            return message
    return None


def _ex(key):
    return next(ex for _, ex in _all_exercises() if ex.key == key)


def test_the_rope_bug_to_find_fails_with_its_hint():
    buggy = _solution_namespace("09_positions", buggy=True)["fixed_half_precision_rope"]
    assert "the bug is still there" in _first_failure(_ex("09.3"), buggy)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_float32_fix_of_the_rope_bug_passes_and_the_other_layout_is_named(seed):
    """9.3 requires the half-split layout and says so: angles fixed in float32 (not only float64) pass on every
    seed, and the interleaved layout (valid, but not the one the task requires) fails with the hint that names
    that layout; the given bug fails with its hint on every seed."""
    ex = _ex("09.3")

    def float32_angles(x, positions):
        half = x.shape[-1] // 2
        inv_freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
        freqs = positions.float()[:, None] * inv_freq
        cos, sin = freqs.cos().repeat(1, 2).to(x.dtype), freqs.sin().repeat(1, 2).to(x.dtype)
        first, second = x[..., :half], x[..., half:]
        return x * cos + torch.cat([-second, first], dim=-1) * sin

    def interleaved(x, positions):
        d = x.shape[-1]
        theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = (positions.double()[:, None] * theta).repeat_interleave(2, dim=-1)
        turned = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
        return (x * angle.cos() + turned * angle.sin()).to(x.dtype)

    buggy = _solution_namespace("09_positions", buggy=True)["fixed_half_precision_rope"]
    rng = np.random.default_rng(seed)
    results = {"fix": [], "interleaved": [], "buggy": []}
    for case in [*ex.cases(rng), *ex.cases(ex.rng(seed))]:
        for name, target in (("fix", float32_angles), ("interleaved", interleaved), ("buggy", buggy)):
            results[name].append(_judge(ex, target, case))
    assert all(ok for ok, _ in results["fix"]), results["fix"]
    failed = [m for ok, m in results["interleaved"] if not ok]
    assert failed and all("layout" in m for m in failed), failed
    assert any("the bug is still there" in m for ok, m in results["buggy"] if not ok)


def test_the_set_9_references_have_the_properties_the_tasks_state():
    """9.1: M_k moves attnlib's table by k rows; 9.2 with rotary_dim = head_dim and one row is attnlib.apply_rope;
    9.4: after the conversion, half-split RoPE gives the interleaved checkpoint's scores."""
    import attnlib

    mod = _module("09_positions")
    rng = np.random.default_rng(5)
    for case in _ex("09.1").cases(rng):
        k, d = case.args
        table = attnlib.sinusoidal_positions(60, d, dtype=torch.float64).numpy()
        p = np.arange(max(0, -k), 60 - max(0, k))
        assert np.allclose(table[p] @ _ex("09.1").expect(case)["out"].T, table[p + k], atol=1e-12), case.name
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    case = mod.Case("full", (x.numpy(), np.arange(3, 9)[None], 8))
    assert np.allclose(_ex("09.2").expect(case)["out"], attnlib.apply_rope(x, torch.arange(3, 9)).numpy())
    for case in _ex("09.4").cases(rng):
        w, h = case.args
        w_new = _ex("09.4").expect(case)["out"]
        hd = w.shape[0] // h
        interleaved = np.asarray(w, np.float64).reshape(h, hd // 2, 2, -1)  # head, pair, member, input
        half = w_new.reshape(h, 2, hd // 2, -1)  # head, member, pair, input
        assert np.array_equal(interleaved.transpose(0, 2, 1, 3), half), case.name


def _shift_blocks(k, d):
    """float32, one 2x2 block per pair with torch.block_diag."""
    blocks = []
    for i in range(d // 2):
        a = k * 10000.0 ** (-2 * i / d)
        blocks.append(torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]))
    return torch.block_diag(*blocks)


def _partial_rope_complex(x, positions, rotary_dim):
    """Pairs (i, i + r/2) as complex numbers, one batch row at a time, angles in float32."""
    half = rotary_dim // 2
    freq = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float32) * 2 / rotary_dim)
    rows = []
    for b in range(x.shape[0]):
        z = torch.complex(x[b, ..., :half], x[b, ..., half:rotary_dim])
        z = z * torch.polar(torch.ones(()), positions[b].float()[:, None] * freq)
        rows.append(torch.cat([z.real, z.imag, x[b, ..., rotary_dim:]], dim=-1))
    return torch.stack(rows)


def _rows_by_index(w, num_heads):
    """9.4 as a list of the rows' new order."""
    head_dim = w.shape[0] // num_heads
    order = [h * head_dim + 2 * i + j for h in range(num_heads) for j in (0, 1) for i in range(head_dim // 2)]
    return w[order]


@pytest.mark.parametrize(
    ("key", "target"),
    [("09.1", _shift_blocks), ("09.2", _partial_rope_complex), ("09.4", _rows_by_index)],
    ids=["09.1", "09.2", "09.4"],
)
def test_set_9_correct_code_written_differently_passes_on_many_seeds(key, target):
    ex = _ex(key)
    for seed in range(40):
        for case in ex.cases(ex.rng(seed)):
            ok, message = _judge(ex, target, case)
            assert ok, f"{key} seed {seed} {case.name}: {message}"


def test_a_backwards_shift_matrix_gets_its_hint():
    def backwards(k, d):
        freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        c, s = torch.cos(k * freq), torch.sin(k * freq)
        m = torch.zeros(d, d, dtype=torch.float64)
        for i in range(d // 2):
            m[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.stack(
                [torch.stack([c[i], -s[i]]), torch.stack([s[i], c[i]])]
            )
        return m

    assert "BACK" in _first_failure(_ex("09.1"), backwards)


def test_decoder_block_reference_is_torchs_post_norm_decoder_layer():
    """10.1's reference (attnlib's attention, LayerNorms, a ReLU feed-forward) equals nn.TransformerDecoderLayer(
    norm_first=False, dropout=0.0, batch_first=True) with the same weights, masks included."""
    mod = _module("10_transformer_block")
    for case in mod.block_cases(np.random.default_rng(0)):
        d, H, d_ff = case.init
        layer = torch.nn.TransformerDecoderLayer(d, H, d_ff, dropout=0.0, batch_first=True, norm_first=False)
        layer = layer.double().eval()
        w = {k: torch.from_numpy(v).double() for k, v in case.weights.items()}
        state = {}
        for ours, theirs in (("self_attn", "self_attn"), ("cross_attn", "multihead_attn")):
            for kind in ("weight", "bias"):
                state[f"{theirs}.in_proj_{kind}"] = torch.cat([w[f"{ours}.w_{p}.{kind}"] for p in "qkv"])
                state[f"{theirs}.out_proj.{kind}"] = w[f"{ours}.w_o.{kind}"]
        for i in (1, 2, 3):
            state[f"norm{i}.weight"], state[f"norm{i}.bias"] = w[f"ln{i}.weight"], w[f"ln{i}.bias"]
        for i, j in ((1, 0), (2, 2)):
            state[f"linear{i}.weight"], state[f"linear{i}.bias"] = w[f"mlp.{j}.weight"], w[f"mlp.{j}.bias"]
        layer.load_state_dict(state)
        x, memory = (torch.from_numpy(a).double() for a in case.args[:2])
        L = x.shape[1]
        padding = ~torch.from_numpy(case.args[2])[:, 0, 0] if len(case.args) > 2 else None
        with torch.no_grad():
            theirs = layer(
                x, memory, tgt_mask=~torch.ones(L, L, dtype=torch.bool).tril(), memory_key_padding_mask=padding
            )
        torch.testing.assert_close(torch.from_numpy(mod.block_expect(case)["out"]), theirs)


def test_pre_norm_decoder_block_gets_its_hint():
    ns = _solution_namespace("10_transformer_block")

    class PreNorm(ns["DecoderBlock"]):
        def forward(self, x, memory, memory_mask=None):
            causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
            a, w_self = self.self_attn(self.ln1(x), attn_mask=causal)
            x = x + a
            c, w_cross = self.cross_attn(self.ln2(x), memory, attn_mask=memory_mask)
            x = x + c
            return x + self.mlp(self.ln3(x)), w_self, w_cross

    assert "pre-norm" in _first_failure(_ex("10.1"), PreNorm)


def test_unshifted_loss_gets_its_hint():
    def unshifted(logits, tokens):
        return -torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).mean()

    assert "no shift" in _first_failure(_ex("10.2"), unshifted)


def test_top_left_causal_decode_step_gets_its_hint():
    def top_left(q, k, v, k_cache, v_cache):
        keys, values = torch.cat([k_cache, k], 2), torch.cat([v_cache, v], 2)
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True), keys, values

    assert "only key 0" in _first_failure(_ex("10.3"), top_left)


def test_decode_step_without_the_new_key_gets_its_hint():
    def stale(q, k, v, k_cache, v_cache):
        keys, values = torch.cat([k_cache, k], 2), torch.cat([v_cache, v], 2)
        w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
        return w @ v_cache, keys, values

    assert "BEFORE attending" in _first_failure(_ex("10.3"), stale)


def test_tiled_gqa_gets_its_hint():
    def tiled(q, k, v):
        n = q.shape[1] // k.shape[1]
        k, v = k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1)
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
        return w @ v, w

    assert "tiled" in _first_failure(_ex("11.1"), tiled)


def test_off_by_one_window_gets_its_hint():
    def off_by_one(L, window):
        d = torch.arange(L)[:, None] - torch.arange(L)[None, :]
        return (d >= 0) & (d <= window)

    assert "off by one" in _first_failure(_ex("11.2"), off_by_one)


def test_unnormalised_linear_attention_gets_its_hint():
    def unnormalised(q, k, v):
        return (F.elu(q) + 1) @ ((F.elu(k) + 1).transpose(-2, -1) @ v)

    assert "not normalised" in _first_failure(_ex("11.3"), unnormalised)
