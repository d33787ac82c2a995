"""The grader's pure parts: diagnosis, the exercise registry's references and mistakes, notebook reading,
the exercise builder and the self-check (in-process, no sandbox)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlib.grader import build, diagnose, notebook, selfcheck
from attnlib.grader.exercises import BY_ENTRY, EXERCISES, set_of_path

ROOT = Path(__file__).resolve().parents[1]


def test_row_sums_message_names_the_sum():
    # weights that do not form a distribution (they sum to 1.12)
    w = np.array([[0.02, 0.25, 0.03, 0.35, 0.20, 0.04, 0.02, 0.15, 0.06]])
    ok, message = diagnose.diagnose({"weights": w}, {"weights": np.full((1, 9), 1 / 9)}, distribution="weights")
    # it says what it sees, and no cause the evidence does not single out (issue 22: hints never mislead)
    assert not ok and "sums to 1.12" in message and "wrong axis" not in message


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
        out, w = out.detach().numpy(), w.detach().numpy()
        # torch gives NaN for a query whose keys are all masked; attnlib (the reference) gives it zero weights
        empty_out, empty_w = np.isnan(out).any(-1), np.isnan(w).any(-1)
        np.testing.assert_allclose(out[~empty_out], expected["out"][~empty_out], atol=1e-10)
        np.testing.assert_allclose(w[~empty_w], expected["weights"][~empty_w], atol=1e-10)
        assert np.all(expected["weights"][empty_w] == 0) and np.isfinite(expected["out"]).all()


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
    assert set(notebook.forbidden_uses(tree, "bad", forbidden)) == {"F.softmax", "x.softmax", "sdpa", "import attnlib"}


def test_read_cells_reports_broken_files(tmp_path):
    bad = tmp_path / "03_softmax.ipynb"
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
    def stable_log_softmax(x, dim=-1, temperature=1.0):
        z = x / temperature
        total = torch.exp(z).sum(dim=dim, keepdim=True)
        return torch.where(total > 0, z - torch.log(total), torch.full_like(z, -math.inf))

    selfcheck.check_stable_log_softmax(stable_log_softmax)
    out = capsys.readouterr().out
    assert out.startswith("❌ stable_log_softmax: 7 of 9 checks passed") and "subtract the maximum" in out

    def scaled_scores(q, k):
        return q @ k.T / math.sqrt(q.shape[-1])

    selfcheck.check_scaled_scores(scaled_scores)
    assert capsys.readouterr().out.startswith("✅ scaled_scores: all 5 checks passed")

    def causal_mask(L, S=None):
        raise NotImplementedError

    selfcheck.check_causal_mask(causal_mask)
    assert "not implemented yet" in capsys.readouterr().out

    def shortcut(x, dim=-1, temperature=1.0):
        return torch.log_softmax(x / temperature, dim)

    selfcheck.check_stable_log_softmax(shortcut)
    assert "calls torch.log_softmax" in capsys.readouterr().out
    assert not getattr(torch.log_softmax, "__attnlib_recorded__", None)  # the wrappers were removed again

    def logsumexp_shortcut(x, dim=-1, temperature=1.0):
        z = x / temperature
        return z - torch.logsumexp(z, dim, keepdim=True)

    selfcheck.check_stable_log_softmax(logsumexp_shortcut)
    assert "calls torch.logsumexp" in capsys.readouterr().out
    assert not getattr(torch.logsumexp, "__attnlib_recorded__", None)


# ----------------------------------------------------------------------------------------------------------
# The static scan, the statements an exercise runs, output validation, reports, exit statuses

SOFTMAX_FORBIDDEN = BY_ENTRY["stable_log_softmax"].forbidden


def _uses(body: str, forbidden=SOFTMAX_FORBIDDEN, header: str = "import torch\nimport math") -> list[str]:
    tree = notebook.definitions([header, body]).tree
    return notebook.forbidden_uses(tree, "stable_log_softmax", forbidden)


@pytest.mark.parametrize(
    "body, shown",
    [
        ("def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return torch._softmax(x, dim, False)", "private"),
        (
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return torch.ops.aten.softmax.int(x, dim)",
            "operators",
        ),
        (
            'def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return getattr(torch, "soft" + "max")(x, dim)',
            "computed",
        ),
        ('def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return getattr(x, "softmax")(dim)', '"softmax"'),
        (
            "import importlib\nF = importlib.import_module('torch.nn.functional')\n"
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return F.softmax(x, dim)",
            "importlib",
        ),
        (
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return __import__('torch').softmax(x, dim)",
            "__import__",
        ),
        (
            "from scipy.special import softmax as s\n"
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return torch.from_numpy(s(x.numpy()))",
            "scipy",
        ),
        ("import jax\ndef stable_log_softmax(x, dim=-1, temperature=1.0):\n    return jax.nn.softmax(x)", "jax"),
        (
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return torch.nn.functional.softmin(-x, dim)",
            "softmin",
        ),
        (
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n"
            "    import sys\n    return sys.modules['torch'].exp(x)",
            "module table",
        ),
        ("def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return vars(torch)['exp'](x)", "vars"),
        ("def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return torch.exp.__wrapped__(x)", "__wrapped__"),
        (
            "torch.exp = torch.sigmoid\ndef stable_log_softmax(x, dim=-1, temperature=1.0):\n    return torch.exp(x)",
            "monkeypatching",
        ),
        (
            "f = torch.special\ndef stable_log_softmax(x, dim=-1, temperature=1.0):\n    return f.softmax(x, dim)",
            "softmax",
        ),
        (
            "import attnlib.reference as r\n"
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n"
            "    return r.softmax(x)",
            "attnlib",
        ),
        (
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    import operator\n"
            "    return operator.methodcaller('exp')(x)",
            "operator",
        ),
        ("def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return eval('x.softmax(dim)')", "eval"),
        (
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return x - x.logsumexp(dim, keepdim=True)",
            "logsumexp",
        ),
        (
            "from torch import special as s\n"
            "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return x - s.logsumexp(x, dim, keepdim=True)",
            "logsumexp",
        ),
    ],
)
def test_the_scan_finds_hidden_shortcuts(body, shown):
    uses = _uses(body)
    assert any(shown in u for u in uses), uses


@pytest.mark.parametrize(
    "body",
    [
        # correct code written in several ways a learner might: none of it may be flagged
        "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    z = x / temperature\n"
        "    s = z - z.amax(dim=dim, keepdim=True)\n    return s - torch.log(torch.exp(s).sum(dim=dim, keepdim=True))",
        "EPS = 1e-12\nNEG = float('-inf')\ndef _shift(z, dim):\n    return z - z.max(dim=dim, keepdim=True).values\n"
        'def stable_log_softmax(x, dim=-1, temperature=1.0):\n    """log softmax(x / temperature) along dim"""\n'
        "    s = _shift(x / temperature, dim)\n    return s - (s.exp().sum(dim, keepdim=True) + EPS).log()",
        "import numpy as np\ndef stable_log_softmax(x, dim=-1, temperature=1.0):\n    a = x.numpy() / temperature\n"
        "    s = a - a.max(axis=dim, keepdims=True)\n"
        "    return torch.from_numpy(s - np.log(np.exp(s).sum(axis=dim, keepdims=True)))",
        "class Helper:\n    def __init__(self, t):\n        self.t = t\n    def __call__(self, x, dim):\n"
        "        z = x / self.t\n        m = z.amax(dim, keepdim=True)\n"
        "        return z - m - torch.exp(z - m).sum(dim, keepdim=True).log()\n"
        "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return Helper(temperature)(x, dim)",
    ],
)
def test_the_scan_accepts_correct_code(body):
    assert _uses(body) == []


def test_the_scan_and_the_run_cover_only_what_the_entry_needs():
    cells = [
        "import torch\nfrom torch import nn\nfrom attnlib.grader import selfcheck",
        "def helper(s):\n    return s - s.amax(-1, keepdim=True)",
        "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return torch.exp(helper(x))",
        "demo = nn.MultiheadAttention(8, 2)\nx = torch.randn(3)",  # a demo cell: not needed, not scanned
    ]
    src = notebook.definitions(cells)
    kept = [code.splitlines()[0] for _, code in notebook.needed_statements(src, "stable_log_softmax")]
    assert kept == ["import torch", "def helper(s):", "def stable_log_softmax(x, dim=-1, temperature=1.0):"]
    mha = BY_ENTRY["MultiHeadAttention"].forbidden
    assert notebook.forbidden_uses(src.tree, "stable_log_softmax", mha) == []


def _npy(arr) -> dict:
    import base64
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return {"npy": base64.b64encode(buf.getvalue()).decode()}


def test_outputs_are_validated_before_they_are_judged():
    from attnlib.grader import wire

    ok = wire.decode(_npy(np.arange(6.0).reshape(2, 3)))
    assert type(ok) is np.ndarray and ok.shape == (2, 3)
    bad = [
        _npy(np.array([object()], dtype=object)),  # a pickle inside
        _npy(np.zeros(3, dtype=[("a", "f4")])),  # structured
        _npy(np.array(["text"])),  # strings as arrays
        {"npy": _npy(np.zeros(3))["npy"][:-8]},  # truncated
        {"npy": "not base64!"},
        {"json": [1, 2]},
        {"json": "x" * 5000},
        {"json": 10**30},
        {"npy": _npy(np.zeros(3))["npy"], "extra": 1},
        "raw",
    ]
    import base64

    header = (
        b"\x93NUMPY\x01\x00"
        + b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }".ljust(118)
        + b"\n"
    )
    bad.append({"npy": base64.b64encode(header).decode()})  # a header that claims 10^10 elements
    for spec in bad:
        with pytest.raises((ValueError, TypeError)):
            wire.decode(spec)


def test_reports_are_written_atomically_and_never_through_links(tmp_path):
    from attnlib.grader import report

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").symlink_to(victim)
    os.link(victim, out / "junit.xml")
    (out / "stale.txt").write_text("old")
    path = report.write_file(tmp_path / "gs" / "results.json", "{}")
    assert path.read_text() == "{}"
    (tmp_path / "gs" / "other.json").write_text("x")
    os.replace(tmp_path / "gs" / "other.json", tmp_path / "gs" / "linked.json")
    os.symlink(victim, tmp_path / "gs" / "results2.json")
    report.write_file(tmp_path / "gs" / "results2.json", "{}")
    files = report.write_folder(out, {"results.json": "{}", "junit.xml": "<x/>"})
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "results.json"]  # a fresh folder
    assert victim.read_text() == "precious" and os.stat(victim).st_nlink == 1
    assert all(not p.is_symlink() and os.stat(p).st_nlink == 1 for p in files)
    assert not (tmp_path / "gs" / "results2.json").is_symlink()


def test_exit_status_says_what_happened(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from attnlib import cli
    from attnlib.grader import engine

    nb = tmp_path / "03_softmax.ipynb"
    nb.write_bytes((ROOT / "exercises" / "03_softmax_exercises.ipynb").read_bytes())
    out = tmp_path / "report"

    def status():
        return json.loads((out / "results.json").read_text())["extra_data"]["status"]

    monkeypatch.setenv("ATTNLIB_BWRAP", "")  # bubblewrap absent
    assert cli.run(["grade", str(nb), "--out", str(out), "--sandbox", "bwrap"]) == 3
    assert status() == "sandbox unavailable" and "bwrap is not installed" in (out / "summary.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("a grader bug")

    monkeypatch.setattr(engine, "grade", broken)
    assert cli.run(["grade", str(nb), "--out", str(out)]) == 2
    assert status() == "grader failed" and "a grader bug" in (out / "results.json").read_text()
    monkeypatch.setitem(sys.modules, "attnlib.grader.engine", None)  # the grader's own modules cannot be imported
    assert cli.run(["grade", str(nb), "--out", str(out)]) == 4
    assert status() == "error"
    capsys.readouterr()


def test_poisoned_entry_points_raise_inside_a_worker():
    """The worker's poison, in a separate interpreter (it cannot be undone in this one)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, GRADER)\n"
        "import torch, traps as worker\n"
        "n = worker.poison({'softmax'}, set())\n"
        "x = torch.randn(3)\n"
        "for f in (lambda: torch.softmax(x, 0), lambda: x.softmax(0), lambda: torch.nn.functional.softmax(x, 0),\n"
        "          lambda: torch._softmax(x, 0, False), lambda: torch.ops.aten.softmax.int(x, 0),\n"
        "          lambda: torch.special.softmax(x, 0), lambda: torch.nn.Softmax(0)(x),\n"
        "          lambda: torch.distributions.Categorical(logits=x).probs,\n"
        "          lambda: torch.nn.functional.softmin(x, 0), lambda: torch.nn.functional.gumbel_softmax(x)):\n"
        "    try:\n"
        "        f(); print('NOT POISONED')\n"
        "    except worker.ForbiddenCall:\n"
        "        pass\n"
        "print('ok', n, float(torch.exp(x).sum() > 0))\n"
    ).replace("GRADER", repr(str(ROOT / "attnlib" / "grader" / "inside")))
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NOT POISONED" not in proc.stdout and proc.stdout.startswith("ok"), proc.stdout


