# expect: expected a torch.Tensor
# class: classic
# attempts: return a torch.Tensor subclass that always compares equal
import torch


class Agreeable(torch.Tensor):
    def __eq__(self, other):
        return torch.ones_like(other, dtype=torch.bool)

    def allclose(self, *args, **kwargs):
        return True


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return torch.zeros_like(x).as_subclass(Agreeable)
