# expect: far more than the exercise produces
# class: classic
# attempts: return an enormous tensor
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return torch.zeros(4_000_000)
