"""The course's exercises and autograder.

* :mod:`attnlib.grader.exercises` — every exercise (checks per set in ``sets/NN_*.py``, records in
  :mod:`~attnlib.grader.common`): inputs, reference answers, known mistakes;
* :mod:`attnlib.grader.diagnose` — pure comparisons of outputs with the reference and the mistakes;
* :mod:`attnlib.grader.scoring` — one check's verdict and an exercise's score, shared by the grader and the
  self-check (:mod:`attnlib.grader.selfcheck`, which records library calls with :mod:`attnlib.grader.record`);
* :mod:`attnlib.grader.engine` — ``grade(paths, Options) -> Report`` (records in
  :mod:`attnlib.grader.results`): reads the notebooks (:mod:`attnlib.grader.notebook`: definitions and the
  static scan), supervises the sandbox (:mod:`attnlib.grader.supervise`, levels in
  :mod:`attnlib.grader.sandbox`, the job's wire format in :mod:`attnlib.grader.wire`) and scores what comes back;
* :mod:`attnlib.grader.inside` — the only code that runs beside submitted code (runner and workers, traps, the
  forbidden-call policy, the invoke helpers); it imports nothing from the rest of attnlib;
* :mod:`attnlib.grader.report` — the table, Gradescope's results.json, JUnit XML, Classroom's JSON, Markdown;
* :mod:`attnlib.grader.build` — ``attnlib exercises build``: exercises/ generated from solutions/.

Importing this package is cheap; the submodules import torch only when used.
"""
