"""Scoring: one path from the outputs of a learner's code to points and a message, shared by the grading process
(on outputs decoded from the sandbox) and the notebooks' self-check cells (on outputs computed in the learner's
kernel).

* :func:`judge_case` — one check's outputs against the reference and the exercise's catalogued mistakes
  (:mod:`attnlib.grader.diagnose`): ``(passed, message, mistake)``, ``mistake`` being the catalogued hint that
  named the error ("" when none did);
* :func:`error_case` — what to say about a check on which the learner's code raised;
* :func:`summary` — the exercise's message from its checks' verdicts;
* :func:`score_run` — the grading process's verdict on one exercise from what its worker sent (validated
  first; what the worker says about itself can only take points away).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from . import diagnose, wire
from .common import Case, Exercise

MEMORY_BUDGET = "MemoryBudget"  # the worker's prefix for an error that is the exercise's memory budget
# Paths of the grader's job folder and the workers' private folders: never shown to a learner.
_PATHS = re.compile(r"(?:/job|/tmp/attnlib-[A-Za-z0-9_.-]+|/tmp/w[0-9a-f]{16})(?:/[^\s'\"]*)?")


def mistake_id(ex: Exercise, hint: str) -> str:
    """A stable id of a catalogued mistake (the same hint of the same exercise always gets the same id)."""
    return f"{ex.key}/{zlib.crc32(hint.encode('utf-8')):08x}" if hint else ""


def hide_paths(text: str) -> str:
    return _PATHS.sub("<sandbox>", text)


class _LazyMistakes:
    """An exercise's known-mistake outputs for one check, computed only if the check fails."""

    def __init__(self, ex: Exercise, case: Case):
        self.ex, self.case, self.items = ex, case, None

    def __iter__(self):
        if self.items is None:
            self.items = self.ex.mistakes(self.case)
        return iter(self.items)


def judge_case(ex: Exercise, case: Case, expected: dict, outputs: dict) -> tuple[bool, str, str]:
    """(passed, message, catalogued hint that matched or "") for one check's outputs."""
    mistakes = _LazyMistakes(ex, case)
    ok, message = diagnose.judge(
        case.args, ex.arg_names, outputs, expected, mistakes, distribution=ex.distribution, magnitude=case.magnitude
    )
    hints = {hint for hint, _ in mistakes.items or ()}
    return ok, message, message if not ok and message in hints else ""


def error_case(ex: Exercise, case: Case, error: str, problems: list[str] = ()) -> tuple[str, str]:
    """(message, catalogued hint or "") for a check on which the learner's code raised ``error``."""
    error = hide_paths(error)
    if error.startswith("NotImplementedError"):
        return "not implemented yet (NotImplementedError)", ""
    if error.startswith(MEMORY_BUDGET):
        head, _, rest = error.partition(":")
        try:
            mib = int(head.split()[1]) >> 20
        except (IndexError, ValueError):
            mib = 0
        return (
            f"ran out of its memory budget of {mib} MiB ({rest.strip()[:200]}): this exercise must not build "
            "the whole L x S score matrix; work through the keys block by block",
            "",
        )
    raises = ex.raises(case)
    message = diagnose.error_message(error, raises)
    hint = next((h for pattern, h in raises if re.search(pattern, error)), "")
    if problems and re.match(r"(NameError|ImportError|ModuleNotFoundError|AttributeError)", error):
        # the name is usually missing because the statement that defines it failed while loading: say where
        message += f" (while loading the notebook: {problems[0]})"
    return message, hint


def summary(total: int, failures: list[tuple[str, str]]) -> str:
    if not failures:
        return f"all {total} checks passed"
    first_case, first = failures[0]
    hints = list(dict.fromkeys(m for _, m in failures))
    text = f"{first} [check: {first_case}]"
    if len(hints) > 1:
        text += " | also: " + " | ".join(hints[1:3])
    return text


@dataclass
class Verdict:
    passed: int
    message: str
    zero: bool = False  # the exercise scores zero whatever passed (a shortcut, a crash before the checks)
    mistake: str = ""


