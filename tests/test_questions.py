"""Questions: each key is computed by the code that states the question and satisfies that question; an answer is
accepted as a Python or NumPy number, a 0-d array or a 0-d tensor; no explanation prints the answer; and the
catalogued wrong answers of every check are distinct from each other and from the key (no batch = heads = bytes).
"""

from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pytest
import torch

from attnlib.grader import diagnose
from attnlib.grader.exercises import BY_KEY, EXERCISES
from attnlib.grader.invoke import run_case
from attnlib.grader.selfcheck import _as_dict

QUESTIONS = [ex for ex in EXERCISES if ex.style == "question"]
CONSTANT = [ex for ex in QUESTIONS if not ex.arg_names]  # answered by a zero-argument function


def _key(ex) -> float:
    return float(ex.expect(ex.cases(ex.rng(7))[0])["out"])


def _set(name):
    return importlib.import_module(f"attnlib.grader.sets.{name}")


def test_3_4_key_is_the_largest_float16_whose_row_sum_is_finite():
    s3 = _set("03_softmax")
    key = _key(BY_KEY["03.4"])
    assert key == s3.f16_row_sum_limit()
    x = torch.tensor(key, dtype=torch.float16)
    assert float(x) == key  # the key is itself a float16
    up = torch.nextafter(x, torch.tensor(math.inf, dtype=torch.float16))
    row = torch.full((s3.F16_ROW,), 1.0, dtype=torch.float16)
    assert torch.isfinite(torch.exp(row * x).sum())
    assert torch.isinf(torch.exp(row * up).sum())
    # and the answer the lesson's table prints (one exp) is not it
    assert key < math.log(float(torch.finfo(torch.float16).max)) - 1


def test_2_4_key_matches_a_simulation():
    s2 = _set("02_similarity_and_scaling")
    g = torch.Generator().manual_seed(0)
    d, sq, sk = s2.STD_DK, s2.STD_SIGMA_Q, s2.STD_SIGMA_K
    q = torch.randn(200_000, d, generator=g, dtype=torch.float64) * sq
    k = torch.randn(200_000, d, generator=g, dtype=torch.float64) * sk
    measured = float(((q * k).sum(-1) / math.sqrt(d)).std())
    assert measured == pytest.approx(_key(BY_KEY["02.4"]), rel=0.02)


def test_14_2_key_is_the_loaded_models_layer_parameter_count():
    minilm = pytest.importorskip("attnlib.minilm")
    try:
        model = minilm.load_minilm()
    except Exception as err:  # noqa: BLE001 - the weights are installed with the environment
        pytest.skip(f"MiniLM weights not available: {err}")
    layer = model.encoder.layers[0]
    assert _key(BY_KEY["14.2"]) == sum(p.numel() for p in layer.parameters())


def test_1_4_key_is_what_the_soft_lookup_becomes_at_low_temperature():
    g = torch.Generator().manual_seed(0)
    keys, values, query = torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g), torch.randn(4, generator=g)
    keys[0] = -query  # the first key is the worst match, so "the first key" and "the best key" differ
    scores = keys @ query
    options = {1: values.mean(0), 2: values[scores.argmax()], 3: torch.zeros(3), 4: values[0]}
    soft = torch.softmax(scores / 1e-4, -1) @ values
    right = [n for n, o in options.items() if torch.allclose(soft, o, atol=1e-5)]
    assert right == [int(_key(BY_KEY["01.4"]))]


def test_4_4_key_is_the_shape_attention_returns():
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    weights = torch.softmax(q @ k.transpose(-2, -1), -1)
    shapes = {1: (2, 3, 5, 7), 2: (2, 3, 7, 5), 3: (2, 3, 5, 6), 4: (2, 5, 7)}
    assert shapes[int(_key(BY_KEY["04.4"]))] == tuple(weights.shape) and weights @ v is not None


@pytest.mark.parametrize(
    "answer",
    [
        lambda key: np.float64(key),
        lambda key: np.float32(key) if key == np.float32(key) else np.float64(key),
        lambda key: np.int64(key) if key == int(key) else np.float64(key),
        lambda key: np.sum(np.array([key, 0.0])),
        lambda key: np.array(key),
        lambda key: torch.tensor(key, dtype=torch.float64),
        lambda key: int(key) if key == int(key) else float(key),
    ],
    ids=["np.float64", "np.float32", "np.int64", "np.sum", "0-d array", "0-d tensor", "python"],
)
def test_a_question_accepts_python_and_numpy_numbers_and_0d_arrays(answer):
    for ex in CONSTANT:
        key = _key(ex)
        case = ex.cases(ex.rng(7))[0]
        outputs = run_case(lambda key=key: answer(key), ex.kind, list(ex.returns), _as_dict(case))
        ok, message = diagnose.judge(case.args, (), outputs, ex.expect(case), ex.mistakes(case))
        assert ok, (ex.key, message)


def _spellings(value: float) -> set[str]:
    out = {f"{value:.4g}", f"{value:.3g}", f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"}
    if value == int(value):
        out |= {str(int(value)), f"{int(value):,}"}
    return out


@pytest.mark.parametrize("ex", QUESTIONS, ids=lambda ex: ex.key)
def test_no_explanation_or_hint_prints_the_answer(ex):
    for case in ex.cases(ex.rng(7)):
        key = float(ex.expect(case)["out"])
        for hint, _ in ex.mistakes(case):
            assert not re.search(r"\(answer \d\)|answer is \d", hint), (ex.key, hint)
            if not ex.arg_names and key != int(key) or abs(key) >= 10:  # a choice number 1-4 is too common a digit
                found = [s for s in _spellings(key) if re.search(rf"(?<![\d.]){re.escape(s)}(?![\d])", hint)]
                assert not found, (ex.key, case.name, found, hint)


@pytest.mark.parametrize("ex", [ex for ex in QUESTIONS if ex.arg_names], ids=lambda ex: ex.key)
def test_catalogued_wrong_answers_are_distinct_on_every_check(ex):
    for seed in (7, 8, 9):
        for case in ex.cases(ex.rng(seed)):
            key = float(ex.expect(case)["out"])
            values = [float(w["out"]) for _, w in ex.mistakes(case) if w]
            assert key not in values, (ex.key, case.name)
            assert len(set(values)) == len(values), (ex.key, case.name, values)
