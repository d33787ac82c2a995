# expect: private internals
# class: shortcut
# attempts: torch._softmax, a private entry point
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return torch._softmax(x / temperature, dim, False)
