# expect: still running
# class: processes
# attempts: start 150 busy processes and wait for them
import os
import time


def stable_log_softmax(x, dim=-1, temperature=1.0):
    for _ in range(150):
        try:
            if os.fork() == 0:
                while True:
                    time.sleep(0.01)
        except OSError:
            break
    while True:
        time.sleep(1)
