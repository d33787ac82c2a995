# expect: died
# class: processes
# attempts: SIGKILL the parent (the runner)
import os
import signal


def stable_log_softmax(x, dim=-1, temperature=1.0):
    os.kill(os.getppid(), signal.SIGKILL)
