"""``attnlib grade-class``: layouts, the file each set is graded from, the cache, shards + merge, the gradebook and
the class report, computed from real grading (in the sandbox) of solutions with known mistakes injected.

The class is small on purpose (five students, sets 01 and 02 only): every student costs one sandbox start.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import stat
import zipfile
from pathlib import Path

import nbformat
import pytest
from test_exercise_sets import BROKEN

from attnlib import cli
from attnlib.grader.classgrade import adapter, discover, outputs, run
from attnlib.grader.engine import Result
from attnlib.grader.exercises import BY_KEY
from attnlib.grader.results import NOT_GRADED

ROOT = Path(__file__).resolve().parents[1]
SOL, EXE, LES = ROOT / "solutions", ROOT / "exercises", ROOT / "notebooks"
S1, S2 = "01_qkv_analogy", "02_similarity_and_scaling"
SEED = "course-secret-2026"  # a passphrase: hashed to the class seed
BROKEN_BY_ID = {b[0]: b for b in BROKEN}


def broken(set_name: str, *idents: str) -> str:
    """The solution of a set with the catalogued mistakes ``idents`` injected (tests/test_exercise_sets.py)."""
    nb = nbformat.read(SOL / f"{set_name}_exercises.ipynb", as_version=4)
    for ident in idents:
        _, key, old, new, _ = BROKEN_BY_ID[ident]
        cells = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
        assert cells, (ident, "the solution changed: update the test")
        cells[0].source = cells[0].source.replace(old, new, 1)
    return nbformat.writes(nb)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_class(root: Path) -> Path:
    cls = root / "class"
    # alice: both sets solved, in exercises/, and the lesson notebook of set 01 beside them (flagged, not graded)
    write(cls / "alice" / "exercises" / f"{S1}.ipynb", (SOL / f"{S1}_exercises.ipynb").read_text())
    write(cls / "alice" / "exercises" / f"{S2}.ipynb", (SOL / f"{S2}_exercises.ipynb").read_text())
    write(cls / "alice" / "notebooks" / f"{S1}.ipynb", (LES / f"{S1}.ipynb").read_text())
    # bob: argmin in 01.1, and JupyterLab's untouched copy of the set, which sorts first (exact name must win)
    write(cls / "bob" / f"{S1}.ipynb", broken(S1, "hard-argmin"))
    write(cls / "bob" / f"{S1}-Copy1.ipynb", (EXE / f"{S1}_exercises.ipynb").read_text())
    # carol (a zip): softmax over the queries in 01.2, unscaled scores in 02.1; a path escaping the zip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"carol/work/{S1}.ipynb", broken(S1, "soft-axis"))
        zf.writestr(f"carol/work/{S2}.ipynb", broken(S2, "scores-no-scale"))
        zf.writestr(f"../{S2}.ipynb", (SOL / f"{S2}_exercises.ipynb").read_text())
        link = zipfile.ZipInfo(f"carol/link/{S2}.ipynb")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    (cls / "carol.zip").write_bytes(buf.getvalue())
    # dave (a Gradescope-style upload): the work in work/, the lessons in notebooks/ (same file names)
    write(cls / "dave" / "work" / f"{S1}.ipynb", broken(S1, "hard-argmin"))
    write(cls / "dave" / "notebooks" / f"{S1}.ipynb", (LES / f"{S1}.ipynb").read_text())
    write(cls / "dave" / "notebooks" / f"{S2}.ipynb", (LES / f"{S2}.ipynb").read_text())
    # a folder whose name a spreadsheet would run as a formula; it holds nothing to grade
    (cls / "=HYPERLINK(1)").mkdir(parents=True)
    return cls


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class graded in one run (2 jobs, seed from the environment) and in two shards merged."""
    tmp = tmp_path_factory.mktemp("class")
    cls = make_class(tmp)
    mp = pytest.MonkeyPatch()
    mp.setenv(run.SEED_ENV, SEED)
    whole = run.grade_class(cls, tmp / "whole", jobs=2)
    mp.undo()
    for i in (1, 2):
        run.grade_class(cls, tmp / f"shard{i}", jobs=1, seed=SEED, shard=(i, 2))
    assert (
        cli.run(["grade-class", "merge", str(tmp / "shard1"), str(tmp / "shard2"), "--out", str(tmp / "merged")]) == 0
    )
    return {"tmp": tmp, "cls": cls, "whole": tmp / "whole", "merged": tmp / "merged", "summary": whole}


