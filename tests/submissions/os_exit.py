# expect: ended the process
import os


def stable_softmax(x, dim=-1, temperature=1.0):
    os._exit(0)