def shortcut_message(uses: list[str], how: str) -> str:
    return (
        f"uses {', '.join(uses[:3])} ({how}): this exercise asks you to write it yourself, so a library "
        "implementation, or code that hides which functions it calls, scores zero here"
    )


def status_message(run: dict) -> str:
    status, detail = run.get("status"), run.get("detail", "")
    if status == "timeout":
        return f"timed out: still running {detail} (an infinite loop, or far too slow?)"
    if status == "killed":
        return f"the process running it was killed ({detail}): it probably ran out of memory or crashed"
    if status == "too much output":
        return "stopped: it produced far more output than the exercise needs"
    if status == "runner died":
        return (
            "the sandbox's runner died while this exercise was running (the submission killed it, or it ran out "
            "of memory)"
        )
    if status == "exited":
        return "the submission ended the process (sys.exit / os._exit?) before the checks finished"
    return f"could not be graded ({status})"


def score_run(ex: Exercise, cases: list[Case], expected: list[dict], run: dict, problems: list[str]) -> Verdict:
    """The verdict on one exercise from its worker's lines (``run``: ``{"lines", "status", "detail"}``)."""
    events = wire.events(run["lines"])
    loaded = next((e for e in events if e.get("event") == "loaded"), None)
    if loaded is None:
        if run["status"] != "exited":
            return Verdict(0, status_message(run), zero=True)
        return Verdict(
            0,
            "the submission ended the process while its definitions were loading (sys.exit / os._exit at the top "
            "level?)",
            zero=True,
        )
    got = loaded.get("problems")
    problems = [*problems, *(hide_paths(str(p)[:300]) for p in (got if isinstance(got, list) else []))][:3]
    if not loaded.get("found"):
        extra = f" ({'; '.join(problems)})" if problems else ""
        return Verdict(
            0,
            f"`{ex.entry}` is not defined in the notebook{extra}; keep the name and signature of the template",
            zero=True,
        )
    results: dict[int, dict] = {}
    for e in events:
        if e.get("event") == "case" and isinstance(e.get("i"), int) and 0 <= e["i"] < len(cases):
            results[e["i"]] = e  # the last line of a check wins: the worker writes its own after any forged one
    finished = next((e for e in events if e.get("event") == "finished"), None)
    calls = {
        c
        for e in [*results.values(), finished or {}]
        for c in (e.get("calls") if isinstance(e.get("calls"), list) else [])
        if isinstance(c, str)
    }
    calls |= {
        "a forbidden library function"
        for e in results.values()
        if isinstance(e.get("error"), str) and e["error"].startswith("ForbiddenCall")
    }
    if calls:
        return Verdict(0, shortcut_message([str(c)[:120] for c in sorted(calls)], "called while grading"), zero=True)
    if finished and isinstance(finished.get("patched"), list) and finished["patched"]:
        names = ", ".join(str(p)[:80] for p in finished["patched"][:3])
        return Verdict(
            0,
            f"the submission replaced library attributes ({names}): monkeypatching torch or numpy is not allowed",
            True,
        )
    passed, failures, mistakes = 0, [], []
    for i, case in enumerate(cases):
        e = results.get(i)
        if e is None:
            failures.append(
                (case.name, status_message(run) if run["status"] != "exited" or finished is None else "no result")
            )
            continue
        if e.get("error"):
            message, hint = error_case(ex, case, str(e["error"])[:600], problems)
            failures.append((case.name, message))
            mistakes.append(hint)
            continue
        try:
            outputs = {str(k): wire.decode(v) for k, v in (e.get("outputs") or {}).items()}
        except (ValueError, TypeError, OSError, EOFError, AttributeError) as err:
            failures.append((case.name, f"returned something that is not a plain array ({err})"))
            continue
        ok, message, hint = judge_case(ex, case, expected[i], outputs)
        if ok:
            passed += 1
        else:
            failures.append((case.name, message))
            mistakes.append(hint)
    return Verdict(passed, summary(len(cases), failures), mistake=next((m for m in mistakes if m), ""))
