"""``attnlib grade-class ROOT``: grade every student of a class; ``grade-class merge SHARD ...``: combine shards.

ROOT holds one folder or zip per student, or is a GitHub Classroom clone (``gh classroom clone student-repos``) or
a Gradescope submissions export (see :mod:`.discover`). Writes into ``--out`` (default ``class-report/``):

* ``students/<id>/``: each student's report folder (results.json, junit.xml, classroom.json, summary.md) and
  ``record.json`` (the grading as data);
* ``gradebook.csv`` (every column) and ``gradebook-canvas.csv`` (Canvas's import columns);
* ``class-report.html`` (self-contained, figures inline), ``class-report.md`` and ``class-report.json``;
* ``shard.json`` with ``--shard i/n`` (a deterministic slice of the class; ``merge`` checks the slices add up).

Students are graded ``--jobs`` at a time (default: the machine's cores), each in its own sandbox through the
ordinary grader, with the class seed (``--seed`` or ``$ATTNLIB_CLASS_SEED``; recorded in every report). A cache
keyed by the content of each submission, the seed, the grading options and the grader's own code (default
``OUT/.cache``) makes a re-run grade only what changed; ``--regrade`` grades all. A submission that could not be
graded (the sandbox failed) is never cached, so the next run tries it again.

Exit status: 0 every student graded; 1 no student found; 2 a usage error (a bad ROOT, shard or roster, shards that
do not add up); 3 the sandbox cannot run here (nobody graded), or some students could not be graded (their cells
are empty in the gradebook, and the next run tries them again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

from . import discover

SEED_ENV = "ATTNLIB_CLASS_SEED"


class SandboxError(Exception):
    """The sandbox level asked for cannot run here (exit status 3, as for `attnlib grade`)."""


GRADER_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------
# Seed, shards, fingerprints


def class_seed(value: str | int | None) -> tuple[int, str]:
    """(seed, where it came from): ``--seed``, else ``$ATTNLIB_CLASS_SEED``, else the course's public default.

    The value may be an integer or any text (a passphrase), which is hashed to a 48-bit integer."""
    from ..exercises import DEFAULT_SEED

    origin = "--seed"
    if value is None or value == "":
        value, origin = os.environ.get(SEED_ENV, ""), f"${SEED_ENV}"
    if value == "":
        return DEFAULT_SEED, "the course's public default (set --seed or $ATTNLIB_CLASS_SEED to a secret)"
    text = str(value).strip()
    if re.fullmatch(r"\d{1,15}", text):
        return int(text), origin
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16), origin + " (text, hashed)"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard takes i/n with 1 <= i <= n (e.g. 2/4), not {text!r}")
    return int(m.group(1)), int(m.group(2))


def in_shard(ids: list[str], shard: tuple[int, int] | None) -> list[str]:
    """The ids shard i of n grades: every n-th of the sorted ids, starting at the i-th (deterministic)."""
    if shard is None:
        return sorted(ids)
    i, n = shard
    return [s for k, s in enumerate(sorted(ids)) if k % n == i - 1]


def grader_fingerprint() -> str:
    """sha256 of the grader's code and checks (attnlib/grader/**/*.py): a changed check invalidates the cache."""
    h = hashlib.sha256()
    for path in sorted(GRADER_DIR.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(GRADER_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def folder_name(ident: str, taken: set[str]) -> str:
    """A file-system-safe, unique folder name for a student id."""
    base = re.sub(r"[^A-Za-z0-9._@+-]", "_", ident).strip(".")[:80] or "student"
    name, n = base, 2
    while name.lower() in taken:
        name, n = f"{base}~{n}", n + 1
    taken.add(name.lower())
    return name


# ----------------------------------------------------------------------------------------------------------
# Grading one student (in a worker process)


def grade_student(task: dict) -> dict:
    """Grade one student (``task``: id, layout, path, options); returns its record. Runs in a worker process."""
    from . import adapter

    path = Path(task["path"])
    seed = task["seed"]
    tmp = None
    extra: list[str] = []
    try:
        if task["layout"] == "zip":
            tmp = Path(tempfile.mkdtemp(prefix="attnlib-class-"))
            extra = discover.extract_notebooks(path, tmp / "submission")
            folder = tmp / "submission"
        else:
            folder = path
        try:
            report = adapter.grade_folder(
                folder, seed=seed, timeout=task["timeout"], memory_gib=task["memory_gib"], sandbox=task["sandbox"]
            )
            record = adapter.to_record(report, real_root=folder, extra_notes=extra)
        except Exception as err:  # noqa: BLE001 - one student's failure must not stop the class
            record = adapter.failed_record(f"the grader failed: {type(err).__name__}: {err}", seed=seed)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    record["graded_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return record


def _cache_key(student: discover.Student, options: dict, fingerprint: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"options": options, "grader": fingerprint, "layout": student.layout}, sort_keys=True).encode())
    if student.layout == "zip":
        h.update(hashlib.sha256(student.path.read_bytes()).digest())
    else:
        sel = discover.select(student.path)
        h.update(json.dumps({"files": sel.digests(), "notes": sel.notes}, sort_keys=True).encode())
    return h.hexdigest()


def _gradable(record: dict) -> bool:
    """Whether a record may be cached: everything in it was graded (a sandbox failure is tried again)."""
    return record.get("status") == "graded" and all(e["status"] != "not graded" for e in record["exercises"])


# ----------------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """One line per student, or a bar redrawn in place on a terminal: done/total, students per minute, time left."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.graded, self.stream = total, 0, 0, stream
        self.start = time.monotonic()
        self.tty = stream.isatty()

    def update(self, ident: str, record: dict, cached: bool) -> None:
        self.done += 1
        self.graded += not cached
        elapsed = time.monotonic() - self.start
        rate = self.graded / elapsed * 60 if self.graded and elapsed > 0 else 0.0
        left = (self.total - self.done) / rate * 60 if rate else 0.0
        width = 30
        filled = int(width * self.done / max(1, self.total))
        score = sum(e["score"] or 0 for e in record["exercises"])
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
        tail = f"{rate:.1f} students/min, {_duration(left)} left" if rate else "from the cache"
        what = "cached" if cached else f"{score:g} pts"
        line = f"{bar}  {tail}  ({ident}: {what})"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# ----------------------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="ROOT",
        help="the class folder (or `merge SHARD_OUT ...` to combine the outputs of --shard runs)",
    )
    parser.add_argument("--out", default="class-report", help="output folder (default class-report/)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="students graded at once (default: cores)"
    )
    parser.add_argument("--seed", help=f"the class seed: an integer or a passphrase (default ${SEED_ENV})")
    parser.add_argument("--shard", metavar="I/N", help="grade only the I-th of N deterministic slices of the class")
    parser.add_argument("--regrade", action="store_true", help="grade every student again, ignoring the cache")
    parser.add_argument("--cache", help="cache folder (default OUT/.cache)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds each exercise may run (default 20)")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit of a sandbox (GiB)")
    parser.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "uid", "none"),
        default=os.environ.get("ATTNLIB_SANDBOX", "auto"),
        help="isolation level, as for `attnlib grade` (default auto)",
    )
    parser.add_argument("--roster", help="a Canvas gradebook export (CSV) giving each student's Canvas identity")
    parser.add_argument(
        "--roster-key",
        default="SIS Login ID",
        help="the roster column that holds the student id (default SIS Login ID)",
    )


