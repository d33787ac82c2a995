"""``attnlib grade [PATH ...]``: grade exercise notebooks in a sandbox and write the reports.

PATHs are notebooks or folders of NN_*.ipynb (default ``exercises/``). Prints a table, and writes into
``--out`` (default ``grade-report/``, created fresh on every run): ``results.json`` (Gradescope),
``junit.xml``, ``classroom.json`` (GitHub Classroom) and ``summary.md``. A report is written whatever happens;
the exit status says what happened:

* 0 — graded (and at or above ``--fail-under`` if given);
* 1 — graded, total below ``--fail-under``;
* 2 — the grader itself failed (a bug; every exercise scores zero in the report);
* 3 — the sandbox could not run (the ``--sandbox`` level asked for is not available here, or it failed to
  start); nothing was graded;
* 4 — the grader's own modules could not be imported (a broken installation);
* 5 — nothing to grade: no PATH exists or holds an exercise notebook (``NN_name.ipynb``).

Exit status 3 also covers a sandbox that failed to start even after retries: the exercises it could not run are
reported "not graded" with the reason (an error in every report format), never as 0 points. When ``--out``
cannot be written (a read-only checkout), the report goes to a fresh temporary folder and the output says where.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

EXIT_OK, EXIT_BELOW, EXIT_GRADER, EXIT_SANDBOX, EXIT_IMPORT, EXIT_NOTHING = 0, 1, 2, 3, 4, 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", default=["exercises"], help="notebooks or folders (default exercises/)")
    parser.add_argument("--out", default="grade-report", help="folder for the report files (default grade-report/)")
    parser.add_argument("--results", help="Gradescope results.json path (default OUT/results.json)")
    parser.add_argument("--junit", help="JUnit XML path (default OUT/junit.xml)")
    parser.add_argument("--classroom", help="GitHub Classroom JSON path (default OUT/classroom.json)")
    parser.add_argument("--summary", help="Markdown table path (default OUT/summary.md)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds each exercise may run (default 20)")
    parser.add_argument(
        "--memory-gib",
        type=float,
        default=4.0,
        help="address-space limit of the sandbox in GiB (default 4; torch needs ~1)",
    )
    parser.add_argument(
        "--seed",
        help="seed of the checks' inputs: a number or a passphrase (default: $ATTNLIB_CLASS_SEED, else the course's "
        "fixed public seed; recorded in the report)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=900.0,
        help="wall-clock seconds for the whole grading (default 900); "
        "exercises not reached by then are reported as not graded",
    )
    parser.add_argument(
        "--fail-under", type=float, metavar="PCT", help="exit with 1 when the total is below PCT percent"
    )
    parser.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "uid", "none"),
        default=os.environ.get("ATTNLIB_SANDBOX", "auto"),
        help="isolation of the submitted code: bwrap (bubblewrap), uid (unprivileged user; needs root), none "
        "(not isolated; said in the report), auto (default: the first of these that works here)",
    )


def _last_resort(paths: dict[str, Path], message: str) -> None:
    """Write minimal reports with the standard library only (the grader's modules may be what is broken)."""
    texts = {
        "results": json.dumps(
            {"score": 0, "output": message, "visibility": "visible", "tests": [], "extra_data": {"status": "error"}}
        ),
        "junit_path": '<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="attnlib grade" tests="1" '
        'failures="1"><testsuite name="attnlib grade" tests="1" failures="1"><testcase name="grader">'
        '<failure message="grader error" /></testcase></testsuite></testsuites>\n',
        "classroom_path": json.dumps({"version": 1, "status": "error", "max_score": 0, "tests": []}),
        "summary": f"## Autograder: error\n\n{message}\n",
    }
    for key, path in paths.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(texts[key])
            os.replace(tmp, path)
        except OSError:
            traceback.print_exc()


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    paths = {
        "results": Path(args.results) if args.results else out / "results.json",
        "junit_path": Path(args.junit) if args.junit else out / "junit.xml",
        "classroom_path": Path(args.classroom) if args.classroom else out / "classroom.json",
        "summary": Path(args.summary) if args.summary else out / "summary.md",
    }
    try:  # every grader module is imported here, before any submitted code runs
        from . import diagnose, exercises, invoke, notebook, sandbox  # noqa: F401
        from . import report as rep
        from .classgrade.discover import SeveralRoots
        from .classgrade.run import class_seed
        from .engine import Options, Report, Result, grade
        from .results import NOT_GRADED
    except Exception as err:  # noqa: BLE001 - a broken installation must still leave a report behind
        traceback.print_exc()
        _last_resort(paths, f"the grader could not be imported: {type(err).__name__}: {err}")
        return EXIT_IMPORT

    def failed(status: str, note: str) -> Report:
        results = [
            Result(ex, None, message=f"not graded: {note}")
            for ex in exercises.EXERCISES
            if ex.set in {s for s, _ in _sets(args.paths)}
        ]
        return Report(results=results, notes=[note], status=status, level=args.sandbox)

    code = EXIT_OK
    try:
        result = grade(
            args.paths,
            Options(
                timeout=args.timeout,
                memory_gib=args.memory_gib,
                seed=class_seed(args.seed)[0],
                sandbox=args.sandbox,
                budget_s=args.budget,
            ),
        )
        if result.status == NOT_GRADED:
            code = EXIT_SANDBOX
        elif result.status == "nothing to grade":
            code = EXIT_NOTHING
    except sandbox.SandboxUnavailable as err:
        result, code = failed("sandbox unavailable", str(err)), EXIT_SANDBOX
        for r in result.results:
            r.status = NOT_GRADED
    except SeveralRoots as err:  # two folders are never graded as one submission (issue 23)
        print(f"attnlib grade: {err}")
        result, code = failed("refused", str(err)), EXIT_GRADER
    except Exception as err:  # noqa: BLE001 - a grader bug must still leave a report behind
        traceback.print_exc()
        result, code = failed("grader failed", f"the grader failed: {type(err).__name__}: {err}"), EXIT_GRADER
        for r in result.results:
            r.status = NOT_GRADED
    print(rep.table(result))
    if code == EXIT_NOTHING:
        print(f"nothing to grade: {'; '.join(result.notes[1:]) or 'no exercise notebook given'}", file=sys.stderr)
    try:
        written = rep.write(result, out=out, **paths)
    except OSError as err:  # a read-only checkout: write the report elsewhere and say where
        fallback = Path(tempfile.mkdtemp(prefix="attnlib-grade-report-"))
        print(f"cannot write the report to {out} ({err.strerror or err}); writing it to {fallback} instead")
        moved = {k: fallback / p.name for k, p in paths.items()}
        try:
            written = rep.write(result, out=fallback, **moved)
        except Exception as err2:  # noqa: BLE001
            print(f"the report could not be written: {err2}", file=sys.stderr)
            return EXIT_GRADER
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        _last_resort(paths, f"the report could not be written: {err}")
        return EXIT_GRADER
    for path in written:
        print(f"wrote {path}")
    if code:
        print(f"exit status {code}: {result.status}")
        return code
    if args.fail_under is not None and result.percent < args.fail_under:
        print(f"total {result.percent:.1f}% is below --fail-under {args.fail_under:g}%")
        return EXIT_BELOW
    return EXIT_OK


def _sets(paths):
    from .engine import collect

    try:
        return collect(paths)[0]
    except Exception:  # noqa: BLE001
        return []
