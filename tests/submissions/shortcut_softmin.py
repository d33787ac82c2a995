# expect: softmin
# class: shortcut
# attempts: F.softmin(-x): the same function under another name
import torch.nn.functional as F


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return F.softmin(-x / temperature, dim=dim)
