# expect: raised RuntimeError
# class: classic
# attempts: allocate huge tensors
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return torch.ones(1 << 36)  # 256 GiB
