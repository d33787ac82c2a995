"""Exercise set 13's checks (attnlib/grader/sets/13_flash_attention.py), tested directly: a right answer passes
every case, and each known mistake, run as code, gets its own hint. The set's notebooks are graded too: the
solutions' 13.1 and 13.2 over many seeds in this process; 13.3's Triton kernel (the given bug, each catalogued
mistake as a broken copy of the solution, a seed sweep, and a machine without Triton) in a child process started
with TRITON_INTERPRET=1, because this process may already have imported triton in compiled mode; and both
notebooks end to end through the sandboxed grader."""

from __future__ import annotations

import importlib.util
import json
import linecache
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlib.grader import diagnose
from attnlib.grader.invoke import run_case

PATH = Path(__file__).resolve().parents[1] / "attnlib" / "grader" / "sets" / "13_flash_attention.py"
spec = importlib.util.spec_from_file_location("attnlib.grader.sets.set13", PATH)
set13 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(set13)
BY_ENTRY = {ex.entry: ex for ex in set13.EXERCISES}


def merge_attention_splits(outs, lses, *, weighted=True, max_from=None):
    """The merge written independently of the solution: a running max over the splits (``max_from`` its first
    value; -inf is right), then one weighted sum."""
    m = torch.full(lses.shape[1:], -math.inf if max_from is None else max_from)
    for lse in lses:
        m = torch.maximum(m, lse)
    ref = torch.nan_to_num(m, neginf=0.0)
    w = torch.exp(lses - ref) if weighted else torch.ones_like(lses)
    total = w.sum(0)
    out = torch.einsum("s...,s...d->...d", w, outs) / total.unsqueeze(-1)
    out = torch.where(total.unsqueeze(-1) > 0, out, torch.zeros_like(out))
    return out, ref + torch.log(total)


def attention_backward(q, k, v, out, lse, dout, *, use_D=True):
    scale = 1 / math.sqrt(q.shape[-1])
    p = torch.exp(scale * q @ k.transpose(-2, -1) - lse[..., None])
    dp = dout @ v.transpose(-2, -1)
    D = (dout * out).sum(-1, keepdim=True) if use_D else 0.0
    ds = p * (dp - D)
    return scale * ds @ k, scale * ds.transpose(-2, -1) @ q, p.transpose(-2, -1) @ dout


def _judge(ex, fn):
    results = []
    for case in ex.cases(np.random.default_rng(0)):
        case_dict = {"args": list(case.args), "kwargs": dict(case.kwargs)}
        outputs = run_case(fn, ex.kind, list(ex.returns), case_dict)
        results.append(diagnose.judge(case.args, (), outputs, ex.expect(case), ex.mistakes(case)))
    return results


def test_the_set_module_follows_the_contract():
    assert set13.SET == "13_flash_attention" and set13.TITLE
    assert [ex.key for ex in set13.EXERCISES] == ["13.1", "13.2", "13.3"]
    for ex in set13.EXERCISES:
        assert ex.set == set13.SET and ex.points > 0 and ex.minutes > 0 and ex.difficulty in ("easy", "medium", "hard")
        assert "torch.nn.functional.scaled_dot_product_attention" in ex.forbidden and "attnlib" in ex.forbidden


@pytest.mark.parametrize(
    ("entry", "fn"), [("merge_attention_splits", merge_attention_splits), ("attention_backward", attention_backward)]
)
def test_a_right_answer_passes_every_case(entry, fn):
    results = _judge(BY_ENTRY[entry], fn)
    assert results and all(ok for ok, _ in results), results


@pytest.mark.parametrize(
    ("entry", "fn", "hint"),
    [
        ("merge_attention_splits", lambda *a: merge_attention_splits(*a, weighted=False), "equal weights"),
        ("merge_attention_splits", lambda *a: merge_attention_splits(*a, max_from=0.0), "starts at 0"),
        ("attention_backward", lambda *a: attention_backward(*a, use_D=False), "missing the softmax's normalisation"),
    ],
)
def test_a_mistake_written_as_code_gets_its_hint(entry, fn, hint):
    results = _judge(BY_ENTRY[entry], fn)
    assert not all(ok for ok, _ in results)
    assert any(hint in message for ok, message in results if not ok), results