def test_a_value_answer_is_scanned_and_run_with_what_it_needs():
    src = notebook.definitions(["import torch", "import scipy.special as sp\nanswer = float(sp.softmax([1.0])[0])"])
    assert [c for _, c in notebook.needed_statements(src, "answer")] == [
        "import scipy.special as sp",
        "answer = float(sp.softmax([1.0])[0])",
    ]
    assert any("scipy" in u for u in notebook.forbidden_uses(src.tree, "answer", SOFTMAX_FORBIDDEN))
    src = notebook.definitions(['answer = "B"'])
    assert notebook.forbidden_uses(src.tree, "answer", SOFTMAX_FORBIDDEN) == []


def test_an_exercise_memory_budget_fails_the_answer_that_builds_the_big_matrix(tmp_path, monkeypatch):
    """``Exercise.memory_limit_bytes`` is the worker's address-space budget on top of the runner's: an answer that
    allocates far more fails that exercise with "ran out of its memory budget", a frugal one passes."""
    import nbformat

    from attnlib.grader import engine
    from attnlib.grader.exercises import Case, Exercise

    ex = Exercise(
        key="03.9",
        set="03_softmax",
        entry="row_sums",
        title="row sums without the big matrix",
        points=2,
        difficulty="easy",
        minutes=1,
        cases=lambda rng: [Case("4096 x 4096", (np.ones(4096, np.float32), np.ones(4096, np.float32)))],
        expect=lambda case: {"out": np.full(4096, 4096.0)},
        memory_limit_bytes=32 << 20,
    )
    monkeypatch.setattr(engine, "exercises_of", lambda name: [ex])
    bodies = {
        "frugal": "    return q * k.sum()",
        "big": "    return (q[:, None] * k[None, :] + torch.zeros(64, 4096, 4096)[0]).sum(dim=1)",
    }
    subs = []
    for name, body in bodies.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            nbformat.v4.new_code_cell("import torch"),
            nbformat.v4.new_code_cell(f"def row_sums(q, k):\n{body}"),
        ]
        (tmp_path / name).mkdir()
        nbformat.write(nb, tmp_path / name / "03_softmax.ipynb")
        subs.append([tmp_path / name / "03_softmax.ipynb"])
    frugal, big = engine.grade_many(subs, engine.Options(seed=1, timeout=10))
    assert frugal.results[0].score == 2, frugal.results[0].message
    assert big.results[0].score == 0 and "ran out of its memory budget of 32 MiB" in big.results[0].message