def grade_class(
    root: Path,
    out: Path,
    *,
    jobs: int = 1,
    seed: str | int | None = None,
    shard: tuple[int, int] | None = None,
    regrade: bool = False,
    cache: Path | None = None,
    timeout: float = 20.0,
    memory_gib: float = 4.0,
    sandbox: str = "auto",
    roster: Path | None = None,
    roster_key: str = "SIS Login ID",
    stream=sys.stderr,
) -> dict:
    """Grade a class into ``out``; returns a summary (students, graded, cached, seconds)."""
    from . import outputs

    started = time.monotonic()
    seed_value, seed_origin = class_seed(seed)
    all_students, layout, class_notes = discover.students(root)
    chosen = set(in_shard([s.id for s in all_students], shard))
    todo = [s for s in all_students if s.id in chosen]
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or out / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    fingerprint = grader_fingerprint()
    options = {"seed": seed_value, "timeout": timeout, "memory_gib": memory_gib, "sandbox": sandbox}
    print(
        f"grade-class: {len(all_students)} students ({layout} layout) in {root}"
        + (f", shard {shard[0]}/{shard[1]}: {len(todo)} of them" if shard else "")
        + f"; seed from {seed_origin}; {jobs} job(s)",
        file=stream,
    )
    from .adapter import sandbox_problem

    problem = sandbox_problem(sandbox)
    if problem:
        raise SandboxError(f"the sandbox ({sandbox}) cannot run here, so nobody was graded: {problem}")
    records: dict[str, dict] = {}
    keys: dict[str, str] = {}
    pending = []
    progress = Progress(len(todo), stream)
    for s in todo:
        keys[s.id] = _cache_key(s, options, fingerprint)
        hit = cache / f"{keys[s.id]}.json"
        if not regrade and hit.is_file():
            try:
                records[s.id] = json.loads(hit.read_text(encoding="utf-8"))
                progress.update(s.id, records[s.id], cached=True)
                continue
            except (OSError, ValueError):
                pass
        pending.append(s)
    tasks = {
        s.id: {"path": str(s.path), "layout": s.layout, "seed": seed_value, **options, "id": s.id} for s in pending
    }

    def finish(ident: str, record: dict) -> None:
        records[ident] = record
        if _gradable(record):
            tmp = cache / f".{keys[ident]}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, cache / f"{keys[ident]}.json")
        progress.update(ident, record, cached=False)

    if jobs <= 1 or len(pending) <= 1:
        for s in pending:
            finish(s.id, grade_student(tasks[s.id]))
    else:
        broken = []
        with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(grade_student, tasks[s.id]): s.id for s in pending}
            for fut in as_completed(futures):
                ident = futures[fut]
                try:
                    record = fut.result()
                except BrokenProcessPool:  # a worker process died: its students are graded again below
                    broken.append(ident)
                    continue
                except Exception as err:  # noqa: BLE001 - a worker that failed costs only its student
                    from .adapter import failed_record

                    record = failed_record(f"the grading process failed: {type(err).__name__}: {err}", seed=seed_value)
                finish(ident, record)
        if broken:
            print(f"grade-class: a worker process died; grading {len(broken)} students here, one by one", file=stream)
            for ident in sorted(broken):
                finish(ident, grade_student(tasks[ident]))
    for s in todo:
        rec = records[s.id]
        rec.update({"student": s.id, "source": s.source, "layout": s.layout, "people": s.people})
    outputs.write_student_folders(out, [records[s.id] for s in todo])
    manifest = {
        "shard": list(shard) if shard else [1, 1],
        "seed": seed_value,
        "grader": fingerprint,
        "layout": layout,
        "class_notes": class_notes,
        "students": sorted(s.id for s in all_students),
        "graded": sorted(s.id for s in todo),
    }
    (out / "shard.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    outputs.write_class_outputs(
        out, [records[s.id] for s in todo], manifest, roster=roster, roster_key=roster_key, complete=shard is None
    )
    seconds = time.monotonic() - started
    graded = len(pending)
    not_graded = sorted(s.id for s in todo if not _gradable(records[s.id]))
    if not_graded:
        print(
            f"grade-class: {len(not_graded)} students were not (fully) graded: {', '.join(not_graded[:10])}"
            f"{' ...' if len(not_graded) > 10 else ''}; run the command again to retry them (see `problems`)",
            file=stream,
        )
    print(
        f"grade-class: {len(todo)} students ({graded} graded, {len(todo) - graded} from the cache) in "
        f"{_duration(seconds)}; wrote {out}/gradebook.csv, class-report.html/.md/.json, students/",
        file=stream,
    )
    return {
        "students": len(todo),
        "graded": graded,
        "cached": len(todo) - graded,
        "not_graded": len(not_graded),
        "seconds": seconds,
    }


