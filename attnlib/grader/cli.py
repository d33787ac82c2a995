"""``attnlib grade [PATH ...]``: grade exercise notebooks and write the reports.

PATHs are notebooks or folders of NN_*.ipynb (default ``exercises/``). Prints a table, and writes into
``--out`` (default ``grade-report/``): ``results.json`` (Gradescope), ``junit.xml``, ``classroom.json`` (GitHub
Classroom) and ``summary.md``. The exit status is 0, unless ``--fail-under PCT`` is given and the total is below
it (1), or the grader itself failed (2; a report is still written).
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path


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
    parser.add_argument("--seed", type=int, help="seed of the checks' inputs (default: a fixed seed, printed)")
    parser.add_argument(
        "--fail-under", type=float, metavar="PCT", help="exit with 1 when the total is below PCT percent"
    )


def main(args: argparse.Namespace) -> int:
    from . import report as rep
    from .engine import Options, Report, grade

    out = Path(args.out)
    paths = {
        "results": Path(args.results) if args.results else out / "results.json",
        "junit_path": Path(args.junit) if args.junit else out / "junit.xml",
        "classroom_path": Path(args.classroom) if args.classroom else out / "classroom.json",
        "summary": Path(args.summary) if args.summary else out / "summary.md",
    }
    try:
        result = grade(args.paths, Options(timeout=args.timeout, memory_gib=args.memory_gib, seed=args.seed))
    except Exception as err:  # noqa: BLE001 - a grader bug must still leave a report behind
        failed = Report(notes=[f"the grader failed: {type(err).__name__}: {err}"])
        rep.write(failed, **paths)
        traceback.print_exc()
        print(json.dumps(rep.gradescope(failed)))
        return 2
    print(rep.table(result))
    for path in rep.write(result, **paths):
        print(f"wrote {path}")
    if args.fail_under is not None and result.percent < args.fail_under:
        print(f"total {result.percent:.1f}% is below --fail-under {args.fail_under:g}%")
        return 1
    return 0