def records(out: Path) -> dict[str, dict]:
    return {r["student"]: r for r in (json.loads(p.read_text()) for p in (out / "students").glob("*/record.json"))}


def gradebook(out: Path, name: str = "gradebook.csv") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((out / name).read_text(encoding="utf-8"))))


def hints_of(key: str, seed: int) -> set[str]:
    """Every hint the catalogue of exercise ``key`` can give at this seed (computed, not typed)."""
    ex = BY_KEY[key]
    found = set()
    for case in ex.cases(ex.rng(seed)):
        found |= {hint for hint, _ in ex.mistakes(case)}
        found |= {hint for _, hint in ex.raises(case)}
    return found


# ----------------------------------------------------------------------------------------------------------
# Layouts and discovery (no grading)


def test_layouts_folder_zip_classroom_and_gradescope(tmp_path):
    cls = make_class(tmp_path)
    found, layout, _ = discover.students(cls)
    assert layout == "folder"
    assert [(s.id, s.layout) for s in found] == [
        ("=HYPERLINK(1)", "folder"),
        ("alice", "folder"),
        ("bob", "folder"),
        ("carol", "zip"),
        ("dave", "folder"),
    ]
    # gh classroom clone student-repos: <assignment>-submissions/<assignment>-<login>/ (git repositories)
    gh = tmp_path / "attention-sets-submissions"
    for login in ("octocat", "hubot"):
        write(gh / f"attention-sets-{login}" / "exercises" / f"{S1}.ipynb", (SOL / f"{S1}_exercises.ipynb").read_text())
        (gh / f"attention-sets-{login}" / ".git").mkdir()
    found, layout, _ = discover.students(gh)
    assert layout == "classroom" and [s.id for s in found] == ["hubot", "octocat"]
    # a Gradescope export: submission_metadata.yml beside submission_<id>/ folders
    gs = tmp_path / "assignment_77_export"
    write(gs / "submission_101" / "work" / f"{S1}.ipynb", (SOL / f"{S1}_exercises.ipynb").read_text())
    write(gs / "submission_101" / "notebooks" / f"{S1}.ipynb", (LES / f"{S1}.ipynb").read_text())
    write(gs / "submission_102" / f"{S2}.ipynb", (SOL / f"{S2}_exercises.ipynb").read_text())
    write(
        gs / "submission_metadata.yml",
        "submission_101:\n  :submitters:\n  - :name: Ada Lovelace\n    :sid: '0042'\n    :email: ada@example.edu\n"
        "  :created_at: 2026-12-01 10:00:00\n  :score: 0.0\nsubmission_102:\n  :submitters:\n  - :name: Alan Turing\n"
        "    :sid: '0043'\n    :email: alan@example.edu\n",
    )
    found, layout, _ = discover.students(gs)
    assert layout == "gradescope"
    assert [(s.id, s.source) for s in found] == [
        ("ada@example.edu", "submission_101"),
        ("alan@example.edu", "submission_102"),
    ]
    assert found[0].people == [{"name": "Ada Lovelace", "sid": "0042", "email": "ada@example.edu"}]
    sel = discover.select(found[0].path)
    assert sel.chosen[S1].shown == f"work/{S1}.ipynb" and sel.lessons == [f"notebooks/{S1}.ipynb"]


def test_zip_extraction_skips_paths_outside_and_links(tmp_path):
    cls = make_class(tmp_path)
    notes = discover.extract_notebooks(cls / "carol.zip", tmp_path / "x")
    assert sorted(p.relative_to(tmp_path / "x").as_posix() for p in (tmp_path / "x").rglob("*.ipynb")) == [
        f"carol/work/{S1}.ipynb",
        f"carol/work/{S2}.ipynb",
    ]
    assert any("outside" in n and "../" in n for n in notes) and any("link/" in n for n in notes)
    assert not (tmp_path / f"{S2}.ipynb").exists()


