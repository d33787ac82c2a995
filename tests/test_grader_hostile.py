"""Hostile and broken submissions never break the grader, inside the real sandbox and at the fallback levels.

Every file in tests/submissions/ redefines ``stable_log_softmax`` (exercise 03.1) in a copy of
solutions/03_softmax_exercises.ipynb; its first lines give the reason 03.1 must fail with (``# expect:``), the class of
attack and what it attempts. The whole corpus and a few broken notebooks are graded in one run under
bubblewrap; for each submission the grader finishes in bounded time, writes a report, 03.1 scores zero with
that reason while 03.2-03.4 (graded in its own worker) keeps its full marks, the submissions and every course file
are byte-identical afterwards, and no process of the sandbox survives. The file-system and process attacks are
graded again at the ``uid`` level (bubblewrap hidden), and the grader is run as an unprivileged user, where it
grades without isolation and says so.

On CI (``ATTNLIB_REQUIRE_BWRAP=1``, set by .ci/run) a bubblewrap that cannot run is a failure, not a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from attnlib.grader import report, sandbox
from attnlib.grader.engine import Options, grade_many
from attnlib.grader.exercises import exercises_of

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = sorted((ROOT / "tests" / "submissions").glob("*.py"))
SOLUTION = ROOT / "solutions" / "03_softmax_exercises.ipynb"
OPTS = dict(seed=3, timeout=3, memory_gib=3)
# graded again at the uid level: every attack on files, processes, the report and the runner's channel
UID_LEVEL = [
    "fs_truncate_grader",
    "fs_empty_notebooks",
    "fs_plant_report_links",
    "fs_plant_modules",
    "proc_kill_grader",
    "proc_kill_everything",
    "proc_setsid_survivor",
    "proc_inject_runner",
    "kill_parent",
    "forge_result_lines",
    "write_files",
    "shortcut_distributions",
    "fs_plant_next_homes",
    "knowledge_read_grader",
]
# the routes to a forbidden implementation that the static scan refuses by spelling: graded again with the scan
# switched off, to show that the sandbox's traps (dispatcher kernels, poisoned names, the audit hook) and the
# missing attnlib stop each of them on their own
UNSCANNED = [
    "shortcut_base_class_dunder",
    "shortcut_logsumexp_base_class",
    "shortcut_variable_functions",
    "shortcut_builtins_exec",
    "shortcut_attnlib_sys_modules",
    "shortcut_private_torch",
    "shortcut_torch_ops",
    "knowledge_read_grader",
]
# at the uid level these attacks are refused outright (the runner is root): the check fails for that reason
UID_EXPECT = {
    "kill_parent": "PermissionError",
    "proc_kill_everything": "expected a torch.Tensor",
    # the course is on the machine at this level: the worker's audit hook refuses Python-level reads of it
    "knowledge_read_grader": "the course's files are not readable while grading",
}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
LINUX = sys.platform.startswith("linux")


def _header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines()[:3]:
        key, _, value = line.lstrip("# ").partition(": ")
        out[key] = value
    assert set(out) == {"expect", "class", "attempts"}, path
    return out


def _course_digest() -> dict[str, str]:
    """sha256 of every file of the course (the library, the grader, notebooks, tests, docs), .venv and .git aside."""
    skip = {
        ".venv",
        ".git",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        "grade-report",
        "site",
        "test-artifacts",
    }
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            p = Path(folder) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(ROOT))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _with_cell(folder: Path, source: str) -> Path:
    nb = nbformat.read(SOLUTION, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(source))
    folder.mkdir(parents=True)
    path = folder / "03_softmax.ipynb"
    nbformat.write(nb, path)
    return path


def _replaced(folder: Path, old: str, new: str) -> Path:
    text = SOLUTION.read_text()
    assert old in text
    folder.mkdir(parents=True)
    path = folder / "03_softmax.ipynb"
    path.write_text(text.replace(old, new, 1))
    return path


def _build(tmp: Path, names: list[str] | None = None) -> tuple[dict[str, list[Path]], Path]:
    report_dir = tmp / "report"
    report_dir.mkdir()
    subs = {}
    for path in SUBMISSIONS:
        if names is not None and path.stem not in names:
            continue
        folder = tmp / path.stem
        source = (
            path.read_text()
            .replace("{REPORT_DIR}", str(report_dir))
            .replace("{COURSE_DIR}", str(ROOT))
            .replace("{SUBMISSION_DIR}", str(folder))
        )
        subs[path.stem] = [_with_cell(folder, source)]
    return subs, report_dir


def _grade(subs: dict[str, list[Path]], report_dir: Path, level: str) -> dict:
    files = [p for paths in subs.values() for p in paths]
    before = {p: p.read_bytes() for p in files}
    course = _course_digest()
    plan = sandbox.choose(level)
    start = time.monotonic()
    reports = grade_many(list(subs.values()), Options(**OPTS, sandbox=level), plan=plan)
    if "report_injection" in by_name_of(subs, reports):
        injected = report.contents(by_name_of(subs, reports)["report_injection"])
    else:
        injected = {}
    seconds = time.monotonic() - start
    by_name = dict(zip(subs, reports, strict=True))
    # the real report is written after grading, into a fresh folder over anything planted there
    written = report.write(
        by_name["write_files"],
        out=report_dir,
        results=report_dir / "results.json",
        junit_path=report_dir / "junit.xml",
        classroom_path=report_dir / "classroom.json",
        summary=report_dir / "summary.md",
    )
    time.sleep(3)  # longer than proc_setsid_survivor's grandchild waits before it strikes
    return {
        "reports": by_name,
        "plan": plan,
        "seconds": seconds,
        "written": written,
        "unchanged": before == {p: p.read_bytes() for p in files},
        "course_changed": sorted(k for k, v in _course_digest().items() if course.get(k) != v),
        "report_dir": report_dir,
        "survivors": plan.survivors(),
        "injected": injected,
    }


def by_name_of(subs, reports):
    return dict(zip(subs, reports, strict=True))


def _require_bwrap() -> None:
    ok, why = sandbox.bwrap_works(sandbox.bwrap_binary()) if LINUX else (False, "not Linux")
    if not ok:
        if os.environ.get("ATTNLIB_REQUIRE_BWRAP") == "1":
            pytest.fail(f"bubblewrap is required here (ATTNLIB_REQUIRE_BWRAP=1) but cannot run: {why}")
        pytest.skip(f"bubblewrap cannot run here ({why}); `make install` installs it on Debian as root")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    _require_bwrap()
    tmp = tmp_path_factory.mktemp("hostile")
    subs, report_dir = _build(tmp)
    subs["syntax_error"] = [_replaced(tmp / "syntax", "temperature=1.0):\\n", "temperature=1.0)\\n")]
    subs["missing_function"] = [_replaced(tmp / "missing", "def stable_log_softmax(", "def my_softmax(")]
    bad_json = tmp / "bad_json"
    bad_json.mkdir()
    (bad_json / "03_softmax.ipynb").write_text('{"cells": [ {"cell_type": "code", "source": "def stable_')
    (bad_json / "04_scaled_dot_product_attention.ipynb").write_bytes(
        (ROOT / "solutions" / "04_scaled_dot_product_attention_exercises.ipynb").read_bytes()
    )
    subs["invalid_json"] = [bad_json / "03_softmax.ipynb", bad_json / "04_scaled_dot_product_attention.ipynb"]
    not_nb = tmp / "not_nb"
    not_nb.mkdir()
    (not_nb / "03_softmax.ipynb").write_text("[1, 2, 3]")
    subs["not_a_notebook"] = [not_nb / "03_softmax.ipynb"]
    linked = tmp / "linked"
    linked.mkdir()
    (linked / "03_softmax.ipynb").symlink_to(SOLUTION)
    subs["symlinked_notebook"] = [linked / "03_softmax.ipynb"]
    return _grade(subs, report_dir, "bwrap")


def _results(rep):
    return {r.exercise.key: r for r in rep.results}


@pytest.mark.parametrize("path", SUBMISSIONS, ids=[p.stem for p in SUBMISSIONS])
def test_hostile_submission_loses_only_the_attacked_exercise(graded, path):
    res = _results(graded["reports"][path.stem])
    assert res["03.1"].score == 0, res["03.1"].message
    assert _header(path)["expect"] in res["03.1"].message
    assert res["03.2"].score == res["03.2"].max_score, res["03.2"].message


def test_the_corpus_covers_every_class_of_attack():
    classes = [_header(p)["class"] for p in SUBMISSIONS]
    assert len(SUBMISSIONS) >= 25
    for kind in ("classic", "file-system", "processes", "self-report", "shortcut", "reports", "knowledge"):
        assert classes.count(kind) >= 1, kind


def test_grading_the_corpus_is_bounded_and_ran_in_bubblewrap(graded):
    # a bound, not a benchmark: every exercise within its timeout plus the grace, and a few sandbox restarts
    n = sum(len(r.results) for r in graded["reports"].values())
    assert graded["seconds"] < 60 + n * 1.0, graded["seconds"]
    rep = graded["reports"]["write_files"]
    assert rep.level == "bwrap" and "bubblewrap" in rep.notes[0]
    assert graded["plan"].pidns, "the sandboxes' PID namespaces were not recorded: the survivor check would be empty"
    assert "no course or grader files" in rep.notes[0]


def test_syntax_error_and_missing_function(graded):
    syntax = _results(graded["reports"]["syntax_error"])["03.1"]
    assert syntax.score == 0 and "not defined" in syntax.message and "syntax error" in syntax.message
    missing = _results(graded["reports"]["missing_function"])
    assert missing["03.1"].score == 0 and "`stable_log_softmax` is not defined" in missing["03.1"].message
    assert missing["03.2"].score == missing["03.2"].max_score


def test_invalid_notebooks_score_zero_and_other_notebooks_are_still_graded(graded):
    res = _results(graded["reports"]["invalid_json"])
    assert res["03.1"].score == res["03.2"].score == 0
    assert "not valid notebook JSON" in res["03.1"].message
    assert res["04.1"].score == res["04.1"].max_score and res["04.2"].score == res["04.2"].max_score
    odd = _results(graded["reports"]["not_a_notebook"])["03.1"]
    assert odd.score == 0 and "not a notebook" in odd.message
    link = _results(graded["reports"]["symlinked_notebook"])["03.1"]
    assert link.score == 0 and "not a regular file" in link.message


def test_submissions_and_course_files_are_never_modified(graded):
    assert graded["unchanged"]
    assert graded["course_changed"] == []


def test_no_sandbox_process_survives(graded):
    assert graded["survivors"] == []
    assert all(r.survivors == 0 for r in graded["reports"].values())


def test_planted_links_and_files_do_not_replace_the_report(graded):
    folder = graded["report_dir"]
    assert sorted(p.name for p in folder.iterdir()) == ["classroom.json", "junit.xml", "results.json", "summary.md"]
    for p in folder.iterdir():
        st = os.lstat(p)
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1, p
    results = json.loads((folder / "results.json").read_text())
    assert results["score"] == 8.0  # 03.2-03.4 only: no forged {"score": 49} or 100 was kept
    assert [t["status"] for t in results["tests"]] == ["failed", "passed", "passed", "passed"]
    assert results["extra_data"]["sandbox"] == "bwrap"


def test_printed_fake_scores_do_not_reach_the_report(graded):
    rep = graded["reports"]["print_fake_score"]
    text = report.table(rep) + json.dumps(report.gradescope(rep))
    assert "all checks passed" not in text and '"score": 100' not in text


def test_the_notebook_is_read_once_and_its_digest_reported(graded):
    rep = graded["reports"]["fs_empty_notebooks"]
    (path,) = rep.digests
    assert rep.digests[path] == hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Fallback levels


@pytest.fixture(scope="module")
def graded_uid(tmp_path_factory):
    if not (IS_ROOT and LINUX):
        pytest.skip("the uid level needs root on Linux (it drops each worker to an unprivileged uid)")
    tmp = tmp_path_factory.mktemp("hostile-uid")
    subs, report_dir = _build(tmp, UID_LEVEL)
    old = os.environ.get("ATTNLIB_BWRAP")
    os.environ["ATTNLIB_BWRAP"] = ""  # bubblewrap absent: auto must fall back to the uid level
    try:
        out = _grade(subs, report_dir, "auto")
    finally:
        if old is None:
            del os.environ["ATTNLIB_BWRAP"]
        else:
            os.environ["ATTNLIB_BWRAP"] = old
    # what the workers could create at all, empty files and links in world-writable folders, was removed
    out["planted"] = [
        Path(top, name)
        for folder in sandbox.WORLD_WRITABLE
        if os.path.isdir(folder)
        for top, dirs, files in os.walk(folder, onerror=lambda err: None)  # other runs come and go in /tmp
        for name in dirs + files
        if _owner(Path(top, name)) == out["plan"].uid
    ]
    return out


@pytest.mark.parametrize("name", UID_LEVEL)
def test_uid_level_contains_file_and_process_attacks(graded_uid, name):
    rep = graded_uid["reports"][name]
    res = _results(rep)
    assert rep.level == "uid" and "bubblewrap was not available" in rep.notes[0]
    assert "UNFIT FOR GRADING A CLASS" in rep.notes[0]
    expect = UID_EXPECT.get(name) or _header(ROOT / "tests" / "submissions" / f"{name}.py")["expect"]
    assert res["03.1"].score == 0 and expect in res["03.1"].message, res["03.1"].message
    assert res["03.2"].score == res["03.2"].max_score, res["03.2"].message


def test_uid_level_leaves_course_report_and_processes_intact(graded_uid):
    assert graded_uid["unchanged"] and graded_uid["course_changed"] == []
    assert graded_uid["survivors"] == []
    results = json.loads((graded_uid["report_dir"] / "results.json").read_text())
    assert results["score"] == 8.0 and results["extra_data"]["sandbox"] == "uid"
    assert graded_uid["planted"] == []  # fs_plant_modules' empty torch.py etc. in /tmp were removed


def _owner(p: Path) -> int | None:
    try:
        return p.lstat().st_uid
    except OSError:
        return None


def _as_unprivileged(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    setpriv = shutil.which("setpriv")
    if not (IS_ROOT and LINUX and setpriv):
        pytest.skip("running the grader as another user needs root and util-linux's setpriv")
    os.chown(tmp, 65534, 65534)
    # nobody, with only the capability to read the interpreter (here it lives under /root, mode 0700)
    cmd = [
        setpriv,
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--",
        str(ROOT / ".venv" / "bin" / "attnlib") if (ROOT / ".venv" / "bin" / "attnlib").exists() else "attnlib",
        "grade",
        str(SOLUTION),
        "--out",
        str(tmp / "report"),
        "--seed",
        "1",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)


def test_not_root_without_bwrap_grades_anyway_and_says_it_was_not_isolated(tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="attnlib-nonroot-"))
    try:
        proc = _as_unprivileged(tmp)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results = json.loads((tmp / "report" / "results.json").read_text())
        assert results["score"] == sum(ex.points for ex in exercises_of("03_softmax"))  # full marks
        if results["extra_data"]["sandbox"] == "none":
            assert "NOT isolated" in results["output"] and "NOT isolated" in proc.stdout
        else:  # an unprivileged bubblewrap (user namespaces) also counts
            assert results["extra_data"]["sandbox"] == "bwrap"
        proc = _as_unprivileged(tmp, "--sandbox", "uid")
        assert proc.returncode == 3, proc.stdout + proc.stderr
        results = json.loads((tmp / "report" / "results.json").read_text())
        assert results["extra_data"]["status"] == "sandbox unavailable" and "score" not in results  # not a grade
        assert "not root" in results["output"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# The sandbox on its own: the scan switched off


@pytest.fixture(scope="module")
def graded_unscanned(tmp_path_factory):
    _require_bwrap()
    from unittest import mock

    from attnlib.grader import engine

    tmp = tmp_path_factory.mktemp("hostile-unscanned")
    subs, report_dir = _build(tmp, UNSCANNED)
    with mock.patch.object(engine, "forbidden_uses", lambda tree, entry, forbidden: []):
        reports = grade_many(list(subs.values()), Options(**OPTS, sandbox="bwrap"))
    return dict(zip(subs, reports, strict=True))


@pytest.mark.parametrize("name", UNSCANNED)
def test_forbidden_routes_are_unreachable_in_the_sandbox_even_unscanned(graded_unscanned, name):
    """Each route gave full marks on the main branch before this change (the C-level base class, the
    _VariableFunctions table, builtins and exec, the course's attnlib removed from sys.modules, the grader's
    files): with the static scan switched off the sandbox alone now refuses it, and only that exercise is lost."""
    res = _results(graded_unscanned[name])
    assert res["03.1"].score == 0, res["03.1"].message
    assert res["03.2"].score == res["03.2"].max_score, res["03.2"].message


# ----------------------------------------------------------------------------------------------------------
# Reports safe to render


def test_submitted_text_is_escaped_in_every_report_format(graded):
    import xml.etree.ElementTree as ET

    files = graded["injected"]
    assert set(files) == {"results.json", "junit.xml", "classroom.json", "summary.md"}
    ET.fromstring(files["junit.xml"].encode("utf-8"))  # always parses
    for name, text in files.items():
        bad = [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]
        bad += [c for c in text if 0x202A <= ord(c) <= 0x202E or 0xD800 <= ord(c) <= 0xDFFF]
        assert not bad, (name, bad[:5])
        assert "\\u001b" not in text and "\\u0000" not in text and "\\u202e" not in text.lower(), name
    summary = files["summary.md"]
    assert "<script" not in summary and "![" not in summary and "</failure>" not in summary
    results = json.loads(files["results.json"])
    assert "FULL MARKS" in results["tests"][0]["output"]  # the text is kept, made harmless
    assert len(max((t["output"] for t in results["tests"]), key=len)) <= 2100


# ----------------------------------------------------------------------------------------------------------
# Bounded work before the sandbox


def _notebook_with(folder: Path, cells: list[str]) -> Path:
    nb = nbformat.read(SOLUTION, as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(c) for c in cells)
    folder.mkdir(parents=True)
    path = folder / "03_softmax.ipynb"
    nbformat.write(nb, path)
    return path


def test_generated_huge_notebooks_are_scanned_in_bounded_time(tmp_path):
    """20,000 chained definitions and a cell of 30,000 getattr calls: the scan is linear (on the main branch
    before this change neither finished within 180 s)."""
    from attnlib.grader import notebook

    n = 20_000
    chain = "def f0(x):\n    return x\n" + "\n".join(f"def f{i}(x):\n    return f{i - 1}(x)" for i in range(1, n + 1))
    chain += f"\ndef stable_log_softmax(x, dim=-1, temperature=1.0):\n    return f{n}(x)\n"
    getattrs = "def stable_log_softmax(x, dim=-1, temperature=1.0):\n    y = x\n"
    getattrs += "".join(f"    y = getattr(y, 'clone')()  # {i}\n" for i in range(30_000)) + "    return y\n"
    for source in (chain, getattrs):
        start = time.monotonic()
        src = notebook.definitions([source])
        uses = notebook.forbidden_uses(src.tree, "stable_log_softmax", ("torch.softmax",))
        needed = notebook.needed_statements(src, "stable_log_softmax")
        assert time.monotonic() - start < 60, "the scan is not linear"
        assert needed and uses == []


def test_a_huge_notebook_is_graded_within_the_budget(tmp_path):
    _require_bwrap()
    n = 20_000
    chain = "def f0(x):\n    return x\n" + "\n".join(f"def f{i}(x):\n    return f{i - 1}(x)" for i in range(1, n + 1))
    path = _notebook_with(
        tmp_path / "chain", [chain, f"def stable_log_softmax(x, dim=-1, temperature=1.0):\n    return f{n}(x)"]
    )
    start = time.monotonic()
    rep = grade_many([[path]], Options(**OPTS, sandbox="bwrap", budget_s=120))[0]
    assert time.monotonic() - start < 150
    res = _results(rep)
    assert res["03.1"].score == 0 and res["03.2"].score == res["03.2"].max_score


def test_the_time_budget_reports_what_was_not_graded(tmp_path):
    _require_bwrap()
    rep = grade_many([[SOLUTION]], Options(**OPTS, sandbox="bwrap", budget_s=0))[0]
    assert rep.status == "not graded" and all(r.status == "not graded" for r in rep.results)
    assert all("time budget" in r.message for r in rep.results)


# ----------------------------------------------------------------------------------------------------------
# Honest code is read as the notebook meant it


def test_magics_are_stripped_as_ipython_does_and_continuation_lines_are_kept(tmp_path):
    _require_bwrap()
    body = (
        "%time pass\n"
        "def stable_log_softmax(x, dim=-1, temperature=1.0):\n"
        "    fine = (\n"
        "        dim\n"
        "        != -100\n"
        "    )\n"
        "    assert fine\n"
        "    z = x / temperature\n"
        "    m = z.amax(dim=dim, keepdim=True)\n"
        "    s = z - torch.where(torch.isfinite(m), m, torch.zeros_like(m))\n"
        "    total = torch.exp(s).sum(dim=dim, keepdim=True)\n"
        "    return torch.where(total > 0, s - torch.log(total), torch.full_like(s, float('-inf')))\n"
    )
    path = _notebook_with(tmp_path / "magic", ["%%capture\nprint('a cell magic')", "!echo a shell line", body])
    res = _results(grade_many([[path]], Options(**OPTS, sandbox="bwrap"))[0])
    assert res["03.1"].score == res["03.1"].max_score, res["03.1"].message


# ----------------------------------------------------------------------------------------------------------
# Messages that blame the right code


def test_an_import_cell_with_a_syntax_error_is_named_without_the_graders_paths(tmp_path):
    _require_bwrap()
    text = SOLUTION.read_text()
    nb = nbformat.reads(text, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code" and "import torch" in c.source)
    first.source = first.source.replace("import torch", "import torch(", 1)
    (tmp_path / "s").mkdir()
    nbformat.write(nb, tmp_path / "s" / "03_softmax.ipynb")
    rep = grade_many([[tmp_path / "s" / "03_softmax.ipynb"]], Options(**OPTS, sandbox="bwrap"))[0]
    res = _results(rep)
    message = res["03.1"].message
    assert res["03.1"].score == 0 and "NameError" in message and "has a syntax error (line" in message, message
    assert "/tmp/" not in message and "/job" not in message


def test_an_infinite_loop_is_reported_as_a_timeout(graded):
    assert "timed out" in _results(graded["reports"]["infinite_loop"])["03.1"].message


# ----------------------------------------------------------------------------------------------------------
# A sandbox that fails to start: retried, then "not graded", never 0 points


def test_a_sandbox_that_never_starts_is_retried_then_not_graded(tmp_path):
    import xml.etree.ElementTree as ET

    class Broken(sandbox.Unisolated):
        starts = 0

        def _argv(self, jobdir):
            Broken.starts += 1
            return [sys.executable, "-c", "import sys; sys.stderr.write('no namespaces here'); sys.exit(1)"], None, None

    rep = grade_many([[SOLUTION]], Options(**OPTS, sandbox="none"), plan=Broken("test: a level that cannot start"))[0]
    assert Broken.starts == 3 and rep.sandbox_starts == 3
    assert rep.status == "not graded" and all(r.status == "not graded" for r in rep.results)
    assert all("failed to start 3 time(s): no namespaces here" in r.message for r in rep.results)
    files = report.contents(rep)
    results = json.loads(files["results.json"])
    assert "score" not in results and "GRADER ERROR" in results["output"]
    assert all("score" not in t and "GRADER ERROR" in t["output"] for t in results["tests"])
    assert json.loads(files["classroom.json"])["status"] == "error"
    suite = ET.fromstring(files["junit.xml"]).find("testsuite")
    assert suite.get("errors") == str(len(rep.results)) and suite.get("failures") == "0"
    assert "NOT GRADED" in files["summary.md"]
