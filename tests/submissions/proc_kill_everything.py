# expect: died
# class: processes
# attempts: kill(-1, SIGKILL): every process it may signal
import os
import signal


def stable_log_softmax(x, dim=-1, temperature=1.0):
    os.kill(-1, signal.SIGKILL)
