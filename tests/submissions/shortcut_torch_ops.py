# expect: operators reached by name
# class: shortcut
# attempts: torch.ops.aten.softmax.int
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return torch.ops.aten.softmax.int(x / temperature, dim)