def test_todays_name_and_the_name_before_the_rename_are_exact_names_of_the_set(tmp_path):
    """Set NN_slug's notebook is NN_slug_exercises.ipynb; a fork made before has NN_slug.ipynb. Both are the set
    and both win over JupyterLab's copy NN_slug_exercises-Copy1.ipynb, even a finished copy (issue 19)."""
    assert discover.set_of_path(f"{S1}_exercises.ipynb") == discover.set_of_path(f"{S1}.ipynb") == S1
    assert discover.set_of_path(f"{S1}_exercises-Copy1.ipynb") == S1
    for name in (f"{S1}_exercises.ipynb", f"{S1}.ipynb"):
        folder = tmp_path / name
        write(folder / name, (EXE / f"{S1}_exercises.ipynb").read_text())
        write(folder / f"{S1}_exercises-Copy1.ipynb", (SOL / f"{S1}_exercises.ipynb").read_text())
        sel = discover.select(folder)
        assert sel.chosen[S1].shown == name
        assert any(f"ignored {S1}_exercises-Copy1.ipynb" in n and "exact name" in n for n in sel.notes), sel.notes


def test_copies_lessons_and_duplicates_are_resolved_and_named(tmp_path):
    cls = make_class(tmp_path)
    bob = discover.select(cls / "bob")
    assert bob.chosen[S1].shown == f"{S1}.ipynb"
    assert any(f"ignored {S1}-Copy1.ipynb" in n and "exact name" in n for n in bob.notes)
    dave = discover.select(cls / "dave")
    assert dave.chosen[S1].shown == f"work/{S1}.ipynb" and S2 not in dave.chosen  # lesson 2 is not graded
    assert sorted(dave.lessons) == [f"notebooks/{S1}.ipynb", f"notebooks/{S2}.ipynb"]
    # the same set in two folders of one submission: graded once, the one with fewer unfinished exercises
    write(tmp_path / "erin" / "exercises" / f"{S1}.ipynb", (EXE / f"{S1}_exercises.ipynb").read_text())
    write(tmp_path / "erin" / "work" / f"{S1}.ipynb", (SOL / f"{S1}_exercises.ipynb").read_text())
    erin = discover.select(tmp_path / "erin")
    assert erin.chosen[S1].shown == f"work/{S1}.ipynb" and erin.ignored[S1] == [f"exercises/{S1}.ipynb"]
    # the engine's own collection follows the same rules
    pairs, notes = discover.collect([cls / "bob"])
    assert dict(pairs)[S1] == cls / "bob" / f"{S1}.ipynb" and dict(pairs)[S2] is None


def test_attnlib_grade_refuses_to_merge_two_students(tmp_path):
    cls = make_class(tmp_path)
    out = tmp_path / "report"
    code = cli.run(["grade", str(cls / "alice"), str(cls / "bob"), "--out", str(out)])
    assert code == 2
    results = json.loads((out / "results.json").read_text())
    assert results["extra_data"]["status"] == "refused" and results["tests"] == []
    assert "never merged" in results["output"]
    with pytest.raises(discover.SeveralRoots):
        discover.collect([cls / "alice", cls / "bob"])


def test_class_seed_from_option_env_or_passphrase(monkeypatch):
    monkeypatch.delenv(run.SEED_ENV, raising=False)
    default, origin = run.class_seed(None)
    assert "public default" in origin
    monkeypatch.setenv(run.SEED_ENV, "12345")
    assert run.class_seed(None) == (12345, f"${run.SEED_ENV}")
    assert run.class_seed("777")[0] == 777
    a, b = run.class_seed("a secret"), run.class_seed("another secret")
    assert a[0] != b[0] and a[0] != default and run.class_seed("a secret") == a
    assert run.in_shard(list("edcba"), (1, 2)) == ["a", "c", "e"] and run.in_shard(list("edcba"), (2, 2)) == ["b", "d"]


# ----------------------------------------------------------------------------------------------------------
# Grading the class


