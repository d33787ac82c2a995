# expect: differs from the reference
# class: processes
# attempts: leave a setsid() grandchild that waits, then replaces the report and kills whatever it finds
import os
import signal
import time

import torch

FORGED = '{"score": 49, "tests": []}'


def _later():
    time.sleep(2)
    for _ in range(20):
        for path in ("{REPORT_DIR}/results.json", "{COURSE_DIR}/README.md"):
            try:
                with open(path, "w") as fh:
                    fh.write(FORGED)
            except OSError:
                pass
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        time.sleep(0.5)


def stable_log_softmax(x, dim=-1, temperature=1.0):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            _later()
        os._exit(0)
    return torch.full_like(x, 0.5)
