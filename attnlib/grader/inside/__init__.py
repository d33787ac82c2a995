"""What runs next to untrusted code: the runner and its workers (:mod:`worker`), the traps (:mod:`traps`), the
forbidden-call policy they read (:mod:`policy`) and the helpers that call the learner's code (:mod:`invoke`).

The grading process copies these files, and nothing else of the course, into each job folder, and the sandbox
runs them as plain scripts (``python -I worker.py JOB``). So they import only the standard library, NumPy and
torch, and **nothing from the rest of attnlib** (one imports another relatively, or as a sibling script when run
as one); ``tests/test_grader_units.py`` checks it on their ASTs. Whatever the grader knows (the exercises,
their reference answers, mistake catalogues, question keys) stays outside: the sandbox gets only the inputs of
the checks, as data.
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ("worker.py", "traps.py", "policy.py", "invoke.py")  # copied into every job folder
