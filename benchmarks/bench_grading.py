"""Benchmark of ``attnlib grade-class``: how long a class of synthetic students takes, and where the time goes.

    .venv/bin/python benchmarks/bench_grading.py --students 300 --jobs 1,2     # the full run (quiet machine)
    .venv/bin/python benchmarks/bench_grading.py --students 6 --jobs 1,2      # a quick one

Each synthetic student is the course's solutions/ with, per set and drawn from a fixed seed: the set missing
(10 %), one catalogued mistake injected (40 %, from the broken-solution table of tests/test_exercise_sets.py, so
the grader's named diagnosis fires), a function that raises (5 %), or the set as solved. The class is graded once
per ``--jobs`` value, from scratch (``--regrade``), and the script prints students per minute and the time the
same rate gives for 300 students, with the load average before and after (other work on the machine slows it).

``--profile`` also times one full solved submission's parts in this process: choosing the files, computing the
references (the first time in a process; set 14's MiniLM weights load once), the whole ``engine.grade`` call
(the rest of which is the sandbox: its start, torch's import in the runner, one forked worker per exercise), and
the grading of one small set alone (about the cost of a sandbox start).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the broken-solution table lives with the tests


def _broken_table() -> dict[str, list[tuple[str, str]]]:
    from test_exercise_sets import BROKEN

    from attnlib.grader.exercises import BY_KEY

    table: dict[str, list[tuple[str, str]]] = {}
    for _, key, old, new, _ in BROKEN:
        table.setdefault(BY_KEY[key].set, []).append((old, new))
    return table


def _inject(nb, old: str, new: str) -> bool:
    for cell in nb.cells:
        if cell.cell_type == "code" and old in cell.source:
            cell.source = cell.source.replace(old, new, 1)
            return True
    return False


def _crash(nb) -> bool:
    """Make the first solved function raise: a submission whose code crashes on every check."""
    for cell in nb.cells:
        if cell.cell_type != "code" or "### BEGIN SOLUTION" not in cell.source:
            continue
        lines = cell.source.split("\n")
        i = next(k for k, line in enumerate(lines) if "### BEGIN SOLUTION" in line)
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines.insert(i + 1, f'{indent}raise RuntimeError("the student\'s code crashed")')
        cell.source = "\n".join(lines)
        return True
    return False


def make_class(root: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write ``n`` synthetic students under ``root``; returns how many sets of each kind were written."""
    rng = random.Random(seed)
    table = _broken_table()
    kinds = {"solved": 0, "mistake": 0, "crash": 0, "missing": 0}
    solutions = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    for s in range(n):
        folder = root / f"student{s:03d}" / "exercises"
        folder.mkdir(parents=True)
        for path in solutions:
            draw = rng.random()
            if draw < 0.10:
                kinds["missing"] += 1
                continue
            nb = nbformat.read(path, as_version=4)
            if draw < 0.50:
                set_name = path.stem.removesuffix("_exercises")
                if table.get(set_name):
                    old, new = rng.choice(table[set_name])
                    kinds["mistake" if _inject(nb, old, new) else "solved"] += 1
                else:
                    kinds["solved"] += 1
            elif draw < 0.55:
                kinds["crash" if _crash(nb) else "solved"] += 1
            else:
                kinds["solved"] += 1
            nbformat.write(nb, folder / path.name)
    return kinds


def profile() -> dict[str, float]:
    """Where one solved submission's grading time goes, measured in this process."""
    from attnlib.grader import engine
    from attnlib.grader.classgrade import discover
    from attnlib.grader.exercises import DEFAULT_SEED, EXERCISES

    t0 = time.perf_counter()
    discover.collect([ROOT / "solutions"])
    t1 = time.perf_counter()
    for ex in EXERCISES:
        cases = ex.cases(ex.rng(DEFAULT_SEED))
        [ex.expect(c) for c in cases]
    t2 = time.perf_counter()
    report = engine.grade([ROOT / "solutions"])
    t3 = time.perf_counter()
    engine.grade([ROOT / "solutions" / "02_similarity_and_scaling_exercises.ipynb"])  # a sandbox start, 4 exercises
    t4 = time.perf_counter()
    return {
        "engine.grade of set 02 alone: the sandbox's start and 4 exercises (s)": round(t4 - t3, 2),
        "each further exercise (s)": round(((t3 - t2) - (t2 - t1) - (t4 - t3)) / (len(EXERCISES) - 4), 3),
        "choose files (s)": round(t1 - t0, 2),
        "references (s)": round(t2 - t1, 2),
        "engine.grade, whole (s)": round(t3 - t2, 2),
        "of which sandbox and the rest (s)": round((t3 - t2) - (t2 - t1) - (t1 - t0), 2),
        "score": report.score,
        "sandbox level": report.level,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=300)
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values to time (default 1,2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic class")
    parser.add_argument("--profile", action="store_true", help="also time the parts of one submission's grading")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--sandbox",
        default="auto",
        choices=("auto", "bwrap", "uid", "none"),
        help="the level (default auto); the CPU time of the sandboxes is counted at uid and none only (bwrap's "
        "runner is not a child that its parent waits for)",
    )
    args = parser.parse_args(argv)

    from attnlib.grader.classgrade import run

    results = {"students": args.students, "cores": os.cpu_count(), "load_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        cls = Path(tmp) / "class"
        results["sets"] = make_class(cls, args.students, args.seed)
        print(f"{args.students} synthetic students, sets: {results['sets']}; load average {os.getloadavg()}")
        if args.profile:
            results["profile"] = profile()
            print("one solved submission:", results["profile"])
        for jobs in [int(j) for j in args.jobs.split(",")]:
            out = Path(tmp) / f"out{jobs}"
            load = os.getloadavg()[0]
            start, cpu0 = time.perf_counter(), os.times()
            summary = run.grade_class(
                cls,
                out,
                jobs=jobs,
                regrade=True,
                sandbox=args.sandbox,
                stream=open(os.devnull, "w"),  # noqa: SIM115
            )
            wall, cpu1 = time.perf_counter() - start, os.times()
            cpu = sum(cpu1[:4]) - sum(cpu0[:4])  # user+sys of this process and of its waited-for children
            records = [json.loads(p.read_text()) for p in (out / "students").glob("*/record.json")]
            engine_s = sum(r["seconds"] for r in records) / max(1, len(records))
            rate = args.students / wall * 60
            row = {
                "jobs": jobs,
                "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "cpu_s_per_student": round(cpu / args.students, 2),
                "load_before": load,
                "students_per_min": round(rate, 2),
                "projected_300_min": round(300 / rate, 1),
                "engine_s_per_student": round(engine_s, 2),
                "not_graded": sum(r["status"] != "graded" for r in records),
                "load_after": os.getloadavg(),
            }
            assert summary["graded"] == args.students
            results["runs"].append(row)
            print(
                f"--jobs {jobs}: {wall:.1f} s for {args.students} students = {rate:.2f} students/min; "
                f"CPU {cpu:.1f} s ({cpu / args.students:.2f} s per student); "
                f"300 students: {300 / rate:.1f} min; engine time per student {engine_s:.2f} s; "
                f"not graded {row['not_graded']}; "
                f"1-min load average {load:.1f} before, {row['load_after'][0]:.1f} after"
            )
            shutil.rmtree(out, ignore_errors=True)
    if len(results["runs"]) > 1:
        base = results["runs"][0]["wall_s"]
        for row in results["runs"][1:]:
            print(f"--jobs {row['jobs']} vs --jobs {results['runs'][0]['jobs']}: {base / row['wall_s']:.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
