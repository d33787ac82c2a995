# expect: raised RuntimeError
import torch


def stable_softmax(x, dim=-1, temperature=1.0):
    return torch.ones(1 << 36)  # 256 GiB
