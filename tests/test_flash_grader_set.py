"""Exercise set 13's checks (attnlib/grader/sets/13_flash_attention.py), tested directly: a right answer passes
every case, and each known mistake, run as code, gets its own hint. (The registry that discovers set modules
lives on another branch; here the module is loaded from its file.)"""

from __future__ import annotations

import importlib.util
import math
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


def tiled_attention_forward(q, k, v, block_q, block_k, *, rescale=True, base2=False):
    scale = 1 / math.sqrt(q.shape[-1])
    outs, lses = [], []
    for i in range(0, q.shape[-2], block_q):
        qi = q[..., i : i + block_q, :]
        m = torch.full(qi.shape[:-1], -math.inf)
        l = torch.zeros(qi.shape[:-1])
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1])
        for j in range(0, k.shape[-2], block_k):
            s = scale * qi @ k[..., j : j + block_k, :].transpose(-2, -1)
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new) if rescale else torch.ones_like(m)
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p @ v[..., j : j + block_k, :]
            m = m_new
        outs.append(acc / l[..., None])
        lses.append((m + torch.log(l)) / (math.log(2) if base2 else 1.0))
    return torch.cat(outs, -2), torch.cat(lses, -1)


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
    assert [ex.key for ex in set13.EXERCISES] == ["13.1", "13.2"]
    for ex in set13.EXERCISES:
        assert ex.set == set13.SET and ex.points > 0 and ex.minutes > 0 and ex.difficulty in ("easy", "medium", "hard")
        assert "torch.nn.functional.scaled_dot_product_attention" in ex.forbidden and "attnlib" in ex.forbidden


@pytest.mark.parametrize(
    ("entry", "fn"), [("tiled_attention_forward", tiled_attention_forward), ("attention_backward", attention_backward)]
)
def test_a_right_answer_passes_every_case(entry, fn):
    results = _judge(BY_ENTRY[entry], fn)
    assert results and all(ok for ok, _ in results), results


@pytest.mark.parametrize(
    ("entry", "fn", "hint"),
    [
        ("tiled_attention_forward", lambda *a: tiled_attention_forward(*a, rescale=False), "exp(m_old - m_new)"),
        ("tiled_attention_forward", lambda *a: tiled_attention_forward(*a, base2=True), "base 2"),
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
            ok, message = diagnose.diagnose(wrong, expected, ex.mistakes(case))
            assert not ok and message == hint, (case.name, hint, message)
    assert all(n > 0 for n in shown.values()), f"some mistakes are never visible in any case: {shown}"