@pytest.mark.parametrize("ex", set13.EXERCISES, ids=lambda ex: ex.key)
def test_every_mistake_differs_from_the_reference_and_is_named(ex):
    shown: dict[str, int] = {}
    for case in ex.cases(np.random.default_rng(1)):
        expected = ex.expect(case)
        for hint, wrong in ex.mistakes(case):
            shown.setdefault(hint, 0)
            if all(diagnose.close(wrong[n], expected[n]) for n in wrong):
                continue  # this input cannot show this mistake (e.g. the max never moves)
            shown[hint] += 1
            got = {**expected, **wrong}  # a mistake that changes only the output keeps the reference's lse
            ok, message = diagnose.diagnose(got, expected, ex.mistakes(case))
            assert not ok and message == hint, (case.name, hint, message)
    assert all(n > 0 for n in shown.values()), f"some mistakes are never visible in any case: {shown}"


# --------------------------------------------------------------------------------------------------------------
# The notebooks

ROOT = Path(__file__).resolve().parents[1]
SET = "13_flash_attention"
KERNEL = BY_ENTRY["fixed_flash_kernel_forward"]


def _load(folder: Path, *replace: tuple[str, str], strict: bool = True) -> dict:
    """The notebook's kept definitions (what the sandbox runs), each statement's source in linecache as the
    grader's worker does (@triton.jit needs it); each ``replace`` pair (old, new) makes a broken copy."""
    import nbformat

    from attnlib.grader.notebook import definitions

    cells = [c.source for c in nbformat.read(folder / f"{SET}_exercises.ipynb", 4).cells if c.cell_type == "code"]
    for old, new in replace:
        hits = [i for i, c in enumerate(cells) if old in c]
        assert len(hits) == 1 and cells[hits[0]].count(old) == 1, f"{old!r} must occur once"
        cells[hits[0]] = cells[hits[0]].replace(old, new)
    namespace: dict = {"__name__": "__main__"}
    for n, (label, code) in enumerate(definitions(cells).statements):
        filename = f"<{SET} {label}, statement {n + 1}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            exec(compile(code, filename, "exec"), namespace)  # noqa: S102 - the course's notebooks
        except Exception:
            if strict:
                raise
    return namespace


def test_the_notebooks_state_points_hints_rules_and_self_checks():
    from test_exercise_sets import test_notebooks_state_points_hints_rules_and_self_checks as rules

    rules(SET)  # the checks every other set's notebooks pass (set 13 is not in that module's list)


@pytest.mark.parametrize("entry", ["merge_attention_splits", "attention_backward"])
def test_the_solutions_pass_over_many_seeds(entry):
    from exercise_harness import lost_points

    fn = _load(ROOT / "solutions")[entry]
    lost = {seed: lost_points(BY_ENTRY[entry], fn, seed) for seed in range(60)}
    assert not any(lost.values()), {s: p for s, p in lost.items() if p}


# (id, the solution's text, its replacement, regex of the hint every failed check must show)
KERNEL_MISTAKES = [
    ("l-not-rescaled", "l_i = l_i * alpha + tl.sum(p, 1)", "l_i = l_i + tl.sum(p, 1)", "running sum l_i is not"),
    ("acc-not-rescaled", "acc = acc * alpha[:, None] + tl.dot", "acc = acc + tl.dot", "accumulator acc is not"),
    ("lse-base-2", "(m_i + tl.log2(l_i)) * 0.6931471805599453", "m_i + tl.log2(l_i)", "left in base 2"),
    ("no-log2e", "qk_scale = math.log2(math.e) / math.sqrt(E)", "qk_scale = 1.0 / math.sqrt(E)", "lacks log2"),
    ("tail-unmasked", 's = tl.where(offs_n[None, :] < S, s, float("-inf"))', "s = s + 0.0", "past the end"),
]
SEEDS = range(8)


