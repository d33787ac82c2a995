"""The autograder end to end: solutions score 100%, untouched exercises 0, and every classic mistake is caught.

Each broken submission is a copy of a solution notebook with one string replaced; all of them are graded in one
sandbox run (``grade_many``) to keep the child-process count low.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from attnlib import cli
from attnlib.grader import build, report
from attnlib.grader.engine import Options, grade_many
from attnlib.grader.exercises import DEFAULT_SEED, EXERCISE_SETS, EXERCISES

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
EXERCISES_DIR = ROOT / "exercises"
OPTS = Options(seed=7, timeout=20)

# (id, notebook, exercise key, old, new, substring the message must contain)
BROKEN = [
    ("hard-argmin", "01_qkv_analogy", "01.1", "scores.argmax(dim=-1)", "scores.argmin(dim=-1)", "argmin"),
    (
        "soft-temp-times",
        "01_qkv_analogy",
        "01.2",
        "/ temperature  # (L, S)",
        "* temperature  # (L, S)",
        "multiplied by the temperature",
    ),
    ("softmax-no-max", "03_softmax", "03.1", "shifted = z - m", "shifted = z", "subtract the maximum"),
    (
        "softmax-axis",
        "03_softmax",
        "03.1",
        "z = x / temperature",
        "z = x / temperature\n    dim = -1  # always the last axis",
        "this check asked for dim=",
    ),
    (
        "softmax-temp-times",
        "03_softmax",
        "03.1",
        "z = x / temperature",
        "z = x * temperature",
        "multiplied by the temperature",
    ),
    (
        "softmax-in-place",
        "03_softmax",
        "03.1",
        "z = x / temperature",
        "x -= x.amax(dim=dim, keepdim=True)\n    z = x / temperature",
        "modified its input x in place",
    ),
    (
        "softmax-shortcut-static",
        "03_softmax",
        "03.1",
        "out = shifted - torch.log(total)",
        "out = torch.nn.functional.log_softmax(x / temperature, dim=dim)",
        "asks you to write it yourself",
    ),
    (
        "softmax-shortcut-dynamic",
        "03_softmax",
        "03.1",
        "out = shifted - torch.log(total)",
        'out = getattr(torch, "log_soft" + "max")(x / temperature, dim)',
        "computed name",
    ),
    (
        "scores-no-scale",
        "02_similarity_and_scaling",
        "02.1",
        "return q @ k.T / math.sqrt(q.shape[-1])",
        "return q @ k.T",
        "not scaled",
    ),
    ("scores-by-d", "02_similarity_and_scaling", "02.1", "math.sqrt(q.shape[-1])", "q.shape[-1]", "divided by d_k"),
    (
        "qk-swapped",
        "04_scaled_dot_product_attention",
        "04.1",
        "(q @ k.transpose(-2, -1))",
        "(k @ q.transpose(-2, -1))",
        "swapped",
    ),
    ("sdpa-axis", "04_scaled_dot_product_attention", "04.2", "scale), dim=-1)", "scale), dim=-2)", "over the queries"),
    (
        "sdpa-shortcut",
        "04_scaled_dot_product_attention",
        "04.2",
        "weights = torch.softmax(attention_scores(q, k, scale), dim=-1)\n    return weights @ v, weights",
        "import torch.nn.functional as F\n    weights = torch.softmax(attention_scores(q, k, scale), dim=-1)\n"
        "    return F.scaled_dot_product_attention(q, k, v), weights",
        "scaled_dot_product_attention",
    ),
    ("causal-inverted", "05_masking", "05.1", ".tril()", ".triu(1)", "inverted"),
    ("causal-diagonal", "05_masking", "05.1", ".tril()", ".tril(1)", "off by one"),
    ("causal-diagonal-excl", "05_masking", "05.1", ".tril()", ".tril(-1)", "attend to itself"),
    (
        "padding-inverted",
        "05_masking",
        "05.3",
        "positions[None, :] < lengths",
        "positions[None, :] >= lengths",
        "inverted",
    ),
    ("padding-shape", "05_masking", "05.3", "[:, None, None, :]\n", "\n", "(batch, 1, 1, S)"),
    (
        "masked-inverted",
        "05_masking",
        "05.5",
        'scores.masked_fill(~mask, float("-inf"))',
        'scores.masked_fill(mask, float("-inf"))',
        "inverted",
    ),
    (
        "masked-after-softmax",
        "05_masking",
        "05.5",
        'scores = scores.masked_fill(~mask, float("-inf"))\n    m =',
        "m =",
        "",  # mask ignored, and (with the next line) applied after the softmax: see the two cases below
    ),
    (
        "masked-nan-rows",
        "05_masking",
        "05.5",
        "weights = e / torch.where(total > 0, total, torch.ones_like(total))",
        "weights = torch.softmax(scores, dim=-1)",
        "NaN in fully masked rows",
    ),
    (
        "self-scale-d-model",
        "06_self_attention",
        "06.1",
        "math.sqrt(q.shape[-1])",
        "math.sqrt(x.shape[-1])",
        "1/sqrt(d_model)",
    ),
    (
        "self-detached",
        "06_self_attention",
        "06.1",
        "weights = safe_softmax(scores)",
        "weights = safe_softmax(scores).detach()",
        "gradient",
    ),
    ("self-no-value-projection", "06_self_attention", "06.1", "self.w_v(x)", "x", "values are not projected"),
    (
        "cross-padding-ignored",
        "07_cross_attention",
        "07.1",
        'torch.where(real, q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), float("-inf"))',
        "q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
        "mask is ignored",
    ),
    (
        "qkv-interleaved",
        "08_multi_head_attention",
        "08.1",
        "reshape(batch, seq, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)",
        "reshape(batch, seq, num_heads, 3, head_dim).permute(3, 0, 2, 1, 4)",
        "interleaved per head",
    ),
    (
        "contrib-rows",
        "08_multi_head_attention",
        "08.2",
        "w_o.reshape(w_o.shape[0], heads, head_dim).transpose(0, 1)",
        "w_o.reshape(heads, head_dim, w_o.shape[0]).transpose(-2, -1)",
        "ROWS",
    ),
    (
        "contrib-interleaved",
        "08_multi_head_attention",
        "08.2",
        "w_o.reshape(w_o.shape[0], heads, head_dim).transpose(0, 1)",
        "w_o.reshape(w_o.shape[0], head_dim, heads).permute(2, 0, 1)",
        "every heads-th column",
    ),
    (
        "mha-scale-embed",
        "08_multi_head_attention",
        "08.3",
        "math.sqrt(self.head_dim)",
        "math.sqrt(self.head_dim * self.num_heads)",
        "1/sqrt(embed_dim)",
    ),
    (
        "mha-no-out-proj",
        "08_multi_head_attention",
        "08.3",
        "return self.w_o(merge_heads(weights @ v)), weights",
        "return merge_heads(weights @ v), weights",
        "output projection",
    ),
    (
        "mha-mask-inverted",
        "08_multi_head_attention",
        "08.3",
        "masked_fill(~attn_mask,",
        "masked_fill(attn_mask,",
        "inverted",
    ),
    (
        "mha-shortcut",
        "08_multi_head_attention",
        "08.3",
        "q = split_heads(self.w_q(query), self.num_heads)  # (batch, heads, L, head_dim)",
        "nn.MultiheadAttention(8, 2)\n        q = split_heads(self.w_q(query), self.num_heads)",
        "MultiheadAttention",
    ),
]
# The mask lines of masked_attention removed entirely: the mask is ignored.
BROKEN[[b[0] for b in BROKEN].index("masked-after-softmax")] = (
    "masked-ignored",
    "05_masking",
    "05.5",
    'scores = scores.masked_fill(~mask, float("-inf"))\n    m =',
    "m =",
    "mask is ignored",
)
BROKEN.append(
    (
        "masked-after-softmax",
        "05_masking",
        "05.5",
        'scores = scores.masked_fill(~mask, float("-inf"))\n    m =',
        "m =",
        "after the softmax",
    )
)
_AFTER = (
    "return weights @ v, weights\n    ### END SOLUTION",
    "weights = weights * mask\n    return weights @ v, weights\n    ### END SOLUTION",
)


def _broken_copy(tmp: Path, case) -> Path:
    ident, set_name, key, old, new, _ = case
    nb = nbformat.read(SOLUTIONS / f"{set_name}_exercises.ipynb", as_version=4)
    hits = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and old in cell.source and (hits == 0):
            start = cell.source.index(old)
            cell.source = cell.source[:start] + new + cell.source[start + len(old) :]
            if ident == "masked-after-softmax":
                cell.source = cell.source.replace(*_AFTER)
            hits += 1
    assert hits == 1, f"{ident}: {old!r} not found in solutions/{set_name}_exercises.ipynb"
    folder = tmp / ident
    folder.mkdir()
    path = folder / f"{set_name}_exercises.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Solutions, exercises and every broken copy, graded in one sandbox run."""
    tmp = tmp_path_factory.mktemp("broken")
    broken_paths = [_broken_copy(tmp, case) for case in BROKEN]
    before = {p: p.read_bytes() for p in [*broken_paths, *SOLUTIONS.glob("*.ipynb"), *EXERCISES_DIR.glob("*.ipynb")]}
    reports = grade_many([[SOLUTIONS], [EXERCISES_DIR], *[[p] for p in broken_paths]], OPTS)
    after = {p: p.read_bytes() for p in before}
    return {
        "solutions": reports[0],
        "exercises": reports[1],
        "broken": dict(zip([b[0] for b in BROKEN], reports[2:], strict=True)),
        "unchanged": before == after,
    }