def test_each_student_graded_from_the_file_they_meant(graded):
    recs = records(graded["whole"])
    assert sorted(recs) == ["=HYPERLINK(1)", "alice", "bob", "carol", "dave"]
    seed = run.class_seed(SEED)[0]
    assert {r["seed"] for r in recs.values()} == {seed}
    assert recs["alice"]["files"] == {S1: f"exercises/{S1}.ipynb", S2: f"exercises/{S2}.ipynb"}
    assert recs["bob"]["files"] == {S1: f"{S1}.ipynb"}
    assert recs["carol"]["files"] == {S1: f"carol/work/{S1}.ipynb", S2: f"carol/work/{S2}.ipynb"}
    assert recs["dave"]["files"] == {S1: f"work/{S1}.ipynb"}
    score = {s: {e["key"]: e["score"] for e in r["exercises"]} for s, r in recs.items()}
    assert sum(score["alice"][k] for k in score["alice"] if k[:2] in ("01", "02")) == 15  # full marks
    assert score["bob"]["01.1"] == 0 and score["bob"]["01.2"] == 3  # the finished file, not the copy
    assert any("graded: " in n and f"{S1}.ipynb" in n for n in recs["bob"]["notes"])
    for student in recs:  # the per-student report folders, as `attnlib grade` writes them
        folder = graded["whole"] / "students" / outputs.student_folder(student)
        assert {p.name for p in folder.iterdir()} == {
            "results.json",
            "junit.xml",
            "classroom.json",
            "summary.md",
            "record.json",
        }
        results = json.loads((folder / "results.json").read_text())
        assert results["extra_data"]["seed"] == seed
        assert results["score"] == pytest.approx(sum(e["score"] or 0 for e in recs[student]["exercises"]))


def test_gradebook_rows_columns_and_csv_safety(graded):
    rows = {r["student"].lstrip("'"): r for r in gradebook(graded["whole"])}
    seed = str(run.class_seed(SEED)[0])
    assert rows["alice"][f"{S1} (8)"] == "8" and rows["alice"][f"{S2} (7)"] == "7"
    assert rows["alice"]["total"] == "15" and rows["alice"]["seed"] == seed and rows["alice"]["sandbox"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows["alice"]["graded_at"])
    assert "lesson 1's notebook" in rows["alice"]["problems"]
    assert "present 2 times" in rows["bob"]["problems"]
    assert rows["=HYPERLINK(1)"]["student"] == "'=HYPERLINK(1)"  # not a formula in a spreadsheet
    assert rows["=HYPERLINK(1)"]["total"] == "0" and "missing sets" in rows["=HYPERLINK(1)"]["problems"]
    canvas = gradebook(graded["whole"], "gradebook-canvas.csv")
    assert list(canvas[0])[:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert [r["SIS User ID"] for r in canvas][1:] == ["alice", "bob", "carol", "dave"]


def test_not_graded_is_neither_points_nor_zero(graded):
    alice = records(graded["whole"])["alice"]
    ex = BY_KEY["01.2"]
    failed = Result(ex, "x", message="the sandbox failed to start: no reason", status=NOT_GRADED)
    assert adapter.exercise_status(failed) == "not graded"
    assert adapter.exercise_status(Result(ex, "x", score=0.0)) == "graded"
    broken_rec = json.loads(json.dumps(alice))
    for e in broken_rec["exercises"]:
        if e["key"] == "01.2":
            e.update(status="not graded", score=None, message="not graded: the sandbox failed to start")
    row = outputs.gradebook_rows([broken_rec])[0]
    assert row[f"{S1} (8)"] == "" and row["total"] == "" and row[f"{S2} (7)"] == "7"
    assert "not graded: 01.2" in row["problems"]
    assert not run._gradable(broken_rec) and run._gradable(alice)  # never cached: the next run tries again
    report = adapter.from_record(broken_rec)
    assert any(r.message.startswith("not graded") and not r.graded for r in report.results)


def test_class_report_ranks_the_mistakes_the_class_made(graded):
    data = json.loads((graded["whole"] / "class-report.json").read_text())
    seed = run.class_seed(SEED)[0]
    assert data["students"] == 5 and data["seed"] == seed
    ex = {e["key"]: e for e in data["exercises"]}
    # 01.1: bob and dave took the argmin; the hint is the catalogue's own, as the students saw it
    top = ex["01.1"]["mistakes"][0]
    assert top["students"] == ["bob", "dave"] and top["count"] == 2
    assert top["hint"] in hints_of("01.1", seed) and re.search(BROKEN_BY_ID["hard-argmin"][4], top["hint"])
    m = ex["01.2"]["mistakes"]
    assert [x["students"] for x in m] == [["carol"]] and re.search(BROKEN_BY_ID["soft-axis"][4], m[0]["hint"])
    m = ex["02.1"]["mistakes"]
    assert [x["students"] for x in m] == [["carol"]] and re.search(BROKEN_BY_ID["scores-no-scale"][4], m[0]["hint"])
    assert data["top_mistakes"][0]["exercise"] == "01.1" and data["top_mistakes"][0]["count"] == 2
    assert ex["01.1"]["outcomes"] == {
        "full marks": 2,
        "named mistake": 2,
        "other error": 0,
        "not attempted": 0,
        "missing": 1,
        "not graded": 0,
    }
    sets = {s["set"]: s for s in data["sets"]}
    assert sum(h["count"] for h in sets[S1]["histogram"]) == 5 and sets[S1]["full_marks"] == 1
    assert sets[S2]["submitted"] == 2 and sets[S2]["histogram"][-1]["count"] == 1  # alice's 7 of 7
    problems = {p["student"]: " ".join(p["problems"]) for p in data["problems"]}
    assert "lesson 1" in problems["alice"] and "lesson 2" in problems["dave"]
    # the twins say the same
    md = (graded["whole"] / "class-report.md").read_text()
    assert "bob, dave" in md and "| 01.1 hard\\_lookup | 2 | 2 |" in md
    page = (graded["whole"] / "class-report.html").read_text()
    assert page.count("<svg") == 2 + sum(1 for s in data["sets"] if s["submitted"]) and "bob, dave" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"<script|<link|\b(src|href)\s*=|url\(", page, re.I)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    assert "=HYPERLINK(1)" in page


