"""The constraint an exercise states is checked, not only its values: an exercise that says "do not build the
L x S score matrix" has a memory budget (``Exercise.memory_limit_bytes``, enforced by the sandboxed worker) and a
check whose full matrix does not fit in it. Graded end to end through the engine: the solutions keep full marks,
and a copy of each solution that builds the whole matrix (values still right) loses points with a message that
says why.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from attnlib.grader.common import MIB, NO_FULL_MATRIX_BUDGET, NO_FULL_MATRIX_LENGTH
from attnlib.grader.engine import Options, grade_many
from attnlib.grader.exercises import BY_KEY, EXERCISES, notebook_name

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"

# (exercise key, notebook, old, new): a copy of the solution that computes the same values through the whole
# (L, S) score matrix
FULL_MATRIX = [
    (
        "11.3",
        "11_attention_variants",
        "    kv = phi_k.transpose(-2, -1) @ v\n    z = phi_k.sum(dim=-2, keepdim=True)\n"
        "    return (phi_q @ kv) / ((phi_q * z).sum(-1, keepdim=True) + 1e-6)",
        "    a = phi_q @ phi_k.transpose(-2, -1)\n    return (a @ v) / (a.sum(-1, keepdim=True) + 1e-6)",
    ),
    (
        "12.2",
        "12_cost_of_attention",
        "    rows = torch.arange(L)[:, None]\n    for j in range(0, S, block_size):",
        "    rows = torch.arange(L)[:, None]\n    block_size = S\n    for j in range(0, S, block_size):",
    ),
    (
        "12.4",
        "12_cost_of_attention",
        "    L, S = q.shape[-2], k.shape[-2]\n    scale = 1.0 / math.sqrt(q.shape[-1])\n    outs, lses = [], []",
        "    L, S = q.shape[-2], k.shape[-2]\n    block_size = max(L, S)\n    scale = 1.0 / math.sqrt(q.shape[-1])\n"
        "    outs, lses = [], []",
    ),
]


def test_every_exercise_that_forbids_the_matrix_has_a_budget_and_a_check_that_exceeds_it():
    assert NO_FULL_MATRIX_LENGTH**2 * 4 > NO_FULL_MATRIX_BUDGET  # the float32 matrix alone does not fit
    budgeted = {ex.key for ex in EXERCISES if ex.memory_limit_bytes}
    assert {key for key, *_ in FULL_MATRIX} <= budgeted
    for ex in EXERCISES:
        if ex.memory_limit_bytes:
            cases = ex.cases(ex.rng(7))
            sizes = [c.args[0].shape[-2] * c.args[1].shape[-2] * 4 for c in cases]
            assert max(sizes) > ex.memory_limit_bytes, ex.key
            big = cases[sizes.index(max(sizes))]
            assert any("out of memory" in hint for _, hint in ex.raises(big)), ex.key


def _copy(tmp: Path, key: str, set_name: str, old: str, new: str) -> Path:
    nb = nbformat.read(SOLUTIONS / notebook_name(set_name), as_version=4)
    hits = [
        c for c in nb.cells if c.cell_type == "code" and old in c.source and f"def {BY_KEY[key].entry}(" in c.source
    ]
    assert len(hits) == 1, key
    hits[0].source = hits[0].source.replace(old, new)
    folder = tmp / key
    folder.mkdir()
    nbformat.write(nb, folder / notebook_name(set_name))
    return folder


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full-matrix")
    solved = tmp / "solutions"
    solved.mkdir()
    for _, set_name, _, _ in FULL_MATRIX:
        (solved / notebook_name(set_name)).write_bytes((SOLUTIONS / notebook_name(set_name)).read_bytes())
    copies = [_copy(tmp, *row) for row in FULL_MATRIX]
    reports = grade_many([[solved], *[[c] for c in copies]], Options(seed=7, timeout=20))
    return reports[0], dict(zip([row[0] for row in FULL_MATRIX], reports[1:], strict=True))


def test_the_solutions_fit_the_budget(graded):
    solutions, _ = graded
    for key, *_ in FULL_MATRIX:
        result = next(r for r in solutions.results if r.exercise.key == key)
        assert result.score == result.max_score, (key, result.message)


@pytest.mark.parametrize("key", [row[0] for row in FULL_MATRIX])
def test_an_answer_that_builds_the_full_matrix_loses_points_and_is_told_why(graded, key):
    _, broken = graded
    result = next(r for r in broken[key].results if r.exercise.key == key)
    assert result.score < result.max_score, (key, result.message)
    assert f"ran out of its memory budget of {NO_FULL_MATRIX_BUDGET // MIB} MiB" in result.message, (
        key,
        result.message,
    )