def test_what_runs_beside_submitted_code_imports_nothing_from_attnlib():
    """attnlib/grader/inside/ is copied into the sandbox alone: its modules import the standard library, NumPy,
    torch and each other (relatively, or as sibling scripts), never attnlib; and the job folder gets only them."""
    import ast

    from attnlib.grader import inside

    folder = Path(inside.__file__).parent
    siblings = {p.stem for p in folder.glob("*.py")}
    assert set(inside.FILES) == {p.name for p in folder.glob("*.py")} - {"__init__.py"}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert (node.module or "") in siblings | {""}, (path.name, node.module)
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top != "attnlib", f"{path.name} imports {name}"
                assert top in siblings | {"torch", "numpy", "__future__"} or top in sys.stdlib_module_names, name


def test_the_job_folder_holds_only_the_inside_files_and_declared_infrastructure():
    import shutil

    from attnlib.grader import supervise

    jobdir = supervise.job_folder({"attnlib.MultiHeadAttention"})
    try:
        files = sorted(str(p.relative_to(jobdir)) for p in jobdir.rglob("*") if p.is_file())
        assert [f for f in files if f.startswith("code/")] == sorted(f"code/{n}" for n in supervise.FILES)
        lib = [f for f in files if f.startswith("lib/")]
        assert lib and all(f.startswith("lib/attnlib-MultiHeadAttention/attnlib/") for f in lib)
        assert not any("grader" in f or "sets" in f for f in files)
    finally:
        shutil.rmtree(jobdir)


def test_checks_are_memoized_per_seed_and_exercise():
    """engine.checks_for computes an exercise's inputs once per (seed, exercise) in a process: another seed, or a
    changed check (a new Exercise object or other functions), gets its own inputs and references, never stale ones."""
    import dataclasses

    from attnlib.grader import engine

    ex = BY_ENTRY["stable_log_softmax"]
    first = engine.checks_for(ex, 5).complete()
    assert engine.checks_for(ex, 5) is first and first.expected and first.specs and first.blobs
    other = engine.checks_for(ex, 6)
    assert other is not first
    assert not np.array_equal(other.cases[0].args[0], first.cases[0].args[0])

    def doubled(case):
        return {k: 2 * v for k, v in ex.expect(case).items()}

    changed = dataclasses.replace(ex, expect=doubled)
    again = engine.checks_for(changed, 5).complete()
    assert again is not first
    assert all(np.allclose(again.expected[0][k], 2 * v) for k, v in first.expected[0].items())
    for seed in range(10, 10 + engine.MEMO_SEEDS + 2):  # only the last few seeds are kept
        engine.checks_for(ex, seed)
    assert len(engine._MEMO) == engine.MEMO_SEEDS
