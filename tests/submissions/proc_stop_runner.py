# expect: still running
# class: processes
# attempts: SIGSTOP its parent (the runner) so that grading hangs
import os
import signal
import time


def stable_log_softmax(x, dim=-1, temperature=1.0):
    os.kill(os.getppid(), signal.SIGSTOP)
    time.sleep(60)
