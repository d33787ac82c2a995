"""Re-export of :mod:`attnlib.grader.inside.invoke` (the self-check and the exercise tests call learners' code
with it in their own process)."""

from .inside.invoke import SubmissionError, as_input, run_case, to_array  # noqa: F401
