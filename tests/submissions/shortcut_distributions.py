# expect: called while grading
# class: shortcut
# attempts: a softmax hidden inside torch.distributions (no forbidden name in the source)
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    z = (x / temperature).movedim(dim, -1)
    return torch.distributions.Categorical(logits=z).probs.movedim(-1, dim)