def merge(shard_outs: list[Path], out: Path, *, roster: Path | None = None, roster_key: str = "SIS Login ID") -> None:
    """Combine the outputs of ``--shard i/n`` runs into the gradebook and class report of the whole class."""
    from . import outputs

    manifests = []
    for folder in shard_outs:
        path = folder / "shard.json"
        if not path.is_file():
            raise ValueError(f"{folder} holds no shard.json: not the output of `attnlib grade-class --shard`")
        manifests.append(json.loads(path.read_text(encoding="utf-8")))
    first = manifests[0]
    for m in manifests[1:]:
        for key in ("seed", "grader", "students"):
            if m[key] != first[key]:
                raise ValueError(f"the shards differ in {key}: they are not slices of one grading run")
    n = first["shard"][1]
    seen = sorted(m["shard"][0] for m in manifests)
    if seen != list(range(1, n + 1)) or any(m["shard"][1] != n for m in manifests):
        raise ValueError(f"expected shards 1..{n} of {n} once each, got {seen}")
    graded = sorted(g for m in manifests for g in m["graded"])
    if graded != first["students"]:
        raise ValueError("the shards' students do not add up to the class")
    records = []
    for folder in shard_outs:
        for rec_path in sorted((folder / "students").glob("*/record.json")):
            records.append(json.loads(rec_path.read_text(encoding="utf-8")))
    records.sort(key=lambda r: r["student"])
    if [r["student"] for r in records] != first["students"]:
        raise ValueError("the shards' student folders do not match their shard.json")
    out.mkdir(parents=True, exist_ok=True)
    outputs.write_student_folders(out, records)
    manifest = {**first, "shard": [1, 1], "graded": first["students"]}
    (out / "shard.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    outputs.write_class_outputs(out, records, manifest, roster=roster, roster_key=roster_key, complete=True)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    roster = Path(args.roster) if args.roster else None
    try:
        if args.paths[0] == "merge":
            if len(args.paths) < 2:
                print("grade-class merge: give the output folders of the shards", file=sys.stderr)
                return 2
            merge([Path(p) for p in args.paths[1:]], out, roster=roster, roster_key=args.roster_key)
            print(f"merged {len(args.paths) - 1} shards into {out}")
            return 0
        if len(args.paths) != 1:
            print("grade-class: give one class folder (ROOT), or `merge SHARD_OUT ...`", file=sys.stderr)
            return 2
        root = Path(args.paths[0])
        if not root.is_dir():
            print(f"grade-class: {root} is not a folder", file=sys.stderr)
            return 2
        summary = grade_class(
            root,
            out,
            jobs=max(1, args.jobs),
            seed=args.seed,
            shard=parse_shard(args.shard),
            regrade=args.regrade,
            cache=Path(args.cache) if args.cache else None,
            timeout=args.timeout,
            memory_gib=args.memory_gib,
            sandbox=args.sandbox,
            roster=roster,
            roster_key=args.roster_key,
        )
    except SandboxError as err:
        print(f"grade-class: {err}", file=sys.stderr)
        return 3
    except ValueError as err:
        print(f"grade-class: {err}", file=sys.stderr)
        return 2
    if summary["not_graded"]:
        return 3
    return 0 if summary["students"] else 1