def test_shards_merged_equal_one_run(graded):
    whole, merged = graded["whole"], graded["merged"]
    for name in ("class-report.json", "class-report.md", "class-report.html"):
        assert (whole / name).read_bytes() == (merged / name).read_bytes(), name

    def without_time(rows):
        return [{k: v for k, v in r.items() if k != "graded_at"} for r in rows]

    assert without_time(gradebook(whole)) == without_time(gradebook(merged))
    assert (whole / "gradebook-canvas.csv").read_bytes() == (merged / "gradebook-canvas.csv").read_bytes()
    a, b = records(whole), records(merged)
    for rec in (*a.values(), *b.values()):
        rec.pop("graded_at"), rec.pop("seconds")
    assert a == b
    shard1 = json.loads((graded["tmp"] / "shard1" / "shard.json").read_text())
    assert shard1["graded"] == ["=HYPERLINK(1)", "bob", "dave"] and len(shard1["students"]) == 5
    with pytest.raises(ValueError, match="expected shards"):
        run.merge([graded["tmp"] / "shard1"], graded["tmp"] / "bad")


def test_cache_regrades_only_what_changed(graded, monkeypatch):
    tmp, cls = graded["tmp"], graded["cls"]
    assert graded["summary"]["graded"] == 5
    again = run.grade_class(cls, graded["whole"], jobs=1, seed=SEED, stream=io.StringIO())
    assert again["cached"] == 5 and again["graded"] == 0  # same seed, same files: nothing is graded
    # bob fixes his notebook: only bob is graded again, and his new score is in the gradebook
    cls2 = tmp / "class2"
    shutil.copytree(cls, cls2)
    write(cls2 / "bob" / f"{S1}.ipynb", (SOL / f"{S1}_exercises.ipynb").read_text())
    out2 = tmp / "whole2"
    shutil.copytree(graded["whole"] / ".cache", out2 / ".cache")
    third = run.grade_class(cls2, out2, jobs=1, seed=SEED, stream=io.StringIO())
    assert (third["graded"], third["cached"]) == (1, 4)
    assert {r["student"]: r["total"] for r in gradebook(out2)}["bob"] == "8"
    # another seed, or --regrade, grades everyone (the grading itself is replaced by a counter here)
    seen = []
    monkeypatch.setattr(
        run, "grade_student", lambda task: seen.append(task["id"]) or adapter.failed_record("x", seed=1)
    )
    summary = run.grade_class(cls2, out2, jobs=1, seed="another seed", stream=io.StringIO())
    assert sorted(seen) == ["=HYPERLINK(1)", "alice", "bob", "carol", "dave"] and summary["not_graded"] == 5
    seen.clear()
    run.grade_class(cls2, out2, jobs=1, seed=SEED, regrade=True, stream=io.StringIO())
    assert len(seen) == 5
    seen.clear()
    run.grade_class(cls2, out2, jobs=1, seed=SEED, stream=io.StringIO())
    assert seen == []  # the failed (not graded) records of the counter were not cached; the real ones were


