# expect: far more than the exercise produces
import torch


def stable_softmax(x, dim=-1, temperature=1.0):
    return torch.zeros(4_000_000)
