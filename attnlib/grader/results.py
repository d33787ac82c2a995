"""The records of a grading: :class:`Options` in, one :class:`Report` per submission out, one :class:`Result` per
exercise. Plain data: the report writers (:mod:`attnlib.grader.report`) and the class-grading layer read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import Exercise

# Result.status
GRADED = "graded"
NOT_GRADED = "not graded"  # the grader could not run it (the sandbox failed to start, the time budget ran out...)


@dataclass
class Result:
    """One exercise's outcome.

    ``status`` is ``"graded"`` (``score`` is the verdict) or ``"not graded"`` (``message`` says why; ``score``
    is 0 but is no verdict: the reports show an error instead of a score). ``mistake`` is the catalogued hint
    that diagnosed the answer, and ``mistake_id`` its stable id (``"03.1/1f2e3d4c"``), or "" when none did.
    """

    exercise: Exercise
    path: str | None
    score: float = 0.0
    message: str = ""
    passed: int = 0
    total: int = 0
    status: str = GRADED
    mistake: str = ""
    mistake_id: str = ""

    @property
    def name(self) -> str:
        return f"{self.exercise.key} {self.exercise.entry}"

    @property
    def max_score(self) -> float:
        return float(self.exercise.points)

    @property
    def graded(self) -> bool:
        return self.status == GRADED


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0
    level: str = ""  # the sandbox level the submission ran at (bwrap, uid, none)
    status: str = "graded"  # "graded", "not graded", "sandbox unavailable", "grader failed", "nothing to grade"
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of each notebook as read (once)
    sandbox_starts: int = 0
    survivors: int = 0

    @property
    def score(self) -> float:
        return round(sum(r.score for r in self.results), 2)

    @property
    def max_score(self) -> float:
        return float(sum(r.max_score for r in self.results))

    @property
    def percent(self) -> float:
        return 100.0 * self.score / self.max_score if self.max_score else 0.0

    @property
    def not_graded(self) -> list[Result]:
        return [r for r in self.results if not r.graded]


@dataclass
class Options:
    timeout: float = 20.0  # seconds per exercise (wall clock)
    memory_gib: float = 4.0  # address-space limit of the sandbox (torch alone reserves about 1 GiB)
    fsize_bytes: int = 0  # largest file submitted code may write (0: it can write none)
    seed: int | None = None  # None: the fixed DEFAULT_SEED, so a submission always gets the same score (reported)
    sandbox: str = "auto"  # auto | bwrap | uid | none (see attnlib.grader.sandbox)
    budget_s: float = 900.0  # wall clock for the whole grading; what is left then is reported "not graded"
    start_attempts: int = 3  # a sandbox that fails to start is tried this many times