def test_attnlib_grade_of_an_upload_grades_work_not_lessons_and_lists_paths(tmp_path):
    """A Gradescope upload with the work in work/ and the lessons in notebooks/ (same names), through the single
    submission grader that Gradescope's run_autograder calls."""
    cls = make_class(tmp_path)
    out = tmp_path / "report"
    assert cli.run(["grade", str(cls / "dave"), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert f"graded: work/{S1}.ipynb" in results["output"]
    assert f"notebooks/{S2}.ipynb is lesson 2's notebook" in results["output"]
    tests = {t["name"].split()[0]: t for t in results["tests"]}
    assert tests["01.1"]["score"] == 0 and re.search(BROKEN_BY_ID["hard-argmin"][4], tests["01.1"]["output"])
    assert tests["01.2"]["score"] == tests["01.2"]["max_score"]
    assert tests["02.1"]["score"] == 0 and "not found" in tests["02.1"]["output"]  # the lesson was not graded


def test_canvas_identity_from_a_roster(graded, tmp_path):
    recs = sorted(records(graded["whole"]).values(), key=lambda r: r["student"])
    roster = tmp_path / "canvas.csv"
    roster.write_text(
        "Student,ID,SIS User ID,SIS Login ID,Section,Old quiz (123)\n"
        '"Lovelace, Ada",101,S-1,alice,A,5\n"Turing, Alan",102,S-2,carol,B,4\n',
        encoding="utf-8",
    )
    rows = {r["SIS Login ID"]: r for r in outputs.canvas_rows(recs, outputs.read_roster(roster, "SIS Login ID"))}
    assert rows["alice"]["Student"] == "Lovelace, Ada" and rows["alice"]["ID"] == "101"
    assert rows["alice"][f"{S1} (8)"] == "8" and rows["carol"]["Section"] == "B"
    assert sorted(rows) == ["alice", "carol"]  # Canvas could not match the others: left out, and named
    assert outputs.unmatched(recs, outputs.read_roster(roster, "SIS Login ID")) == ["=HYPERLINK(1)", "bob", "dave"]
    with pytest.raises(ValueError, match="no column"):
        outputs.read_roster(roster, "Login")


def test_no_grading_when_the_sandbox_cannot_run(tmp_path, monkeypatch, capsys):
    cls = make_class(tmp_path)
    monkeypatch.setattr(adapter, "sandbox_problem", lambda level: "bubblewrap is not installed")
    monkeypatch.setattr(run, "grade_student", lambda task: pytest.fail("nothing may be graded"))
    assert cli.run(["grade-class", str(cls), "--out", str(tmp_path / "out"), "--sandbox", "bwrap"]) == 3
    assert "nobody was graded: bubblewrap is not installed" in capsys.readouterr().err


def test_texts_from_submissions_are_escaped_in_every_output(graded):
    rec = json.loads(json.dumps(records(graded["whole"])["bob"]))
    rec["student"] = "<script>alert(1)</script>\x1b[31m\u202e|*[x](http://e.x)"
    for e in rec["exercises"]:
        if e["key"] == "01.1":
            e.update(
                mistakes=[],
                score=0.0,
                message="raised RuntimeError: <img src=x onerror=alert(1)>\x07 | ![i](http://e.x)",
            )
    manifest = json.loads((graded["whole"] / "shard.json").read_text())
    data = outputs.class_report([rec], manifest)
    page, md = outputs.to_html(data), outputs.to_markdown(data)
    for text in (page, md):
        assert "<script>" not in text and "<img" not in text and "\x1b" not in text and "\u202e" not in text
        assert "\x07" not in text
    assert "](http" not in md.replace("\\](http", "")  # no live Markdown link or image
    row = outputs.gradebook_rows([rec])[0]
    assert "\x1b" not in outputs._cell(row["student"]) and "\u202e" not in outputs._cell(row["student"])
