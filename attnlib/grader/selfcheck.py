"""Immediate feedback inside an exercise notebook: ``selfcheck.check_stable_softmax(stable_softmax)``.

Each ``check_<entry>`` runs the exercise's checks (the grader's, with a fixed seed) on the learner's function or
class *in the learner's kernel*, and prints what passed and, for what did not, the likely mistake, e.g. "rows of
the weights should sum to 1.00 but row (0,) sums to 1.12: did you normalise over the wrong axis?".

This is for feedback only: it runs in the same process as the code it checks, so it could be fooled. Scores
come from ``attnlib grade``, which runs submissions in a separate, limited process. Both use the same checks
(:mod:`attnlib.grader.exercises`) and the same diagnosis (:mod:`attnlib.grader.diagnose`).
"""

from __future__ import annotations

from . import diagnose, guard
from .exercises import ARG_NAMES, BY_ENTRY, EXERCISES, Case, Exercise
from .invoke import SubmissionError, run_case

SEED = 2024

__all__ = ["check", *(f"check_{ex.entry}" for ex in EXERCISES)]


def _as_dict(case: Case) -> dict:
    return {
        "args": list(case.args),
        "kwargs": dict(case.kwargs),
        "init": list(case.init),
        "weights": dict(case.weights),
        "grad_output": case.grad_output,
    }


class _Lazy:
    """An exercise's known-mistake outputs for one check, computed only if the check fails."""

    def __init__(self, ex: Exercise, case: Case):
        self.ex, self.case, self._items = ex, case, None

    def __iter__(self):
        if self._items is None:
            self._items = self.ex.mistakes(self.case)
        return iter(self._items)


def run_checks(
    ex: Exercise, target, seed: int = SEED, *, record: bool = True
) -> tuple[int, int, list[tuple[str, str]], list[str]]:
    """(passed, total, [(check, message) for failures], forbidden calls) for ``target`` on ``ex``'s checks.

    ``seed`` draws the checks' inputs (the grader's seed gives the grader's inputs); ``record=False`` skips
    recording library calls (the tests' seed sweep, which runs only trusted code)."""
    cases = ex.cases(ex.rng(seed))
    failures: list[tuple[str, str]] = []
    passed = 0
    saved = guard.install() if record else None
    called: set[str] = set()
    try:
        for case in cases:
            try:
                with guard.recording() as calls:
                    try:
                        outputs = run_case(target, ex.kind, list(ex.returns), _as_dict(case))
                    finally:
                        called.update(calls)
            except NotImplementedError:
                failures.append((case.name, "not implemented yet (NotImplementedError)"))
                continue
            except SubmissionError as err:
                failures.append((case.name, str(err)))
                continue
            except Exception as err:  # noqa: BLE001 - any error of the learner's code is feedback
                failures.append((case.name, diagnose.error_message(f"{type(err).__name__}: {err}", ex.raises(case))))
                continue
            ok, message = diagnose.judge(
                case.args,
                ARG_NAMES.get(ex.entry, ()),
                outputs,
                ex.expect(case),
                _Lazy(ex, case),
                distribution=ex.distribution,
                magnitude=case.magnitude,
            )
            if ok:
                passed += 1
            else:
                failures.append((case.name, message))
    finally:
        if record:
            guard.uninstall(saved)
    used = sorted(c for c in called if any(c == f or c.startswith(f + ".") for f in ex.forbidden))
    return passed, len(cases), failures, used


def check(entry: str, target) -> None:
    """Print the self-check of the exercise named ``entry`` for ``target`` (a function or an nn.Module class)."""
    ex = BY_ENTRY[entry]
    passed, total, failures, used = run_checks(ex, target)
    if used:
        print(
            f"❌ {entry} calls {', '.join(used)}: this exercise asks you to write it yourself, so the grader gives "
            "zero points for it. Replace the library call with your own code."
        )
        return
    if failures and all(m.startswith("not implemented yet") for _, m in failures):
        print(f"⏳ {entry} is not implemented yet: replace the `raise NotImplementedError` line with your code.")
        return
    if not failures:
        checks = "the check" if total == 1 else f"all {total} checks"
        points = "1 point" if ex.points == 1 else f"{ex.points} points"
        print(f"✅ {entry}: {checks} passed ({points} when graded).")
        return
    print(f"❌ {entry}: {passed} of {total} checks passed.")
    shown = set()
    for name, message in failures:
        if message in shown:
            continue
        shown.add(message)
        print(f"  • {name}: {message}")
        if len(shown) == 3:
            break


def _make(entry: str):
    def checker(target) -> None:
        check(entry, target)

    checker.__name__ = f"check_{entry}"
    checker.__doc__ = f"Self-check of exercise {BY_ENTRY[entry].key}: print feedback for your ``{entry}``."
    return checker


for _ex in EXERCISES:
    globals()[f"check_{_ex.entry}"] = _make(_ex.entry)
del _ex
