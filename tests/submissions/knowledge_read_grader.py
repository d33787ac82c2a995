# expect: No such file or directory
# class: knowledge
# attempts: read the grader's own files (exercises, references, question keys) from inside the sandbox

import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    for path in ("{COURSE_DIR}/attnlib/grader/common.py", "{COURSE_DIR}/attnlib/grader/sets/03_softmax.py"):
        with open(path, encoding="utf-8") as fh:  # the grader's knowledge: must not be in the sandbox at all
            fh.read(1)
    z = x / temperature
    e = torch.exp(z - z.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)
