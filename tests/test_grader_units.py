"""The grader's pure parts: diagnosis, the exercise registry's references and mistakes, notebook reading,
the exercise builder and the self-check (in-process, no sandbox)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnlib.grader import build, diagnose, notebook, selfcheck
from attnlib.grader.exercises import BY_ENTRY, EXERCISES, set_of_path


def test_row_sums_message_names_the_sum():
    # weights that do not form a distribution (they sum to 1.12)
    w = np.array([[0.02, 0.25, 0.03, 0.35, 0.20, 0.04, 0.02, 0.15, 0.06]])
    ok, message = diagnose.diagnose({"weights": w}, {"weights": np.full((1, 9), 1 / 9)}, distribution="weights")
    assert not ok and "sums to 1.12" in message and "wrong axis" in message


def test_diagnose_passes_close_outputs_and_names_a_matching_mistake():
    ref = {"out": np.array([0.2, 0.8])}
    assert diagnose.diagnose({"out": np.array([0.2, 0.8 + 1e-7])}, ref) == (True, "correct")
    ok, message = diagnose.diagnose({"out": np.array([0.5, 0.5])}, ref, [("uniform!", {"out": np.array([0.5, 0.5])})])
    assert (ok, message) == (False, "uniform!")
    ok, message = diagnose.diagnose({"out": np.array([np.nan, 1.0])}, ref)
    assert not ok and "NaN" in message
    ok, message = diagnose.diagnose({"out": np.array([1.0, 2.0, 3.0])}, ref)
    assert not ok and "shape (3)" in message
    ok, message = diagnose.diagnose({"out": np.array([1.0, 0.0])}, {"out": np.array([True, True])})
    assert not ok and "dtype" in message


def test_mutation_is_reported():
    x = np.arange(3.0)
    assert diagnose.mutation_message("x", x, x.copy()) is None
    assert "in place" in diagnose.mutation_message("x", x, x - 1)


@pytest.mark.parametrize("ex", EXERCISES, ids=[e.key for e in EXERCISES])
def test_every_mistake_differs_from_the_reference_somewhere(ex):
    """A known mistake that equals the reference could never be told apart; each must differ on some check."""
    cases = ex.cases(np.random.default_rng(0))
    assert len(cases) >= (1 if ex.style == "question" else 3)  # a question may have one answer to check
    hints: dict[str, bool] = {}
    for case in cases:
        expected = ex.expect(case)
        for hint, wrong in ex.mistakes(case):
            if not wrong:  # a question's explanation after any other answer: it compares nothing
                continue
            differs = not diagnose.matches(wrong, {k: v for k, v in expected.items() if k in wrong})
            hints[hint] = hints.get(hint, False) or differs
    assert hints and all(hints.values()), [h for h, d in hints.items() if not d]


def test_mha_reference_matches_torch_multihead_attention():
    from attnlib import MultiHeadAttention, to_mha_mask

    ex = BY_ENTRY["MultiHeadAttention"]
    for case in ex.cases(np.random.default_rng(1)):
        expected = ex.expect(case)
        mine = MultiHeadAttention(*case.init).double()
        with torch.no_grad():
            for name, value in case.weights.items():
                layer, attr = name.split(".")
                getattr(getattr(mine, layer), attr).copy_(torch.from_numpy(value.astype(np.float64)))
        mha = mine.to_torch()
        q, k, v = (torch.from_numpy(a.astype(np.float64)) for a in case.args[:3])
        mask = None
        if len(case.args) > 3:
            m = torch.from_numpy(case.args[3])
            mask = to_mha_mask(m)
            if m.dim() == 4:  # padding (B, 1, 1, S) -> key_padding_mask (B, S)
                out, w = mha(q, k, v, key_padding_mask=mask[:, 0, 0], average_attn_weights=False)
            else:
                out, w = mha(q, k, v, attn_mask=mask, average_attn_weights=False)
        else:
            out, w = mha(q, k, v, average_attn_weights=False)
        np.testing.assert_allclose(out.detach().numpy(), expected["out"], atol=1e-10)
        np.testing.assert_allclose(w.detach().numpy(), expected["weights"], atol=1e-10)


def test_checks_cover_the_hard_cases():
    sdpa = BY_ENTRY["scaled_dot_product_attention"].cases(np.random.default_rng(0))
    assert any(c.args[0].shape[-2] != c.args[1].shape[-2] for c in sdpa)  # L != S
    assert any(c.args[0].ndim == 4 for c in sdpa)  # batch and heads
    assert any(np.abs(c.args[0]).max() * np.abs(c.args[1]).max() > 500 for c in sdpa)  # large logits
    masked = BY_ENTRY["masked_attention"].cases(np.random.default_rng(0))
    assert any(
        not np.broadcast_to(c.args[3], (*c.args[0].shape[:-1], c.args[1].shape[-2])).any(-1).all() for c in masked
    )
    assert all(
        c.grad_output is not None
        for name in ("SelfAttention", "CrossAttention", "MultiHeadAttention")
        for c in BY_ENTRY[name].cases(np.random.default_rng(0))
    )


def test_definitions_keep_defs_and_drop_top_level_code():
    src = notebook.definitions(
        [
            "%matplotlib inline\nimport torch\nx = 1\nprint(x)\nwhile True:\n    pass",
            "def f(:",
            "def g():\n    return 1",
        ]
    )
    kept = [code for _, code in src.statements]
    assert kept == ["import torch", "x = 1", "def g():\n    return 1"]
    assert "code cell 2 has a syntax error" in src.problems[0]


def test_forbidden_uses_resolve_aliases_and_follow_helpers():
    cells = [
        "import torch\nimport torch.nn.functional as F\nfrom attnlib import scaled_dot_product_attention as sdpa",
        "def helper(s):\n    return F.softmax(s, -1)\ndef ok(x):\n    return torch.exp(x)\n"
        "def bad(x):\n    return helper(x) + x.softmax(-1) + sdpa(x, x, x)[0]",
    ]
    tree = notebook.definitions(cells).tree
    forbidden = ("torch.nn.functional.softmax", "torch.Tensor.softmax", "attnlib")
    assert notebook.forbidden_uses(tree, "ok", forbidden) == []
    assert set(notebook.forbidden_uses(tree, "bad", forbidden)) == {"F.softmax", "x.softmax", "sdpa"}


def test_read_cells_reports_broken_files(tmp_path):
    bad = tmp_path / "02_softmax.ipynb"
    bad.write_text("{oops")
    with pytest.raises(notebook.NotebookError, match="not valid notebook JSON"):
        notebook.read_cells(bad)


def test_strip_solutions_keeps_signature_and_indentation():
    src = "class A:\n    def forward(self, x):\n        ### BEGIN SOLUTION\n        return x\n        ### END SOLUTION"
    out = build.strip_solutions(src)
    assert out.splitlines()[:2] == ["class A:", "    def forward(self, x):"]
    assert '        raise NotImplementedError("A.forward: replace this line with your code")' in out
    assert "return x" not in out
    with pytest.raises(build.MarkerError):
        build.strip_solutions("### BEGIN SOLUTION\nx = 1")


def test_set_of_path():
    assert set_of_path("03_softmax.ipynb") == "03_softmax"
    assert set_of_path("05_masking-Copy1.ipynb") == "05_masking"
    assert set_of_path("notes.ipynb") is None


def test_selfcheck_gives_specific_feedback(capsys):
    def stable_softmax(x, dim=-1, temperature=1.0):
        e = torch.exp(x / temperature)
        return e / e.sum(dim=dim, keepdim=True)

    selfcheck.check_stable_softmax(stable_softmax)
    out = capsys.readouterr().out
    assert out.startswith("❌ stable_softmax: 7 of 8 checks passed") and "subtract the maximum" in out

    def scaled_scores(q, k):
        return q @ k.T / math.sqrt(q.shape[-1])

    selfcheck.check_scaled_scores(scaled_scores)
    assert capsys.readouterr().out.startswith("✅ scaled_scores: all 5 checks passed")

    def causal_mask(L, S=None):
        raise NotImplementedError

    selfcheck.check_causal_mask(causal_mask)
    assert "not implemented yet" in capsys.readouterr().out

    def shortcut(x, dim=-1, temperature=1.0):
        return torch.softmax(x / temperature, dim)

    selfcheck.check_stable_softmax(shortcut)
    assert "calls torch.softmax" in capsys.readouterr().out
    assert not getattr(torch.softmax, "__attnlib_recorded__", None)  # the wrappers were removed again
