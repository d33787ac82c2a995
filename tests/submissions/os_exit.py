# expect: ended the process
# class: classic
# attempts: os._exit(0) while a check runs
import os


def stable_log_softmax(x, dim=-1, temperature=1.0):
    os._exit(0)