def test_solutions_score_full_marks(graded):
    rep = graded["solutions"]
    assert [r.exercise.key for r in rep.results] == [ex.key for ex in EXERCISES]
    failing = [(r.name, r.message) for r in rep.results if r.score != r.max_score]
    assert not failing
    assert rep.percent == 100.0


def test_untouched_exercises_score_zero_without_crashing(graded):
    rep = graded["exercises"]
    assert len(rep.results) == len(EXERCISES)
    assert rep.score == 0
    assert all(
        "not implemented yet" in r.message
        for r in rep.results
        if r.exercise.entry != "MultiHeadAttention" and r.exercise.style != "fix"  # a bug to fix is not a stub
    )


def test_grading_never_modifies_the_submissions(graded):
    assert graded["unchanged"]


@pytest.mark.parametrize("case", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_classic_mistake_loses_points_with_its_hint(graded, case):
    ident, set_name, key, _, _, hint = case
    rep = graded["broken"][ident]
    by_key = {r.exercise.key: r for r in rep.results}
    target = by_key[key]
    assert target.score < target.max_score, f"{ident} was not caught: {target.message}"
    assert hint in target.message, target.message
    # exercises of the same notebook that the change does not touch keep their full marks
    untouched = {
        "04.1": ("04.1", "04.2"),
        "05.1": ("05.1", "05.4"),
        "05.3": ("05.3", "05.4"),
    }.get(key, (key,))
    for r in rep.results:
        if r.exercise.key not in untouched:
            assert r.score == r.max_score, (ident, r.name, r.message)


def test_library_shortcuts_score_zero(graded):
    for ident in ("softmax-shortcut-static", "softmax-shortcut-dynamic", "sdpa-shortcut", "mha-shortcut"):
        rep = graded["broken"][ident]
        zeroed = [r for r in rep.results if r.score == 0 and "write it yourself" in r.message]
        assert len(zeroed) == 1, ident


def test_reports_follow_gradescope_classroom_and_junit(graded, tmp_path):
    rep = graded["broken"]["softmax-no-max"]
    paths = report.write(
        rep,
        results=tmp_path / "results.json",
        junit_path=tmp_path / "junit.xml",
        classroom_path=tmp_path / "classroom.json",
        summary=tmp_path / "summary.md",
    )
    assert all(p.exists() for p in paths)
    gs = json.loads((tmp_path / "results.json").read_text())
    assert set(gs) >= {"score", "execution_time", "output", "visibility", "tests"}
    assert {t["status"] for t in gs["tests"]} == {"passed", "failed"}
    for t in gs["tests"]:
        assert set(t) >= {"name", "score", "max_score", "status", "output", "visibility"}
    assert gs["score"] == pytest.approx(sum(t["score"] for t in gs["tests"]))
    cl = json.loads((tmp_path / "classroom.json").read_text())
    assert cl["version"] == 1 and cl["status"] == "fail" and cl["max_score"] == 12
    assert [t["status"] for t in cl["tests"]] == ["fail", "pass", "pass", "pass"]
    import xml.etree.ElementTree as ET

    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    assert "subtract the maximum" in (tmp_path / "summary.md").read_text()
    assert "03.1 stable_log_softmax" in report.table(rep)


def test_exercise_notebooks_are_up_to_date():
    stale = [
        s.name
        for s, dst in build.targets(SOLUTIONS, EXERCISES_DIR)
        if not dst.exists() or dst.read_text(encoding="utf-8") != build.render(s)
    ]
    assert not stale, f"run `attnlib exercises build`: {stale}"
    assert sorted(p.stem.removesuffix("_exercises") for p in SOLUTIONS.glob("*.ipynb")) == sorted(EXERCISE_SETS)


def test_exercises_state_points_difficulty_time_hints_and_self_checks():
    for set_name in EXERCISE_SETS:
        nb = nbformat.read(EXERCISES_DIR / f"{set_name}_exercises.ipynb", as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        for ex in (e for e in EXERCISES if e.set == set_name):
            assert ex.header in text, (set_name, ex.entry)
            assert f"selfcheck.check_{ex.entry}({ex.entry})" in text
            assert (
                f'raise NotImplementedError("{ex.entry}' in text or f"{ex.entry}.forward" in text or ex.style == "fix"
            )
        assert "<summary>Hint 1</summary>" in text
        assert "### BEGIN SOLUTION" not in text and all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_the_name_before_the_rename_is_still_graded_as_its_set(tmp_path):
    """A fork made before the rename has exercises/03_softmax.ipynb (today 03_softmax_exercises.ipynb): graded as
    set 03_softmax, in full."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "03_softmax.ipynb").write_bytes((SOLUTIONS / "03_softmax_exercises.ipynb").read_bytes())
    rep = grade_many([[sub]], OPTS)[0]
    mine = [r for r in rep.results if r.exercise.set == "03_softmax"]
    assert mine and all(r.score == r.max_score > 0 for r in mine), [(r.name, r.message) for r in mine]


def test_grade_command_writes_reports_and_fails_under(tmp_path, capsys):
    nb = tmp_path / "sub" / "03_softmax_exercises.ipynb"
    nb.parent.mkdir()
    nb.write_bytes((EXERCISES_DIR / "03_softmax_exercises.ipynb").read_bytes())
    out = tmp_path / "report"
    assert cli.run(["grade", str(nb), "--out", str(out), "--seed", "1"]) == 0
    assert cli.run(["grade", str(nb), "--out", str(out), "--seed", "1", "--fail-under", "50"]) == 1
    text = capsys.readouterr().out
    assert "03.1 stable_log_softmax" in text and "total" in text
    assert json.loads((out / "results.json").read_text())["score"] == 0
    assert (out / "junit.xml").exists() and (out / "classroom.json").exists() and (out / "summary.md").exists()


def test_grade_takes_the_class_seed_from_the_environment_or_a_passphrase(tmp_path, monkeypatch):
    from attnlib.grader.classgrade.run import class_seed

    nb = tmp_path / "sub" / "01_qkv_analogy_exercises.ipynb"
    nb.parent.mkdir()
    nb.write_bytes((EXERCISES_DIR / "01_qkv_analogy_exercises.ipynb").read_bytes())
    out = tmp_path / "report"
    monkeypatch.setenv("ATTNLIB_CLASS_SEED", "a secret only the instructor knows")
    assert cli.run(["grade", str(nb), "--out", str(out)]) == 0
    secret = class_seed(None)[0]
    assert secret == class_seed("a secret only the instructor knows")[0] != DEFAULT_SEED
    assert json.loads((out / "results.json").read_text())["extra_data"]["seed"] == secret
    assert cli.run(["grade", str(nb), "--out", str(out), "--seed", "12"]) == 0  # the option wins
    assert json.loads((out / "results.json").read_text())["extra_data"]["seed"] == 12
