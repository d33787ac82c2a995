"""Grading a class: every student of a folder (or zip, GitHub Classroom clone, Gradescope export) into per-student
reports, a gradebook CSV and a class report of the mistakes the class made (``attnlib grade-class``).

* :mod:`.discover` — where a submission's exercise-set notebooks are, which file of each set is graded (exact
  names over copies, exercise notebooks over lessons) and the class's layouts (folders, zips, Classroom, Gradescope);
* :mod:`.adapter` — the one place that calls the per-submission grader (:func:`attnlib.grader.engine.grade`) and
  turns its report into a plain record (and back, for the per-student report files);
* :mod:`.run` — the ``grade-class`` command: parallel jobs, the content-keyed cache, shards and ``merge``;
* :mod:`.outputs` — the gradebook CSVs and the class report (HTML with inline SVG figures, Markdown, JSON).

Nothing here runs submitted code: the grader does, in its sandbox, one submission at a time.
"""
