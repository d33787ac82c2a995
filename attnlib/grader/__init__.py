"""The course's exercises and autograder.

* :mod:`attnlib.grader.exercises` — every exercise: its checks, reference answers and known mistakes;
* :mod:`attnlib.grader.diagnose` — pure comparisons of outputs with the reference and the mistakes;
* :mod:`attnlib.grader.selfcheck` — the feedback cells of the notebooks (``check_<exercise>(fn)``);
* :mod:`attnlib.grader.engine` — ``grade(paths)``: runs a submission in a sandboxed child process
  (:mod:`attnlib.grader.sandbox`) and scores what comes back; :mod:`attnlib.grader.report` writes the table,
  Gradescope's results.json, JUnit XML and GitHub Classroom's JSON;
* :mod:`attnlib.grader.build` — ``attnlib exercises build``: exercises/ generated from solutions/.

Importing this package is cheap; the submodules import torch only when used.
"""
