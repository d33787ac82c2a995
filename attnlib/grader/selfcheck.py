"""Immediate feedback inside an exercise notebook: ``selfcheck.check_stable_log_softmax(stable_log_softmax)``.

Each ``check_<entry>`` runs the exercise's checks (the grader's, with a fixed seed) on the learner's function or
class *in the learner's kernel*, and prints what passed and, for what did not, the likely mistake, e.g. "rows of
the weights should sum to 1.00 but row (0,) sums to 1.12: did you normalise over the wrong axis?".

This is for feedback only: it runs in the same process as the code it checks, so it could be fooled. Scores
come from ``attnlib grade``, which runs submissions in a separate, limited process. Both use the same checks
(:mod:`attnlib.grader.exercises`) and the same scoring path (:mod:`attnlib.grader.scoring`).
"""

from __future__ import annotations

from . import record as _recorder
from . import scoring
from .exercises import BY_ENTRY, EXERCISES, Case, Exercise
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


def run_checks(
    ex: Exercise, target, seed: int = SEED, *, record: bool = True
) -> tuple[int, int, list[tuple[str, str]], list[str]]:
    """(passed, total, [(check, message) for failures], forbidden calls) for ``target`` on ``ex``'s checks.

    ``seed`` draws the checks' inputs (the grader's seed gives the grader's inputs); ``record=False`` skips
    recording library calls (the tests' seed sweep, which runs only trusted code). Each check is judged by
    :mod:`attnlib.grader.scoring`, the grader's own path."""
    cases = ex.cases(ex.rng(seed))
    failures: list[tuple[str, str]] = []
    passed = 0
    saved = _recorder.install() if record else None
    called: set[str] = set()
    try:
        for case in cases:
            try:
                with _recorder.recording() as calls:
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
                failures.append((case.name, scoring.error_case(ex, case, f"{type(err).__name__}: {err}")[0]))
                continue
            ok, message, _ = scoring.judge_case(ex, case, ex.expect(case), outputs)
            if ok:
                passed += 1
            else:
                failures.append((case.name, message))
    finally:
        if record:
            _recorder.uninstall(saved)
    return passed, len(cases), failures, _recorder.forbidden(called, ex.forbidden)


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