def _kernel_child() -> None:
    """Run as a script with TRITON_INTERPRET=1: one JSON line per variant of 13.3's notebook code."""
    from exercise_harness import grade, lost_points

    from attnlib.flash_triton import HAS_TRITON

    if not HAS_TRITON:
        print(json.dumps({"unavailable": "triton is not installed"}))
        return

    def emit(ident, fn):
        lost, messages = grade(KERNEL, fn, record=True)
        print(json.dumps({"id": ident, "lost": lost, "messages": messages}), flush=True)

    solution = _load(ROOT / "solutions")["fixed_flash_kernel_forward"]
    emit("solution", solution)
    lost = [lost_points(KERNEL, solution, seed) for seed in SEEDS]
    print(json.dumps({"id": "seeds", "lost": lost}), flush=True)
    emit("given-bug", _load(ROOT / "exercises", strict=False)["fixed_flash_kernel_forward"])
    for ident, old, new, _ in KERNEL_MISTAKES:
        emit(ident, _load(ROOT / "solutions", (old, new))["fixed_flash_kernel_forward"])
    both = (KERNEL_MISTAKES[0][1:3], KERNEL_MISTAKES[1][1:3])
    emit("neither-rescaled", _load(ROOT / "solutions", *both)["fixed_flash_kernel_forward"])
    for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
        sys.modules[name] = None  # as on macOS: `import triton` fails
    emit("no-triton", _load(ROOT / "solutions", strict=False)["fixed_flash_kernel_forward"])


@pytest.fixture(scope="module")
def kernel_results():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "kernel-child"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines and "unavailable" in lines[0]:
        pytest.skip(lines[0]["unavailable"])
    return {r["id"]: r for r in lines}


def test_the_kernel_solution_passes_over_many_seeds(kernel_results):
    assert kernel_results["solution"]["lost"] == 0, kernel_results["solution"]["messages"]
    assert kernel_results["seeds"]["lost"] == [0] * len(SEEDS)


@pytest.mark.parametrize(
    ("ident", "hint"),
    [
        ("given-bug", "one position past the end of the keys is treated as a key"),
        *((ident, hint) for ident, _, _, hint in KERNEL_MISTAKES),
        ("neither-rescaled", "neither l_i nor acc is rescaled"),
        ("no-triton", "Triton is not installed in this Python environment"),
    ],
)
def test_each_kernel_mistake_loses_points_with_its_hint(kernel_results, ident, hint):
    result = kernel_results[ident]
    assert result["lost"] > 0, f"{ident} was not caught"
    assert result["messages"] and all(re.search(re.escape(hint), m) for m in result["messages"]), result


def test_the_sandboxed_grader_runs_the_kernel_full_marks_and_zero():
    """End to end: the worker runs Triton's interpreter (TRITON_INTERPRET=1, the statements' source in
    linecache), so the solutions score 100 % and the untouched exercises 0 %, 13.3 with the given bug's hint."""
    from attnlib.flash_triton import HAS_TRITON
    from attnlib.grader import engine

    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    solved = engine.grade([ROOT / "solutions" / f"{SET}_exercises.ipynb"])
    assert solved.percent == pytest.approx(100.0), [(r.exercise.key, r.message) for r in solved.results]
    untouched = engine.grade([ROOT / "exercises" / f"{SET}_exercises.ipynb"])
    assert untouched.percent == 0.0
    messages = {r.exercise.key: r.message for r in untouched.results}
    assert "one position past the end of the keys is treated as a key" in messages["13.3"], messages


if __name__ == "__main__" and sys.argv[1:] == ["kernel-child"]:
    _kernel_child()
